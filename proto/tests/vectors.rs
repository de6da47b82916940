//! The test vectors of docs/PROTOCOL.md, read from the document itself so that
//! the document and the code cannot drift apart.
//!
//! The block is parsed and rendered by `common/vectors.rs`. After a
//! deliberate change of the format, print the block anew from its inputs
//! with `cargo run -p xtask -- vectors` and paste it into the document.
//! `scripts/vectors.py` checks the same block with an implementation in
//! Python that shares no code with this crate.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::vectors::{block, render, vectors, Vector};
use common::*;
use knock_proto::{
    open, ClientPublicKey, HintIndex, KnockBytes, Mode, OpenError, SignatureError, MAX_KNOCK_LEN,
    MAX_PORTS, MIN_KNOCK_LEN,
};

/// Both modes, and in each the extremes: the shortest knock, a bound IPv4
/// and a bound IPv6 address, the most ports, the most padding, a padding
/// byte that is reduced modulo 64.
#[test]
fn protocol_md_has_vectors_of_both_modes_and_the_extremes() {
    let all = vectors();
    let names: std::collections::HashSet<_> = all.iter().map(Vector::name).collect();
    assert_eq!(names.len(), all.len(), "vector names must differ");
    for mode in MODES {
        let of_mode: Vec<&Vector> = all.iter().filter(|v| v.mode() == mode).collect();
        assert!(of_mode.len() >= 3, "{} {mode} vectors", of_mode.len());
        let lengths: Vec<usize> = of_mode.iter().map(|v| v.knock().len()).collect();
        assert!(lengths.contains(&MIN_KNOCK_LEN), "{mode}: {lengths:?}");
        assert!(lengths.contains(&MAX_KNOCK_LEN), "{mode}: {lengths:?}");
        let requests: Vec<_> = of_mode.iter().map(|v| v.request()).collect();
        assert!(
            requests.iter().any(|r| r.ports.len() == MAX_PORTS),
            "{mode}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.bound_addr.is_some_and(|a| a.is_ipv4())),
            "{mode}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.bound_addr.is_some_and(|a| a.is_ipv6())),
            "{mode}"
        );
    }
    assert!(
        all.iter().any(|v| v.randomness().padding > 63),
        "no vector shows the padding byte reduced modulo 64"
    );
}

/// seal(inputs) gives exactly the bytes the document shows, in both modes.
#[test]
fn seal_reproduces_every_vector() {
    for v in vectors() {
        assert_eq!(hex(&v.sealed()), v.get("knock"), "vector {}", v.name());
        assert_eq!(
            v.get("length").parse::<usize>().unwrap(),
            v.knock().len(),
            "vector {}",
            v.name()
        );
    }
}

/// The document's knock bytes, on the server's side: the hint index finds
/// the client, the server's pair key (from its secret key and the enrolled
/// public line, in public-key mode) opens the knock to the document's request
/// and stamp, in the vector's mode and only in it, and a public-key knock's
/// signature verifies against the server's key and identity.
#[test]
fn open_recovers_every_vector() {
    for v in vectors() {
        let keys = v.server_pair_keys();
        assert_eq!(hex(&keys.replay_id().0), v.get("replay_id"), "{}", v.name());
        let datagram = v.knock();
        let knock = KnockBytes::parse(&datagram).unwrap();
        let index = HintIndex::build([(v.name().to_owned(), &keys)], v.timestamp_ms(), WINDOW_MS);
        assert_eq!(
            index.lookup(knock.hint()).map(String::as_str),
            Some(v.name())
        );
        let opened = open(&keys, v.mode(), &knock).unwrap();
        assert_eq!(opened.request, v.request(), "vector {}", v.name());
        assert_eq!(opened.timestamp_ms, v.timestamp_ms(), "vector {}", v.name());
        assert_eq!(opened.mode(), v.mode());
        let other_mode = match v.mode() {
            Mode::Shared => Mode::Public,
            Mode::Public => Mode::Shared,
        };
        assert_eq!(
            open(&keys, other_mode, &knock),
            Err(OpenError::WrongMode),
            "vector {}",
            v.name()
        );
        match v.mode() {
            Mode::Public => {
                let client = ClientPublicKey::parse_line(v.get("public_line")).unwrap();
                let server = v.server_key().public();
                assert_eq!(
                    opened.verify_signature(&client, &server, &v.server()),
                    Ok(())
                );
                // Over another server identity, the signature is refused.
                let mut elsewhere = v.server();
                elsewhere.0[0] ^= 1;
                assert_eq!(
                    opened.verify_signature(&client, &server, &elsewhere),
                    Err(SignatureError::BadSignature)
                );
            }
            Mode::Shared => {
                let anyone = identity(1).public();
                assert_eq!(
                    opened.verify_signature(&anyone, &server().public, &v.server()),
                    Err(SignatureError::NotSigned)
                );
            }
        }
    }
}

