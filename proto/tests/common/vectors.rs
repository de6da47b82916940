//! The test vectors of docs/PROTOCOL.md: read from the document itself (the
//! fenced block tagged `test-vectors`), and rendered anew from their inputs.
//!
//! Each vector is a paragraph of `key: value` lines. The inputs are
//! `client_secret`, `server_id`, `ports`, `duration_s`, `bound_addr`,
//! `timestamp_ms`, `nonce` and `padding`; the outputs are `aead_key`,
//! `hint_key`, `hint`, `plaintext`, `length` and `knock`.
//!
//! [`render`] is the generator behind `cargo run -p xtask -- vectors` (through
//! `proto/examples/vectors.rs`); `proto/tests/vectors.rs` checks that the
//! document holds exactly what it prints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use knock_proto::{seal, ClientSecret, PortSpec, Request, SealRandomness, ServerId};

use super::{hex, spec, unhex};

pub const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

const OPENING: &str = "```test-vectors\n";
const CLOSING: &str = "```\n";

/// The inputs, in the order the block lists them.
const INPUTS: [&str; 9] = [
    "name",
    "client_secret",
    "server_id",
    "ports",
    "duration_s",
    "bound_addr",
    "timestamp_ms",
    "nonce",
    "padding",
];

#[derive(Debug)]
pub struct Vector {
    fields: BTreeMap<String, String>,
}

impl Vector {
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("vector {:?} lacks `{key}`", self.fields.get("name")))
    }

    pub fn name(&self) -> &str {
        self.get("name")
    }

    pub fn secret(&self) -> [u8; 32] {
        unhex(self.get("client_secret")).try_into().unwrap()
    }

    pub fn server(&self) -> ServerId {
        ServerId::from_slice(&unhex(self.get("server_id"))).unwrap()
    }

    pub fn request(&self) -> Request {
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

    pub fn timestamp_ms(&self) -> u64 {
        self.get("timestamp_ms").parse().unwrap()
    }

    pub fn randomness(&self) -> SealRandomness {
        SealRandomness {
            nonce: unhex(self.get("nonce")).try_into().unwrap(),
            padding: self.get("padding").parse().unwrap(),
        }
    }

    pub fn knock(&self) -> Vec<u8> {
        unhex(self.get("knock"))
    }
}

/// The first ```` ```test-vectors ```` block of PROTOCOL.md, fences included.
pub fn block() -> &'static str {
    let start = PROTOCOL_MD
        .find(OPENING)
        .expect("no test-vectors block in PROTOCOL.md");
    let body = &PROTOCOL_MD[start + OPENING.len()..];
    let end = body.find(CLOSING).expect("unterminated test-vectors block");
    &PROTOCOL_MD[start..start + OPENING.len() + end + CLOSING.len()]
}

/// The paragraphs of [`block`].
pub fn vectors() -> Vec<Vector> {
    let block = block();
    let body = &block[OPENING.len()..block.len() - CLOSING.len()];
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

/// The block, fences included, with every output recomputed from the inputs
/// of `vectors`: the crate seals, the independent implementation of the
/// specification in `spec` gives the intermediate values.
pub fn render(vectors: &[Vector]) -> String {
    let mut out = String::from(OPENING);
    for (i, v) in vectors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
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
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        for key in INPUTS {
            line(key, v.get(key));
        }
        line("aead_key", &hex(&aead_key));
        line("hint_key", &hex(&hint_key));
        line("hint", &hex(&sealed[..8]));
        line("plaintext", &hex(&plaintext));
        line("length", &sealed.len().to_string());
        line("knock", &hex(&sealed));
    }
    out.push_str(CLOSING);
    out
}
