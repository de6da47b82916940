//! The test vectors of docs/PROTOCOL.md: read from the document itself (the
//! fenced block tagged `test-vectors`), and rendered anew from their inputs.
//!
//! Each vector is a paragraph of `key: value` lines, in one of two modes:
//!
//! * shared-key: the inputs are `name`, `client_secret`, `server_id`,
//!   `ports`, `duration_s`, `bound_addr`, `timestamp_ms`, `nonce` and
//!   `padding`; the outputs `pair_prk`, `hint_key`, `aead_key`, `replay_id`,
//!   `hint`, `plaintext`, `length` and `knock`;
//! * public-key: `identity_seed` and `server_secret` instead of
//!   `client_secret`; the outputs add `client_ed25519_pk`,
//!   `client_x25519_pk`, `public_line`, `server_public_key`, `dh` (before
//!   `pair_prk`) and `signed_message`, `signature` (before `plaintext`).
//!
//! [`render`] is the generator behind `cargo run -p xtask -- vectors` (through
//! `proto/examples/vectors.rs`); `proto/tests/vectors.rs` checks that the
//! document holds exactly what it prints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use knock_proto::{
    seal, ClientIdentity, ClientPublicKey, ClientSecret, IdentitySeed, Mode, PairKeys, PairPrk,
    PortSpec, Request, SealRandomness, Sealer, ServerId, ServerSecretKey,
};

use super::{hex, spec, unhex};

pub const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

const OPENING: &str = "```test-vectors\n";
const CLOSING: &str = "```\n";

