//! Seal and open, in both modes: round trip, authentication (tampering), the
//! mode flag, the signature, and no panics on any input.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::LazyLock;

use common::*;
use knock_proto::{
    open, seal, HintIndex, KnockBytes, Mode, OpenError, ParseError, PortSpec, ReplayGuard, Request,
    SealError, SealRandomness, Sealer, SignatureError, MAX_KNOCK_LEN, MAX_PADDING, MAX_PORTS,
    MIN_KNOCK_LEN, REQUEST_LEN,
};
use proptest::prelude::*;

/// Clients 0..8 of [`server()`]: even ones shared-key, odd ones public-key.
static CLIENTS: LazyLock<Vec<Client>> = LazyLock::new(|| {
    let server = server();
    (0..8u8)
        .map(|i| Client::new(MODES[usize::from(i % 2)], i, &server))
        .collect()
});
static SERVER_KEYS: LazyLock<Server> = LazyLock::new(server);

fn index_at(now_ms: u64) -> HintIndex<u8> {
    HintIndex::build(
        CLIENTS.iter().enumerate().map(|(i, c)| (i as u8, &c.keys)),
        now_ms,
        WINDOW_MS,
    )
}

/// The client of `mode` that the exhaustive tests use.
fn client_of(mode: Mode) -> u8 {
    match mode {
        Mode::Shared => 2,
        Mode::Public => 3,
    }
}

fn seal_as(client: u8, request: &Request, timestamp_ms: u64, rand: &SealRandomness) -> Vec<u8> {
    CLIENTS[usize::from(client)]
        .seal(&SERVER_KEYS, request, timestamp_ms, rand)
        .unwrap()
}

/// The server's whole verdict including the signature check of a public
/// knock (which must pass for every knock that opens).
fn check_signature(client: u8, opened: &knock_proto::OpenedKnock) -> Result<(), SignatureError> {
    let entry = &CLIENTS[usize::from(client)];
    match entry.mode {
        Mode::Shared => Ok(()),
        Mode::Public => opened.verify_signature(
            entry.public.as_ref().unwrap(),
            &SERVER_KEYS.public,
            &SERVER_KEYS.id,
        ),
    }
}

/// Every request is as long as the longest, plus the random padding.
fn expected_len(padding: u8) -> usize {
    MIN_KNOCK_LEN + usize::from(padding) % (MAX_PADDING + 1)
}

