//! Capture: knocks reach us through an `AF_PACKET` socket with a kernel BPF
//! filter. No socket is bound on the knock port, so nothing answers it, and
//! the firewall drops the datagram after we have seen a copy.

pub mod filter;
mod sys;

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::udp::UdpPacket;
use thiserror::Error;

/// `interface = "any"`: every interface of the namespace, bound once, as
/// interface index 0.
pub const ANY: &str = "any";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("interface {0:?} does not exist (see `ip link`), or use interface = \"any\"")]
    NoSuchInterface(String),
    #[error("cannot open the packet socket: {0} (needs CAP_NET_RAW)")]
    Socket(io::Error),
    #[error("cannot look up interface {interface}: {source}")]
    Lookup {
        interface: String,
        source: io::Error,
    },
    #[error("cannot bind the packet socket to {interface}: {source}")]
    Bind {
        interface: String,
        source: io::Error,
    },
}

/// Where a capture stands with its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bound to the interface, which is up: knocks are seen.
    Live,
    /// Bound to the interface, which is down: nothing arrives until it is up.
    Down,
    /// No interface of that name, yet or any more: waiting for it.
    Missing,
}

impl Link {
    /// One word, for logs and the status file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Down => "down",
            Self::Missing => "waiting",
        }
    }
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

/// A capture on one interface, by name, or on all of them.
///
/// A packet socket binds to an interface *index*. When the interface is
/// deleted the kernel unbinds the socket for good (it reads nothing ever
/// after, and says so only once, with ENETDOWN); a re-created interface of
/// the same name has a new index. So the capture holds on to the name:
/// [`Self::refresh`] looks it up and binds the socket again whenever the
/// name points elsewhere than the socket. Frames are read in batches with
/// `recvmmsg`: one wake-up per frame costs 3.1 µs of server CPU per flood
/// datagram against 1 µs for batches (docs/PERFORMANCE.md).
pub struct Capture {
    interface: String,
    knock_port: u16,
    poll_every: Duration,
    socket: sys::PacketSocket,
    /// The index we last bound to, if any.
    bound: Option<u32>,
    link: Link,
    /// Kernel drops read from a capture this one replaced, not yet taken.
    inherited_drops: u64,
    batch: sys::Batch,
    read: usize,
    next: usize,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("interface", &self.interface)
            .field("knock_port", &self.knock_port)
            .field("bound", &self.bound)
            .field("link", &self.link)
            .finish_non_exhaustive()
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
    /// A capture of UDP datagrams to `knock_port` on `interface` ("any" for
    /// all interfaces), bound at once if the interface exists. An interface
    /// that is missing or down is no error: see [`Self::link`], and call
    /// [`Self::refresh`] to follow it. Errors are what waiting cannot cure:
    /// no CAP_NET_RAW, a failing lookup or bind. `poll_every` bounds how long
    /// [`Self::wait_next`] waits, so the caller can look at signals and
    /// timers.
    pub fn start(
        interface: &str,
        knock_port: u16,
        poll_every: Duration,
    ) -> Result<Self, CaptureError> {
        let program = filter::knock_filter(knock_port);
        let socket = sys::PacketSocket::new(&program).map_err(CaptureError::Socket)?;
        let mut capture = Self {
            interface: interface.to_owned(),
            knock_port,
            poll_every,
            socket,
            bound: None,
            link: Link::Missing,
            inherited_drops: 0,
            batch: sys::Batch::new(),
            read: 0,
            next: 0,
        };
        capture.refresh()?;
        Ok(capture)
    }

