//! Helpers shared by the integration tests: fixed keys and servers, clients
//! of both modes, proptest strategies, a small deterministic PRNG, and an
//! independent implementation of the key schedule and the wire format written
//! from the specification (docs/PROTOCOL.md and the issue 13 design), not
//! from src/, so that tests can check the code against it and forge authentic
//! plaintexts.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use knock_proto::{
    open, seal, ClientIdentity, ClientPublicKey, ClientSecret, HintIndex, IdentitySeed, KnockBytes,
    Mode, OpenError, OpenedKnock, PairKeys, PairPrk, ParseError, PortSpec, Request, SealError,
    SealRandomness, Sealer, ServerId, ServerPublicKey, ServerSecretKey, Transport, MAX_PORTS,
    NONCE_LEN,
};
use proptest::prelude::*;

pub mod vectors;

pub const SERVER: ServerId = ServerId([0x5e; 16]);
pub const OTHER_SERVER: ServerId = ServerId([0x0e; 16]);
/// 2023-11-14T22:13:20Z, in ms.
pub const T0: u64 = 1_700_000_000_000;
pub const WINDOW_MS: u64 = 30_000;
pub const MODES: [Mode; 2] = [Mode::Shared, Mode::Public];

fn bytes32(seed: u8, salt: u8) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = seed
            .wrapping_mul(31)
            .wrapping_add(i as u8)
            .wrapping_add(salt.wrapping_mul(101));
    }
    bytes
}

pub fn secret(seed: u8) -> ClientSecret {
    ClientSecret::from_bytes(bytes32(seed, 0))
}

/// The shared-key pair keys of client `seed` on [`SERVER`].
pub fn keys(seed: u8) -> PairKeys {
    PairKeys::shared(&secret(seed), &SERVER)
}

pub fn identity_seed(seed: u8) -> IdentitySeed {
    IdentitySeed::from_bytes(bytes32(seed, 1))
}

pub fn identity(seed: u8) -> ClientIdentity {
    ClientIdentity::from_seed(&identity_seed(seed))
}

/// A server: its identity and its key pair.
#[derive(Debug, Clone)]
pub struct Server {
    pub id: ServerId,
    pub key: ServerSecretKey,
    pub public: ServerPublicKey,
}

impl Server {
    pub fn new(id: ServerId, key_seed: u8) -> Self {
        let key = ServerSecretKey::from_bytes(bytes32(key_seed, 2));
        let public = key.public();
        Self { id, key, public }
    }
}

/// [`SERVER`] with its key.
pub fn server() -> Server {
    Server::new(SERVER, 0x5e)
}

/// [`OTHER_SERVER`] with its key.
pub fn other_server() -> Server {
    Server::new(OTHER_SERVER, 0x0e)
}

/// One client of one server, in either mode: what the client seals with,
/// and what the server's entry holds.
#[derive(Debug)]
pub struct Client {
    pub mode: Mode,
    pub keys: PairKeys,
    /// Shared-key mode: the secret.
    pub secret: Option<ClientSecret>,
    /// Public-key mode: the identity and its public key.
    pub identity: Option<ClientIdentity>,
    pub public: Option<ClientPublicKey>,
}

impl Client {
    /// Client `seed` of `server` in `mode`. In public-key mode the pair key
    /// is computed on both sides and must agree.
    pub fn new(mode: Mode, seed: u8, server: &Server) -> Self {
        match mode {
            Mode::Shared => {
                let secret = secret(seed);
                Self {
                    mode,
                    keys: PairKeys::shared(&secret, &server.id),
                    secret: Some(secret),
                    identity: None,
                    public: None,
                }
            }
            Mode::Public => {
                let identity = identity(seed);
                let public = identity.public();
                let client_side = identity.pair_prk(&server.public, &server.id).unwrap();
                let server_side = server.key.pair_prk(&public, &server.id).unwrap();
                assert_eq!(client_side, server_side);
                Self {
                    mode,
                    keys: PairKeys::from_prk(&client_side),
                    secret: None,
                    identity: Some(identity),
                    public: Some(public),
                }
            }
        }
    }

    /// The pair key, as the spec computes it (for forging).
    pub fn pair_prk(&self, server: &Server) -> PairPrk {
        match self.mode {
            Mode::Shared => PairPrk::shared(self.secret.as_ref().unwrap(), &server.id),
            Mode::Public => server
                .key
                .pair_prk(self.public.as_ref().unwrap(), &server.id)
                .unwrap(),
        }
    }

    pub fn sealer<'a>(&'a self, server: &'a Server) -> Sealer<'a> {
        match self.mode {
            Mode::Shared => Sealer::Shared,
            Mode::Public => Sealer::Public {
                identity: self.identity.as_ref().unwrap(),
                server: &server.public,
                server_id: &server.id,
            },
        }
    }