/// (hint key, aead key) of client `client`, from the specification.
fn spec_keys(client: u8) -> ([u8; 32], [u8; 32]) {
    let prk = CLIENTS[usize::from(client)].pair_prk(&SERVER_KEYS);
    let (hint, aead, _) = spec::subkeys(prk.expose());
    (hint, aead)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any valid request, time and randomness, in either mode: seal → parse
    /// → hint lookup finds the sender among several clients → open gives
    /// back the request and the stamp, and a public knock's signature
    /// verifies.
    #[test]
    fn round_trip(
        client in 0..8u8,
        request in request(),
        timestamp_ms in any::<u64>(),
        skew in 0..=2 * WINDOW_MS,
        rand in seal_randomness(),
    ) {
        // The server's clock is anywhere within the window of the stamp.
        let now_ms = timestamp_ms.saturating_sub(WINDOW_MS).saturating_add(skew);
        let index = index_at(now_ms);
        let datagram = seal_as(client, &request, timestamp_ms, &rand);
        prop_assert_eq!(datagram.len(), expected_len(rand.padding));
        prop_assert!((MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(&datagram.len()));
        match verdict(&CLIENTS, &index, &datagram) {
            Verdict::Opened(found, opened) => {
                prop_assert_eq!(found, client);
                prop_assert_eq!(opened.mode(), CLIENTS[usize::from(client)].mode);
                prop_assert_eq!(check_signature(client, &opened), Ok(()));
                prop_assert_eq!(opened.request, request);
                prop_assert_eq!(opened.timestamp_ms, timestamp_ms);
            }
            other => prop_assert!(false, "not opened: {:?}", other),
        }
    }

    /// A random bit flip anywhere in a random knock of either mode is
    /// rejected; flips after the hint reach the AEAD and fail its tag.
    #[test]
    fn any_bit_flip_is_rejected(
        mode in mode(),
        request in request(),
        rand in seal_randomness(),
        position in any::<prop::sample::Index>(),
        bit in 0..8u8,
    ) {
        let index = index_at(T0);
        let mut datagram = seal_as(client_of(mode), &request, T0, &rand);
        let i = position.index(datagram.len());
        datagram[i] ^= 1 << bit;
        let v = verdict(&CLIENTS, &index, &datagram);
        if i < 8 {
            prop_assert!(matches!(v, Verdict::UnknownHint | Verdict::Open(OpenError::BadMac)), "{:?}", v);
        } else {
            prop_assert_eq!(v, Verdict::Open(OpenError::BadMac));
        }
    }

    /// Any truncation of a random knock of either mode is rejected.
    #[test]
    fn any_truncation_is_rejected(
        mode in mode(),
        request in request(),
        rand in seal_randomness(),
        cut in any::<prop::sample::Index>(),
    ) {
        let index = index_at(T0);
        let datagram = seal_as(client_of(mode), &request, T0, &rand);
        let keep = cut.index(datagram.len()); // 0..len: at least one byte cut
        assert_rejected(&index, &datagram[..keep]);
    }

    /// Any extension of a random knock (1..=200 arbitrary bytes) is rejected.
    #[test]
    fn any_extension_is_rejected(
        mode in mode(),
        request in request(),
        rand in seal_randomness(),
        extra in proptest::collection::vec(any::<u8>(), 1..=200),
    ) {
        let index = index_at(T0);
        let mut datagram = seal_as(client_of(mode), &request, T0, &rand);
        datagram.extend_from_slice(&extra);
        assert_rejected(&index, &datagram);
    }

    /// Arbitrary bytes never panic the server's path, whether their first 8
    /// bytes are junk or a hint the index knows (of either mode: this forces
    /// the AEAD to run).
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        with_valid_hint in any::<bool>(),
        client in 0..8u8,
        now_offset in 0..=2 * WINDOW_MS,
    ) {
        let index = index_at(T0);
        let mut bytes = bytes;
        if with_valid_hint && bytes.len() >= 8 {
            let (hint_key, _) = spec_keys(client);
            bytes[..8].copy_from_slice(&spec::hint(&hint_key, T0));
        }
        let v = verdict(&CLIENTS, &index, &bytes);
        if let Verdict::Opened(..) = v {
            prop_assert!(false, "junk opened");
        }
        if with_valid_hint && (MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(&bytes.len()) {
            prop_assert_eq!(v, Verdict::Open(OpenError::BadMac));
        }
        // The replay guard takes any stamp and time without panicking.
        let guard = ReplayGuard::first_start(WINDOW_MS, T0);
        let stamp = u64::from_le_bytes(bytes.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0xff; 8]));
        let key = knock_proto::ReplayId([7; 16]);
        let _ = guard.check(key, stamp, T0 - WINDOW_MS + now_offset);
        let _ = guard.check(key, stamp, stamp);
        let _ = guard.check(key, u64::MAX, 0);
        let _ = guard.check(key, 0, u64::MAX);
    }

    /// Authentic (correctly sealed) but arbitrary plaintexts never panic
    /// open, nor the signature check of whatever opens: a request or a typed
    /// error. Only a pair-key holder can produce these, but a buggy or
    /// hostile client, or a thief with the server's keys, is one.
    #[test]
    fn authentic_arbitrary_plaintext_never_panics(
        client in 0..8u8,
        plaintext in proptest::collection::vec(any::<u8>(), 0..=260),
        nonce in any::<[u8; 24]>(),
    ) {
        let (hint_key, aead_key) = spec_keys(client);
        let hint = spec::hint(&hint_key, T0);
        let datagram = spec::seal_plaintext(&aead_key, &hint, &nonce, &plaintext);
        let index = index_at(T0);
        if let Verdict::Opened(found, opened) = verdict(&CLIENTS, &index, &datagram) {
            prop_assert_eq!(found, client);
            // Random bytes are not a signature of the client.
            if opened.mode() == Mode::Public {
                prop_assert!(check_signature(client, &opened).is_err());
            }
        }
    }

    /// Well-formed plaintexts of either mode with one field broken are
    /// refused with the right typed error.
    #[test]
    fn authentic_malformed_plaintext_is_typed(
        mode in mode(),
        request in request(),
        which in 0..9u8,
        junk in any::<u8>(),
    ) {
        let client = client_of(mode);
        let (hint_key, aead_key) = spec_keys(client);
        let hint = spec::hint(&hint_key, T0);
        let signed = mode == Mode::Public;
        let mut block = spec::request_block(&request, signed, T0);
        let auth = [if signed { 0x42 } else { 0 }; 64];
        let count_at = 1 + 1 + 8 + 4;
        let request_end = count_at + 1 + 3 * request.ports.len()
            + match request.bound_addr { None => 0, Some(a) if a.is_ipv4() => 4, _ => 16 };
        let mut padding_byte = None;
        let mut auth = auth;
        let expected = match which {
            0 => { block[0] = if junk == 2 { 1 } else { junk }; OpenError::UnsupportedVersion(block[0]) }
            1 => {
                // 2, 6 (IPv6 without an address) or any bit above bit 2.
                block[1] = match junk % 3 { 0 => 2, 1 => 6, _ => block[1] | (8 << (junk % 5)) };
                OpenError::Malformed("unknown flags")
            }
            2 => { block[count_at] = if junk % 2 == 0 { 0 } else { 17 + junk % 100 }; OpenError::Malformed("port count") }
            3 => { block[count_at + 1] = if junk == 6 || junk == 17 { 0 } else { junk }; OpenError::Malformed("transport") }
            4 => { block[count_at + 2] = 0; block[count_at + 3] = 0; OpenError::Malformed("port 0") }
            5 => {
                // A non-zero byte in the request block after the request.
                if request_end == REQUEST_LEN {
                    // The longest request fills the block: break the padding instead.
                    padding_byte = Some(junk | 1);
                } else {
                    block[request_end + usize::from(junk) % (REQUEST_LEN - request_end)] = junk | 1;
                }
                OpenError::Malformed("padding")
            }
            6 => { padding_byte = Some(junk | 1); OpenError::Malformed("padding") }
            7 => {
                // The signed flag flipped: the other mode's knock.
                block[1] ^= 4;
                OpenError::WrongMode
            }
            _ => {
                if signed {
                    // Public: any auth passes open (the signature is checked later).
                    auth[usize::from(junk) % 64] = junk;
                    block[1] ^= 4; // and then fails the mode check
                    OpenError::WrongMode
                } else {
                    auth[usize::from(junk) % 64] = junk | 1;
                    OpenError::Malformed("auth of a shared-key knock")
                }
            }
        };
        let mut p = spec::plaintext(&block, &auth, 3);
        if let Some(b) = padding_byte {
            *p.last_mut().unwrap() = b;
        }
        let datagram = spec::seal_plaintext(&aead_key, &hint, &[7; 24], &p);
        let index = index_at(T0);
        prop_assert_eq!(verdict(&CLIENTS, &index, &datagram), Verdict::Open(expected));
    }
}

