//! The test vectors of docs/PROTOCOL.md, read from the document itself so that
//! the document and the code cannot drift apart.
//!
//! Each vector is a paragraph of `key: value` lines in the fenced block
//! tagged `test-vectors`. The inputs are `client_secret`, `server_id`,
//! `ports`, `duration_s`, `bound_addr`, `timestamp_ms`, `nonce` and `padding`;
//! the outputs are `aead_key`, `hint_key`, `hint`, `plaintext` and `knock`.
//! After a deliberate change of the format, print the block anew from the
//! inputs with
//! `cargo test -p knock-proto --test vectors -- --ignored --nocapture`.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::*;
use knock_proto::{
    open, seal, ClientSecret, HintIndex, KnockBytes, PortSpec, Request, SealRandomness, ServerId,
};

const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

#[derive(Debug)]
struct Vector {
    fields: BTreeMap<String, String>,
}

impl Vector {
    fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("vector {:?} lacks `{key}`", self.fields.get("name")))
    }

    fn name(&self) -> &str {
        self.get("name")
    }

    fn secret(&self) -> [u8; 32] {
        unhex(self.get("client_secret")).try_into().unwrap()
    }

    fn server(&self) -> ServerId {
        ServerId::from_slice(&unhex(self.get("server_id"))).unwrap()
    }

    fn request(&self) -> Request {
        let ports: Vec<PortSpec> = self
            .get("ports")
            .split(',')
            .map(|p| p.trim().parse().unwrap())
            .collect();
        let bound_addr: Option<IpAddr> = match self.get("bound_addr") {
            "none" => None,
            addr => Some(addr.parse().unwrap()),
        };
        Request {
            ports,
            duration_s: self.get("duration_s").parse().unwrap(),
            bound_addr,
        }
    }

    fn timestamp_ms(&self) -> u64 {
        self.get("timestamp_ms").parse().unwrap()
    }

    fn randomness(&self) -> SealRandomness {
        SealRandomness {
            nonce: unhex(self.get("nonce")).try_into().unwrap(),
            padding: self.get("padding").parse().unwrap(),
        }
    }

    fn knock(&self) -> Vec<u8> {
        unhex(self.get("knock"))
    }
}

/// The paragraphs of the first ```` ```test-vectors ```` block.
fn vectors() -> Vec<Vector> {
    let start = PROTOCOL_MD
        .find("```test-vectors\n")
        .expect("no test-vectors block in PROTOCOL.md");
    let body = &PROTOCOL_MD[start + "```test-vectors\n".len()..];
    let body = &body[..body.find("```").expect("unterminated test-vectors block")];
    let mut out = Vec::new();
    for paragraph in body.split("\n\n") {
        let mut fields = BTreeMap::new();
        for line in paragraph.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let previous = fields.insert(key.trim().to_owned(), value.trim().to_owned());
            assert!(previous.is_none(), "duplicate `{key}` in {paragraph:?}");
        }
        if !fields.is_empty() {
            out.push(Vector { fields });
        }
    }
    out
}

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

/// Prints the block with every output recomputed from the inputs.
#[test]
#[ignore = "prints the test-vectors block for docs/PROTOCOL.md"]
fn print_vectors() {
    println!("```test-vectors");
    for (i, v) in vectors().iter().enumerate() {
        if i > 0 {
            println!();
        }
        let keys = ClientSecret::from_bytes(v.secret()).derive();
        let sealed = seal(
            &keys,
            &v.server(),
            &v.request(),
            v.timestamp_ms(),
            &v.randomness(),
        )
        .unwrap();
        let (aead_key, hint_key) = spec::derive(&v.secret());
        let padding = usize::from(v.randomness().padding) % 64;
        let plaintext = spec::plaintext(&v.request(), &v.server().0, v.timestamp_ms(), padding);
        for key in [
            "name",
            "client_secret",
            "server_id",
            "ports",
            "duration_s",
            "bound_addr",
            "timestamp_ms",
            "nonce",
            "padding",
        ] {
            println!("{key}: {}", v.get(key));
        }
        println!("aead_key: {}", hex(&aead_key));
        println!("hint_key: {}", hex(&hint_key));
        println!("hint: {}", hex(&sealed[..8]));
        println!("plaintext: {}", hex(&plaintext));
        println!("length: {}", sealed.len());
        println!("knock: {}", hex(&sealed));
    }
    println!("```");
}