    pub fn seal(
        &self,
        server: &Server,
        request: &Request,
        timestamp_ms: u64,
        randomness: &SealRandomness,
    ) -> Result<Vec<u8>, SealError> {
        seal(
            &self.keys,
            &self.sealer(server),
            request,
            timestamp_ms,
            randomness,
        )
    }

    pub fn seal_simple(&self, server: &Server, timestamp_ms: u64, rng: &mut SplitMix) -> Vec<u8> {
        self.seal(server, &simple_request(), timestamp_ms, &randomness(rng))
            .unwrap()
    }
}

/// Clients `0..n` of `server`, every other one in public-key mode, and the
/// index the server builds of them at `now_ms`.
pub fn mixed_clients(n: u8, server: &Server, now_ms: u64) -> (Vec<Client>, HintIndex<u8>) {
    let all: Vec<Client> = (0..n)
        .map(|i| Client::new(MODES[usize::from(i % 2)], i, server))
        .collect();
    let index = HintIndex::build(
        all.iter().enumerate().map(|(i, c)| (i as u8, &c.keys)),
        now_ms,
        WINDOW_MS,
    );
    (all, index)
}

/// What the server does with a datagram up to (not including) the replay
/// guard: the outcome, or the first step that refused it.
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // a test helper, matched by value
pub enum Verdict {
    Parse(ParseError),
    UnknownHint,
    Open(OpenError),
    Opened(u8, OpenedKnock),
}

pub fn verdict(all: &[Client], index: &HintIndex<u8>, datagram: &[u8]) -> Verdict {
    let knock = match KnockBytes::parse(datagram) {
        Ok(k) => k,
        Err(e) => return Verdict::Parse(e),
    };
    let Some(&client) = index.lookup(knock.hint()) else {
        return Verdict::UnknownHint;
    };
    let entry = &all[usize::from(client)];
    match open(&entry.keys, entry.mode, &knock) {
        Ok(opened) => Verdict::Opened(client, opened),
        Err(e) => Verdict::Open(e),
    }
}

pub fn simple_request() -> Request {
    Request {
        ports: vec![PortSpec::tcp(4992)],
        duration_s: 0,
        bound_addr: None,
    }
}

