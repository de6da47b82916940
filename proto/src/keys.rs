//! Shared secrets, the per-pair key, and the subkeys derived from it.
//!
//! Every client-server pair has one 32-byte pseudorandom key, the
//! [`PairPrk`]. How it is made depends on the mode (see `identity.rs` for the
//! public-key mode):
//!
//! ```text
//! Extract(salt, ikm) = HMAC-SHA256(salt, ikm)                        (RFC 5869)
//! shared-key: pair_prk = Extract("knock/v2 shared-key", client_secret(32) || server_id(16))
//! public-key: pair_prk = Extract("knock/v2 public-key",
//!                                dh(32) || ed_pk(32) || x_pk(32) || s_pk(32) || server_id(16))
//! ```
//!
//! What follows is the same in both modes:
//!
//! ```text
//! hint_key  = HKDF-Expand(pair_prk, "knock/v2 hint", 32)            HMAC-SHA256
//! aead_key  = HKDF-Expand(pair_prk, "knock/v2 aead", 32)            XChaCha20-Poly1305
//! replay_id = HKDF-Expand(pair_prk, "knock/v2 replay id", 32)[..16]
//! ```
//!
//! The server identity is part of every pair key, so one shared secret on two
//! servers gives two unrelated sets of keys. The replay id names the pair in
//! the server's replay memory: it follows the key, not the file name, so a
//! renamed client keeps its history, and it reveals nothing of the key.

use ring::{hkdf, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a client secret in bytes.
pub const CLIENT_SECRET_LEN: usize = 32;
/// Length of a server identity in bytes.
pub const SERVER_ID_LEN: usize = 16;
/// Length of a [`PairPrk`] in bytes.
pub const PAIR_PRK_LEN: usize = 32;
/// Length of a [`ReplayId`].
pub const REPLAY_ID_LEN: usize = 16;

pub(crate) const SALT_SHARED: &[u8] = b"knock/v2 shared-key";
const INFO_HINT: &[u8] = b"knock/v2 hint";
const INFO_AEAD: &[u8] = b"knock/v2 aead";
const INFO_REPLAY_ID: &[u8] = b"knock/v2 replay id";

/// The secret shared by one client and the server (shared-key mode).
/// Zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ClientSecret([u8; CLIENT_SECRET_LEN]);

impl ClientSecret {
    pub fn from_bytes(bytes: [u8; CLIENT_SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Accepts exactly [`CLIENT_SECRET_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; CLIENT_SECRET_LEN] = bytes.try_into().ok()?;
        Some(Self(array))
    }

    /// The raw secret, for writing it to its file.
    pub fn expose(&self) -> &[u8; CLIENT_SECRET_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// The identity of one knock-server. Not secret: it is part of every pair
/// key, so a knock made for one server is junk at another, even one that
/// holds the same client secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId(pub [u8; SERVER_ID_LEN]);

impl ServerId {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerId(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The pseudorandom key of one client-server pair, in either mode: what the
/// server may cache so that it need not redo the X25519 of a public-key
/// client. Secret (it opens and forges AEAD-valid knocks of the pair, though
/// not signatures); zeroized on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PairPrk([u8; PAIR_PRK_LEN]);

impl PairPrk {
    /// A pair key read back from the server's cache.
    pub fn from_bytes(bytes: [u8; PAIR_PRK_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key, for writing it to the cache.
    pub fn expose(&self) -> &[u8; PAIR_PRK_LEN] {
        &self.0
    }

    /// The shared-key mode's pair key:
    /// `Extract("knock/v2 shared-key", client_secret || server_id)`.
    pub fn shared(secret: &ClientSecret, server: &ServerId) -> Self {
        Self(extract(SALT_SHARED, &[&secret.0, &server.0]))
    }
}

impl std::fmt::Debug for PairPrk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairPrk(<redacted>)")
    }
}

/// The subkeys of one client-server pair: everything `seal`, `open` and the
/// hint index need, in either mode. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PairKeys {
    pub(crate) aead: [u8; 32],
    pub(crate) hint: [u8; 32],
    #[zeroize(skip)]
    replay_id: ReplayId,
}

impl PairKeys {
    /// The keys of a shared-key client on the server `server`.
    pub fn shared(secret: &ClientSecret, server: &ServerId) -> Self {
        Self::from_prk(&PairPrk::shared(secret, server))
    }

    /// Expands a pair key (of either mode) into its subkeys.
    pub fn from_prk(prk: &PairPrk) -> Self {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &prk.0);
        let mut aead = [0u8; 32];
        let mut hint = [0u8; 32];
        let mut id = [0u8; 32];
        expand(&prk, INFO_HINT, &mut hint);
        expand(&prk, INFO_AEAD, &mut aead);
        expand(&prk, INFO_REPLAY_ID, &mut id);
        let mut replay_id = [0u8; REPLAY_ID_LEN];
        for (out, byte) in replay_id.iter_mut().zip(id) {
            *out = byte;
        }
        Self {
            aead,
            hint,
            replay_id: ReplayId(replay_id),
        }
    }

    /// The name of this pair in the replay memory.
    pub fn replay_id(&self) -> ReplayId {
        self.replay_id
    }

    /// The HMAC key of the hint, made anew on each call (ring keeps its key
    /// schedule private, so it is not stored: [`PairKeys`] stays wipeable).
    pub(crate) fn hint_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.hint)
    }
}

impl std::fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKeys(<redacted>)")
    }
}

/// Names one pair key in the server's replay memory (see the module
/// documentation). Not secret, but not a key either.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayId(pub [u8; REPLAY_ID_LEN]);

impl ReplayId {
    /// Lower-case hex, as in the state file.
    pub fn to_hex(&self) -> String {
        let mut text = String::with_capacity(2 * REPLAY_ID_LEN);
        self.push_hex(&mut text);
        text
    }

    /// Appends [`Self::to_hex`] to `text` without allocating: the state
    /// file holds one per key, and the journal one per grant.
    pub fn push_hex(&self, text: &mut String) {
        for b in self.0 {
            for nibble in [b >> 4, b & 0xf] {
                text.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
    }

    /// Parses [`Self::to_hex`]'s output.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 2 * REPLAY_ID_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut id = [0u8; REPLAY_ID_LEN];
        for (out, pair) in id.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *out = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(id))
    }
}

impl std::fmt::Debug for ReplayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplayId({})", self.to_hex())
    }
}

/// `HKDF-Extract(salt, ikm) = HMAC-SHA256(salt, ikm)`, where `ikm` is the
/// concatenation of `parts`. Computed with HMAC rather than ring's HKDF so
/// that the 32 bytes of the PRK are available.
pub(crate) fn extract(salt: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, salt));
    for part in parts {
        ctx.update(part);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(tag.as_ref()) {
        *o = *b;
    }
    out
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// `HKDF-Expand(prk, info, 32)`.
pub(crate) fn expand(prk: &hkdf::Prk, info: &[u8], out: &mut [u8; 32]) {
    // HKDF-Expand fails only when asked for more than 255 hash lengths, and
    // `fill` only when `out` is not the length asked for. A key that could
    // come out as a fixed value instead would fail open, so neither failure
    // is turned into a value: they cannot happen here.
    let infos = [info];
    prk.expand(&infos, Len32)
        .expect("HKDF-SHA256 expands to 32 bytes: one hash length, far below 255")
        .fill(out)
        .expect("the output buffer is exactly the 32 bytes Len32 asks for");
}
