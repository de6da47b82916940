//! The knock on the wire (protocol version 2): sealing a request and opening
//! a datagram, in shared-key and public-key mode.
//!
//! ```text
//! datagram  = hint(8) || nonce(24) || ciphertext(143..=206) || tag(16)
//! AEAD      = XChaCha20-Poly1305(aead_key, nonce, aad = hint)
//! plaintext = request block (79 bytes)
//!             version(1) = 2
//!             flags(1)            bit 0: bound address present, bit 1: it is IPv6,
//!                                 bit 2: signed (public-key mode); valid: 0, 1, 3, 4, 5, 7
//!             timestamp_ms(8, BE) Unix time of the client, milliseconds
//!             duration_s(4, BE)   0 = the server's open_for
//!             port_count(1)       1..=16
//!             port_count × (ip_proto(1) || port(2, BE))
//!             bound address (0, 4 or 16 bytes)
//!             zero bytes up to 79 (16 ports and an IPv6 address fill it)
//!          || auth(64)            public-key: Ed25519 signature of M; shared-key: zero
//!          || padding             0..=63 zero bytes
//! M = "knock/v2 signature" || s_pk(32) || server_id(16) || hint(8) || nonce(24) || request block(79)
//! ```
//!
//! Nothing outside the ciphertext is constant: the hint rotates and looks
//! random, the nonce is random, and the padding makes the length vary. The
//! length says nothing about the request nor the mode: the plaintext is
//! always 143 bytes plus a uniformly random 0..=63, so every request of
//! either mode has the same length distribution.
//!
//! The server identity is not in the plaintext: it is bound by the pair key,
//! and in public-key mode by the signature. The signature covers the server's
//! public key and identity, the whole request (stamp and bound address
//! included), the hint and the nonce: whoever holds the pair keys (a thief
//! with the server's key) can open a knock but cannot move its signature to
//! another nonce, stamp, request or server. It is encrypted, so never seen
//! on the wire.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use ed25519_dalek::Signature;

use crate::error::{OpenError, ParseError, SealError, SignatureError};
use crate::hint::{KeyHint, HINT_LEN};
use crate::identity::{ClientIdentity, ClientPublicKey, ServerPublicKey, SIGNATURE_LEN};
use crate::keys::{PairKeys, ServerId};
use crate::request::{PortSpec, Transport, MAX_PORTS};

/// Length of the random XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// At most this many bytes of random padding after the `auth` field.
pub const MAX_PADDING: usize = 63;
/// The protocol version in every plaintext.
pub const VERSION: u8 = 2;

const FLAG_BOUND: u8 = 0b001;
const FLAG_BOUND_V6: u8 = 0b010;
const FLAG_SIGNED: u8 = 0b100;
/// Version, flags, stamp, duration, port count.
const REQUEST_HEADER_LEN: usize = 1 + 1 + 8 + 4 + 1;
/// The request block: the longest request (16 ports, an IPv6 address), which
/// every request is padded to.
pub const REQUEST_LEN: usize = REQUEST_HEADER_LEN + 3 * MAX_PORTS + 16;
const AUTH_LEN: usize = SIGNATURE_LEN;
const MIN_PLAINTEXT: usize = REQUEST_LEN + AUTH_LEN;
const MAX_PLAINTEXT: usize = MIN_PLAINTEXT + MAX_PADDING;
const OVERHEAD: usize = HINT_LEN + NONCE_LEN + TAG_LEN;

const SIGNATURE_LABEL: &[u8] = b"knock/v2 signature";
/// Length of the signed message `M`.
pub const SIGNED_MESSAGE_LEN: usize =
    SIGNATURE_LABEL.len() + 32 + crate::keys::SERVER_ID_LEN + HINT_LEN + NONCE_LEN + REQUEST_LEN;

/// The shortest datagram that can be a knock (191 bytes).
pub const MIN_KNOCK_LEN: usize = OVERHEAD + MIN_PLAINTEXT;
/// The longest datagram that can be a knock (254 bytes).
pub const MAX_KNOCK_LEN: usize = OVERHEAD + MAX_PLAINTEXT;

