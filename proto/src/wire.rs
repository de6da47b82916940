//! The knock on the wire: sealing a request and opening a datagram.
//!
//! ```text
//! datagram  = hint(8) || nonce(24) || ciphertext || tag(16)
//! AEAD      = XChaCha20-Poly1305(aead key, nonce, aad = hint)
//! plaintext = version(1) = 1
//!           || flags(1)            bit 0: bound address present, bit 1: it is IPv6
//!           || timestamp_ms(8, BE) Unix time of the client, milliseconds
//!           || server_id(16)
//!           || duration_s(4, BE)   0 = the server's open_for
//!           || port_count(1)       1..=16
//!           || port_count × (ip_proto(1) || port(2, BE))
//!           || bound address (0, 4 or 16 bytes)
//!           || padding (zero bytes: up to the longest request, then 0..=63 more)
//! ```
//!
//! Nothing outside the ciphertext is constant: the hint rotates and looks
//! random, the nonce is random, and the padding makes the length vary. The
//! length says nothing about the request: every request is first padded to
//! the length of the longest one (16 ports, bound to an IPv6 address), then
//! by a uniformly random 0..=63 bytes, so every request's lengths follow the
//! same distribution.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use crate::error::{OpenError, ParseError, SealError};
use crate::hint::{KeyHint, HINT_LEN};
use crate::keys::{KnockKeys, ServerId, SERVER_ID_LEN};
use crate::request::{PortSpec, Transport, MAX_PORTS};

/// Length of the random XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// At most this many bytes of random padding on top of the longest request.
pub const MAX_PADDING: usize = 63;

const VERSION: u8 = 1;
const FLAG_BOUND: u8 = 0b01;
const FLAG_BOUND_V6: u8 = 0b10;
const FIXED_PLAINTEXT: usize = 1 + 1 + 8 + SERVER_ID_LEN + 4 + 1;
/// The plaintext of the longest request, before random padding: what every
/// request is padded to.
const LONGEST_REQUEST: usize = FIXED_PLAINTEXT + 3 * MAX_PORTS + 16;
const MIN_PLAINTEXT: usize = LONGEST_REQUEST;
const MAX_PLAINTEXT: usize = LONGEST_REQUEST + MAX_PADDING;
const OVERHEAD: usize = HINT_LEN + NONCE_LEN + TAG_LEN;

/// The shortest datagram that can be a knock.
pub const MIN_KNOCK_LEN: usize = OVERHEAD + MIN_PLAINTEXT;
/// The longest datagram that can be a knock.
pub const MAX_KNOCK_LEN: usize = OVERHEAD + MAX_PLAINTEXT;

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

/// Seals `request`, stamped `timestamp_ms`, for the server `server`.
pub fn seal(
    keys: &KnockKeys,
    server: &ServerId,
    request: &Request,
    timestamp_ms: u64,
    randomness: &SealRandomness,
) -> Result<Vec<u8>, SealError> {
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
    let random_padding = usize::from(randomness.padding) % (MAX_PADDING + 1);
    let hint = KeyHint::at(keys, timestamp_ms);

    let mut out = Vec::with_capacity(MAX_KNOCK_LEN);
    out.extend_from_slice(&hint.0);
    out.extend_from_slice(&randomness.nonce);
    let body_start = out.len();

    let flags = match request.bound_addr {
        None => 0,
        Some(IpAddr::V4(_)) => FLAG_BOUND,
        Some(IpAddr::V6(_)) => FLAG_BOUND | FLAG_BOUND_V6,
    };
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&server.0);
    out.extend_from_slice(&request.duration_s.to_be_bytes());
    out.push(count as u8);
    for spec in &request.ports {
        out.push(spec.transport.ip_proto());
        out.extend_from_slice(&spec.port.to_be_bytes());
    }
    match request.bound_addr {
        None => {}
        Some(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
        Some(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
    }
    let plaintext_len = out.len() - body_start;
    out.resize(
        body_start + LONGEST_REQUEST.max(plaintext_len) + random_padding,
        0,
    );

    let cipher = XChaCha20Poly1305::new(Key::from_slice(&keys.aead));
    let body = out.get_mut(body_start..).ok_or(SealError::Encryption)?;
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&randomness.nonce), &hint.0, body)
        .map_err(|_| SealError::Encryption)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// A datagram of a plausible length, split into its public parts. Parsing
/// does no cryptography: it is the first, cheapest filter.
#[derive(Debug, Clone, Copy)]
pub struct KnockBytes<'a> {
    hint: KeyHint,
    nonce: &'a [u8],
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
            nonce,
            ciphertext,
            tag,
        })
    }

    /// The hint that names the one candidate client.
    pub fn hint(&self) -> &KeyHint {
        &self.hint
    }
}

/// An authentic knock, sealed for this server: not yet checked for freshness
/// or replay (see [`crate::ReplayGuard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedKnock {
    pub request: Request,
    pub timestamp_ms: u64,
}

/// Opens `knock` with the keys of the client its hint named. Costs exactly one
/// AEAD verification; nothing of the plaintext is looked at before the tag
/// has been checked.
pub fn open(
    keys: &KnockKeys,
    server: &ServerId,
    knock: &KnockBytes<'_>,
) -> Result<OpenedKnock, OpenError> {
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
    decode_plaintext(server, plaintext)
}

fn decode_plaintext(server: &ServerId, plaintext: &[u8]) -> Result<OpenedKnock, OpenError> {
    let mut reader = Reader(plaintext);
    let version = reader.byte()?;
    if version != VERSION {
        return Err(OpenError::UnsupportedVersion(version));
    }
    let flags = reader.byte()?;
    if flags & !(FLAG_BOUND | FLAG_BOUND_V6) != 0 || flags == FLAG_BOUND_V6 {
        return Err(OpenError::Malformed("unknown flags"));
    }
    let timestamp_ms = u64::from_be_bytes(reader.array()?);
    let sealed_for: [u8; SERVER_ID_LEN] = reader.array()?;
    if sealed_for != server.0 {
        return Err(OpenError::WrongServer);
    }
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
    // The length was bounded by `KnockBytes::parse`.
    if reader.0.iter().any(|&b| b != 0) {
        return Err(OpenError::Malformed("padding"));
    }
    Ok(OpenedKnock {
        request: Request {
            ports,
            duration_s,
            bound_addr,
        },
        timestamp_ms,
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
