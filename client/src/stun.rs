//! `--allow-ip auto`: learn this host's public address from STUN servers
//! (RFC 5389 Binding requests over UDP), so that the knock can be bound to
//! the address the server will see it come from.
//!
//! The codec is small and strict: a response is used only if every check
//! passes (message type, magic cookie, transaction id, lengths, attribute
//! bounds, FINGERPRINT when present), and anything else is an error, never a
//! guess. Nothing here trusts a length or an index read from the wire.
//!
//! Each server is asked over one address family, from the local address the
//! knock will be sent from, with a few retransmissions of the same request
//! ([`SCHEDULE`]); the first valid answer wins, and its socket is handed to
//! the knock, so that the knock leaves from the very address and port whose
//! public mapping STUN reported.

use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use knock_keys::profile::StunServer;
use ring::rand::{SecureRandom, SystemRandom};

/// RFC 5389's magic cookie, in every message after the type and length.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The cookie's high 16 bits, which XOR the mapped port.
const COOKIE_HIGH: u16 = 0x2112;
const HEADER_LEN: usize = 20;
const TRANSACTION_ID_LEN: usize = 12;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

const MAPPED_ADDRESS: u16 = 0x0001;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FINGERPRINT: u16 = 0x8028;
/// FINGERPRINT is the CRC-32 of the message before it, XORed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Comprehension-required attributes (0x0000-0x7FFF) that a Binding response
/// may carry and that we know to be harmless to skip: RFC 3489's
/// SOURCE-ADDRESS and CHANGED-ADDRESS, USERNAME, UNKNOWN-ATTRIBUTES, REALM,
/// NONCE, RFC 8489's PASSWORD-ALGORITHM and USERHASH, besides those above.
/// A response with any other attribute of that range is refused, as RFC 5389
/// (section 7.3.3) requires.
const UNDERSTOOD: [u16; 13] = [
    MAPPED_ADDRESS,
    0x0004,
    0x0005,
    0x0006,
    MESSAGE_INTEGRITY,
    ERROR_CODE,
    0x000A,
    0x0014,
    0x0015,
    MESSAGE_INTEGRITY_SHA256,
    0x001D,
    0x001E,
    XOR_MAPPED_ADDRESS,
];

/// A response longer than this is refused (a Binding response is < 200 bytes).
const MAX_RESPONSE: usize = 1500;

/// A STUN transaction id: 96 random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionId(pub [u8; TRANSACTION_ID_LEN]);

impl TransactionId {
    pub fn random(rng: &SystemRandom) -> Option<Self> {
        let mut id = [0u8; TRANSACTION_ID_LEN];
        rng.fill(&mut id).ok()?;
        Some(Self(id))
    }
}

/// A Binding request without attributes: the 20-byte header alone.
pub fn binding_request(id: TransactionId) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    let header = BINDING_REQUEST
        .to_be_bytes()
        .into_iter()
        .chain([0, 0]) // message length: no attributes
        .chain(MAGIC_COOKIE.to_be_bytes())
        .chain(id.0);
    for (slot, byte) in out.iter_mut().zip(header) {
        *slot = byte;
    }
    out
}

