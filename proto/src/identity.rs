//! Public-key mode: the client's identity, the server's key pair, and the
//! pair key they agree on.
//!
//! ```text
//! client identity: seed, 32 random bytes
//!   id_prk   = Extract("knock/v2 identity", seed)
//!   ed_seed  = Expand(id_prk, "knock/v2 identity ed25519", 32)  Ed25519 signing key (RFC 8032); ed_pk
//!   x_sk     = Expand(id_prk, "knock/v2 identity x25519", 32)   X25519 secret (RFC 7748); x_pk = X25519(x_sk, 9)
//! server key: s_sk, 32 random bytes (X25519); s_pk = X25519(s_sk, 9)
//!
//! dh       = X25519(x_sk, s_pk) = X25519(s_sk, x_pk)        all-zero: refused
//! pair_prk = Extract("knock/v2 public-key", dh || ed_pk || x_pk || s_pk || server_id)
//! ```
//!
//! The pair key is expanded like a shared-key pair key (see `keys.rs`). It
//! lets the server recognise and open the client's knocks, but not forge
//! them: inside the AEAD, a public-key knock is signed with the client's
//! Ed25519 key over the server's public key and identity (see `wire.rs`).
//!
//! The public line that carries a client's public key from client to server:
//!
//! ```text
//! "knock-id1:" || base64url-nopad(ed_pk(32) || x_pk(32) || SHA-256("knock/v2 public line" || ed_pk || x_pk)[..4])
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use ring::{digest, hkdf};
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::KeyError;
use crate::keys::{expand, extract, PairPrk, ServerId};

/// Length of an identity seed.
pub const IDENTITY_SEED_LEN: usize = 32;
/// Length of a server secret key.
pub const SERVER_SECRET_KEY_LEN: usize = 32;
/// Length of a server public key.
pub const SERVER_PUBLIC_KEY_LEN: usize = 32;
/// What every public line starts with.
pub const PUBLIC_LINE_PREFIX: &str = "knock-id1:";
/// Length of a public line: the prefix and 91 characters of base64url.
pub const PUBLIC_LINE_LEN: usize = PUBLIC_LINE_PREFIX.len() + LINE_BASE64_LEN;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

const LINE_PAYLOAD_LEN: usize = 32 + 32 + LINE_CHECK_LEN;
const LINE_CHECK_LEN: usize = 4;
/// `ceil(68 * 4 / 3)`.
const LINE_BASE64_LEN: usize = 91;

const SALT_IDENTITY: &[u8] = b"knock/v2 identity";
const INFO_ED25519: &[u8] = b"knock/v2 identity ed25519";
const INFO_X25519: &[u8] = b"knock/v2 identity x25519";
pub(crate) const SALT_PUBLIC: &[u8] = b"knock/v2 public-key";
const LABEL_LINE_CHECK: &[u8] = b"knock/v2 public line";
const LABEL_CACHE_CLIENT: &[u8] = b"knock/v2 pair cache client";
const LABEL_CACHE_SERVER: &[u8] = b"knock/v2 pair cache server";

/// The secret of a client identity: 32 random bytes, from which its signing
/// and agreement keys are derived. Zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct IdentitySeed([u8; IDENTITY_SEED_LEN]);

impl IdentitySeed {
    /// A seed from fresh randomness (a new identity) or from the identity
    /// file.
    pub fn from_bytes(bytes: [u8; IDENTITY_SEED_LEN]) -> Self {
        Self(bytes)
    }

    /// Accepts exactly [`IDENTITY_SEED_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The raw seed, for writing it to the identity file.
    pub fn expose(&self) -> &[u8; IDENTITY_SEED_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for IdentitySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentitySeed(<redacted>)")
    }
}

/// A client's identity, ready to use: its Ed25519 signing key and its X25519
/// agreement key (both zeroized on drop), and their public halves.
pub struct ClientIdentity {
    signing: SigningKey,
    agreement: StaticSecret,
    public: ClientPublicKey,
}

