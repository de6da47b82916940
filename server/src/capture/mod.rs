//! Capture: knocks reach us through an `AF_PACKET` socket with a kernel BPF
//! filter. No socket is bound on the knock port, so nothing answers it, and
//! the firewall drops the datagram after we have seen a copy.

pub mod filter;
mod sys;

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use pnet_datalink::{Channel, ChannelType, Config, DataLinkReceiver, NetworkInterface};
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::udp::UdpPacket;
use thiserror::Error;

/// `ETH_P_ALL`: every protocol; the BPF filter does the selecting.
const ETH_P_ALL: u16 = 0x0003;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("interface {0:?} does not exist (see `ip link`), or use interface = \"any\"")]
    NoSuchInterface(String),
    #[error("cannot open the packet socket: {0} (needs CAP_NET_RAW)")]
    Socket(io::Error),
    #[error("cannot bind the packet socket to {interface}: {source}")]
    Bind {
        interface: String,
        source: io::Error,
    },
}

/// A UDP datagram to the knock port, as seen on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub source: IpAddr,
    pub payload: &'a [u8],
}

/// After a read that returned at least this many frames, the next read waits
/// [`FLOOD_PAUSE`] first.
const BUSY_BATCH: usize = 4;
/// Lets a flood queue up so that one `recvmmsg` takes dozens of frames
/// instead of one wake-up per frame; never applies when traffic is light.
const FLOOD_PAUSE: Duration = Duration::from_micros(200);

/// A live capture on one interface, or all of them.
///
/// pnet_datalink binds the filtered socket to the interface and owns it. The
/// hot path then reads frames in batches with `recvmmsg` on that descriptor:
/// pnet's receiver polls once per frame, which costs 3.1 µs of server CPU
/// per flood datagram against 1 µs for batches (docs/PERFORMANCE.md).
pub struct Capture {
    // Owns the descriptor (closed on drop); not read from.
    _receiver: Box<dyn DataLinkReceiver>,
    fd: RawFd,
    knock_port: u16,
    poll_every: Duration,
    batch: sys::Batch,
    read: usize,
    next: usize,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("knock_port", &self.knock_port)
            .finish()
    }
}

/// What one wait for a packet produced.
#[derive(Debug)]
pub enum Next<'a> {
    Datagram(Datagram<'a>),
    /// Something passed the filter but is not a well-formed UDP datagram to
    /// the knock port.
    Malformed,
    /// Nothing arrived within the read timeout.
    Idle,
}

impl Capture {
    /// Opens a capture of UDP datagrams to `knock_port` on `interface`
    /// ("any" for all interfaces). `poll_every` bounds how long [`Self::wait_next`]
    /// waits, so the caller can look at signals and timers.
    pub fn open(
        interface: &str,
        knock_port: u16,
        poll_every: Duration,
    ) -> Result<Self, CaptureError> {
        let nic = find_interface(interface)?;
        let program = filter::knock_filter(knock_port);
        let fd = sys::open_filtered_packet_socket(&program).map_err(CaptureError::Socket)?;
        let config = Config {
            channel_type: ChannelType::Layer3(ETH_P_ALL),
            socket_fd: Some(fd),
            promiscuous: false,
            read_timeout: Some(poll_every),
            read_buffer_size: 4096,
            write_buffer_size: 0,
            ..Config::default()
        };
        // pnet binds the descriptor to the interface and owns it from here,
        // closing it on drop (also when binding fails).
        match pnet_datalink::channel(&nic, config) {
            Ok(Channel::Ethernet(_sender, receiver)) => Ok(Self {
                _receiver: receiver,
                fd,
                knock_port,
                poll_every,
                batch: sys::Batch::new(),
                read: 0,
                next: 0,
            }),
            Ok(_) => Err(CaptureError::Bind {
                interface: interface.to_owned(),
                source: io::Error::other("unexpected channel type"),
            }),
            Err(source) => Err(CaptureError::Bind {
                interface: interface.to_owned(),
                source,
            }),
        }
    }