    /// Like [`Self::start`], but the interface must exist now (a reload to
    /// another interface is refused, not waited for).
    pub fn open(
        interface: &str,
        knock_port: u16,
        poll_every: Duration,
    ) -> Result<Self, CaptureError> {
        let capture = Self::start(interface, knock_port, poll_every)?;
        if capture.link == Link::Missing {
            return Err(CaptureError::NoSuchInterface(interface.to_owned()));
        }
        Ok(capture)
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Where the capture stood at the last [`Self::refresh`].
    pub fn link(&self) -> Link {
        self.link
    }

    /// The interface index the socket was last bound to (0: every interface).
    pub fn bound_index(&self) -> Option<u32> {
        self.bound
    }

    /// Looks the interface up by name and binds the socket to it again if
    /// it is not bound to it now (the interface appeared, or was deleted and
    /// re-created). Three system calls; meant to run a few times a second.
    ///
    /// `Live` means bound to the interface the name has now, and that
    /// interface is up: knocks arriving on it are read.
    pub fn refresh(&mut self) -> Result<Link, CaptureError> {
        if self.interface == ANY {
            // Index 0 is never unregistered.
            if self.bound.is_none() {
                self.bind(0)?;
            }
            self.link = Link::Live;
            return Ok(self.link);
        }
        let found = self
            .socket
            .link(&self.interface)
            .map_err(|source| CaptureError::Lookup {
                interface: self.interface.clone(),
                source,
            })?;
        let Some(found) = found else {
            // The socket stays bound to the dead index, where nothing
            // arrives, until the name comes back.
            self.link = Link::Missing;
            return Ok(self.link);
        };
        // -1 once the kernel unregistered the interface we were bound to,
        // which also catches a re-created interface that got the old index.
        let current = self
            .socket
            .bound_index()
            .map_err(|source| CaptureError::Lookup {
                interface: self.interface.clone(),
                source,
            })?;
        let bound_here =
            self.bound == Some(found.index) && i64::from(current) == i64::from(found.index);
        if !bound_here {
            match self.bind(found.index) {
                Ok(()) => {}
                Err(CaptureError::Bind { source, .. })
                    if source.raw_os_error() == Some(libc::ENODEV) =>
                {
                    // Deleted between the lookup and the bind.
                    self.link = Link::Missing;
                    return Ok(self.link);
                }
                Err(err) => return Err(err),
            }
        }
        self.link = if found.up { Link::Live } else { Link::Down };
        Ok(self.link)
    }

    fn bind(&mut self, index: u32) -> Result<(), CaptureError> {
        self.socket
            .bind(index)
            .map_err(|source| CaptureError::Bind {
                interface: self.interface.clone(),
                source,
            })?;
        self.bound = Some(index);
        // The ENETDOWN of the interface we left is old news; the bind itself
        // queues a fresh one if the new interface is down, which `refresh`
        // already reports as `Down`.
        self.socket.clear_error();
        Ok(())
    }

    /// Datagrams to the knock port that passed the filter but that the
    /// kernel dropped because our receive queue was full, since the last
    /// call (the kernel resets its counter when read).
    pub fn take_kernel_drops(&mut self) -> io::Result<u64> {
        let stats = self.socket.take_stats()?;
        let inherited = std::mem::take(&mut self.inherited_drops);
        Ok(inherited.saturating_add(u64::from(stats.drops)))
    }

    /// Takes over the kernel drops `old` counted but nobody took yet, so
    /// that replacing a capture (a reload) loses none of them.
    pub fn inherit_drops(&mut self, old: &mut Capture) {
        let drops = old.take_kernel_drops().unwrap_or(0);
        self.inherited_drops = self.inherited_drops.saturating_add(drops);
    }

    /// Waits for the next datagram, at most the poll interval.
    pub fn wait_next(&mut self) -> io::Result<Next<'_>> {
        if self.next >= self.read {
            if self.read >= BUSY_BATCH {
                std::thread::sleep(FLOOD_PAUSE);
            }
            // Forget the last batch before reading, so that an error does
            // not leave its frames to be handed out again.
            self.read = 0;
            self.next = 0;
            self.read = self.fill()?;
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
        let read = self.socket.recv_batch(&mut self.batch)?;
        if read > 0 || !self.socket.wait_readable(self.poll_every)? {
            return Ok(read);
        }
        self.socket.recv_batch(&mut self.batch)
    }
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