impl ClientIdentity {
    /// Derives both keys from the seed.
    pub fn from_seed(seed: &IdentitySeed) -> Self {
        let id_prk = Zeroizing::new(extract(SALT_IDENTITY, &[&seed.0]));
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, id_prk.as_ref());
        let mut ed_seed = Zeroizing::new([0u8; 32]);
        let mut x_sk = Zeroizing::new([0u8; 32]);
        expand(&prk, INFO_ED25519, &mut ed_seed);
        expand(&prk, INFO_X25519, &mut x_sk);
        let signing = SigningKey::from_bytes(&ed_seed);
        let agreement = StaticSecret::from(*x_sk);
        let public = ClientPublicKey {
            ed25519: signing.verifying_key().to_bytes(),
            x25519: XPublicKey::from(&agreement).to_bytes(),
        };
        Self {
            signing,
            agreement,
            public,
        }
    }

    /// The public key, to be printed as a line ([`ClientPublicKey::to_line`])
    /// and enrolled on servers.
    pub fn public(&self) -> ClientPublicKey {
        self.public
    }

    /// The pair key with the server whose public key is `server` and whose
    /// identity is `server_id`. Refuses a server key of small order (the
    /// agreement would be all zero, so the pair key public).
    pub fn pair_prk(
        &self,
        server: &ServerPublicKey,
        server_id: &ServerId,
    ) -> Result<PairPrk, KeyError> {
        let dh = self.agreement.diffie_hellman(&XPublicKey::from(server.0));
        if !dh.was_contributory() {
            return Err(KeyError::LowOrderX25519);
        }
        Ok(public_pair_prk(
            dh.as_bytes(),
            &self.public,
            server,
            server_id,
        ))
    }

    /// RFC 8032 Ed25519 (deterministic).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A client's public identity: its Ed25519 key and its X25519 key. Not
/// secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientPublicKey {
    ed25519: [u8; 32],
    x25519: [u8; 32],
}

impl ClientPublicKey {
    /// The two keys as they are, unchecked (see [`Self::validate`]).
    pub fn from_bytes(ed25519: [u8; 32], x25519: [u8; 32]) -> Self {
        Self { ed25519, x25519 }
    }

    /// `ed_pk`: the compressed Ed25519 point.
    pub fn ed25519_bytes(&self) -> &[u8; 32] {
        &self.ed25519
    }

