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
    /// Authentic, but sealed for another server identity.
    #[error("made for another server")]
    WrongServer,
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