/// The intermediate values in the document follow from the inputs by the
/// document's own description (key schedule, hint, plaintext table, signed
/// message, AEAD), as reimplemented in tests/common without the crate's
/// code; and the crate's keys agree with them.
#[test]
fn vectors_match_an_independent_implementation_of_the_spec() {
    for v in vectors() {
        let name = v.name();
        let server_id = v.server().0;
        let (pair_prk, signed) = match v.mode() {
            Mode::Shared => (spec::shared_pair_prk(&v.secret(), &server_id), false),
            Mode::Public => {
                let (_, x_sk, ed_pk, x_pk) = spec::identity(&v.identity_seed());
                assert_eq!(hex(&ed_pk), v.get("client_ed25519_pk"), "{name}");
                assert_eq!(hex(&x_pk), v.get("client_x25519_pk"), "{name}");
                let line = spec::public_line(&ed_pk, &x_pk);
                assert_eq!(line, v.get("public_line"), "{name}");
                let public = v.identity().public();
                assert_eq!(public.to_line(), line, "{name}");
                assert_eq!(public.ed25519_bytes(), &ed_pk, "{name}");
                assert_eq!(public.x25519_bytes(), &x_pk, "{name}");
                let s_pk = spec::x25519(&v.server_secret(), &x25519_dalek::X25519_BASEPOINT_BYTES);
                assert_eq!(hex(&s_pk), v.get("server_public_key"), "{name}");
                assert_eq!(v.server_key().public().as_bytes(), &s_pk, "{name}");
                let dh = spec::x25519(&x_sk, &s_pk);
                assert_eq!(dh, spec::x25519(&v.server_secret(), &x_pk), "{name}");
                assert_eq!(hex(&dh), v.get("dh"), "{name}");
                (
                    spec::public_pair_prk(&dh, &ed_pk, &x_pk, &s_pk, &server_id),
                    true,
                )
            }
        };
        assert_eq!(hex(&pair_prk), v.get("pair_prk"), "{name}");
        assert_eq!(v.client_pair_prk().expose(), &pair_prk, "{name}");
        assert_eq!(v.server_pair_prk().expose(), &pair_prk, "{name}");
        let (hint_key, aead_key, replay_id) = spec::subkeys(&pair_prk);
        assert_eq!(hex(&hint_key), v.get("hint_key"), "{name}");
        assert_eq!(hex(&aead_key), v.get("aead_key"), "{name}");
        assert_eq!(hex(&replay_id), v.get("replay_id"), "{name}");
        let hint = spec::hint(&hint_key, v.timestamp_ms());
        assert_eq!(hex(&hint), v.get("hint"), "{name}");

        let block = spec::request_block(&v.request(), signed, v.timestamp_ms());
        let auth = if signed {
            let nonce = v.randomness().nonce;
            let s_pk: [u8; 32] = unhex(v.get("server_public_key")).try_into().unwrap();
            let message = spec::signed_message(&s_pk, &server_id, &hint, &nonce, &block);
            assert_eq!(hex(&message), v.get("signed_message"), "{name}");
            let (ed_seed, _, _, _) = spec::identity(&v.identity_seed());
            let signature = spec::sign(&ed_seed, &message);
            assert_eq!(hex(&signature), v.get("signature"), "{name}");
            signature
        } else {
            [0; 64]
        };
        let padding = usize::from(v.randomness().padding) % 64;
        let plaintext = spec::plaintext(&block, &auth, padding);
        assert_eq!(hex(&plaintext), v.get("plaintext"), "{name}");
        let knock = spec::seal_plaintext(&aead_key, &hint, &v.randomness().nonce, &plaintext);
        assert_eq!(hex(&knock), v.get("knock"), "{name}");
        assert_eq!(spec::open_plaintext(&aead_key, &knock), Some(plaintext));
    }
}

/// One identity appears on two servers in the block, in the same slot: the
/// two knocks share neither hint nor any 4-byte run, and neither server's
/// keys open the other's knock (unlinkable, and bound to its server).
#[test]
fn one_identity_on_two_servers_gives_unrelated_knocks() {
    let all = vectors();
    let public: Vec<&Vector> = all.iter().filter(|v| v.mode() == Mode::Public).collect();
    let mut pairs = 0;
    for (i, a) in public.iter().enumerate() {
        for b in &public[i + 1..] {
            if a.identity_seed() != b.identity_seed() || a.server() == b.server() {
                continue;
            }
            pairs += 1;
            assert_eq!(a.timestamp_ms() / 30_000, b.timestamp_ms() / 30_000);
            let (ka, kb) = (a.knock(), b.knock());
            assert_ne!(ka[..8], kb[..8]);
            assert!(!share_a_run(&ka, &kb, 4), "{} and {}", a.name(), b.name());
            for (keys, other) in [(a.server_pair_keys(), &kb), (b.server_pair_keys(), &ka)] {
                let knock = KnockBytes::parse(other).unwrap();
                assert_eq!(open(&keys, Mode::Public, &knock), Err(OpenError::BadMac));
            }
        }
    }
    assert!(pairs >= 1, "no identity appears on two servers in one slot");
}

/// The block in the document is exactly what `cargo run -p xtask -- vectors`
/// prints: every output, intermediate values included, follows from the
/// inputs, and nothing else is in the block.
#[test]
fn the_block_is_what_the_generator_prints() {
    let rendered = render(&vectors());
    assert_eq!(
        block(),
        rendered,
        "docs/PROTOCOL.md's test-vectors block differs from the generator's output; \
         run `cargo run -p xtask -- vectors` and compare"
    );
}
