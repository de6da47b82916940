//! What the fuzz targets share: clients and servers built from the test
//! vectors of docs/PROTOCOL.md (so that the seed corpus holds knocks that
//! really open, in both modes), the server's open path, and the
//! specification's sealing, reimplemented.

use std::net::IpAddr;
use std::sync::OnceLock;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use knock_proto::{
    open, ClientIdentity, ClientPublicKey, ClientSecret, HintIndex, IdentitySeed, KnockBytes, Mode,
    OpenedKnock, PairKeys, PairPrk, PortSpec, Request, ServerId, ServerPublicKey, ServerSecretKey,
    SignatureError, REQUEST_LEN,
};
use ring::{hkdf, hmac};

pub const WINDOW_MS: u64 = 30_000;

const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

/// One client of the test vectors, in its mode.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub mode: Mode,
    /// Shared-key: the secret.
    pub secret: Option<ClientSecret>,
    /// Public-key: the identity (for sealing) and its public key (what the
    /// server's entry holds).
    pub identity: Option<ClientIdentity>,
    pub public: Option<ClientPublicKey>,
}

/// A server as one vector describes it: its identity, its key pair, its
/// clock, and its entry for every client of the vectors.
#[derive(Debug)]
pub struct Server {
    pub id: ServerId,
    pub key: ServerSecretKey,
    pub public: ServerPublicKey,
    pub now_ms: u64,
    /// The pair keys of each client (same order as `World::clients`) with
    /// this server, as the server computes them.
    pub pairs: Vec<PairPrk>,
    pub keys: Vec<PairKeys>,
    pub index: HintIndex<usize>,
}

#[derive(Debug)]
pub struct World {
    /// One per distinct key of the vectors, in the order they first appear.
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

fn bytes32(text: &str) -> Option<[u8; 32]> {
    unhex(text).try_into().ok()
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

/// The server's key of a vector: `server_secret` for a public-key vector; a
/// fixed key for a shared-key one (its public-key clients are then the
/// other vectors' identities, enrolled there too).
fn server_key(server_secret: &str) -> ServerSecretKey {
    ServerSecretKey::from_bytes(bytes32(server_secret).unwrap_or([0x5e; 32]))
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
            let Some(id) = ServerId::from_slice(&unhex(get("server_id"))) else {
                continue;
            };
            let Ok(now_ms) = get("timestamp_ms").parse::<u64>() else {
                continue;
            };
            let name = get("name").to_owned();
            servers_at.push((id, server_key(get("server_secret")), now_ms));
            if let Some(secret) = bytes32(get("client_secret")) {
                // One key is one client: a server refuses two entries with
                // the same key, and the vectors enrol one identity twice.
                if clients
                    .iter()
                    .any(|c: &Client| c.secret.as_ref().map(|s| s.expose()) == Some(&secret))
                {
                    continue;
                }
                clients.push(Client {
                    name,
                    mode: Mode::Shared,
                    secret: Some(ClientSecret::from_bytes(secret)),
                    identity: None,
                    public: None,
                });
            } else if let Some(seed) = bytes32(get("identity_seed")) {
                let identity = ClientIdentity::from_seed(&IdentitySeed::from_bytes(seed));
                if clients.iter().any(|c| c.public == Some(identity.public())) {
                    continue;
                }
                clients.push(Client {
                    name,
                    mode: Mode::Public,
                    secret: None,
                    public: Some(identity.public()),
                    identity: Some(identity),
                });
            } else {
                servers_at.pop();
            }
        }
        assert!(clients.len() >= 6, "docs/PROTOCOL.md lost its test vectors");
        let servers = servers_at
            .into_iter()
            .map(|(id, key, now_ms)| {
                let pairs: Vec<PairPrk> = clients
                    .iter()
                    .map(|c| match (&c.secret, &c.public) {
                        (Some(secret), _) => PairPrk::shared(secret, &id),
                        (None, Some(public)) => key
                            .pair_prk(public, &id)
                            .expect("the vectors' identities are valid"),
                        (None, None) => unreachable!("every client has a key"),
                    })
                    .collect();
                let keys: Vec<PairKeys> = pairs.iter().map(PairKeys::from_prk).collect();
                let index = HintIndex::build(keys.iter().enumerate(), now_ms, WINDOW_MS);
                Server {
                    id,
                    public: key.public(),
                    key,
                    now_ms,
                    pairs,
                    keys,
                    index,
                }
            })
            .collect();
        World { clients, servers }
    })
}

/// What the server's path made of a datagram that opened.
#[derive(Debug)]
pub struct Opened<'w> {
    pub index: usize,
    pub client: &'w Client,
    pub keys: &'w PairKeys,
    pub knock: OpenedKnock,
    /// Public-key: the signature check (the server's last step); shared-key:
    /// `Ok`.
    pub signature: Result<(), SignatureError>,
}

/// The server's path up to the replay guard, and the signature: length,
/// hint, one AEAD in the mode of the entry the hint names, and for a
/// public-key client the signature against its enrolled key.
pub fn open_path<'w>(world: &'w World, server: &'w Server, datagram: &[u8]) -> Option<Opened<'w>> {
    let knock = KnockBytes::parse(datagram).ok()?;
    let index = *server.index.lookup(knock.hint())?;
    let client = world.clients.get(index)?;
    let keys = server.keys.get(index)?;
    let opened = open(keys, client.mode, &knock).ok()?;
    let signature = match &client.public {
        Some(public) => opened.verify_signature(public, &server.public, &server.id),
        None => Ok(()),
    };
    Some(Opened {
        index,
        client,
        keys,
        knock: opened,
        signature,
    })
}

// ---- the specification, reimplemented (as in proto/tests/common) ---------

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, prk);
    let mut out = [0u8; 32];
    let infos = [info];
    if let Ok(okm) = prk.expand(&infos, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// (aead key, hint key) of a pair key (docs/PROTOCOL.md, "Key schedule").
pub fn subkeys(pair_prk: &PairPrk) -> ([u8; 32], [u8; 32]) {
    (
        expand(pair_prk.expose(), b"knock/v2 aead"),
        expand(pair_prk.expose(), b"knock/v2 hint"),
    )
}

pub fn hint(hint_key: &[u8; 32], timestamp_ms: u64) -> [u8; 8] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, hint_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"knock/v2 slot");
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

/// The canonical request block of a request (docs/PROTOCOL.md, "The
/// plaintext"): 79 bytes.
pub fn request_block(request: &Request, signed: bool, timestamp_ms: u64) -> Vec<u8> {
    let mut p = vec![2u8];
    let bound = match request.bound_addr {
        None => 0,
        Some(IpAddr::V4(_)) => 1,
        Some(IpAddr::V6(_)) => 3,
    };
    p.push(bound | if signed { 4 } else { 0 });
    p.extend_from_slice(&timestamp_ms.to_be_bytes());
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
    p.resize(REQUEST_LEN, 0);
    p
}