/// The two ways a client and a server can share a pair key. The server takes
/// the mode from the client entry the hint names, and the knock's signed flag
/// must agree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A symmetric secret, as in `clients.d/NAME.toml`'s `key`: the server
    /// can make this client's knocks.
    Shared,
    /// A client identity and the server's key pair; knocks are signed, so
    /// the server (and whoever steals its keys) cannot make them.
    Public,
}

impl Mode {
    /// `shared-key` or `public-key`, as in `knock-client list`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared-key",
            Mode::Public => "public-key",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How [`seal`] authenticates the request beyond the AEAD.
#[derive(Debug, Clone, Copy)]
pub enum Sealer<'a> {
    /// Shared-key mode: `auth` is zero.
    Shared,
    /// Public-key mode: `auth` is the signature of `identity` over the
    /// server's public key and identity, the hint, the nonce and the request.
    Public {
        identity: &'a ClientIdentity,
        server: &'a ServerPublicKey,
        server_id: &'a ServerId,
    },
}

impl Sealer<'_> {
    pub fn mode(&self) -> Mode {
        match self {
            Sealer::Shared => Mode::Shared,
            Sealer::Public { .. } => Mode::Public,
        }
    }
}

/// What a client asks the server for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The protected ports to open.
    pub ports: Vec<PortSpec>,
    /// How long to open them, in seconds; 0 asks for the server's default.
    pub duration_s: u32,
    /// If set, the server honours the knock only when it arrives from this
    /// address, and opens for this address.
    pub bound_addr: Option<IpAddr>,
}

/// The random inputs of [`seal`]. Pass fresh randomness for every knock; the
/// tests pass fixed values to get exact bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRandomness {
    pub nonce: [u8; NONCE_LEN],
    /// Reduced modulo `MAX_PADDING + 1` to the number of random padding
    /// bytes.
    pub padding: u8,
}

/// Seals `request`, stamped `timestamp_ms`, with the pair keys `keys`, in
/// the mode of `sealer`. In public-key mode, `keys` must be the pair keys of
/// the same identity and server as `sealer`, or the server will refuse the
/// signature.
pub fn seal(
    keys: &PairKeys,
    sealer: &Sealer<'_>,
    request: &Request,
    timestamp_ms: u64,
    randomness: &SealRandomness,
) -> Result<Vec<u8>, SealError> {
    let block = request_block(request, sealer.mode(), timestamp_ms)?;
    let hint = KeyHint::at(keys, timestamp_ms);
    let auth = match sealer {
        Sealer::Shared => [0u8; AUTH_LEN],
        Sealer::Public {
            identity,
            server,
            server_id,
        } => identity.sign(&signed_message(
            server,
            server_id,
            &hint,
            &randomness.nonce,
            &block,
        )),
    };
    let random_padding = usize::from(randomness.padding) % (MAX_PADDING + 1);

    let mut out = Vec::with_capacity(MAX_KNOCK_LEN);
    out.extend_from_slice(&hint.0);
    out.extend_from_slice(&randomness.nonce);
    let body_start = out.len();
    out.extend_from_slice(&block);
    out.extend_from_slice(&auth);
    out.resize(body_start + MIN_PLAINTEXT + random_padding, 0);

    let cipher = XChaCha20Poly1305::new(Key::from_slice(&keys.aead));
    let body = out.get_mut(body_start..).ok_or(SealError::Encryption)?;
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&randomness.nonce), &hint.0, body)
        .map_err(|_| SealError::Encryption)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The request block: the request's fields, zero-filled to [`REQUEST_LEN`].
