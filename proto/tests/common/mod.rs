//! Helpers shared by the integration tests: fixed keys, proptest strategies, a
//! small deterministic PRNG, and an independent implementation of the wire
//! format written from docs/PROTOCOL.md (not from src/), so that tests can
//! check the code against the specification and forge authentic plaintexts.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use knock_proto::{
    seal, ClientSecret, KnockKeys, PortSpec, Request, SealRandomness, ServerId, Transport,
    MAX_PORTS, NONCE_LEN,
};
use proptest::prelude::*;

pub mod vectors;

pub const SERVER: ServerId = ServerId([0x5e; 16]);
pub const OTHER_SERVER: ServerId = ServerId([0x0e; 16]);
/// 2023-11-14T22:13:20Z, in ms.
pub const T0: u64 = 1_700_000_000_000;
pub const WINDOW_MS: u64 = 30_000;

pub fn secret(seed: u8) -> ClientSecret {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    ClientSecret::from_bytes(bytes)
}

pub fn keys(seed: u8) -> KnockKeys {
    secret(seed).derive()
}

pub fn simple_request() -> Request {
    Request {
        ports: vec![PortSpec::tcp(4992)],
        duration_s: 0,
        bound_addr: None,
    }
}

pub fn randomness(rng: &mut SplitMix) -> SealRandomness {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce);
    SealRandomness {
        nonce,
        padding: rng.next_u64() as u8,
    }
}

pub fn seal_simple(keys: &KnockKeys, timestamp_ms: u64, rng: &mut SplitMix) -> Vec<u8> {
    seal(
        keys,
        &SERVER,
        &simple_request(),
        timestamp_ms,
        &randomness(rng),
    )
    .unwrap()
}

/// splitmix64: deterministic, so statistical tests give the same answer on
/// every run.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

// ---- proptest strategies ------------------------------------------------

pub fn port_spec() -> impl Strategy<Value = PortSpec> {
    (any::<bool>(), 1..=u16::MAX).prop_map(|(tcp, port)| PortSpec {
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        port,
    })
}

pub fn bound_addr() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        Just(None),
        any::<[u8; 4]>().prop_map(|a| Some(IpAddr::V4(Ipv4Addr::from(a)))),
        any::<[u8; 16]>().prop_map(|a| Some(IpAddr::V6(Ipv6Addr::from(a)))),
    ]
}

pub fn request() -> impl Strategy<Value = Request> {
    (
        proptest::collection::vec(port_spec(), 1..=MAX_PORTS),
        any::<u32>(),
        bound_addr(),
    )
        .prop_map(|(ports, duration_s, bound_addr)| Request {
            ports,
            duration_s,
            bound_addr,
        })
}

pub fn seal_randomness() -> impl Strategy<Value = SealRandomness> {
    (any::<[u8; NONCE_LEN]>(), any::<u8>())
        .prop_map(|(nonce, padding)| SealRandomness { nonce, padding })
}

// ---- the specification, reimplemented -----------------------------------

pub mod spec {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
    use ring::{hkdf, hmac};
    use std::net::IpAddr;

    use knock_proto::Request;

    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }

    fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        prk.expand(&[info], Len32).unwrap().fill(&mut out).unwrap();
        out
    }

    /// (aead key, hint key) as docs/PROTOCOL.md "Key derivation" describes.
    pub fn derive(secret: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"knock/v1").extract(secret);
        (
            expand(&prk, b"knock/v1 aead"),
            expand(&prk, b"knock/v1 hint"),
        )
    }

    /// The hint for the 30 s slot holding `timestamp_ms`.
    pub fn hint(hint_key: &[u8; 32], timestamp_ms: u64) -> [u8; 8] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, hint_key);
        let mut msg = b"knock/v1 slot".to_vec();
        msg.extend_from_slice(&(timestamp_ms / 30_000).to_be_bytes());
        let tag = hmac::sign(&key, &msg);
        tag.as_ref()[..8].try_into().unwrap()
    }

    /// The plaintext table of docs/PROTOCOL.md.
    pub fn plaintext(
        request: &Request,
        server_id: &[u8; 16],
        timestamp_ms: u64,
        padding: usize,
    ) -> Vec<u8> {
        let mut p = vec![1u8];
        p.push(match request.bound_addr {
            None => 0,
            Some(IpAddr::V4(_)) => 1,
            Some(IpAddr::V6(_)) => 3,
        });
        p.extend_from_slice(&timestamp_ms.to_be_bytes());
        p.extend_from_slice(server_id);
        p.extend_from_slice(&request.duration_s.to_be_bytes());
        p.push(request.ports.len() as u8);
        for spec in &request.ports {
            p.push(spec.transport.ip_proto());
            p.extend_from_slice(&spec.port.to_be_bytes());
        }
        match request.bound_addr {
            None => {}
            Some(IpAddr::V4(a)) => p.extend_from_slice(&a.octets()),
            Some(IpAddr::V6(a)) => p.extend_from_slice(&a.octets()),
        }
        // Padded to the longest request (16 ports, an IPv6 address: 95
        // bytes), then by `padding` more.
        p.resize(p.len().max(95) + padding, 0);
        p
    }

    /// `hint || nonce || XChaCha20-Poly1305(aead key, nonce, aad = hint, plaintext)`.
    pub fn seal_plaintext(
        aead_key: &[u8; 32],
        hint: &[u8; 8],
        nonce: &[u8; 24],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(aead_key));
        let mut body = plaintext.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), hint, &mut body)
            .unwrap();
        let mut out = hint.to_vec();
        out.extend_from_slice(nonce);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        out
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length: {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Does `haystack` contain `needle` as a contiguous run?
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