    /// `x_pk`: the X25519 u-coordinate.
    pub fn x25519_bytes(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// Reads a public line, as `knock-client identity` prints it. Leading
    /// whitespace is skipped, and whatever follows the first whitespace after
    /// the token (a comment, a name) is ignored.
    ///
    /// Cheap: it checks the form and the 4 check bytes, not the curve points,
    /// so that a server can load many entries fast. A key is validated by
    /// [`Self::validate`] (at enrolment), and by
    /// [`ServerSecretKey::pair_prk`] (when its pair key is computed).
    pub fn parse_line(line: &str) -> Result<Self, KeyError> {
        let token = line.split_whitespace().next().unwrap_or("");
        let encoded = token
            .strip_prefix(PUBLIC_LINE_PREFIX)
            .ok_or(KeyError::NotAPublicLine)?;
        let encoding = KeyError::Encoding {
            expected: LINE_BASE64_LEN,
        };
        if encoded.len() != LINE_BASE64_LEN {
            return Err(encoding);
        }
        let mut payload = [0u8; LINE_PAYLOAD_LEN];
        // The engine refuses padding and non-zero trailing bits, so every
        // key has exactly one line.
        match URL_SAFE_NO_PAD.decode_slice(encoded, &mut payload) {
            Ok(LINE_PAYLOAD_LEN) => {}
            _ => return Err(encoding),
        }
        let (keys, check) = payload.split_at(64);
        let (ed, x) = keys.split_at(32);
        let key = Self {
            ed25519: ed.try_into().map_err(|_| encoding)?,
            x25519: x.try_into().map_err(|_| encoding)?,
        };
        if key.line_check() != check {
            return Err(KeyError::Checksum);
        }
        Ok(key)
    }

    /// The public line: one token of [`PUBLIC_LINE_LEN`] characters, no
    /// spaces, safe to paste anywhere.
    pub fn to_line(&self) -> String {
        let mut payload = [0u8; LINE_PAYLOAD_LEN];
        let check = self.line_check();
        for (out, byte) in payload
            .iter_mut()
            .zip(self.ed25519.iter().chain(&self.x25519).chain(&check))
        {
            *out = *byte;
        }
        let mut line = String::with_capacity(PUBLIC_LINE_LEN);
        line.push_str(PUBLIC_LINE_PREFIX);
        URL_SAFE_NO_PAD.encode_string(payload, &mut line);
        line
    }

    /// Names this key in the server's pair-key cache:
    /// `SHA-256("knock/v2 pair cache client" || ed_pk || x_pk)[..16]`.
    pub fn fingerprint(&self) -> [u8; 16] {
        truncated_sha256(&[LABEL_CACHE_CLIENT, &self.ed25519, &self.x25519])
    }

    /// Checks the curve points: the Ed25519 key must decompress and not have
    /// small order, and the X25519 key must not be one of the points of small
    /// order (with which every agreement is all zero). This costs a point
    /// decompression (some µs); [`ServerSecretKey::pair_prk`] does it too.
    pub fn validate(&self) -> Result<(), KeyError> {
        self.verifying_key().map_err(|_| KeyError::BadEd25519)?;
        if is_small_order_x25519(&self.x25519) {
            return Err(KeyError::LowOrderX25519);
        }
        Ok(())
    }

    /// The Ed25519 key, decompressed and checked not to be weak.
    pub(crate) fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        match VerifyingKey::from_bytes(&self.ed25519) {
            Ok(key) if !key.is_weak() => Ok(key),
            _ => Err(KeyError::BadEd25519),
        }
    }

    fn line_check(&self) -> [u8; LINE_CHECK_LEN] {
        truncated_sha256(&[LABEL_LINE_CHECK, &self.ed25519, &self.x25519])
    }
}

impl std::fmt::Debug for ClientPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientPublicKey({})", self.to_line())
    }
}

impl std::fmt::Display for ClientPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_line())
    }
}

/// The server's static X25519 secret (`server.key`). Zeroized on drop.
#[derive(Clone)]
pub struct ServerSecretKey {
    secret: StaticSecret,
    public: ServerPublicKey,
}

