//! Seal and open: round trip, authentication (tampering), and no panics on
//! any input.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::*;
use knock_proto::{
    open, seal, HintIndex, KnockBytes, OpenError, ParseError, ReplayGuard, SealError,
    SealRandomness, ServerId, MAX_KNOCK_LEN, MAX_PADDING, MAX_PORTS, MIN_KNOCK_LEN,
};
use proptest::prelude::*;

/// What the server does with a datagram up to (not including) the replay
/// guard: the outcome, or the first step that refused it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Parse(ParseError),
    UnknownHint,
    Open(OpenError),
    Opened(u8, knock_proto::OpenedKnock),
}

/// An index over clients 0..8, by seed.
fn index_at(now_ms: u64) -> (Vec<knock_proto::KnockKeys>, HintIndex<u8>) {
    let all: Vec<_> = (0..8u8).map(keys).collect();
    let index = HintIndex::build(
        (0..8u8).map(|i| (i, &all[usize::from(i)])),
        now_ms,
        WINDOW_MS,
    );
    (all, index)
}

fn verdict(
    all: &[knock_proto::KnockKeys],
    index: &HintIndex<u8>,
    server: &ServerId,
    datagram: &[u8],
) -> Verdict {
    let knock = match KnockBytes::parse(datagram) {
        Ok(k) => k,
        Err(e) => return Verdict::Parse(e),
    };
    let Some(&client) = index.lookup(knock.hint()) else {
        return Verdict::UnknownHint;
    };
    match open(&all[usize::from(client)], server, &knock) {
        Ok(opened) => Verdict::Opened(client, opened),
        Err(e) => Verdict::Open(e),
    }
}

