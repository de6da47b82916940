//! Secrets and the subkeys derived from them.
//!
//! One random client secret is expanded with HKDF-SHA256 into independent
//! subkeys, one per purpose, so that the AEAD key never doubles as the key of
//! the public hint:
//!
//! ```text
//! prk       = HKDF-Extract(salt = "knock/v1", ikm = client secret)
//! aead key  = HKDF-Expand(prk, "knock/v1 aead", 32)   XChaCha20-Poly1305
//! hint key  = HKDF-Expand(prk, "knock/v1 hint", 32)   HMAC-SHA256
//! replay id = HKDF-Expand(prk, "knock/v1 replay id", 32)[..16]
//! ```
//!
//! The replay id names the key in the server's replay memory: it follows the
//! key, not the file name, so a renamed client keeps its history, and it
//! reveals nothing of the key.

use ring::{hkdf, hmac};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a client secret in bytes.
pub const CLIENT_SECRET_LEN: usize = 32;
/// Length of a server identity in bytes.
pub const SERVER_ID_LEN: usize = 16;

const HKDF_SALT: &[u8] = b"knock/v1";
const INFO_AEAD: &[u8] = b"knock/v1 aead";
const INFO_HINT: &[u8] = b"knock/v1 hint";
const INFO_REPLAY_ID: &[u8] = b"knock/v1 replay id";
/// Length of a [`ReplayId`].
pub const REPLAY_ID_LEN: usize = 16;

/// The secret shared by one client and the server. Zeroized on drop.
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

    /// Derives the per-purpose subkeys.
    pub fn derive(&self) -> KnockKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.0);
        let mut aead = [0u8; 32];
        let mut hint = [0u8; 32];
        let mut id = [0u8; 32];
        expand(&prk, INFO_AEAD, &mut aead);
        expand(&prk, INFO_HINT, &mut hint);
        expand(&prk, INFO_REPLAY_ID, &mut id);
        let hint_key = hmac::Key::new(hmac::HMAC_SHA256, &hint);
        hint.zeroize();
        let mut replay_id = [0u8; REPLAY_ID_LEN];
        for (out, byte) in replay_id.iter_mut().zip(id) {
            *out = byte;
        }
        KnockKeys {
            aead,
            hint: hint_key,
            replay_id: ReplayId(replay_id),
        }
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8], out: &mut [u8; 32]) {
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

/// The subkeys of one client. The AEAD key is zeroized on drop; ring keeps its
/// HMAC key schedule private, so the hint key (which only authenticates a
/// public, rotating 8-byte hint) is dropped without being wiped.
pub struct KnockKeys {
    pub(crate) aead: [u8; 32],
    pub(crate) hint: hmac::Key,
    replay_id: ReplayId,
}

impl KnockKeys {
    /// The name of this key in the replay memory.
    pub fn replay_id(&self) -> ReplayId {
        self.replay_id
    }
}

/// Names one client key in the server's replay memory (see the module
/// documentation). Not secret, but not a key either.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayId(pub [u8; REPLAY_ID_LEN]);

impl ReplayId {
    /// Lower-case hex, as in the state file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
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

impl Drop for KnockKeys {
    fn drop(&mut self) {
        self.aead.zeroize();
    }
}

impl std::fmt::Debug for KnockKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KnockKeys(<redacted>)")
    }
}

/// The identity of one knock-server. Not secret: it binds a knock to the
/// server it was made for, so a knock captured on the way to one server is
/// refused by another that holds the same client secret.
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
