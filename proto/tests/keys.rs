//! Keys: the public line, key validation (small-order X25519 points, weak
//! Ed25519 keys), and the byte-exact key schedule and knock of both modes
//! against the specification reimplemented in `common::spec`.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::*;
use knock_proto::{
    open, seal, ClientIdentity, ClientPublicKey, IdentitySeed, KeyError, KnockBytes, Mode,
    PairKeys, PairPrk, SealRandomness, Sealer, ServerPublicKey, ServerSecretKey, SignatureError,
    PUBLIC_LINE_LEN,
};
use proptest::prelude::*;

/// The u-coordinates of small order (cr.yp.to/ecdh.html), canonical and
/// not, little-endian.
fn small_order_u() -> Vec<[u8; 32]> {
    [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ]
    .iter()
    .flat_map(|h| {
        let u: [u8; 32] = unhex(h).try_into().unwrap();
        let mut high = u;
        high[31] |= 0x80;
        [u, high]
    })
    .collect()
}

/// Compressed Edwards points of small order: valid encodings, weak keys.
fn weak_ed25519() -> Vec<[u8; 32]> {
    let keys: Vec<[u8; 32]> = [
        // the identity, (0, -1), the two points of order 4, four of order 8
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    ]
    .iter()
    .map(|h| unhex(h).try_into().unwrap())
    .collect();
    for key in &keys {
        let point = ed25519_dalek::VerifyingKey::from_bytes(key).unwrap();
        assert!(point.is_weak(), "{}", hex(key));
    }
    keys
}

/// A 32-byte string that is not the encoding of any Edwards point.
fn not_a_point() -> [u8; 32] {
    (2u8..)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
        .unwrap()
}