/// The longest request: 16 ports, bound to an IPv6 address.
pub fn longest_request() -> Request {
    Request {
        ports: (1..=MAX_PORTS as u16)
            .map(|p| PortSpec {
                transport: if p % 2 == 0 {
                    Transport::Udp
                } else {
                    Transport::Tcp
                },
                port: 60_000 + p,
            })
            .collect(),
        duration_s: u32::MAX,
        bound_addr: Some("2001:db8::7".parse().unwrap()),
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

/// A shared-key knock of `keys` for [`SERVER`].
pub fn seal_simple(keys: &PairKeys, timestamp_ms: u64, rng: &mut SplitMix) -> Vec<u8> {
    seal(
        keys,
        &Sealer::Shared,
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

    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.fill(&mut out);
        out
    }
}

// ---- proptest strategies ------------------------------------------------

pub fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Shared), Just(Mode::Public)]
}

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
    use ed25519_dalek::{Signer, SigningKey};
    use ring::{digest, hkdf, hmac};
    use std::net::IpAddr;

    use knock_proto::Request;

    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }

    /// HKDF-Extract (RFC 5869): HMAC-SHA256 keyed with the salt.
    pub fn extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
        tag.as_ref().try_into().unwrap()
    }

    /// HKDF-Expand (RFC 5869) to 32 bytes.
    pub fn expand(prk: &[u8; 32], info: &[u8]) -> [u8; 32] {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, prk);
        let mut out = [0u8; 32];
        prk.expand(&[info], Len32).unwrap().fill(&mut out).unwrap();
        out
    }

    /// The shared-key pair key.
    pub fn shared_pair_prk(secret: &[u8; 32], server_id: &[u8; 16]) -> [u8; 32] {
        let mut ikm = secret.to_vec();
        ikm.extend_from_slice(server_id);
        extract(b"knock/v2 shared-key", &ikm)
    }

    /// The public-key pair key, from the X25519 agreement.
    pub fn public_pair_prk(
        dh: &[u8; 32],
        ed_pk: &[u8; 32],
        x_pk: &[u8; 32],
        s_pk: &[u8; 32],
        server_id: &[u8; 16],
    ) -> [u8; 32] {
        let mut ikm = dh.to_vec();
        for part in [&ed_pk[..], x_pk, s_pk, server_id] {
            ikm.extend_from_slice(part);
        }
        assert_eq!(ikm.len(), 144);
        extract(b"knock/v2 public-key", &ikm)
    }

    /// (hint key, aead key, replay id) of a pair key.
    pub fn subkeys(pair_prk: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 16]) {
        (
            expand(pair_prk, b"knock/v2 hint"),
            expand(pair_prk, b"knock/v2 aead"),
            expand(pair_prk, b"knock/v2 replay id")[..16]
                .try_into()
                .unwrap(),
        )
    }

    /// (hint key, aead key) of a shared-key client on `server_id`.
    pub fn shared_keys(secret: &[u8; 32], server_id: &[u8; 16]) -> ([u8; 32], [u8; 32]) {
        let (hint, aead, _) = subkeys(&shared_pair_prk(secret, server_id));
        (hint, aead)
    }

    /// The identity's (Ed25519 seed, X25519 secret, ed_pk, x_pk).
    pub fn identity(seed: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32], [u8; 32]) {
        let id_prk = extract(b"knock/v2 identity", seed);
        let ed_seed = expand(&id_prk, b"knock/v2 identity ed25519");
        let x_sk = expand(&id_prk, b"knock/v2 identity x25519");
        let ed_pk = SigningKey::from_bytes(&ed_seed).verifying_key().to_bytes();
        let x_pk = x25519_dalek::x25519(x_sk, x25519_dalek::X25519_BASEPOINT_BYTES);
        (ed_seed, x_sk, ed_pk, x_pk)
    }

    /// X25519(k, u) (RFC 7748).
    pub fn x25519(k: &[u8; 32], u: &[u8; 32]) -> [u8; 32] {
        x25519_dalek::x25519(*k, *u)
    }

    /// RFC 8032 Ed25519 with the 32-byte seed.
    pub fn sign(ed_seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
        SigningKey::from_bytes(ed_seed).sign(message).to_bytes()
    }

    pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in parts {
            ctx.update(part);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }

    /// The public line of (ed_pk, x_pk).
    pub fn public_line(ed_pk: &[u8; 32], x_pk: &[u8; 32]) -> String {
        use base64::Engine as _;
        let check = sha256(&[b"knock/v2 public line", ed_pk, x_pk]);
        let mut payload = ed_pk.to_vec();
        payload.extend_from_slice(x_pk);
        payload.extend_from_slice(&check[..4]);
        format!(
            "knock-id1:{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
        )
    }

    /// The hint for the 30 s slot holding `timestamp_ms`.
    pub fn hint(hint_key: &[u8; 32], timestamp_ms: u64) -> [u8; 8] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, hint_key);
        let mut msg = b"knock/v2 slot".to_vec();
        msg.extend_from_slice(&(timestamp_ms / 30_000).to_be_bytes());
        let tag = hmac::sign(&key, &msg);
        tag.as_ref()[..8].try_into().unwrap()
    }

    /// The request block (79 bytes) of the plaintext table.
    pub fn request_block(request: &Request, signed: bool, timestamp_ms: u64) -> Vec<u8> {
        let mut p = vec![2u8];
        let flags = match request.bound_addr {
            None => 0,
            Some(IpAddr::V4(_)) => 1,
            Some(IpAddr::V6(_)) => 3,
        };
        p.push(flags | if signed { 4 } else { 0 });
        p.extend_from_slice(&timestamp_ms.to_be_bytes());
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
        assert!(p.len() <= 79);
        p.resize(79, 0);
        p
    }

    /// `M = "knock/v2 signature" || s_pk || server_id || hint || nonce || block`.
    pub fn signed_message(
        s_pk: &[u8; 32],
        server_id: &[u8; 16],
        hint: &[u8; 8],
        nonce: &[u8; 24],
        block: &[u8],
    ) -> Vec<u8> {
        let mut m = b"knock/v2 signature".to_vec();
        for part in [&s_pk[..], server_id, hint, nonce, block] {
            m.extend_from_slice(part);
        }
        assert_eq!(m.len(), 177);
        m
    }

    /// block(79) || auth(64) || `padding` zero bytes.
    pub fn plaintext(block: &[u8], auth: &[u8; 64], padding: usize) -> Vec<u8> {
        let mut p = block.to_vec();
        p.extend_from_slice(auth);
        p.resize(p.len() + padding, 0);
        p
    }

    /// A shared-key plaintext (auth zero).
    pub fn shared_plaintext(request: &Request, timestamp_ms: u64, padding: usize) -> Vec<u8> {
        plaintext(
            &request_block(request, false, timestamp_ms),
            &[0; 64],
            padding,
        )
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

    /// The plaintext of a knock, opened with the AEAD key (for a thief who
    /// holds it): `None` if the tag does not verify.
    pub fn open_plaintext(aead_key: &[u8; 32], datagram: &[u8]) -> Option<Vec<u8>> {
        let (hint, rest) = datagram.split_at(8);
        let (nonce, rest) = rest.split_at(24);
        let (body, tag) = rest.split_at(rest.len() - 16);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(aead_key));
        let mut body = body.to_vec();
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                hint,
                &mut body,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .ok()?;
        Some(body)
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

/// Do `a` and `b` share a run of `n` bytes anywhere?
pub fn share_a_run(a: &[u8], b: &[u8], n: usize) -> bool {
    let runs: std::collections::HashSet<&[u8]> = a.windows(n).collect();
    b.windows(n).any(|w| runs.contains(w))
}