/// Why a datagram is not a usable answer to our Binding request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a STUN header.
    TooShort(usize),
    /// Longer than any Binding response should be.
    TooLong(usize),
    /// The first two bits are not zero: not a STUN message at all.
    NotStun,
    /// No magic cookie: an RFC 3489 server, or not STUN.
    NoCookie,
    /// A STUN message, but the answer to another request.
    WrongTransaction,
    /// The header's length does not match the datagram.
    Length { header: usize, datagram: usize },
    /// A message type other than a Binding response.
    WrongType(u16),
    /// A Binding error response, with its code and reason if they parsed.
    ErrorResponse { code: Option<u16>, reason: String },
    /// An attribute runs past the end of the message.
    TruncatedAttribute(u16),
    /// An address attribute that does not parse.
    BadAddress(u16, &'static str),
    /// A comprehension-required attribute we do not understand.
    UnknownRequired(u16),
    /// FINGERPRINT is malformed, not last, or does not match.
    BadFingerprint(&'static str),
    /// A Binding success response without any mapped address.
    NoAddress,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort(n) => write!(f, "{n} bytes, shorter than a STUN header"),
            ParseError::TooLong(n) => {
                write!(f, "{n} bytes or more, longer than any Binding response")
            }
            ParseError::NotStun => f.write_str("not a STUN message"),
            ParseError::NoCookie => {
                f.write_str("no RFC 5389 magic cookie (an RFC 3489-only server, or not STUN)")
            }
            ParseError::WrongTransaction => f.write_str("the answer to another request"),
            ParseError::Length { header, datagram } => write!(
                f,
                "its header announces {header} bytes of attributes, but {datagram} came"
            ),
            ParseError::WrongType(t) => write!(f, "message type 0x{t:04x}, not a Binding response"),
            ParseError::ErrorResponse { code, reason } => match code {
                Some(code) if reason.is_empty() => write!(f, "error response {code}"),
                Some(code) => write!(f, "error response {code} {reason:?}"),
                None => f.write_str("an error response"),
            },
            ParseError::TruncatedAttribute(t) => {
                write!(f, "attribute 0x{t:04x} runs past the end of the message")
            }
            ParseError::BadAddress(t, why) => write!(f, "attribute 0x{t:04x}: {why}"),
            ParseError::UnknownRequired(t) => write!(
                f,
                "attribute 0x{t:04x} must be understood, and is not (RFC 5389 7.3.3)"
            ),
            ParseError::BadFingerprint(why) => write!(f, "FINGERPRINT {why}"),
            ParseError::NoAddress => {
                f.write_str("no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS attribute")
            }
        }
    }
}

/// The address a STUN server saw our request come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub addr: SocketAddr,
    /// From XOR-MAPPED-ADDRESS (else from the older MAPPED-ADDRESS).
    pub xor: bool,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Parses `datagram` as the Binding success response to request `id`.
pub fn parse_binding_response(datagram: &[u8], id: TransactionId) -> Result<Mapped, ParseError> {
    let len = datagram.len();
    if len < HEADER_LEN {
        return Err(ParseError::TooShort(len));
    }
    if len > MAX_RESPONSE {
        return Err(ParseError::TooLong(len));
    }
    let short = || ParseError::TooShort(len);
    let message_type = be16(datagram, 0).ok_or_else(short)?;
    if message_type & 0xC000 != 0 {
        return Err(ParseError::NotStun);
    }
    if be32(datagram, 4).ok_or_else(short)? != MAGIC_COOKIE {
        return Err(ParseError::NoCookie);
    }
    let tid = datagram.get(8..HEADER_LEN).ok_or_else(short)?;
    if tid != id.0 {
        return Err(ParseError::WrongTransaction);
    }
    let body_len = usize::from(be16(datagram, 2).ok_or_else(short)?);
    let body = datagram.get(HEADER_LEN..).ok_or_else(short)?;
    if body_len != body.len() || body_len % 4 != 0 {
        return Err(ParseError::Length {
            header: body_len,
            datagram: body.len(),
        });
    }
    let attributes = attributes(body)?;
    match message_type {
        BINDING_SUCCESS => {}
        BINDING_ERROR => return Err(error_response(&attributes)),
        other => return Err(ParseError::WrongType(other)),
    }
    check_fingerprint(datagram, &attributes)?;

    let mut integrity_seen = false;
    let mut xor_mapped = None;
    let mut mapped = None;
    for attr in &attributes {
        // After MESSAGE-INTEGRITY, only FINGERPRINT counts (RFC 5389 15.4).
        // We sent no credentials, so the integrity itself cannot be checked.
        if integrity_seen {
            continue;
        }
        match attr.kind {
            MESSAGE_INTEGRITY | MESSAGE_INTEGRITY_SHA256 => integrity_seen = true,
            XOR_MAPPED_ADDRESS if xor_mapped.is_none() => {
                xor_mapped = Some(address(attr, Some(&id))?);
            }
            MAPPED_ADDRESS if mapped.is_none() => mapped = Some(address(attr, None)?),
            kind if kind < 0x8000 && !UNDERSTOOD.contains(&kind) => {
                return Err(ParseError::UnknownRequired(kind));
            }
            _ => {}
        }
    }
    match (xor_mapped, mapped) {
        (Some(addr), _) => Ok(Mapped { addr, xor: true }),
        (None, Some(addr)) => Ok(Mapped { addr, xor: false }),
        (None, None) => Err(ParseError::NoAddress),
    }
}