fn assert_rejected(index: &HintIndex<u8>, datagram: &[u8]) {
    let v = verdict(&CLIENTS, index, datagram);
    let len = datagram.len();
    match v {
        Verdict::Parse(ParseError::TooShort(n)) => assert!(n == len && len < MIN_KNOCK_LEN),
        Verdict::Parse(ParseError::TooLong(n)) => assert!(n == len && len > MAX_KNOCK_LEN),
        // A plausible length with the real hint goes to the AEAD, which refuses.
        Verdict::Open(OpenError::BadMac) => {}
        // Cut inside the hint: no client found.
        Verdict::UnknownHint => assert!(len < 8),
        other => panic!("length {len} not rejected: {other:?}"),
    }
}

/// The knock that the exhaustive tests tamper with: two ports, an IPv6
/// address, some padding.
fn fixed_knock(mode: Mode) -> (HintIndex<u8>, Vec<u8>) {
    let index = index_at(T0);
    let request = Request {
        ports: vec![PortSpec::tcp(22), "udp/53".parse().unwrap()],
        duration_s: 120,
        bound_addr: Some("2001:db8::7".parse().unwrap()),
    };
    let rand = SealRandomness {
        nonce: [0xa5; 24],
        padding: 9,
    };
    let client = client_of(mode);
    let datagram = seal_as(client, &request, T0, &rand);
    match verdict(&CLIENTS, &index, &datagram) {
        Verdict::Opened(found, opened) => {
            assert_eq!(found, client);
            assert_eq!(check_signature(client, &opened), Ok(()));
        }
        other => panic!("{other:?}"),
    }
    (index, datagram)
}