/// The inputs of a shared-key vector, in the order the block lists them.
const SHARED_INPUTS: [&str; 9] = [
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

/// The inputs of a public-key vector, in the order the block lists them.
const PUBLIC_INPUTS: [&str; 10] = [
    "name",
    "identity_seed",
    "server_secret",
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

    /// Public-key if the vector has an `identity_seed`.
    pub fn mode(&self) -> Mode {
        if self.fields.contains_key("identity_seed") {
            Mode::Public
        } else {
            Mode::Shared
        }
    }

    pub fn secret(&self) -> [u8; 32] {
        unhex(self.get("client_secret")).try_into().unwrap()
    }

    pub fn identity_seed(&self) -> [u8; 32] {
        unhex(self.get("identity_seed")).try_into().unwrap()
    }

    pub fn server_secret(&self) -> [u8; 32] {
        unhex(self.get("server_secret")).try_into().unwrap()
    }

    pub fn identity(&self) -> ClientIdentity {
        ClientIdentity::from_seed(&IdentitySeed::from_bytes(self.identity_seed()))
    }

    pub fn server_key(&self) -> ServerSecretKey {
        ServerSecretKey::from_bytes(self.server_secret())
    }

    /// The pair keys, as the crate derives them (on the client's side).
    pub fn pair_keys(&self) -> PairKeys {
        match self.mode() {
            Mode::Shared => {
                PairKeys::shared(&ClientSecret::from_bytes(self.secret()), &self.server())
            }
            Mode::Public => PairKeys::from_prk(
                &self
                    .identity()
                    .pair_prk(&self.server_key().public(), &self.server())
                    .unwrap(),
            ),
        }
    }

    /// The pair key, as the client derives it: from the shared secret, or
    /// from the identity and the server's public key.
    pub fn client_pair_prk(&self) -> PairPrk {
        match self.mode() {
            Mode::Shared => {
                PairPrk::shared(&ClientSecret::from_bytes(self.secret()), &self.server())
            }
            Mode::Public => self
                .identity()
                .pair_prk(&self.server_key().public(), &self.server())
                .unwrap(),
        }
    }

    /// The pair key, as the server derives it: from the shared secret in the
    /// entry, or from its secret key and the enrolled public line (read
    /// back from the document's `public_line`).
    pub fn server_pair_prk(&self) -> PairPrk {
        match self.mode() {
            Mode::Shared => {
                PairPrk::shared(&ClientSecret::from_bytes(self.secret()), &self.server())
            }
            Mode::Public => {
                let client = ClientPublicKey::parse_line(self.get("public_line")).unwrap();
                client.validate().unwrap();
                self.server_key().pair_prk(&client, &self.server()).unwrap()
            }
        }
    }

    /// The pair keys, as the server derives them.
    pub fn server_pair_keys(&self) -> PairKeys {
        PairKeys::from_prk(&self.server_pair_prk())
    }

    /// The knock, as the crate seals it.
    pub fn sealed(&self) -> Vec<u8> {
        let keys = self.pair_keys();
        let identity = self.identity_if_public();
        let server_public = self.server_key_if_public().map(|k| k.public());
        let server_id = self.server();
        let sealer = match (&identity, &server_public) {
            (Some(identity), Some(server)) => Sealer::Public {
                identity,
                server,
                server_id: &server_id,
            },
            _ => Sealer::Shared,
        };
        seal(
            &keys,
            &sealer,
            &self.request(),
            self.timestamp_ms(),
            &self.randomness(),
        )
        .unwrap()
    }

    fn identity_if_public(&self) -> Option<ClientIdentity> {
        (self.mode() == Mode::Public).then(|| self.identity())
    }

    fn server_key_if_public(&self) -> Option<ServerSecretKey> {
        (self.mode() == Mode::Public).then(|| self.server_key())
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
    parse(block())
}

/// The paragraphs of a block like [`block`], fences included.
pub fn parse(block: &str) -> Vec<Vector> {
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
        let sealed = v.sealed();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        let padding = usize::from(v.randomness().padding) % 64;
        let server_id = v.server().0;
        let hint: [u8; 8] = sealed[..8].try_into().unwrap();
        let nonce = v.randomness().nonce;
        match v.mode() {
            Mode::Shared => {
                for key in SHARED_INPUTS {
                    line(key, v.get(key));
                }
                let pair_prk = spec::shared_pair_prk(&v.secret(), &server_id);
                let (hint_key, aead_key, replay_id) = spec::subkeys(&pair_prk);
                line("pair_prk", &hex(&pair_prk));
                line("hint_key", &hex(&hint_key));
                line("aead_key", &hex(&aead_key));
                line("replay_id", &hex(&replay_id));
                line("hint", &hex(&hint));
                let plaintext = spec::shared_plaintext(&v.request(), v.timestamp_ms(), padding);
                line("plaintext", &hex(&plaintext));
            }
            Mode::Public => {
                for key in PUBLIC_INPUTS {
                    line(key, v.get(key));
                }
                let (ed_seed, x_sk, ed_pk, x_pk) = spec::identity(&v.identity_seed());
                let s_pk = spec::x25519(&v.server_secret(), &x25519_dalek::X25519_BASEPOINT_BYTES);
                let dh = spec::x25519(&x_sk, &s_pk);
                let pair_prk = spec::public_pair_prk(&dh, &ed_pk, &x_pk, &s_pk, &server_id);
                let (hint_key, aead_key, replay_id) = spec::subkeys(&pair_prk);
                line("client_ed25519_pk", &hex(&ed_pk));
                line("client_x25519_pk", &hex(&x_pk));
                line("public_line", &spec::public_line(&ed_pk, &x_pk));
                line("server_public_key", &hex(&s_pk));
                line("dh", &hex(&dh));
                line("pair_prk", &hex(&pair_prk));
                line("hint_key", &hex(&hint_key));
                line("aead_key", &hex(&aead_key));
                line("replay_id", &hex(&replay_id));
                line("hint", &hex(&hint));
                let block = spec::request_block(&v.request(), true, v.timestamp_ms());
                let message = spec::signed_message(&s_pk, &server_id, &hint, &nonce, &block);
                let signature = spec::sign(&ed_seed, &message);
                line("signed_message", &hex(&message));
                line("signature", &hex(&signature));
                let plaintext = spec::plaintext(&block, &signature, padding);
                line("plaintext", &hex(&plaintext));
            }
        }
        line("length", &sealed.len().to_string());
        line("knock", &hex(&sealed));
    }
    out.push_str(CLOSING);
    out
}