#[test]
fn the_public_line_is_one_token_of_the_specified_form() {
    for seed in 0..20 {
        let (_, _, ed_pk, x_pk) = spec::identity(identity_seed(seed).expose());
        let public = identity(seed).public();
        assert_eq!(public.ed25519_bytes(), &ed_pk);
        assert_eq!(public.x25519_bytes(), &x_pk);
        let line = public.to_line();
        assert_eq!(line, spec::public_line(&ed_pk, &x_pk));
        assert_eq!(line.len(), PUBLIC_LINE_LEN);
        assert_eq!(line.len(), 101);
        assert!(line.starts_with("knock-id1:"));
        assert!(line
            .bytes()
            .skip(10)
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(ClientPublicKey::parse_line(&line), Ok(public));
        // With surrounding whitespace and a comment after it.
        for text in [
            format!("  {line}\n"),
            format!("{line} alice@laptop"),
            format!("\t{line}\t# made 2026-12-01\n"),
        ] {
            assert_eq!(ClientPublicKey::parse_line(&text), Ok(public), "{text:?}");
        }
        assert_eq!(public.to_string(), line);
        assert!(format!("{public:?}").contains(&line));
        assert_eq!(
            public.fingerprint(),
            spec::sha256(&[b"knock/v2 pair cache client", &ed_pk, &x_pk])[..16]
        );
    }
}

#[test]
fn damaged_public_lines_are_refused_with_a_reason() {
    let line = identity(1).public().to_line();
    let body = &line[10..];
    assert_eq!(
        ClientPublicKey::parse_line(""),
        Err(KeyError::NotAPublicLine)
    );
    for bad_prefix in [
        format!("knock-id2:{body}"),
        format!("KNOCK-ID1:{body}"),
        body.to_owned(),
        format!("# knock-id1:{body}"),
    ] {
        assert_eq!(
            ClientPublicKey::parse_line(&bad_prefix),
            Err(KeyError::NotAPublicLine),
            "{bad_prefix}"
        );
    }
    let encoding = Err(KeyError::Encoding { expected: 91 });
    for bad in [
        line[..line.len() - 1].to_owned(),
        format!("{line}A"),
        format!("{line}="),
        format!("knock-id1:{}", body.replace('-', "+").replace('_', "/")),
        format!("{}!", &line[..line.len() - 1]),
    ] {
        if bad == line {
            continue;
        }
        assert_eq!(ClientPublicKey::parse_line(&bad), encoding, "{bad}");
    }
    // Every single-character change is caught (by the check bytes, or by the
    // encoding when it changes the unused trailing bits).
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 10..line.len() {
        for c in alphabet.chars().step_by(7) {
            let mut changed = line.clone();
            changed.replace_range(i..i + 1, &c.to_string());
            if changed == line {
                continue;
            }
            let result = ClientPublicKey::parse_line(&changed);
            assert!(
                matches!(result, Err(KeyError::Checksum | KeyError::Encoding { .. })),
                "position {i} -> {c}: {result:?}"
            );
        }
    }
    // The messages say what to do.
    assert!(KeyError::Checksum
        .to_string()
        .contains("copy the whole line"));
    assert!(KeyError::NotAPublicLine
        .to_string()
        .contains("knock-client identity"));
}

#[test]
fn small_order_x25519_keys_are_refused_on_both_sides() {
    let server = server();
    let good = identity(1).public();
    for u in small_order_u() {
        // A client key of small order: at enrolment, and at the server.
        let client = ClientPublicKey::from_bytes(*good.ed25519_bytes(), u);
        assert_eq!(
            client.validate(),
            Err(KeyError::LowOrderX25519),
            "{}",
            hex(&u)
        );
        assert_eq!(
            server.key.pair_prk(&client, &server.id),
            Err(KeyError::LowOrderX25519),
            "{}",
            hex(&u)
        );
        // A server key of small order, in a profile.
        let profile_key = ServerPublicKey::from_bytes(u);
        assert!(profile_key.is_small_order());
        assert_eq!(
            identity(1).pair_prk(&profile_key, &server.id),
            Err(KeyError::LowOrderX25519),
            "{}",
            hex(&u)
        );
    }
    assert_eq!(good.validate(), Ok(()));
    assert!(!server.public.is_small_order());
}

#[test]
fn weak_or_invalid_ed25519_keys_are_refused() {
    let server = server();
    let good = identity(1).public();
    let mut bad = weak_ed25519();
    bad.push(not_a_point());
    for ed in bad {
        let client = ClientPublicKey::from_bytes(ed, *good.x25519_bytes());
        assert_eq!(client.validate(), Err(KeyError::BadEd25519), "{}", hex(&ed));
        assert_eq!(
            server.key.pair_prk(&client, &server.id),
            Err(KeyError::BadEd25519)
        );
        // The line still parses (parsing is cheap and checks the form only);
        // validation refuses it.
        let parsed = ClientPublicKey::parse_line(&client.to_line()).unwrap();
        assert_eq!(parsed.validate(), Err(KeyError::BadEd25519));
    }
}

/// A knock "signed" for an entry whose Ed25519 key is weak never verifies:
/// verify_signature refuses the key itself.
#[test]
fn a_weak_entry_key_verifies_nothing() {
    let server = server();
    let client = Client::new(Mode::Public, 3, &server);
    let datagram = client.seal_simple(&server, T0, &mut SplitMix(1));
    let opened = open(
        &client.keys,
        Mode::Public,
        &KnockBytes::parse(&datagram).unwrap(),
    )
    .unwrap();
    let x = *client.public.unwrap().x25519_bytes();
    for ed in weak_ed25519() {
        let entry = ClientPublicKey::from_bytes(ed, x);
        assert_eq!(
            opened.verify_signature(&entry, &server.public, &server.id),
            Err(SignatureError::BadKey)
        );
    }
}

/// Every byte of a knock of either mode is what the specification makes of
/// the same inputs: key schedule, hint, request block, signed message,
/// signature, plaintext and AEAD.
#[test]
fn knocks_are_byte_exact_to_the_specification() {
    let mut rng = SplitMix(40);
    let server = server();
    for i in 0..64u8 {
        let request = if i % 3 == 0 {
            longest_request()
        } else {
            simple_request()
        };
        let stamp = T0 + rng.below(1 << 36);
        let rand = randomness(&mut rng);
        let padding = usize::from(rand.padding) % 64;
        for mode in MODES {
            let client = Client::new(mode, i, &server);
            let sealed = client.seal(&server, &request, stamp, &rand).unwrap();
            let expected = match mode {
                Mode::Shared => {
                    let prk = spec::shared_pair_prk(secret(i).expose(), &server.id.0);
                    let (hint_key, aead_key, _) = spec::subkeys(&prk);
                    let hint = spec::hint(&hint_key, stamp);
                    let plaintext = spec::shared_plaintext(&request, stamp, padding);
                    spec::seal_plaintext(&aead_key, &hint, &rand.nonce, &plaintext)
                }
                Mode::Public => {
                    let (ed_seed, x_sk, ed_pk, x_pk) = spec::identity(identity_seed(i).expose());
                    let s_pk =
                        spec::x25519(server.key.expose(), &x25519_dalek::X25519_BASEPOINT_BYTES);
                    assert_eq!(s_pk, server.public.0);
                    let dh = spec::x25519(&x_sk, &s_pk);
                    assert_eq!(dh, spec::x25519(server.key.expose(), &x_pk));
                    let prk = spec::public_pair_prk(&dh, &ed_pk, &x_pk, &s_pk, &server.id.0);
                    assert_eq!(client.pair_prk(&server).expose(), &prk);
                    let (hint_key, aead_key, _) = spec::subkeys(&prk);
                    let hint = spec::hint(&hint_key, stamp);
                    let block = spec::request_block(&request, true, stamp);
                    let message =
                        spec::signed_message(&s_pk, &server.id.0, &hint, &rand.nonce, &block);
                    let signature = spec::sign(&ed_seed, &message);
                    let plaintext = spec::plaintext(&block, &signature, padding);
                    spec::seal_plaintext(&aead_key, &hint, &rand.nonce, &plaintext)
                }
            };
            assert_eq!(hex(&sealed), hex(&expected), "{mode} knock {i}");
        }
    }
}

#[test]
fn pair_keys_round_trip_through_the_cache_bytes() {
    let server = server();
    for mode in MODES {
        let client = Client::new(mode, 5, &server);
        let prk = client.pair_prk(&server);
        let cached = PairPrk::from_bytes(*prk.expose());
        let keys = PairKeys::from_prk(&cached);
        assert_eq!(keys.replay_id(), client.keys.replay_id());
        let datagram = client.seal_simple(&server, T0, &mut SplitMix(2));
        assert!(open(&keys, mode, &KnockBytes::parse(&datagram).unwrap()).is_ok());
    }
    // The cache's server line.
    let tag = server.public.pair_cache_tag(&server.id);
    assert_eq!(
        tag,
        spec::sha256(&[
            b"knock/v2 pair cache server",
            &server.public.0,
            &server.id.0
        ])[..16]
    );
    assert_ne!(tag, other_server().public.pair_cache_tag(&server.id));
    assert_ne!(tag, server.public.pair_cache_tag(&OTHER_SERVER));
}

/// Secrets round-trip through their bytes, and no Debug output shows them.
#[test]
fn secrets_round_trip_and_stay_out_of_debug() {
    let seed = IdentitySeed::from_bytes([0x11; 32]);
    assert_eq!(IdentitySeed::from_slice(seed.expose()), Some(seed.clone()));
    assert_eq!(IdentitySeed::from_slice(&[0; 31]), None);
    let identity = ClientIdentity::from_seed(&seed);
    let server_key = ServerSecretKey::from_bytes([0x22; 32]);
    assert_eq!(server_key.expose(), &[0x22; 32]);
    assert_eq!(
        ServerSecretKey::from_bytes(*server_key.expose()).public(),
        server_key.public()
    );
    let prk = identity.pair_prk(&server_key.public(), &SERVER).unwrap();
    let keys = PairKeys::from_prk(&prk);
    let shared = PairKeys::shared(&secret(1), &SERVER);
    let texts = [
        format!("{seed:?}"),
        format!("{identity:?}"),
        format!("{server_key:?}"),
        format!("{prk:?}"),
        format!("{keys:?}"),
        format!("{shared:?}"),
        format!("{:?}", secret(1)),
        format!(
            "{:?}",
            Sealer::Public {
                identity: &identity,
                server: &server_key.public(),
                server_id: &SERVER
            }
        ),
    ];
    let secrets: Vec<Vec<u8>> = vec![
        seed.expose().to_vec(),
        server_key.expose().to_vec(),
        prk.expose().to_vec(),
        secret(1).expose().to_vec(),
    ];
    for text in &texts {
        for secret in &secrets {
            assert!(!text.contains(&hex(secret)), "{text}");
            assert!(!text.contains(&hex(&secret[..4])), "{text}");
            assert!(!text.contains(&format!("{:?}", &secret[..4])), "{text}");
            assert!(!text.to_lowercase().contains(&hex(&secret[..4])), "{text}");
        }
    }
    assert!(texts[1].contains(&identity.public().to_line()));
}

/// The vector generator behind `cargo run -p xtask -- vectors` renders
/// vectors of both modes from their inputs (the field lists of the issue 13
/// design), and what it renders is self-consistent: the knock opens with the
/// listed keys, in the listed mode, and a public one's signature verifies.
#[test]
fn the_vector_generator_renders_both_modes() {
    let inputs = "```test-vectors\n\
        name: shared-shortest\n\
        client_secret: 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
        server_id: 5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e\n\
        ports: tcp/4992\n\
        duration_s: 0\n\
        bound_addr: none\n\
        timestamp_ms: 1700000000000\n\
        nonce: 000000000000000000000000000000000000000000000000\n\
        padding: 0\n\
        \n\
        name: public-longest\n\
        identity_seed: 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\n\
        server_secret: 404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f\n\
        server_id: 5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e\n\
        ports: tcp/1,tcp/2,tcp/3,tcp/4,tcp/5,tcp/6,tcp/7,tcp/8,udp/9,udp/10,udp/11,udp/12,udp/13,udp/14,udp/15,udp/16\n\
        duration_s: 4294967295\n\
        bound_addr: 2001:db8::1\n\
        timestamp_ms: 1700000012345\n\
        nonce: a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7\n\
        padding: 63\n\
        ```\n";
    let rendered = vectors::render(&vectors::parse(inputs));
    let all = vectors::parse(&rendered);
    assert_eq!(all.len(), 2);
    // Rendering is a fixed point.
    assert_eq!(vectors::render(&all), rendered);
    for v in &all {
        let knock = v.knock();
        assert_eq!(knock, v.sealed(), "{}", v.name());
        assert_eq!(v.get("length"), knock.len().to_string());
        let keys = v.pair_keys();
        assert_eq!(hex(&keys.replay_id().0), v.get("replay_id"));
        let opened = open(&keys, v.mode(), &KnockBytes::parse(&knock).unwrap()).unwrap();
        assert_eq!(opened.request, v.request());
        let (hint_key, aead_key, _) = spec::subkeys(&unhex(v.get("pair_prk")).try_into().unwrap());
        assert_eq!(hex(&hint_key), v.get("hint_key"));
        assert_eq!(hex(&aead_key), v.get("aead_key"));
        assert_eq!(
            hex(&spec::seal_plaintext(
                &aead_key,
                &unhex(v.get("hint")).try_into().unwrap(),
                &v.randomness().nonce,
                &unhex(v.get("plaintext")),
            )),
            v.get("knock")
        );
        if v.mode() == Mode::Public {
            let public = ClientPublicKey::parse_line(v.get("public_line")).unwrap();
            assert_eq!(public, v.identity().public());
            assert_eq!(hex(public.ed25519_bytes()), v.get("client_ed25519_pk"));
            assert_eq!(hex(&v.server_key().public().0), v.get("server_public_key"));
            opened
                .verify_signature(&public, &v.server_key().public(), &v.server())
                .unwrap();
            assert_eq!(v.get("signed_message").len(), 2 * 177);
            assert_eq!(v.get("length"), "254");
        } else {
            assert_eq!(v.get("length"), "191");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text given as a public line gives a key or a typed error, never a
    /// panic; what parses prints back as the same token.
    #[test]
    fn parse_line_never_panics(text in ".{0,120}", prefixed in any::<bool>()) {
        let text = if prefixed { format!("knock-id1:{text}") } else { text };
        if let Ok(key) = ClientPublicKey::parse_line(&text) {
            let line = key.to_line();
            prop_assert_eq!(Some(line.as_str()), text.split_whitespace().next());
            let _ = key.validate();
        }
    }

    /// Arbitrary bytes as keys never panic validation nor pair-key
    /// computation on either side, nor a seal with the result.
    #[test]
    fn arbitrary_keys_never_panic(
        ed in any::<[u8; 32]>(),
        x in any::<[u8; 32]>(),
        s in any::<[u8; 32]>(),
        seed in any::<[u8; 32]>(),
    ) {
        let client = ClientPublicKey::from_bytes(ed, x);
        let _ = client.validate();
        let server_key = ServerSecretKey::from_bytes(s);
        let _ = server_key.pair_prk(&client, &SERVER);
        let identity = ClientIdentity::from_seed(&IdentitySeed::from_bytes(seed));
        let profile_key = ServerPublicKey::from_bytes(x);
        if let Ok(prk) = identity.pair_prk(&profile_key, &SERVER) {
            let sealer = Sealer::Public { identity: &identity, server: &profile_key, server_id: &SERVER };
            let sealed = seal(
                &PairKeys::from_prk(&prk),
                &sealer,
                &simple_request(),
                T0,
                &SealRandomness { nonce: [0; 24], padding: 0 },
            );
            prop_assert!(sealed.is_ok());
        }
    }
}