fn request_block(
    request: &Request,
    mode: Mode,
    timestamp_ms: u64,
) -> Result<[u8; REQUEST_LEN], SealError> {
    let count = request.ports.len();
    if count == 0 {
        return Err(SealError::NoPorts);
    }
    if count > MAX_PORTS {
        return Err(SealError::TooManyPorts {
            count,
            max: MAX_PORTS,
        });
    }
    if request.ports.iter().any(|spec| spec.port == 0) {
        return Err(SealError::PortZero);
    }
    let mut flags = match request.bound_addr {
        None => 0,
        Some(IpAddr::V4(_)) => FLAG_BOUND,
        Some(IpAddr::V6(_)) => FLAG_BOUND | FLAG_BOUND_V6,
    };
    if mode == Mode::Public {
        flags |= FLAG_SIGNED;
    }
    let mut bytes = Vec::with_capacity(REQUEST_LEN);
    bytes.push(VERSION);
    bytes.push(flags);
    bytes.extend_from_slice(&timestamp_ms.to_be_bytes());
    bytes.extend_from_slice(&request.duration_s.to_be_bytes());
    bytes.push(count as u8);
    for spec in &request.ports {
        bytes.push(spec.transport.ip_proto());
        bytes.extend_from_slice(&spec.port.to_be_bytes());
    }
    match request.bound_addr {
        None => {}
        Some(IpAddr::V4(a)) => bytes.extend_from_slice(&a.octets()),
        Some(IpAddr::V6(a)) => bytes.extend_from_slice(&a.octets()),
    }
    // At most 15 + 3 × 16 + 16 = REQUEST_LEN bytes: the resize only pads.
    bytes.resize(REQUEST_LEN, 0);
    let mut block = [0u8; REQUEST_LEN];
    block.copy_from_slice(&bytes);
    Ok(block)
}

/// `M = "knock/v2 signature" || s_pk || server_id || hint || nonce || request block`.
fn signed_message(
    server: &ServerPublicKey,
    server_id: &ServerId,
    hint: &KeyHint,
    nonce: &[u8; NONCE_LEN],
    block: &[u8; REQUEST_LEN],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_MESSAGE_LEN);
    m.extend_from_slice(SIGNATURE_LABEL);
    m.extend_from_slice(&server.0);
    m.extend_from_slice(&server_id.0);
    m.extend_from_slice(&hint.0);
    m.extend_from_slice(nonce);
    m.extend_from_slice(block);
    m
}

/// A datagram of a plausible length, split into its public parts. Parsing
/// does no cryptography: it is the first, cheapest filter.
#[derive(Debug, Clone, Copy)]
pub struct KnockBytes<'a> {
    hint: KeyHint,
    nonce: &'a [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    tag: &'a [u8],
}

impl<'a> KnockBytes<'a> {
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        let len = datagram.len();
        if len < MIN_KNOCK_LEN {
            return Err(ParseError::TooShort(len));
        }
        if len > MAX_KNOCK_LEN {
            return Err(ParseError::TooLong(len));
        }
        let (hint, rest) = datagram.split_at(HINT_LEN);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut hint_bytes = [0u8; HINT_LEN];
        hint_bytes.copy_from_slice(hint);
        Ok(Self {
            hint: KeyHint(hint_bytes),
            nonce: nonce.try_into().map_err(|_| ParseError::TooShort(len))?,
            ciphertext,
            tag,
        })
    }

    /// The hint that names the one candidate client.
    pub fn hint(&self) -> &KeyHint {
        &self.hint
    }
}

/// An authentic knock, in the mode its client entry has: not yet checked for
/// freshness or replay (see [`crate::ReplayGuard`]), nor, in public-key mode,
/// for its signature ([`OpenedKnock::verify_signature`], the last and most
/// expensive check).
#[derive(Clone, PartialEq, Eq)]
pub struct OpenedKnock {
    pub request: Request,
    pub timestamp_ms: u64,
    mode: Mode,
    hint: KeyHint,
    nonce: [u8; NONCE_LEN],
    block: [u8; REQUEST_LEN],
    auth: [u8; AUTH_LEN],
}

impl OpenedKnock {
    /// The mode it was opened in (and its flag agreed with).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Checks the signature of a public-key knock (RFC 8032, strict) against
    /// the client's enrolled key, over this server's public key and
    /// identity. About a decompression and a verification: call it only
    /// once everything cheaper (replay, policy) has accepted the knock.
    pub fn verify_signature(
        &self,
        client: &ClientPublicKey,
        server: &ServerPublicKey,
        server_id: &ServerId,
    ) -> Result<(), SignatureError> {
        if self.mode != Mode::Public {
            return Err(SignatureError::NotSigned);
        }
        let key = client.verifying_key().map_err(|_| SignatureError::BadKey)?;
        let message = signed_message(server, server_id, &self.hint, &self.nonce, &self.block);
        key.verify_strict(&message, &Signature::from_bytes(&self.auth))
            .map_err(|_| SignatureError::BadSignature)
    }
}

