//! knock-wire: the attacker's and the eavesdropper's hands in the namespace
//! tests. Run inside a namespace with `ip netns exec`.
//!
//! ```text
//! knock-wire raw  < LINES      one crafted IP packet per line (raw socket, IP header included):
//!                               SRC DST SPORT DPORT MODE HEX
//!                               MODE: ok | badsum | zerosum | frag:N (N-byte fragments, N % 8 == 0)
//!                               SRC/DST both IPv4 or both IPv6; any SRC (spoofing)
//! knock-wire udp ADDR PORT LEN  one datagram of LEN pattern bytes from an ordinary UDP socket
//!                               (the kernel fragments what exceeds the MTU)
//! knock-wire recv ADDR PORT MS  receives one datagram on ADDR:PORT, prints it as hex
//! ```
//!
//! Exit 0 when everything was sent (or received), 1 otherwise, with the reason
//! on stderr.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// IPPROTO_RAW: a raw socket whose packets carry their own IP header.
const IPPROTO_RAW: i32 = 255;
const IPPROTO_UDP: u8 = 17;
const IPV6_FRAGMENT: u8 = 44;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["raw"] => raw(),
        ["udp", addr, port, len] => udp(addr, port, len),
        ["recv", addr, port, ms] => recv(addr, port, ms),
        _ => Err("usage: knock-wire raw | udp ADDR PORT LEN | recv ADDR PORT MS".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("knock-wire: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("bad {what} {text:?}"))
}

fn udp(addr: &str, port: &str, len: &str) -> Result<(), String> {
    let addr: IpAddr = parse(addr, "address")?;
    let target = SocketAddr::new(addr, parse(port, "port")?);
    let len: usize = parse(len, "length")?;
    let payload: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect();
    let local: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
    let sent = socket
        .send_to(&payload, target)
        .map_err(|e| format!("send {len} bytes: {e}"))?;
    if sent != len {
        return Err(format!("sent {sent} of {len} bytes"));
    }
    Ok(())
}

fn recv(addr: &str, port: &str, ms: &str) -> Result<(), String> {
    let addr: IpAddr = parse(addr, "address")?;
    let socket = UdpSocket::bind(SocketAddr::new(addr, parse(port, "port")?))
        .map_err(|e| format!("bind: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(parse(ms, "timeout")?)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 70_000];
    let (len, _) = socket
        .recv_from(&mut buf)
        .map_err(|e| format!("receive: {e}"))?;
    println!("{}", hex(&buf[..len]));
    Ok(())
}

fn raw() -> Result<(), String> {
    let v4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .map_err(|e| format!("raw IPv4 socket: {e}"))?;
    let v6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .map_err(|e| format!("raw IPv6 socket: {e}"))?;
    let mut id: u32 = 0x4b00_0000 ^ std::process::id();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [src, dst, sport, dport, mode, rest @ ..] = fields.as_slice() else {
            return Err(format!(
                "line {}: expected SRC DST SPORT DPORT MODE HEX",
                number + 1
            ));
        };
        let payload = match rest {
            [] => Vec::new(),
            [text] => unhex(text).ok_or_else(|| format!("line {}: bad hex", number + 1))?,
            _ => return Err(format!("line {}: too many fields", number + 1)),
        };
        let src: IpAddr = parse(src, "source")?;
        let dst: IpAddr = parse(dst, "destination")?;
        let udp = udp_segment(
            src,
            dst,
            parse(sport, "port")?,
            parse(dport, "port")?,
            &payload,
            mode,
        )?;
        id = id.wrapping_add(1);
        let fragment = match mode.strip_prefix("frag:") {
            Some(n) => Some(parse::<usize>(n, "fragment size")?),
            None => None,
        };
        let packets = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_packets(s, d, &udp, fragment, id as u16 | 1)?,
            (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_packets(s, d, &udp, fragment, id | 1)?,
            _ => return Err(format!("line {}: mixed address families", number + 1)),
        };
        let (socket, target) = match dst {
            IpAddr::V4(d) => (&v4, SockAddr::from(SocketAddr::new(IpAddr::V4(d), 0))),
            IpAddr::V6(d) => (&v6, SockAddr::from(SocketAddr::new(IpAddr::V6(d), 0))),
        };
        for packet in packets {
            socket
                .send_to(&packet, &target)
                .map_err(|e| format!("line {}: send {} bytes: {e}", number + 1, packet.len()))?;
        }
    }
    Ok(())
}

/// The UDP header and payload, with the checksum `mode` asks for.
fn udp_segment(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    mode: &str,
) -> Result<Vec<u8>, String> {
    let len = 8 + payload.len();
    let len16 = u16::try_from(len).map_err(|_| format!("{len} bytes do not fit a UDP length"))?;
    let mut seg = Vec::with_capacity(len);
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&len16.to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
            pseudo.extend_from_slice(&len16.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
        }
        _ => return Err("mixed address families".to_owned()),
    }
    pseudo.extend_from_slice(&seg);
    let mut sum = checksum(&pseudo);
    if sum == 0 {
        sum = 0xffff;
    }
    let sum = match mode {
        "ok" => sum,
        m if m.starts_with("frag:") => sum,
        // Any other nonzero value is wrong (zero means "no checksum" in IPv4).
        "badsum" => match sum ^ 0x5a5a {
            0 => 0x1234,
            bad => bad,
        },
        "zerosum" => 0,
        other => return Err(format!("unknown mode {other:?}")),
    };
    seg[6..8].copy_from_slice(&sum.to_be_bytes());
    Ok(seg)
}

fn ipv4_packets(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    udp: &[u8],
    fragment: Option<usize>,
    id: u16,
) -> Result<Vec<Vec<u8>>, String> {
    let size = fragment.unwrap_or(udp.len().max(8));
    if size == 0 || (fragment.is_some() && !size.is_multiple_of(8)) {
        return Err("fragment size must be a positive multiple of 8".to_owned());
    }
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let end = (offset + size).min(udp.len());
        let more = end < udp.len();
        let body = &udp[offset..end];
        let total =
            u16::try_from(20 + body.len()).map_err(|_| "IPv4 packet too large".to_owned())?;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        let flags_offset = (u16::from(more) << 13) | (offset / 8) as u16;
        p.extend_from_slice(&flags_offset.to_be_bytes());
        p.extend_from_slice(&[64, IPPROTO_UDP, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let sum = checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(body);
        out.push(p);
        if !more {
            return Ok(out);
        }
        offset = end;
    }
}

fn ipv6_packets(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    udp: &[u8],
    fragment: Option<usize>,
    id: u32,
) -> Result<Vec<Vec<u8>>, String> {
    let header = |next: u8, payload_len: usize| -> Result<Vec<u8>, String> {
        let len = u16::try_from(payload_len).map_err(|_| "IPv6 payload too large".to_owned())?;
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        Ok(p)
    };
    let Some(size) = fragment else {
        let mut p = header(IPPROTO_UDP, udp.len())?;
        p.extend_from_slice(udp);
        return Ok(vec![p]);
    };
    if size == 0 || !size.is_multiple_of(8) {
        return Err("fragment size must be a positive multiple of 8".to_owned());
    }
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let end = (offset + size).min(udp.len());
        let more = end < udp.len();
        let body = &udp[offset..end];
        let mut p = header(IPV6_FRAGMENT, 8 + body.len())?;
        let offset_flags = ((offset / 8) as u16) << 3 | u16::from(more);
        p.extend_from_slice(&[IPPROTO_UDP, 0]);
        p.extend_from_slice(&offset_flags.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(body);
        out.push(p);
        if !more {
            return Ok(out);
        }
        offset = end;
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