/// Every request is as long as the longest, plus the random padding.
fn expected_len(_request: &knock_proto::Request, padding: u8) -> usize {
    MIN_KNOCK_LEN + usize::from(padding) % (MAX_PADDING + 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any valid request, time and randomness: seal → parse → hint lookup
    /// finds the sender among several clients → open gives back the request
    /// and the stamp.
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
        let (all, index) = index_at(now_ms);
        let datagram = seal(&all[usize::from(client)], &SERVER, &request, timestamp_ms, &rand).unwrap();
        prop_assert_eq!(datagram.len(), expected_len(&request, rand.padding));
        prop_assert!((MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(&datagram.len()));
        match verdict(&all, &index, &SERVER, &datagram) {
            Verdict::Opened(found, opened) => {
                prop_assert_eq!(found, client);
                prop_assert_eq!(opened.request, request);
                prop_assert_eq!(opened.timestamp_ms, timestamp_ms);
            }
            other => prop_assert!(false, "not opened: {:?}", other),
        }
    }

    /// A random bit flip anywhere in a random knock is rejected; flips after
    /// the hint reach the AEAD and fail its tag.
    #[test]
    fn any_bit_flip_is_rejected(
        request in request(),
        rand in seal_randomness(),
        position in any::<prop::sample::Index>(),
        bit in 0..8u8,
    ) {
        let (all, index) = index_at(T0);
        let mut datagram = seal(&all[3], &SERVER, &request, T0, &rand).unwrap();
        let i = position.index(datagram.len());
        datagram[i] ^= 1 << bit;
        let v = verdict(&all, &index, &SERVER, &datagram);
        if i < 8 {
            prop_assert!(matches!(v, Verdict::UnknownHint | Verdict::Open(OpenError::BadMac)), "{:?}", v);
        } else {
            prop_assert_eq!(v, Verdict::Open(OpenError::BadMac));
        }
    }

    /// Any truncation of a random knock is rejected.
    #[test]
    fn any_truncation_is_rejected(
        request in request(),
        rand in seal_randomness(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (all, index) = index_at(T0);
        let datagram = seal(&all[3], &SERVER, &request, T0, &rand).unwrap();
        let keep = cut.index(datagram.len()); // 0..len: at least one byte cut
        assert_rejected(&all, &index, &datagram[..keep]);
    }

    /// Any extension of a random knock (1..=200 arbitrary bytes) is rejected.
    #[test]
    fn any_extension_is_rejected(
        request in request(),
        rand in seal_randomness(),
        extra in proptest::collection::vec(any::<u8>(), 1..=200),
    ) {
        let (all, index) = index_at(T0);
        let mut datagram = seal(&all[3], &SERVER, &request, T0, &rand).unwrap();
        datagram.extend_from_slice(&extra);
        assert_rejected(&all, &index, &datagram);
    }

    /// Arbitrary bytes never panic the server's path, whether their first 8
    /// bytes are junk or a hint the index knows (which forces the AEAD to run).
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        with_valid_hint in any::<bool>(),
        now_offset in 0..=2 * WINDOW_MS,
    ) {
        let (all, index) = index_at(T0);
        let mut bytes = bytes;
        if with_valid_hint && bytes.len() >= 8 {
            let (_, hint_key) = spec::derive(secret(5).expose());
            bytes[..8].copy_from_slice(&spec::hint(&hint_key, T0));
        }
        let v = verdict(&all, &index, &SERVER, &bytes);
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
    /// open: it returns a request or a typed error. Only a key holder can
    /// produce these, but a buggy or hostile client is a key holder.
    #[test]
    fn authentic_arbitrary_plaintext_never_panics(
        plaintext in proptest::collection::vec(any::<u8>(), 0..=200),
        nonce in any::<[u8; 24]>(),
    ) {
        let (aead_key, hint_key) = spec::derive(secret(5).expose());
        let hint = spec::hint(&hint_key, T0);
        let datagram = spec::seal_plaintext(&aead_key, &hint, &nonce, &plaintext);
        let (all, index) = index_at(T0);
        let _ = verdict(&all, &index, &SERVER, &datagram);
    }

    /// Well-formed plaintexts with one field broken are refused with the
    /// right typed error.
    #[test]
    fn authentic_malformed_plaintext_is_typed(
        request in request(),
        which in 0..6u8,
        junk in any::<u8>(),
    ) {
        let (aead_key, hint_key) = spec::derive(secret(5).expose());
        let hint = spec::hint(&hint_key, T0);
        let mut p = spec::plaintext(&request, &SERVER.0, T0, 3);
        let count_at = 1 + 1 + 8 + 16 + 4;
        let expected = match which {
            0 => { p[0] = 2 + junk % 200; OpenError::UnsupportedVersion(p[0]) }
            1 => { p[1] = if junk % 2 == 0 { 2 } else { 4 | junk }; OpenError::Malformed("unknown flags") }
            2 => { p[count_at] = if junk % 2 == 0 { 0 } else { 17 + junk % 100 }; OpenError::Malformed("port count") }
            3 => { p[count_at + 1] = if junk == 6 || junk == 17 { 0 } else { junk }; OpenError::Malformed("transport") }
            4 => { p[count_at + 2] = 0; p[count_at + 3] = 0; OpenError::Malformed("port 0") }
            // (A plaintext is never shorter than the longest request, so a
            // knock of a valid length cannot be truncated.)
            _ => { let last = p.len() - 1; p[last] = junk | 1; OpenError::Malformed("padding") }
        };
        let datagram = spec::seal_plaintext(&aead_key, &hint, &[7; 24], &p);
        let (all, index) = index_at(T0);
        prop_assert_eq!(verdict(&all, &index, &SERVER, &datagram), Verdict::Open(expected));
    }
}

fn assert_rejected(all: &[knock_proto::KnockKeys], index: &HintIndex<u8>, datagram: &[u8]) {
    let v = verdict(all, index, &SERVER, datagram);
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
fn fixed_knock() -> (Vec<knock_proto::KnockKeys>, HintIndex<u8>, Vec<u8>) {
    let (all, index) = index_at(T0);
    let request = knock_proto::Request {
        ports: vec![knock_proto::PortSpec::tcp(22), "udp/53".parse().unwrap()],
        duration_s: 120,
        bound_addr: Some("2001:db8::7".parse().unwrap()),
    };
    let rand = SealRandomness {
        nonce: [0xa5; 24],
        padding: 9,
    };
    let datagram = seal(&all[2], &SERVER, &request, T0, &rand).unwrap();
    assert!(matches!(
        verdict(&all, &index, &SERVER, &datagram),
        Verdict::Opened(2, _)
    ));
    (all, index, datagram)
}

#[test]
fn every_single_bit_flip_of_a_fixed_knock_is_rejected() {
    let (all, index, datagram) = fixed_knock();
    for i in 0..datagram.len() {
        for bit in 0..8 {
            let mut tampered = datagram.clone();
            tampered[i] ^= 1 << bit;
            let v = verdict(&all, &index, &SERVER, &tampered);
            if i < 8 {
                assert_eq!(v, Verdict::UnknownHint, "byte {i} bit {bit}");
            } else {
                assert_eq!(v, Verdict::Open(OpenError::BadMac), "byte {i} bit {bit}");
            }
        }
    }
}

#[test]
fn every_truncation_of_a_fixed_knock_is_rejected() {
    let (all, index, datagram) = fixed_knock();
    for keep in 0..datagram.len() {
        assert_rejected(&all, &index, &datagram[..keep]);
    }
}

#[test]
fn every_extension_of_a_fixed_knock_is_rejected() {
    let (all, index, datagram) = fixed_knock();
    for extra in 1..=(MAX_KNOCK_LEN - datagram.len() + 16) {
        for fill in [0x00u8, 0xff, 0x5a] {
            let mut extended = datagram.clone();
            extended.resize(datagram.len() + extra, fill);
            assert_rejected(&all, &index, &extended);
        }
    }
}

/// Moving bytes between the hint and the body, or swapping the hint for the
/// same client's hint of another slot, is caught: the hint is authenticated
/// data of the AEAD.
#[test]
fn hint_is_authenticated() {
    let (all, index, datagram) = fixed_knock();
    let (_, hint_key) = spec::derive(secret(2).expose());
    let mut moved = datagram.clone();
    moved[..8].copy_from_slice(&spec::hint(&hint_key, T0 + 30_000));
    assert_ne!(moved[..8], datagram[..8]);
    assert_eq!(
        verdict(&all, &index, &SERVER, &moved),
        Verdict::Open(OpenError::BadMac)
    );
}

#[test]
fn seal_refuses_bad_port_counts() {
    let k = keys(1);
    let rand = SealRandomness {
        nonce: [0; 24],
        padding: 0,
    };
    let mut request = simple_request();
    request.ports.clear();
    assert_eq!(
        seal(&k, &SERVER, &request, T0, &rand),
        Err(SealError::NoPorts)
    );
    request.ports = vec![knock_proto::PortSpec::tcp(1); MAX_PORTS + 1];
    assert_eq!(
        seal(&k, &SERVER, &request, T0, &rand),
        Err(SealError::TooManyPorts {
            count: MAX_PORTS + 1,
            max: MAX_PORTS
        })
    );
    request.ports.pop();
    let datagram = seal(&k, &SERVER, &request, T0, &rand).unwrap();
    assert_eq!(datagram.len(), MIN_KNOCK_LEN);
}

#[test]
fn length_bounds_are_the_extremes_of_seal() {
    let k = keys(1);
    let shortest = seal(
        &k,
        &SERVER,
        &simple_request(),
        T0,
        &SealRandomness {
            nonce: [0; 24],
            padding: 0,
        },
    )
    .unwrap();
    assert_eq!(shortest.len(), MIN_KNOCK_LEN);
    let longest_request = knock_proto::Request {
        ports: vec![knock_proto::PortSpec::tcp(1); MAX_PORTS],
        duration_s: u32::MAX,
        bound_addr: Some("::1".parse().unwrap()),
    };
    let longest = seal(
        &k,
        &SERVER,
        &longest_request,
        T0,
        &SealRandomness {
            nonce: [0; 24],
            padding: MAX_PADDING as u8,
        },
    )
    .unwrap();
    assert_eq!(longest.len(), MAX_KNOCK_LEN);
    assert_eq!((MIN_KNOCK_LEN, MAX_KNOCK_LEN), (143, 206));
    assert_eq!(
        KnockBytes::parse(&shortest[..MIN_KNOCK_LEN - 1]).err(),
        Some(ParseError::TooShort(142))
    );
    let mut too_long = longest.clone();
    too_long.push(0);
    assert_eq!(
        KnockBytes::parse(&too_long).err(),
        Some(ParseError::TooLong(207))
    );
}

/// The length says nothing about the request: over every value of the
/// padding randomness, the lengths of the shortest request (one port,
/// unbound) and of a long one (eight ports, bound to an IPv6 address) are
/// the same multiset, uniform over 64 lengths.
#[test]
fn the_length_distribution_does_not_depend_on_the_request() {
    let k = keys(1);
    let short = simple_request();
    let long = knock_proto::Request {
        ports: (1..=8).map(knock_proto::PortSpec::tcp).collect(),
        duration_s: 7,
        bound_addr: Some("2001:db8::7".parse().unwrap()),
    };
    let lengths = |request: &knock_proto::Request| {
        let mut counts = std::collections::BTreeMap::new();
        for padding in 0..=u8::MAX {
            let rand = SealRandomness {
                nonce: [padding; 24],
                padding,
            };
            let len = seal(&k, &SERVER, request, T0, &rand).unwrap().len();
            *counts.entry(len).or_insert(0u32) += 1;
        }
        counts
    };
    let (a, b) = (lengths(&short), lengths(&long));
    assert_eq!(a, b);
    assert_eq!(a.len(), MAX_PADDING + 1);
    assert!(a.values().all(|&n| n == 4), "{a:?}");
    assert_eq!(a.keys().next(), Some(&MIN_KNOCK_LEN));
    assert_eq!(a.keys().last(), Some(&MAX_KNOCK_LEN));
}
