//! knock-proto: the knock on the wire, with no I/O.
//!
//! Nothing in this crate touches a socket, a clock or a file. Time and
//! randomness are arguments, so every function is deterministic and can be
//! tested and fuzzed as a pure function.
//!
//! The path of a knock through this crate:
//!
//! * the client derives [`KnockKeys`] from its [`ClientSecret`] and calls
//!   [`seal`] with a [`Request`], the time and fresh [`SealRandomness`];
//! * the server calls [`KnockBytes::parse`] (length check), looks the
//!   [`KeyHint`] up in its [`HintIndex`] (one candidate client, O(1)), calls
//!   [`open`] (one AEAD check) and hands the [`OpenedKnock`] to the
//!   [`ReplayGuard`], which turns it into a [`FreshKnock`] or a rejection.
//!
//! See `docs/PROTOCOL.md` for the byte layout and the reasoning.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

mod error;
mod hint;
mod keys;
mod replay;
mod request;
mod wire;

pub use error::{OpenError, ParseError, PortSpecError, ReplayError, SealError};
pub use hint::{slot_range, HintIndex, KeyHint, SLOT_MS};
pub use keys::{
    ClientSecret, KnockKeys, ReplayId, ServerId, CLIENT_SECRET_LEN, REPLAY_ID_LEN, SERVER_ID_LEN,
};
pub use replay::{FreshKnock, ReplayGuard, StateDecodeError, Tick};
pub use request::{port_list, PortSpec, Transport, MAX_PORTS};
pub use wire::{
    open, seal, KnockBytes, OpenedKnock, Request, SealRandomness, MAX_KNOCK_LEN, MAX_PADDING,
    MIN_KNOCK_LEN, NONCE_LEN,
};

/// Is `name` acceptable as a client name? Names appear in file names, logs and
/// the replay state file, so they are kept to a small, unambiguous alphabet.
pub fn valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}