#[test]
fn every_single_bit_flip_of_a_fixed_knock_is_rejected() {
    for mode in MODES {
        let (index, datagram) = fixed_knock(mode);
        for i in 0..datagram.len() {
            for bit in 0..8 {
                let mut tampered = datagram.clone();
                tampered[i] ^= 1 << bit;
                let v = verdict(&CLIENTS, &index, &tampered);
                if i < 8 {
                    assert_eq!(v, Verdict::UnknownHint, "{mode} byte {i} bit {bit}");
                } else {
                    assert_eq!(
                        v,
                        Verdict::Open(OpenError::BadMac),
                        "{mode} byte {i} bit {bit}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_truncation_of_a_fixed_knock_is_rejected() {
    for mode in MODES {
        let (index, datagram) = fixed_knock(mode);
        for keep in 0..datagram.len() {
            assert_rejected(&index, &datagram[..keep]);
        }
    }
}

#[test]
fn every_extension_of_a_fixed_knock_is_rejected() {
    for mode in MODES {
        let (index, datagram) = fixed_knock(mode);
        for extra in 1..=(MAX_KNOCK_LEN - datagram.len() + 16) {
            for fill in [0x00u8, 0xff, 0x5a] {
                let mut extended = datagram.clone();
                extended.resize(datagram.len() + extra, fill);
                assert_rejected(&index, &extended);
            }
        }
    }
}

/// Moving bytes between the hint and the body, or swapping the hint for the
/// same client's hint of another slot, is caught: the hint is authenticated
/// data of the AEAD.
#[test]
fn hint_is_authenticated() {
    for mode in MODES {
        let (index, datagram) = fixed_knock(mode);
        let (hint_key, _) = spec_keys(client_of(mode));
        let mut moved = datagram.clone();
        moved[..8].copy_from_slice(&spec::hint(&hint_key, T0 + 30_000));
        assert_ne!(moved[..8], datagram[..8]);
        assert_eq!(
            verdict(&CLIENTS, &index, &moved),
            Verdict::Open(OpenError::BadMac)
        );
    }
}

/// The mode comes from the client entry, and the knock's flag must agree:
/// a knock opened in the other mode is refused as `WrongMode`, both ways,
/// although its AEAD verifies.
#[test]
fn the_mode_flag_must_match_the_entry() {
    for mode in MODES {
        let client = &CLIENTS[usize::from(client_of(mode))];
        let (_, datagram) = fixed_knock(mode);
        let knock = KnockBytes::parse(&datagram).unwrap();
        let other = match mode {
            Mode::Shared => Mode::Public,
            Mode::Public => Mode::Shared,
        };
        assert_eq!(open(&client.keys, other, &knock), Err(OpenError::WrongMode));
        assert_eq!(open(&client.keys, mode, &knock).unwrap().mode(), mode);
    }
}

/// A shared-key knock carries no signature to check.
#[test]
fn a_shared_knock_has_no_signature() {
    let (_, datagram) = fixed_knock(Mode::Shared);
    let shared = &CLIENTS[usize::from(client_of(Mode::Shared))];
    let opened = open(
        &shared.keys,
        Mode::Shared,
        &KnockBytes::parse(&datagram).unwrap(),
    )
    .unwrap();
    let public = CLIENTS[usize::from(client_of(Mode::Public))]
        .public
        .unwrap();
    assert_eq!(
        opened.verify_signature(&public, &SERVER_KEYS.public, &SERVER_KEYS.id),
        Err(SignatureError::NotSigned)
    );
}

/// The signature covers `s_pk`, `server_id`, the hint, the nonce and every
/// byte of the request block: the same signature re-sealed (by a holder of
/// the pair keys) with any one of them changed is refused.
#[test]
fn the_signature_covers_every_signed_field() {
    let client = client_of(Mode::Public);
    let entry = &CLIENTS[usize::from(client)];
    let public = entry.public.unwrap();
    let (hint_key, aead_key) = spec_keys(client);
    let request = Request {
        ports: vec![PortSpec::tcp(22), "udp/53".parse().unwrap()],
        duration_s: 120,
        bound_addr: Some("192.0.2.7".parse().unwrap()),
    };
    let nonce = [0x3c; 24];
    let datagram = seal_as(client, &request, T0, &SealRandomness { nonce, padding: 0 });
    let plaintext = spec::open_plaintext(&aead_key, &datagram).unwrap();
    let (block, rest) = plaintext.split_at(REQUEST_LEN);
    let auth: [u8; 64] = rest[..64].try_into().unwrap();
    let hint = spec::hint(&hint_key, T0);
    let open_and_verify = |hint: &[u8; 8], nonce: &[u8; 24], block: &[u8]| {
        let forged =
            spec::seal_plaintext(&aead_key, hint, nonce, &spec::plaintext(block, &auth, 0));
        let knock = KnockBytes::parse(&forged).unwrap();
        open(&entry.keys, Mode::Public, &knock)
            .map(|opened| opened.verify_signature(&public, &SERVER_KEYS.public, &SERVER_KEYS.id))
    };
    // Unchanged, it verifies.
    assert_eq!(open_and_verify(&hint, &nonce, block), Ok(Ok(())));
    // Verified for another server key or server identity.
    let opened = open(
        &entry.keys,
        Mode::Public,
        &KnockBytes::parse(&datagram).unwrap(),
    )
    .unwrap();
    let other = other_server();
    assert_eq!(
        opened.verify_signature(&public, &other.public, &SERVER_KEYS.id),
        Err(SignatureError::BadSignature)
    );
    assert_eq!(
        opened.verify_signature(&public, &SERVER_KEYS.public, &other.id),
        Err(SignatureError::BadSignature)
    );
    // Verified with another client's key.
    let stranger = identity(200).public();
    assert_eq!(
        opened.verify_signature(&stranger, &SERVER_KEYS.public, &SERVER_KEYS.id),
        Err(SignatureError::BadSignature)
    );
    // Another hint (the next slot's) or another nonce.
    let next_hint = spec::hint(&hint_key, T0 + 30_000);
    assert_eq!(
        open_and_verify(&next_hint, &nonce, block),
        Ok(Err(SignatureError::BadSignature))
    );
    for i in 0..24 {
        let mut other_nonce = nonce;
        other_nonce[i] ^= 0x80;
        assert_eq!(
            open_and_verify(&hint, &other_nonce, block),
            Ok(Err(SignatureError::BadSignature)),
            "nonce byte {i}"
        );
    }
    // Every byte of the request block: each change either breaks the format
    // (refused before the signature) or is refused by the signature.
    let mut reached_signature = 0;
    for i in 0..REQUEST_LEN {
        for xor in [0x01u8, 0x80, 0xff] {
            let mut changed = block.to_vec();
            changed[i] ^= xor;
            match open_and_verify(&hint, &nonce, &changed) {
                Ok(Err(SignatureError::BadSignature)) => reached_signature += 1,
                Ok(other) => panic!("block byte {i} ^ {xor:#x}: {other:?}"),
                Err(OpenError::Malformed(_) | OpenError::UnsupportedVersion(_)) => {}
                Err(OpenError::WrongMode) => assert_eq!((i, xor & 4), (1, 4)),
                Err(e) => panic!("block byte {i} ^ {xor:#x}: {e:?}"),
            }
        }
    }
    // Stamp (8), duration (4), the ports' numbers (2 × 2 bytes × 3) and most
    // transports, and the address (4) all reach it.
    assert!(
        reached_signature >= 3 * (8 + 4 + 4 + 4),
        "{reached_signature}"
    );
}

#[test]
fn seal_refuses_bad_port_counts() {
    for mode in MODES {
        let client = client_of(mode);
        let rand = SealRandomness {
            nonce: [0; 24],
            padding: 0,
        };
        let seal =
            |request: &Request| CLIENTS[usize::from(client)].seal(&SERVER_KEYS, request, T0, &rand);
        let mut request = simple_request();
        request.ports.clear();
        assert_eq!(seal(&request), Err(SealError::NoPorts));
        request.ports = vec![PortSpec::tcp(1); MAX_PORTS + 1];
        assert_eq!(
            seal(&request),
            Err(SealError::TooManyPorts {
                count: MAX_PORTS + 1,
                max: MAX_PORTS
            })
        );
        request.ports = vec![PortSpec::tcp(0)];
        assert_eq!(seal(&request), Err(SealError::PortZero));
        request.ports = vec![PortSpec::tcp(1); MAX_PORTS];
        let datagram = seal(&request).unwrap();
        assert_eq!(datagram.len(), MIN_KNOCK_LEN);
    }
}

#[test]
fn length_bounds_are_the_extremes_of_seal() {
    assert_eq!((MIN_KNOCK_LEN, MAX_KNOCK_LEN), (191, 254));
    assert_eq!(REQUEST_LEN, 79);
    for mode in MODES {
        let client = client_of(mode);
        let shortest = seal_as(
            client,
            &simple_request(),
            T0,
            &SealRandomness {
                nonce: [0; 24],
                padding: 0,
            },
        );
        assert_eq!(shortest.len(), MIN_KNOCK_LEN);
        let longest = seal_as(
            client,
            &longest_request(),
            T0,
            &SealRandomness {
                nonce: [0; 24],
                padding: MAX_PADDING as u8,
            },
        );
        assert_eq!(longest.len(), MAX_KNOCK_LEN);
        assert_eq!(
            KnockBytes::parse(&shortest[..MIN_KNOCK_LEN - 1]).err(),
            Some(ParseError::TooShort(190))
        );
        let mut too_long = longest.clone();
        too_long.push(0);
        assert_eq!(
            KnockBytes::parse(&too_long).err(),
            Some(ParseError::TooLong(255))
        );
    }
}

/// The length says nothing about the request nor the mode: over every value
/// of the padding randomness, the lengths of the shortest shared-key
/// request (one port, unbound) and of the longest public-key one (sixteen
/// ports, bound to an IPv6 address) are the same multiset, uniform over 64
/// lengths.
#[test]
fn the_length_distribution_depends_on_neither_request_nor_mode() {
    let lengths = |mode: Mode, request: &Request| {
        let mut counts = std::collections::BTreeMap::new();
        for padding in 0..=u8::MAX {
            let rand = SealRandomness {
                nonce: [padding; 24],
                padding,
            };
            let len = seal_as(client_of(mode), request, T0, &rand).len();
            *counts.entry(len).or_insert(0u32) += 1;
        }
        counts
    };
    let short = lengths(Mode::Shared, &simple_request());
    assert_eq!(short.len(), MAX_PADDING + 1);
    assert!(short.values().all(|&n| n == 4), "{short:?}");
    assert_eq!(short.keys().next(), Some(&MIN_KNOCK_LEN));
    assert_eq!(short.keys().last(), Some(&MAX_KNOCK_LEN));
    for (mode, request) in [
        (Mode::Public, longest_request()),
        (Mode::Public, simple_request()),
        (Mode::Shared, longest_request()),
    ] {
        assert_eq!(lengths(mode, &request), short, "{mode}");
    }
}

/// seal uses the sealer it is given: a public sealer with a shared client's
/// keys still signs (the server would refuse the signature), and the flag
/// follows the sealer.
#[test]
fn the_flag_follows_the_sealer() {
    let shared = &CLIENTS[usize::from(client_of(Mode::Shared))];
    let public = &CLIENTS[usize::from(client_of(Mode::Public))];
    let rand = SealRandomness {
        nonce: [1; 24],
        padding: 1,
    };
    let signed_with_shared_keys = seal(
        &shared.keys,
        &public.sealer(&SERVER_KEYS),
        &simple_request(),
        T0,
        &rand,
    )
    .unwrap();
    let knock = KnockBytes::parse(&signed_with_shared_keys).unwrap();
    assert_eq!(
        open(&shared.keys, Mode::Shared, &knock),
        Err(OpenError::WrongMode)
    );
    let opened = open(&shared.keys, Mode::Public, &knock).unwrap();
    // Signed by the public client's identity over this server: it verifies
    // against that identity, which the shared entry does not hold.
    assert_eq!(
        opened.verify_signature(
            &public.public.unwrap(),
            &SERVER_KEYS.public,
            &SERVER_KEYS.id
        ),
        Ok(())
    );
    let unsigned_with_public_keys =
        seal(&public.keys, &Sealer::Shared, &simple_request(), T0, &rand).unwrap();
    let knock = KnockBytes::parse(&unsigned_with_public_keys).unwrap();
    assert_eq!(
        open(&public.keys, Mode::Public, &knock),
        Err(OpenError::WrongMode)
    );
}
