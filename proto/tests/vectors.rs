//! The test vectors of docs/PROTOCOL.md, read from the document itself so that
//! the document and the code cannot drift apart.
//!
//! The block is parsed and rendered by `common/vectors.rs`. After a
//! deliberate change of the format, print the block anew from its inputs
//! with `cargo run -p xtask -- vectors` and paste it into the document.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::vectors::{block, render, vectors, Vector};
use common::*;
use knock_proto::{open, seal, ClientSecret, HintIndex, KnockBytes};

#[test]
fn protocol_md_has_at_least_three_vectors() {
    let all = vectors();
    assert!(all.len() >= 3, "{} vectors", all.len());
    let names: std::collections::HashSet<_> = all.iter().map(Vector::name).collect();
    assert_eq!(names.len(), all.len(), "vector names must differ");
}

/// seal(inputs) gives exactly the bytes the document shows.
#[test]
fn seal_reproduces_every_vector() {
    for v in vectors() {
        let keys = ClientSecret::from_bytes(v.secret()).derive();
        let sealed = seal(
            &keys,
            &v.server(),
            &v.request(),
            v.timestamp_ms(),
            &v.randomness(),
        )
        .unwrap();
        assert_eq!(hex(&sealed), v.get("knock"), "vector {}", v.name());
    }
}

/// The document's knock bytes open to the document's request and stamp, and
/// the server's hint index finds the client.
#[test]
fn open_recovers_every_vector() {
    for v in vectors() {
        let keys = ClientSecret::from_bytes(v.secret()).derive();
        let datagram = v.knock();
        let knock = KnockBytes::parse(&datagram).unwrap();
        let index = HintIndex::build([(v.name().to_owned(), &keys)], v.timestamp_ms(), WINDOW_MS);
        assert_eq!(
            index.lookup(knock.hint()).map(String::as_str),
            Some(v.name())
        );
        let opened = open(&keys, &v.server(), &knock).unwrap();
        assert_eq!(opened.request, v.request(), "vector {}", v.name());
        assert_eq!(opened.timestamp_ms, v.timestamp_ms(), "vector {}", v.name());
    }
}

/// The intermediate values in the document follow from the inputs by the
/// document's own description (HKDF, HMAC hint, plaintext table, AEAD), as
/// reimplemented in tests/common without the crate's code.
#[test]
fn vectors_match_an_independent_implementation_of_the_spec() {
    for v in vectors() {
        let (aead_key, hint_key) = spec::derive(&v.secret());
        assert_eq!(hex(&aead_key), v.get("aead_key"), "vector {}", v.name());
        assert_eq!(hex(&hint_key), v.get("hint_key"), "vector {}", v.name());
        let hint = spec::hint(&hint_key, v.timestamp_ms());
        assert_eq!(hex(&hint), v.get("hint"), "vector {}", v.name());
        let padding = usize::from(v.randomness().padding) % 64;
        let plaintext = spec::plaintext(&v.request(), &v.server().0, v.timestamp_ms(), padding);
        assert_eq!(hex(&plaintext), v.get("plaintext"), "vector {}", v.name());
        let knock = spec::seal_plaintext(&aead_key, &hint, &v.randomness().nonce, &plaintext);
        assert_eq!(hex(&knock), v.get("knock"), "vector {}", v.name());
        assert_eq!(
            v.get("length").parse::<usize>().unwrap(),
            knock.len(),
            "vector {}",
            v.name()
        );
    }
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