impl ServerSecretKey {
    /// A key from fresh randomness (a new server key) or from `server.key`.
    /// Any 32 bytes are a key (X25519 clamps them when it uses them).
    pub fn from_bytes(bytes: [u8; SERVER_SECRET_KEY_LEN]) -> Self {
        let mut bytes = Zeroizing::new(bytes);
        let secret = StaticSecret::from(*bytes);
        bytes.zeroize();
        let public = ServerPublicKey(XPublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The raw key, for writing it to `server.key`.
    pub fn expose(&self) -> &[u8; SERVER_SECRET_KEY_LEN] {
        self.secret.as_bytes()
    }

    /// `s_pk = X25519(s_sk, 9)`: what public profiles carry.
    pub fn public(&self) -> ServerPublicKey {
        self.public
    }

    /// The pair key of the client `client` on this server (identity
    /// `server_id`). This is the whole validation of a client key: its
    /// Ed25519 key must decompress and not be weak, and the agreement must be
    /// contributory (the client's X25519 key not of small order).
    pub fn pair_prk(
        &self,
        client: &ClientPublicKey,
        server_id: &ServerId,
    ) -> Result<PairPrk, KeyError> {
        client.verifying_key()?;
        let dh = self.secret.diffie_hellman(&XPublicKey::from(client.x25519));
        if !dh.was_contributory() {
            return Err(KeyError::LowOrderX25519);
        }
        Ok(public_pair_prk(
            dh.as_bytes(),
            client,
            &self.public,
            server_id,
        ))
    }
}

impl std::fmt::Debug for ServerSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The server's public key (`s_pk`), as public profiles carry it. Not
/// secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerPublicKey(pub [u8; SERVER_PUBLIC_KEY_LEN]);

impl ServerPublicKey {
    pub fn from_bytes(bytes: [u8; SERVER_PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Accepts exactly [`SERVER_PUBLIC_KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; SERVER_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Is this one of the X25519 points of small order? A profile with such a
    /// key is refused ([`ClientIdentity::pair_prk`] refuses it too).
    pub fn is_small_order(&self) -> bool {
        is_small_order_x25519(&self.0)
    }

    /// The `server` line of the pair-key cache:
    /// `SHA-256("knock/v2 pair cache server" || s_pk || server_id)[..16]`.
    /// A cache whose line differs was made for another key or identity.
    pub fn pair_cache_tag(&self, server_id: &ServerId) -> [u8; 16] {
        truncated_sha256(&[LABEL_CACHE_SERVER, &self.0, &server_id.0])
    }
}

impl std::fmt::Debug for ServerPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerPublicKey(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// `Extract("knock/v2 public-key", dh || ed_pk || x_pk || s_pk || server_id)`.
fn public_pair_prk(
    dh: &[u8; 32],
    client: &ClientPublicKey,
    server: &ServerPublicKey,
    server_id: &ServerId,
) -> PairPrk {
    PairPrk::from_bytes(extract(
        SALT_PUBLIC,
        &[dh, &client.ed25519, &client.x25519, &server.0, &server_id.0],
    ))
}

fn truncated_sha256<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let digest = ctx.finish();
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(digest.as_ref()) {
        *o = *b;
    }
    out
}

/// The u-coordinates of the points of small order on Curve25519, including
/// the non-canonical encodings below 2^255 (X25519 ignores bit 255): 0, 1,
/// the two points of order 8, p - 1, p and p + 1 (as cr.yp.to/ecdh.html
/// lists them). X25519 of any clamped scalar with one of these is all zero.
const SMALL_ORDER_X25519: [[u8; 32]; 7] = [
    [0; 32],
    [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

fn is_small_order_x25519(u: &[u8; 32]) -> bool {
    let mut masked = *u;
    if let Some(top) = masked.last_mut() {
        *top &= 0x7f;
    }
    SMALL_ORDER_X25519.contains(&masked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed u-coordinate, with bit 255 clear or set, gives an
    /// all-zero agreement with any key: the list and X25519 agree.
    #[test]
    fn the_small_order_list_is_what_x25519_finds_non_contributory() {
        for seed in [1u8, 77, 200] {
            let secret = StaticSecret::from([seed; 32]);
            for u in SMALL_ORDER_X25519 {
                for top in [0u8, 0x80] {
                    let mut point = u;
                    point[31] |= top;
                    assert!(is_small_order_x25519(&point));
                    let dh = secret.diffie_hellman(&XPublicKey::from(point));
                    assert!(!dh.was_contributory(), "{point:02x?}");
                }
            }
        }
        // And ordinary keys are not on it.
        let public = ServerSecretKey::from_bytes([9; 32]).public();
        assert!(!public.is_small_order());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let seed = IdentitySeed::from_bytes([0xab; 32]);
        let identity = ClientIdentity::from_seed(&seed);
        let server = ServerSecretKey::from_bytes([0xcd; 32]);
        for text in [
            format!("{seed:?}"),
            format!("{identity:?}"),
            format!("{server:?}"),
        ] {
            for secret in ["abababab", "171, 171", "cdcdcdcd", "205, 205"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }
}