    /// Waits for the next datagram, at most the poll interval.
    pub fn wait_next(&mut self) -> io::Result<Next<'_>> {
        if self.next >= self.read {
            if self.read >= BUSY_BATCH {
                std::thread::sleep(FLOOD_PAUSE);
            }
            self.read = self.fill()?;
            self.next = 0;
            if self.read == 0 {
                return Ok(Next::Idle);
            }
        }
        let index = self.next;
        self.next += 1;
        Ok(
            match parse_datagram(self.batch.frame(index), self.knock_port) {
                Some(datagram) => Next::Datagram(datagram),
                None => Next::Malformed,
            },
        )
    }

    /// Reads what is queued, or waits up to the poll interval for something.
    fn fill(&mut self) -> io::Result<usize> {
        // `_receiver` owns the descriptor and lives as long as `self`.
        let fd = self.fd;
        let read = sys::recv_batch(fd, &mut self.batch)?;
        if read > 0 || !sys::wait_readable(fd, self.poll_every)? {
            return Ok(read);
        }
        sys::recv_batch(fd, &mut self.batch)
    }
}

fn find_interface(name: &str) -> Result<NetworkInterface, CaptureError> {
    if name == "any" {
        // Index 0 binds the packet socket to every interface.
        return Ok(NetworkInterface {
            name: "any".into(),
            description: String::new(),
            index: 0,
            mac: None,
            ips: Vec::new(),
            flags: 0,
        });
    }
    pnet_datalink::interfaces()
        .into_iter()
        .find(|nic| nic.name == name)
        .ok_or_else(|| CaptureError::NoSuchInterface(name.to_owned()))
}

/// Parses a network-layer frame into the UDP payload to `knock_port` and its
/// source, checking every length against the frame instead of trusting it.
pub fn parse_datagram(frame: &[u8], knock_port: u16) -> Option<Datagram<'_>> {
    let version = frame.first()? >> 4;
    let (source, udp_bytes) = match version {
        4 => {
            let ip = Ipv4Packet::new(frame)?;
            let header = usize::from(ip.get_header_length()) * 4;
            let total = usize::from(ip.get_total_length());
            if header < 20 || total < header || total > frame.len() {
                return None;
            }
            if ip.get_next_level_protocol().0 != 17
                || ip.get_fragment_offset() != 0
                || ip.get_flags() & 0b001 != 0
            {
                return None;
            }
            (IpAddr::V4(ip.get_source()), frame.get(header..total)?)
        }
        6 => {
            let ip = Ipv6Packet::new(frame)?;
            if ip.get_next_header().0 != 17 {
                return None;
            }
            let end = 40 + usize::from(ip.get_payload_length());
            (IpAddr::V6(ip.get_source()), frame.get(40..end)?)
        }
        _ => return None,
    };
    let udp = UdpPacket::new(udp_bytes)?;
    let length = usize::from(udp.get_length());
    if udp.get_destination() != knock_port || length < 8 || length > udp_bytes.len() {
        return None;
    }
    // Borrow the payload from the frame, not from the pnet view.
    let payload = udp_bytes.get(8..length)?;
    Some(Datagram { source, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_frame(payload: &[u8], port: u16) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 0, 2]);
        p[22..24].copy_from_slice(&port.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    #[test]
    fn parses_ipv4_udp() {
        let frame = v4_frame(b"hello", 62201);
        let d = parse_datagram(&frame, 62201).unwrap();
        assert_eq!(d.source, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(d.payload, b"hello");
        assert!(parse_datagram(&frame, 1).is_none());
    }

    #[test]
    fn parses_ipv6_udp() {
        let payload = b"knock";
        let mut p = vec![0u8; 48 + payload.len()];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[6] = 17;
        p[8] = 0xfd;
        p[42..44].copy_from_slice(&62201u16.to_be_bytes());
        p[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[48..].copy_from_slice(payload);
        let d = parse_datagram(&p, 62201).unwrap();
        assert!(d.source.is_ipv6());
        assert_eq!(d.payload, payload);
    }

    #[test]
    fn lying_lengths_never_panic() {
        let frame = v4_frame(&[7u8; 100], 62201);
        for cut in 0..frame.len() {
            let _ = parse_datagram(&frame[..cut], 62201);
        }
        let mut lie = frame.clone();
        lie[24..26].copy_from_slice(&60000u16.to_be_bytes());
        assert!(parse_datagram(&lie, 62201).is_none());
        let mut lie = frame.clone();
        lie[2..4].copy_from_slice(&60000u16.to_be_bytes());
        assert!(parse_datagram(&lie, 62201).is_none());
        let mut lie = frame;
        lie[0] = 0x4f;
        assert!(parse_datagram(&lie, 62201).is_none());
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_datagram(&junk, 62201);
        }
    }
}