#[derive(Debug)]
struct Attribute<'a> {
    kind: u16,
    /// Offset of its header in the body.
    at: usize,
    value: &'a [u8],
}

/// Splits the body into attributes; every one must fit, padding included.
fn attributes(body: &[u8]) -> Result<Vec<Attribute<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let kind = be16(body, at).ok_or(ParseError::TruncatedAttribute(0))?;
        let value_len =
            usize::from(be16(body, at + 2).ok_or(ParseError::TruncatedAttribute(kind))?);
        let start = at + 4;
        let end = start + value_len;
        let value = body
            .get(start..end)
            .ok_or(ParseError::TruncatedAttribute(kind))?;
        let padded = end + (4 - value_len % 4) % 4;
        if padded > body.len() {
            return Err(ParseError::TruncatedAttribute(kind));
        }
        out.push(Attribute { kind, at, value });
        at = padded;
    }
    Ok(out)
}

/// An address attribute: 0, family, port, address; XORed when `xor_with`.
fn address(
    attr: &Attribute<'_>,
    xor_with: Option<&TransactionId>,
) -> Result<SocketAddr, ParseError> {
    let bad = |why| ParseError::BadAddress(attr.kind, why);
    let v = attr.value;
    let family = *v.get(1).ok_or_else(|| bad("too short"))?;
    let raw_port = be16(v, 2).ok_or_else(|| bad("too short"))?;
    let raw = v.get(4..).ok_or_else(|| bad("too short"))?;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = match xor_with {
        Some(_) => raw_port ^ COOKIE_HIGH,
        None => raw_port,
    };
    let ip = match family {
        0x01 => {
            let mut octets: [u8; 4] = raw.try_into().map_err(|_| bad("IPv4 but not 4 bytes"))?;
            if xor_with.is_some() {
                for (o, k) in octets.iter_mut().zip(cookie) {
                    *o ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        0x02 => {
            let mut octets: [u8; 16] = raw.try_into().map_err(|_| bad("IPv6 but not 16 bytes"))?;
            if let Some(id) = xor_with {
                let key = cookie.iter().chain(id.0.iter());
                for (o, k) in octets.iter_mut().zip(key) {
                    *o ^= *k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err(bad("unknown address family")),
    };
    if v.first() != Some(&0) {
        return Err(bad("the first byte is not zero"));
    }
    Ok(SocketAddr::new(ip, port))
}

fn error_response(attributes: &[Attribute<'_>]) -> ParseError {
    let Some(attr) = attributes.iter().find(|a| a.kind == ERROR_CODE) else {
        return ParseError::ErrorResponse {
            code: None,
            reason: String::new(),
        };
    };
    let v = attr.value;
    let code = match (v.get(2), v.get(3)) {
        (Some(class), Some(number)) => Some(u16::from(class & 0x07) * 100 + u16::from(*number)),
        _ => None,
    };
    // Shown to the user: printable ASCII only, and not much of it.
    let reason = v
        .get(4..)
        .map(|r| {
            String::from_utf8_lossy(r)
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(80)
                .collect::<String>()
        })
        .unwrap_or_default();
    ParseError::ErrorResponse {
        code,
        reason: reason.trim().to_owned(),
    }
}

/// When FINGERPRINT is present it must be last, 4 bytes, and match.
fn check_fingerprint(datagram: &[u8], attributes: &[Attribute<'_>]) -> Result<(), ParseError> {
    let Some(position) = attributes.iter().position(|a| a.kind == FINGERPRINT) else {
        return Ok(());
    };
    if position + 1 != attributes.len() {
        return Err(ParseError::BadFingerprint("is not the last attribute"));
    }
    let attr = attributes
        .get(position)
        .ok_or(ParseError::BadFingerprint("is missing"))?;
    let stated = be32(attr.value, 0)
        .filter(|_| attr.value.len() == 4)
        .ok_or(ParseError::BadFingerprint("is not 4 bytes"))?;
    let covered = datagram
        .get(..HEADER_LEN + attr.at)
        .ok_or(ParseError::BadFingerprint("is out of bounds"))?;
    if crc32(covered) ^ FINGERPRINT_XOR != stated {
        return Err(ParseError::BadFingerprint("does not match the message"));
    }
    Ok(())
}

/// CRC-32 (ISO-HDLC, as zlib), bit by bit: a few hundred bytes at most.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// When requests are (re)sent, counted from the first, and when a server
/// that has not answered is given up.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub sends: &'static [Duration],
    pub give_up: Duration,
}

/// Three requests, at 0, 0.5 s and 1.5 s; given up 3 s after the first.
pub const SCHEDULE: Schedule = Schedule {
    sends: &[
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_millis(1500),
    ],
    give_up: Duration::from_secs(3),
};

/// A STUN server's answer, and the socket it was asked from.
#[derive(Debug)]
pub struct Discovery {
    pub server: StunServer,
    /// This host's address and port as the STUN server saw them.
    pub mapped: Mapped,
    /// Bound to the local address the question was sent from, and connected
    /// to the server's address; the knock is sent from it too.
    pub socket: UdpSocket,
}

pub fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Asks `servers` in turn, over the family of `local` and from `local` (its
/// port is ignored: each question gets a new ephemeral port), until one
/// answers with a usable address of that family. Returns that answer, or one
/// line per server saying why it gave none.
pub fn discover(
    servers: &[StunServer],
    local: SocketAddr,
    schedule: &Schedule,
    step: &mut dyn FnMut(String),
) -> Result<Discovery, Vec<String>> {
    let rng = SystemRandom::new();
    let mut errors = Vec::with_capacity(servers.len());
    for server in servers {
        match ask(server, local, schedule, &rng, step) {
            Ok(found) => return Ok(found),
            Err(why) => {
                step(format!("STUN {server}: {why}"));
                errors.push(format!("{server}: {why}"));
            }
        }
    }
    Err(errors)
}

/// One server: resolve it in `local`'s family, then ask it.
fn ask(
    server: &StunServer,
    local: SocketAddr,
    schedule: &Schedule,
    rng: &SystemRandom,
    step: &mut dyn FnMut(String),
) -> Result<Discovery, String> {
    let family = family_name(local.ip());
    let addrs: Vec<SocketAddr> = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|e| {
            let text = e.to_string();
            let text = text
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&text)
                .to_owned();
            format!("name resolution failed: {text}")
        })?
        .collect();
    let Some(server_addr) = addrs
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == local.is_ipv4())
    else {
        let others: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        return Err(format!(
            "has no {family} address (only {}), and the knock goes over {family}",
            others.join(", ")
        ));
    };
    let id = TransactionId::random(rng)
        .ok_or_else(|| "the system random number generator failed".to_owned())?;
    let mut bind = local;
    bind.set_port(0);
    let socket = UdpSocket::bind(bind).map_err(|e| format!("cannot bind {}: {e}", bind.ip()))?;
    socket
        .connect(server_addr)
        .map_err(|e| format!("cannot reach {}: {e}", server_addr.ip()))?;
    let from = socket
        .local_addr()
        .map_or_else(|_| bind.ip().to_string(), |a| a.to_string());
    step(format!(
        "asking STUN server {server} ({}) over {family} from {from}",
        server_addr.ip()
    ));
    let mapped = exchange(&socket, id, schedule)?;
    if mapped.addr.is_ipv4() != local.is_ipv4() {
        return Err(format!(
            "answered with {}, not an {family} address",
            mapped.addr
        ));
    }
    let ip = mapped.addr.ip();
    let v4_mapped = matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if ip.is_unspecified() || ip.is_multicast() || v4_mapped || mapped.addr.port() == 0 {
        return Err(format!(
            "answered with {}, which cannot be where a datagram came from",
            mapped.addr
        ));
    }
    step(format!(
        "STUN server {server} ({}) says this host is {} as seen from outside ({}); the knock \
         will be bound to {ip}",
        server_addr.ip(),
        mapped.addr,
        if mapped.xor {
            "XOR-MAPPED-ADDRESS"
        } else {
            "MAPPED-ADDRESS"
        },
    ));
    Ok(Discovery {
        server: server.clone(),
        mapped,
        socket,
    })
}

/// Sends the request on `socket` (connected to the server) by `schedule`
/// until a valid answer comes.
fn exchange(socket: &UdpSocket, id: TransactionId, schedule: &Schedule) -> Result<Mapped, String> {
    let request = binding_request(id);
    let started = Instant::now();
    let deadline = started + schedule.give_up;
    let mut sent = 0usize;
    let mut unusable: Option<ParseError> = None;
    let mut buf = [0u8; MAX_RESPONSE + 1];
    let refused = || "refused: nothing listens there (ICMP port unreachable)".to_owned();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Send every request whose time has come.
        while let Some(at) = schedule.sends.get(sent) {
            if started + *at > now {
                break;
            }
            match socket.send(&request) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Err(refused()),
                Err(e) => return Err(format!("sending failed: {e}")),
            }
        }
        let next_send = schedule
            .sends
            .get(sent)
            .map_or(deadline, |at| (started + *at).min(deadline));
        let wait = next_send.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            continue;
        }
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| format!("cannot wait for the answer: {e}"))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                let datagram = buf.get(..n).unwrap_or(&[]);
                match parse_binding_response(datagram, id) {
                    Ok(mapped) => return Ok(mapped),
                    // A late answer to someone else's request: not ours.
                    Err(ParseError::WrongTransaction) => {}
                    Err(err @ ParseError::ErrorResponse { .. }) => {
                        return Err(format!("answered with {err}"));
                    }
                    Err(err) => unusable = Some(err),
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Err(refused()),
            Err(e) => return Err(format!("receiving failed: {e}")),
        }
    }
    let waited = knock_keys::duration::format_duration(schedule.give_up);
    let requests = if sent == 1 {
        "1 request".to_owned()
    } else {
        format!("{sent} requests")
    };
    Err(match unusable {
        Some(err) => format!(
            "no usable answer within {waited} ({requests}; the last answer was unusable: {err})"
        ),
        None => format!("timed out after {waited} ({requests} sent, no answer)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC5769_ID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    /// RFC 5769 section 2.2: sample IPv4 response (SOFTWARE,
    /// XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT).
    const RFC5769_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 section 2.3: sample IPv6 response.
    const RFC5769_V6: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    /// A response to `id` with `attrs` (type, value), lengths and padding
    /// filled in.
    fn response(message_type: u16, id: TransactionId, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&message_type.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&body);
        out
    }

    fn xor_v4(addr: SocketAddr) -> Vec<u8> {
        let SocketAddr::V4(a) = addr else { panic!() };
        let mut v = vec![0, 1];
        v.extend_from_slice(&(a.port() ^ 0x2112).to_be_bytes());
        for (o, k) in a.ip().octets().iter().zip(MAGIC_COOKIE.to_be_bytes()) {
            v.push(o ^ k);
        }
        v
    }

    fn plain(addr: SocketAddr) -> Vec<u8> {
        let mut v = vec![0, if addr.is_ipv4() { 1 } else { 2 }];
        v.extend_from_slice(&addr.port().to_be_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => v.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => v.extend_from_slice(&ip.octets()),
        }
        v
    }

    #[test]
    fn request_is_a_bare_binding_header() {
        let id = TransactionId([7; 12]);
        let req = binding_request(id);
        assert_eq!(&req[..4], &[0x00, 0x01, 0x00, 0x00]);
        assert_eq!(&req[4..8], &[0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&req[8..], &[7; 12]);
        let rng = SystemRandom::new();
        assert_ne!(
            TransactionId::random(&rng).unwrap(),
            TransactionId::random(&rng).unwrap()
        );
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rfc_5769_vectors() {
        let v4 = parse_binding_response(&RFC5769_V4, RFC5769_ID).unwrap();
        assert_eq!(v4.addr, "192.0.2.1:32853".parse().unwrap());
        assert!(v4.xor);
        let v6 = parse_binding_response(&RFC5769_V6, RFC5769_ID).unwrap();
        assert_eq!(
            v6.addr,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
        // Another transaction id: not ours.
        let mut other = RFC5769_ID;
        other.0[11] ^= 1;
        assert_eq!(
            parse_binding_response(&RFC5769_V4, other),
            Err(ParseError::WrongTransaction)
        );
    }

    #[test]
    fn fingerprint_is_checked() {
        let mut bad = RFC5769_V4;
        bad[79] ^= 1;
        assert!(matches!(
            parse_binding_response(&bad, RFC5769_ID),
            Err(ParseError::BadFingerprint(_))
        ));
        // A flipped bit in the SOFTWARE text, which nothing else checks.
        let mut bad = RFC5769_V4;
        bad[25] ^= 0x20;
        assert!(matches!(
            parse_binding_response(&bad, RFC5769_ID),
            Err(ParseError::BadFingerprint(_))
        ));
        // FINGERPRINT not last.
        let id = TransactionId([3; 12]);
        let addr: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let msg = response(
            BINDING_SUCCESS,
            id,
            &[
                (FINGERPRINT, vec![0; 4]),
                (XOR_MAPPED_ADDRESS, xor_v4(addr)),
            ],
        );
        assert!(matches!(
            parse_binding_response(&msg, id),
            Err(ParseError::BadFingerprint(_))
        ));
    }

    #[test]
    fn xor_mapped_wins_mapped_is_the_fallback() {
        let id = TransactionId([1; 12]);
        let real: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let decoy: SocketAddr = "192.0.2.99:1".parse().unwrap();
        let both = response(
            BINDING_SUCCESS,
            id,
            &[
                (MAPPED_ADDRESS, plain(decoy)),
                (XOR_MAPPED_ADDRESS, xor_v4(real)),
                (0x8022, b"coturn".to_vec()),
            ],
        );
        assert_eq!(
            parse_binding_response(&both, id).unwrap(),
            Mapped {
                addr: real,
                xor: true
            }
        );
        let v6: SocketAddr = "[2001:db8::5]:6000".parse().unwrap();
        let only_mapped = response(BINDING_SUCCESS, id, &[(MAPPED_ADDRESS, plain(v6))]);
        assert_eq!(
            parse_binding_response(&only_mapped, id).unwrap(),
            Mapped {
                addr: v6,
                xor: false
            }
        );
        let none = response(BINDING_SUCCESS, id, &[(0x8022, b"x".to_vec())]);
        assert_eq!(
            parse_binding_response(&none, id),
            Err(ParseError::NoAddress)
        );
        // Attributes after MESSAGE-INTEGRITY are ignored.
        let after = response(
            BINDING_SUCCESS,
            id,
            &[
                (MESSAGE_INTEGRITY, vec![0; 20]),
                (XOR_MAPPED_ADDRESS, xor_v4(real)),
            ],
        );
        assert_eq!(
            parse_binding_response(&after, id),
            Err(ParseError::NoAddress)
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        let id = TransactionId([9; 12]);
        let addr: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let good = response(BINDING_SUCCESS, id, &[(XOR_MAPPED_ADDRESS, xor_v4(addr))]);
        assert_eq!(parse_binding_response(&good, id).unwrap().addr, addr);

        // Every truncation.
        for cut in 0..good.len() {
            assert!(
                parse_binding_response(&good[..cut], id).is_err(),
                "cut {cut}"
            );
        }
        // Trailing bytes beyond the announced length.
        let mut long = good.clone();
        long.extend_from_slice(&[0; 4]);
        assert!(matches!(
            parse_binding_response(&long, id),
            Err(ParseError::Length { .. })
        ));
        let mut huge = good.clone();
        huge.resize(MAX_RESPONSE + 1, 0);
        assert!(matches!(
            parse_binding_response(&huge, id),
            Err(ParseError::TooLong(_))
        ));
        // Header fields.
        let mut not_stun = good.clone();
        not_stun[0] |= 0x80;
        assert_eq!(
            parse_binding_response(&not_stun, id),
            Err(ParseError::NotStun)
        );
        let mut no_cookie = good.clone();
        no_cookie[4] ^= 0xff;
        assert_eq!(
            parse_binding_response(&no_cookie, id),
            Err(ParseError::NoCookie)
        );
        let request = binding_request(id);
        assert_eq!(
            parse_binding_response(&request, id),
            Err(ParseError::WrongType(BINDING_REQUEST))
        );
        assert_eq!(
            parse_binding_response(&good, TransactionId([8; 12])),
            Err(ParseError::WrongTransaction)
        );
        // An attribute length that runs past the end.
        let mut overrun = good.clone();
        overrun[23] = 0x40;
        assert!(matches!(
            parse_binding_response(&overrun, id),
            Err(ParseError::TruncatedAttribute(XOR_MAPPED_ADDRESS))
        ));
        // Address attributes of the wrong shape.
        for value in [
            vec![0, 1, 0x11],                   // too short
            vec![0, 3, 0, 1, 1, 2, 3, 4],       // unknown family
            vec![0, 1, 0, 1, 1, 2, 3, 4, 5, 6], // IPv4 with 6 bytes
            vec![0, 2, 0, 1, 1, 2, 3, 4],       // IPv6 with 4 bytes
            vec![1, 1, 0, 1, 1, 2, 3, 4],       // reserved byte set
        ] {
            let msg = response(BINDING_SUCCESS, id, &[(XOR_MAPPED_ADDRESS, value.clone())]);
            assert!(
                matches!(
                    parse_binding_response(&msg, id),
                    Err(ParseError::BadAddress(XOR_MAPPED_ADDRESS, _))
                ),
                "{value:?}"
            );
        }
        // An unknown comprehension-required attribute; an unknown optional
        // one is fine.
        let required = response(
            BINDING_SUCCESS,
            id,
            &[(0x0042, vec![1]), (XOR_MAPPED_ADDRESS, xor_v4(addr))],
        );
        assert_eq!(
            parse_binding_response(&required, id),
            Err(ParseError::UnknownRequired(0x0042))
        );
        let optional = response(
            BINDING_SUCCESS,
            id,
            &[(0x8042, vec![1]), (XOR_MAPPED_ADDRESS, xor_v4(addr))],
        );
        assert!(parse_binding_response(&optional, id).is_ok());
        // An error response says its code and reason, in printable text.
        let mut error = vec![0, 0, 4, 20];
        error.extend_from_slice(b"Unknown\x1b[31m Attribute");
        let msg = response(BINDING_ERROR, id, &[(ERROR_CODE, error)]);
        let err = parse_binding_response(&msg, id).unwrap_err();
        assert_eq!(
            err,
            ParseError::ErrorResponse {
                code: Some(420),
                reason: "Unknown[31m Attribute".into()
            }
        );
        assert!(!err.to_string().contains('\x1b'));
    }

    /// A small deterministic generator, for the loops below.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let id = RFC5769_ID;
        // Pure noise, often with a valid-looking header so the attribute
        // walk is reached.
        for round in 0..100_000 {
            let len = rng.below(120);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if round % 2 == 0 && len >= HEADER_LEN {
                bytes[0] = 0x01;
                bytes[1] = 0x01;
                let body = (len - HEADER_LEN) as u16;
                bytes[2..4].copy_from_slice(&body.to_be_bytes());
                bytes[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                bytes[8..20].copy_from_slice(&id.0);
            }
            let _ = parse_binding_response(&bytes, id);
        }
        // Mutations of real responses: flipped bits, changed bytes, cuts
        // and extensions. A mutated response is either refused or still
        // decodes to an address of a known family.
        for base in [&RFC5769_V4[..], &RFC5769_V6[..]] {
            for _ in 0..100_000 {
                let mut bytes = base.to_vec();
                for _ in 0..=rng.below(4) {
                    match rng.below(4) {
                        0 => {
                            let i = rng.below(bytes.len().max(1));
                            if let Some(b) = bytes.get_mut(i) {
                                *b ^= 1 << rng.below(8);
                            }
                        }
                        1 => {
                            let i = rng.below(bytes.len().max(1));
                            if let Some(b) = bytes.get_mut(i) {
                                *b = rng.next() as u8;
                            }
                        }
                        2 => bytes.truncate(rng.below(bytes.len() + 1)),
                        _ => bytes.extend((0..rng.below(9)).map(|_| rng.next() as u8)),
                    }
                }
                let _ = parse_binding_response(&bytes, id);
            }
        }
    }

    /// A fake STUN server on loopback that answers each request with
    /// `answer(request)`, or not at all when it returns None.
    fn fake_server(
        answer: impl Fn(&[u8], SocketAddr) -> Vec<Vec<u8>> + Send + 'static,
    ) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                for reply in answer(&buf[..n], from) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        addr
    }

    fn id_of(request: &[u8]) -> TransactionId {
        TransactionId(request[8..20].try_into().unwrap())
    }

    fn stun_server(addr: SocketAddr) -> StunServer {
        StunServer {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    const FAST: Schedule = Schedule {
        sends: &[Duration::ZERO, Duration::from_millis(50)],
        give_up: Duration::from_millis(300),
    };

    #[test]
    fn discovery_skips_garbage_and_other_transactions() {
        let server = fake_server(|req, from| {
            let id = id_of(req);
            vec![
                b"garbage".to_vec(),
                response(
                    BINDING_SUCCESS,
                    TransactionId([0; 12]),
                    &[(XOR_MAPPED_ADDRESS, xor_v4("192.0.2.1:1".parse().unwrap()))],
                ),
                response(BINDING_SUCCESS, id, &[(XOR_MAPPED_ADDRESS, xor_v4(from))]),
            ]
        });
        let mut steps = Vec::new();
        let found = discover(
            &[stun_server(server)],
            "127.0.0.1:0".parse().unwrap(),
            &FAST,
            &mut |s| steps.push(s),
        )
        .unwrap();
        assert_eq!(found.mapped.addr, found.socket.local_addr().unwrap());
        assert_eq!(found.socket.peer_addr().unwrap(), server);
        assert!(
            steps
                .iter()
                .any(|s| s.contains("says this host is 127.0.0.1:")),
            "{steps:?}"
        );
    }

    #[test]
    fn discovery_retransmits_then_moves_on() {
        // The first server never answers; the second answers only the
        // second copy of the request.
        let silent = fake_server(|_, _| vec![]);
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&seen);
        let late = fake_server(move |req, from| {
            if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return vec![];
            }
            vec![response(
                BINDING_SUCCESS,
                id_of(req),
                &[(MAPPED_ADDRESS, plain(from))],
            )]
        });
        let started = Instant::now();
        let found = discover(
            &[stun_server(silent), stun_server(late)],
            "127.0.0.1:0".parse().unwrap(),
            &FAST,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(found.socket.peer_addr().unwrap(), late);
        assert!(!found.mapped.xor);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn discovery_failures_say_why() {
        let silent = fake_server(|_, _| vec![]);
        // A closed port: bind, learn the port, close.
        let closed = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let wrong_family = fake_server(|req, _| {
            vec![response(
                BINDING_SUCCESS,
                id_of(req),
                &[(MAPPED_ADDRESS, plain("[2001:db8::1]:5".parse().unwrap()))],
            )]
        });
        let refusing = fake_server(|req, _| {
            vec![response(
                BINDING_ERROR,
                id_of(req),
                &[(ERROR_CODE, vec![0, 0, 5, 0, b'N', b'o'])],
            )]
        });
        let garbage = fake_server(|_, _| vec![b"not stun at all, no".to_vec()]);
        let errors = discover(
            &[
                stun_server(silent),
                stun_server(closed),
                stun_server(wrong_family),
                stun_server(refusing),
                stun_server(garbage),
                StunServer {
                    host: "::1".into(),
                    port: 3478,
                },
            ],
            "127.0.0.1:0".parse().unwrap(),
            &FAST,
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(
            errors[0].contains("timed out after 300ms (2 requests sent"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("refused"), "{}", errors[1]);
        assert!(errors[2].contains("not an IPv4 address"), "{}", errors[2]);
        assert!(
            errors[3].contains("error response 500 \"No\""),
            "{}",
            errors[3]
        );
        assert!(errors[4].contains("unusable"), "{}", errors[4]);
        assert!(errors[5].contains("has no IPv4 address"), "{}", errors[5]);
    }
}
