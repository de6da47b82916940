//! What the fuzz targets share: servers built from the test vectors of
//! docs/PROTOCOL.md (so that the seed corpus holds knocks that really open),
//! the server's open path, and the specification's sealing, reimplemented.

use std::net::IpAddr;
use std::sync::OnceLock;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use knock_proto::{
    open, ClientSecret, HintIndex, KnockBytes, KnockKeys, OpenedKnock, PortSpec, Request, ServerId,
};
use ring::{hkdf, hmac};

pub const WINDOW_MS: u64 = 30_000;

const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

/// One client of the test vectors.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub secret: [u8; 32],
    pub keys: KnockKeys,
}

/// A server as the vectors describe it: its identity and clock.
#[derive(Debug)]
pub struct Server {
    pub id: ServerId,
    pub now_ms: u64,
    pub index: HintIndex<usize>,
}

#[derive(Debug)]
pub struct World {
    pub clients: Vec<Client>,
    /// One server per vector, each knowing every client.
    pub servers: Vec<Server>,
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| text.get(2 * i..2 * i + 2))
        .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
        .collect()
}

/// The (key, value) paragraphs of the `test-vectors` block.
fn vector_fields() -> Vec<Vec<(String, String)>> {
    let Some(start) = PROTOCOL_MD.find("```test-vectors\n") else {
        return Vec::new();
    };
    let body = PROTOCOL_MD.get(start + 16..).unwrap_or("");
    let body = body.get(..body.find("```").unwrap_or(0)).unwrap_or("");
    body.split("\n\n")
        .map(|p| {
            p.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()
        })
        .collect()
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut clients = Vec::new();
        let mut servers_at = Vec::new();
        for fields in vector_fields() {
            let get = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            let Ok(secret) = <[u8; 32]>::try_from(unhex(get("client_secret"))) else {
                continue;
            };
            let Some(id) = ServerId::from_slice(&unhex(get("server_id"))) else {
                continue;
            };
            let Ok(now_ms) = get("timestamp_ms").parse::<u64>() else {
                continue;
            };
            clients.push(Client {
                name: get("name").to_owned(),
                secret,
                keys: ClientSecret::from_bytes(secret).derive(),
            });
            servers_at.push((id, now_ms));
        }
        assert!(clients.len() >= 3, "docs/PROTOCOL.md lost its test vectors");
        let servers = servers_at
            .into_iter()
            .map(|(id, now_ms)| Server {
                id,
                now_ms,
                index: HintIndex::build(
                    clients.iter().enumerate().map(|(i, c)| (i, &c.keys)),
                    now_ms,
                    WINDOW_MS,
                ),
            })
            .collect();
        World { clients, servers }
    })
}

/// The server's path up to the replay guard: length, hint, one AEAD.
pub fn open_path<'w>(
    world: &'w World,
    server: &Server,
    datagram: &[u8],
) -> Option<(&'w Client, OpenedKnock)> {
    let knock = KnockBytes::parse(datagram).ok()?;
    let client = world.clients.get(*server.index.lookup(knock.hint())?)?;
    let opened = open(&client.keys, &server.id, &knock).ok()?;
    Some((client, opened))
}

// ---- the specification, reimplemented (as in proto/tests/common) ---------

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let infos = [info];
    if let Ok(okm) = prk.expand(&infos, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// (aead key, hint key).
pub fn derive(secret: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"knock/v1").extract(secret);
    (
        expand(&prk, b"knock/v1 aead"),
        expand(&prk, b"knock/v1 hint"),
    )
}

pub fn hint(hint_key: &[u8; 32], timestamp_ms: u64) -> [u8; 8] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, hint_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"knock/v1 slot");
    ctx.update(&(timestamp_ms / 30_000).to_be_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 8];
    out.copy_from_slice(&tag.as_ref()[..8]);
    out
}

/// `hint || nonce || AEAD(plaintext)`, exactly as a client with the key would.
pub fn seal_plaintext(
    aead_key: &[u8; 32],
    hint: &[u8; 8],
    nonce: &[u8; 24],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(aead_key));
    let mut body = plaintext.to_vec();
    let Ok(tag) = cipher.encrypt_in_place_detached(XNonce::from_slice(nonce), hint, &mut body)
    else {
        return Vec::new();
    };
    let mut out = hint.to_vec();
    out.extend_from_slice(nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

/// The canonical plaintext of a request (docs/PROTOCOL.md, "The plaintext"),
/// with `padding` random bytes beyond the length of the longest request.
pub fn plaintext(
    request: &Request,
    server: &ServerId,
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
    p.extend_from_slice(&server.0);
    p.extend_from_slice(&request.duration_s.to_be_bytes());
    p.push(request.ports.len() as u8);
    for PortSpec { transport, port } in &request.ports {
        p.push(transport.ip_proto());
        p.extend_from_slice(&port.to_be_bytes());
    }
    match request.bound_addr {
        None => {}
        Some(IpAddr::V4(a)) => p.extend_from_slice(&a.octets()),
        Some(IpAddr::V6(a)) => p.extend_from_slice(&a.octets()),
    }
    // Padded to the longest request (16 ports, an IPv6 address: 95 bytes),
    // then by `padding` more.
    p.resize(p.len().max(95) + padding, 0);
    p
}
