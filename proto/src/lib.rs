//! knock-proto: the knock on the wire, with no I/O.
//!
//! Nothing in this crate touches a socket, a clock or a file. Time and
//! randomness are arguments, so every function is deterministic and can be
//! tested and fuzzed as a pure function.
//!
//! Protocol version 2 has two modes ([`Mode`]). Both give each client-server
//! pair one [`PairPrk`], expanded into [`PairKeys`]:
//!
//! * shared-key: [`PairKeys::shared`] from the [`ClientSecret`] and the
//!   [`ServerId`];
//! * public-key: the client derives a [`ClientIdentity`] from its
//!   [`IdentitySeed`] and calls [`ClientIdentity::pair_prk`] with the
//!   server's [`ServerPublicKey`]; the server calls
//!   [`ServerSecretKey::pair_prk`] with the enrolled [`ClientPublicKey`]
//!   (X25519 both ways), then [`PairKeys::from_prk`].
//!
//! The path of a knock through this crate:
//!
//! * the client calls [`seal`] with its pair keys, a [`Sealer`] (which signs
//!   in public-key mode), a [`Request`], the time and fresh
//!   [`SealRandomness`];
//! * the server calls [`KnockBytes::parse`] (length check), looks the
//!   [`KeyHint`] up in its [`HintIndex`] (one candidate client, O(1)), calls
//!   [`open`] with that client's keys and mode (one AEAD check) and hands the
//!   [`OpenedKnock`] to the [`ReplayGuard`], which turns it into a
//!   [`FreshKnock`] or a rejection; after its own policy checks, and for a
//!   public-key client only, it calls [`OpenedKnock::verify_signature`].
//!
//! See `docs/PROTOCOL.md` for the byte layout and the reasoning.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

mod error;
mod hint;
mod identity;
mod keys;
mod replay;
mod request;
mod rolling;
mod wire;

pub use error::{
    KeyError, OpenError, ParseError, PortSpecError, ReplayError, SealError, SignatureError,
};
pub use hint::{slot_range, HintIndex, KeyHint, HINT_LEN, SLOT_MS};
pub use identity::{
    ClientIdentity, ClientPublicKey, IdentitySeed, ServerPublicKey, ServerSecretKey,
    IDENTITY_SEED_LEN, PUBLIC_LINE_LEN, PUBLIC_LINE_PREFIX, SERVER_PUBLIC_KEY_LEN,
    SERVER_SECRET_KEY_LEN, SIGNATURE_LEN,
};
pub use keys::{
    ClientSecret, PairKeys, PairPrk, ReplayId, ServerId, CLIENT_SECRET_LEN, PAIR_PRK_LEN,
    REPLAY_ID_LEN, SERVER_ID_LEN,
};
pub use replay::{Consumed, FreshKnock, ReplayGuard, StateDecodeError, Tick};
pub use request::{port_list, PortSpec, Transport, MAX_PORTS};
pub use rolling::{Progress, RollingIndex, MAX_CLIENTS, MAX_SPAN};
pub use wire::{
    open, seal, KnockBytes, Mode, OpenedKnock, Request, SealRandomness, Sealer, MAX_KNOCK_LEN,
    MAX_PADDING, MIN_KNOCK_LEN, NONCE_LEN, REQUEST_LEN, SIGNED_MESSAGE_LEN, VERSION,
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
