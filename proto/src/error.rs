//! Every way a knock can be refused, as types fit for a log line.

use thiserror::Error;

/// The datagram cannot be a knock at all: rejected before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("too short to be a knock ({0} bytes)")]
    TooShort(usize),
    #[error("too long to be a knock ({0} bytes)")]
    TooLong(usize),
}

/// The knock was addressed to a client we know but did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The AEAD tag did not verify: tampered, truncated, extended, or a key hint
    /// collision with random junk.
    #[error("bad MAC")]
    BadMac,
    /// Authentic, but its mode flag (signed or not) disagrees with the mode
    /// of the client entry its hint named: a shared-key knock for a
    /// public-key client, or the reverse. Whoever made it holds the pair
    /// keys; for a public-key client that means the server's keys leaked.
    #[error("wrong mode: its signed flag disagrees with the client's mode")]
    WrongMode,
    /// Authentic, but the content does not follow the format. Only a client
    /// with the key can cause this, so it points at a buggy or newer client.
    #[error("malformed content: {0}")]
    Malformed(&'static str),
    /// Authentic, but a protocol version this server does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
}

/// An authentic knock that the replay guard refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("too old: stamped {age_ms} ms before now")]
    TooOld { age_ms: u64 },
    #[error("from the future: stamped {ahead_ms} ms after now")]
    FromFuture { ahead_ms: u64 },
    #[error("stamped before the server's floor minus the window (its clock stepped back, or the window widened); the floor is {floor_ms} ms")]
    BeforeFloor { floor_ms: u64 },
    #[error("stamped before the replay state was lost; knocks are refused until {until_ms} ms")]
    StateLost { until_ms: u64 },
    #[error("replay: not newer than the last accepted knock of this client")]
    Replay,
}

/// A request that cannot be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("a knock must request at least one port")]
    NoPorts,
    #[error("a knock can request at most {max} ports, not {count}")]
    TooManyPorts { count: usize, max: usize },
    #[error("port 0 cannot be requested")]
    PortZero,
    /// The cipher refused the input; it does so only past 256 GiB.
    #[error("encryption failed")]
    Encryption,
}

/// A port as people write it (`4992`, `tcp/4992`, `udp/53`) that is not one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PortSpecError {
    /// Something other than `tcp` or `udp` before the slash.
    #[error("unknown transport {transport:?} in {text:?}: use tcp/PORT or udp/PORT")]
    UnknownTransport { transport: String, text: String },
    /// The number is missing, not a number, 0 or above 65535.
    #[error("invalid port {text:?}: expected 1-65535, as 4992, tcp/4992 or udp/53")]
    InvalidPort { text: String },
}

/// A key that cannot be used: a damaged public line, or a curve point that
/// would make the key agreement or the signature meaningless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The public line does not start with `knock-id1:`.
    #[error("not a knock public key: it must start with `knock-id1:` (the line `knock-client identity` prints)")]
    NotAPublicLine,
    /// After the prefix, not base64url of the right length.
    #[error("the public key is damaged: expected {expected} characters of base64url after `knock-id1:`; copy the whole line again")]
    Encoding { expected: usize },
    /// The 4-byte check does not match: a mistyped or truncated character.
    #[error("the public key is damaged (its check bytes do not match): copy the whole line again")]
    Checksum,
    /// The Ed25519 key is not a curve point, or has small order (a weak key
    /// signs almost any message).
    #[error(
        "the public key's Ed25519 part is not a valid key (not on the curve, or of small order)"
    )]
    BadEd25519,
    /// The X25519 agreement gave the all-zero value: one side's key has
    /// small order, so the pair key would be public.
    #[error(
        "the X25519 key agreement is not contributory: the other side's public key has small order"
    )]
    LowOrderX25519,
}

/// A public-key knock whose signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The knock was opened as a shared-key knock: it carries no signature.
    #[error("not a signed knock (opened in shared-key mode)")]
    NotSigned,
    /// The client's Ed25519 key is not a usable key.
    #[error("the client's Ed25519 key is not valid")]
    BadKey,
    /// The signature does not verify (RFC 8032, strict): someone who holds
    /// the pair keys (this server's key, or its pair-key cache) made it.
    #[error("bad signature")]
    BadSignature,
}