impl std::fmt::Debug for OpenedKnock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedKnock")
            .field("request", &self.request)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Opens `knock` with the pair keys of the client its hint named, whose
/// entry has the mode `mode`. Costs exactly one AEAD verification; nothing
/// of the plaintext is looked at before the tag has been checked. A
/// public-key knock's signature is not checked here.
pub fn open(keys: &PairKeys, mode: Mode, knock: &KnockBytes<'_>) -> Result<OpenedKnock, OpenError> {
    let mut buffer = [0u8; MAX_PLAINTEXT];
    let plaintext = buffer
        .get_mut(..knock.ciphertext.len())
        .ok_or(OpenError::BadMac)?;
    plaintext.copy_from_slice(knock.ciphertext);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&keys.aead));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(knock.nonce),
            &knock.hint.0,
            plaintext,
            Tag::from_slice(knock.tag),
        )
        .map_err(|_| OpenError::BadMac)?;
    decode_plaintext(mode, knock, plaintext)
}

fn decode_plaintext(
    mode: Mode,
    knock: &KnockBytes<'_>,
    plaintext: &[u8],
) -> Result<OpenedKnock, OpenError> {
    let mut reader = Reader(plaintext);
    let block: [u8; REQUEST_LEN] = reader.array()?;
    let auth: [u8; AUTH_LEN] = reader.array()?;
    let padding = reader.0;

    let mut reader = Reader(&block);
    let version = reader.byte()?;
    if version != VERSION {
        return Err(OpenError::UnsupportedVersion(version));
    }
    let flags = reader.byte()?;
    if flags & !(FLAG_BOUND | FLAG_BOUND_V6 | FLAG_SIGNED) != 0
        || flags & (FLAG_BOUND | FLAG_BOUND_V6) == FLAG_BOUND_V6
    {
        return Err(OpenError::Malformed("unknown flags"));
    }
    let signed = flags & FLAG_SIGNED != 0;
    if signed != (mode == Mode::Public) {
        return Err(OpenError::WrongMode);
    }
    let timestamp_ms = u64::from_be_bytes(reader.array()?);
    let duration_s = u32::from_be_bytes(reader.array()?);
    let count = usize::from(reader.byte()?);
    if count == 0 || count > MAX_PORTS {
        return Err(OpenError::Malformed("port count"));
    }
    let mut ports = Vec::with_capacity(count);
    for _ in 0..count {
        let transport =
            Transport::from_ip_proto(reader.byte()?).ok_or(OpenError::Malformed("transport"))?;
        let port = u16::from_be_bytes(reader.array()?);
        if port == 0 {
            return Err(OpenError::Malformed("port 0"));
        }
        ports.push(PortSpec { transport, port });
    }
    let bound_addr = if flags & FLAG_BOUND == 0 {
        None
    } else if flags & FLAG_BOUND_V6 == 0 {
        Some(IpAddr::V4(Ipv4Addr::from(reader.array::<4>()?)))
    } else {
        Some(IpAddr::V6(Ipv6Addr::from(reader.array::<16>()?)))
    };
    if reader.0.iter().chain(padding).any(|&b| b != 0) {
        return Err(OpenError::Malformed("padding"));
    }
    if !signed && auth.iter().any(|&b| b != 0) {
        return Err(OpenError::Malformed("auth of a shared-key knock"));
    }
    Ok(OpenedKnock {
        request: Request {
            ports,
            duration_s,
            bound_addr,
        },
        timestamp_ms,
        mode,
        hint: knock.hint,
        nonce: *knock.nonce,
        block,
        auth,
    })
}

/// Reads the authenticated plaintext front to back; running out is an error,
/// never a panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, OpenError> {
        let (&first, rest) = self
            .0
            .split_first()
            .ok_or(OpenError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(first)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], OpenError> {
        if self.0.len() < N {
            return Err(OpenError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
}
