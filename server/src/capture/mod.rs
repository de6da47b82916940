//! Capture: knocks reach us through an `AF_PACKET` socket with a kernel BPF
//! filter. No socket is bound on the knock port, so nothing answers it, and
//! the firewall drops the datagram after we have seen a copy.
//!
//! A packet socket sees frames before the IP stack judges them, so capture
//! reads only what the stack itself would take as addressed to this host,
//! once, and refuses sources no remote host has:
//!
//! - frames for other hosts are dropped by the filter (`PACKET_HOST` only:
//!   see [`filter`]), and datagrams to an IP address that is not one of ours
//!   ([`local_addrs`], as it was when the frame arrived) are skipped: a
//!   router forwarding knocks to the hosts behind it does not honour them
//!   itself;
//! - a frame the kernel hands to packet taps twice, once on each device it
//!   crosses (a bond's slave then the bond, a VLAN's parent then the VLAN,
//!   a bridge port then the bridge, an ipvlan's lower device then the
//!   ipvlan), is read once: a frame identical to one of the [`COPY_WINDOW`]
//!   frames read before it, seen on another device, is that frame's copy;
//! - a datagram that arrived on a device other than loopback claiming a
//!   loopback, link-local or our own address as its source is refused
//!   ([`Next::Implausible`]) before any cryptography, so it consumes
//!   nothing: the genuine copy of a knock still opens.
//!
//! Frames skipped are not read in any sense that counts: no refusal, no log.

pub mod filter;
mod local_addrs;
mod sys;

use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use crate::firewall::netlink::NetlinkError;

use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::udp::UdpPacket;
use thiserror::Error;

use local_addrs::LocalAddrs;

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
    #[error("cannot read this host's addresses (rtnetlink): {0}")]
    Addresses(NetlinkError),
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
    pub destination: IpAddr,
    pub payload: &'a [u8],
    /// When the kernel received the frame (`SO_TIMESTAMPNS`, CLOCK_REALTIME
    /// as [`SystemTime::now`] reads it), before it waited in the socket's
    /// queue for us: `SystemTime::now().duration_since(arrived)` once a
    /// grant is live is the arrival-to-live latency. It is taken when the
    /// stack receives the frame from the device (for loopback and veth, when
    /// the sender hands it over), or, for a frame that got no time there
    /// (the moments after the socket turned timestamps on), when it is read.
    /// A step of the wall clock in between (NTP, an operator) shows in the
    /// difference, which can then be wrong or an error. None when the read
    /// carried no time, and always from [`parse_datagram`].
    pub arrived: Option<SystemTime>,
}

/// After a read that returned at least this many frames, the next read waits
/// [`FLOOD_PAUSE`] first.
const BUSY_BATCH: usize = 4;
/// Lets a flood queue up so that one `recvmmsg` takes dozens of frames
/// instead of one wake-up per frame; never applies when traffic is light.
const FLOOD_PAUSE: Duration = Duration::from_micros(200);
/// How many frames read before a frame are looked at for an identical copy
/// from another device. The kernel queues the copies of one frame one after
/// the other (each device hands the frame to the packet taps, then on to
/// the next device, in one pass); only frames queued meanwhile by another
/// CPU can come between them.
pub const COPY_WINDOW: usize = 16;

/// A capture on one interface, by name, or on all of them.
///
/// A packet socket binds to an interface *index*. When the interface is
/// deleted the kernel unbinds the socket for good (it reads nothing ever
/// after, and says so only once, with ENETDOWN); a re-created interface of
/// the same name has a new index. So the capture holds on to the name:
/// [`Self::refresh`] looks it up and binds the socket again whenever the
/// name points elsewhere than the socket. Frames are read in batches with
/// `recvmmsg`: one wake-up per frame costs 3.1 µs of server CPU per flood
/// datagram against 1 µs for batches (docs/PERFORMANCE.md). Two batches
/// take turns, so that the frames of the last one are still there to be
/// compared with when a frame's copy comes first in the next.
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
    batches: [sys::Batch; 2],
    /// The batch read last: `batches[current]`.
    current: usize,
    /// Frames in the current batch, and in the one before it.
    read: usize,
    read_before: usize,
    next: usize,
    local: LocalAddrs,
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

/// What [`Capture::next_frame`] found: a datagram to hand out (frame
/// `index` of the current batch), or something else to say.
enum Frame {
    Datagram(usize, Parsed),
    Other(Next<'static>),
}

/// What one wait for a packet produced.
#[derive(Debug)]
pub enum Next<'a> {
    Datagram(Datagram<'a>),
    /// Something passed the filter but is not a well-formed UDP datagram to
    /// the knock port.
    Malformed,
    /// A datagram to the knock port that arrived on a device other than
    /// loopback from this source, which no remote host has (loopback,
    /// link-local, or one of our own addresses): refused unread.
    Implausible(IpAddr),
    /// Nothing to hand over: nothing arrived within the read timeout, or
    /// what arrived was not for this host, or a copy of what was read.
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
        let local = LocalAddrs::load().map_err(CaptureError::Addresses)?;
        let mut capture = Self {
            interface: interface.to_owned(),
            knock_port,
            poll_every,
            socket,
            bound: None,
            link: Link::Missing,
            inherited_drops: 0,
            batches: [sys::Batch::new(), sys::Batch::new()],
            current: 0,
            read: 0,
            read_before: 0,
            next: 0,
            local,
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

    /// How long one wait for a packet may last from now on.
    pub fn set_poll_every(&mut self, every: Duration) {
        self.poll_every = every;
    }

    /// Are frames of the last read still to be handed out? When not, the
    /// next [`Self::wait_next`] may wait for the network.
    pub fn has_queued(&self) -> bool {
        self.next < self.read
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
    ///
    /// Also reads this host's addresses again if the kernel said they
    /// changed (one more system call when they did not). If that fails, the
    /// interface is followed all the same, the old addresses kept, and the
    /// error returned.
    pub fn refresh(&mut self) -> Result<Link, CaptureError> {
        let addresses = self.local.refresh();
        let link = self.refresh_link()?;
        addresses.map_err(CaptureError::Addresses)?;
        Ok(link)
    }

    fn refresh_link(&mut self) -> Result<Link, CaptureError> {
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
        let (index, parsed) = match self.next_frame()? {
            Frame::Datagram(index, parsed) => (index, parsed),
            Frame::Other(next) => return Ok(next),
        };
        let batch = self.batch(self.current);
        Ok(match batch.frame(index).get(parsed.payload) {
            Some(payload) => Next::Datagram(Datagram {
                source: parsed.source,
                destination: parsed.destination,
                payload,
                arrived: batch.meta(index).arrived,
            }),
            None => Next::Malformed,
        })
    }

    /// The next frame to hand out. Reads at most one batch per call, so
    /// that frames that are all skipped still let the caller look at its
    /// signals and timers.
    fn next_frame(&mut self) -> io::Result<Frame> {
        let mut filled = false;
        loop {
            if self.next >= self.read {
                if filled {
                    return Ok(Frame::Other(Next::Idle));
                }
                if self.read >= BUSY_BATCH {
                    std::thread::sleep(FLOOD_PAUSE);
                }
                // Forget the last batch before reading, so that an error
                // does not leave its frames to be handed out again; it stays
                // in its buffers, to be compared with.
                self.read_before = std::mem::take(&mut self.read);
                self.current ^= 1;
                self.next = 0;
                self.read = self.fill()?;
                filled = true;
                if self.read == 0 {
                    return Ok(Frame::Other(Next::Idle));
                }
                // Every address change made before these frames arrived is
                // queued on the watch by now. An error keeps the old table;
                // the next `refresh` reports it.
                let _ = self.local.refresh();
            }
            let index = self.next;
            self.next += 1;
            if !self.is_new(index) {
                continue;
            }
            let batch = self.batch(self.current);
            let meta = batch.meta(index);
            let Some(parsed) = parse_frame(batch.frame(index), self.knock_port) else {
                return Ok(Frame::Other(Next::Malformed));
            };
            if !self.local.addressed_here(parsed.destination, meta) {
                continue;
            }
            if !self.local.plausible_source(parsed.source, meta) {
                return Ok(Frame::Other(Next::Implausible(parsed.source)));
            }
            return Ok(Frame::Datagram(index, parsed));
        }
    }

    fn batch(&self, which: usize) -> &sys::Batch {
        let [first, second] = &self.batches;
        if which == 0 {
            first
        } else {
            second
        }
    }

    /// Is frame `index` of the current batch one to read: addressed to this
    /// host at the link layer, and not a copy of one read already?
    fn is_new(&self, index: usize) -> bool {
        let current = self.batch(self.current);
        let before = self.batch(self.current ^ 1);
        // The filter passes nothing else; this keeps the rule in one more
        // place for the price of one comparison.
        current.meta(index).pkttype == libc::PACKET_HOST
            && !copy_of_earlier(current, index, before, self.read_before)
    }

    /// Reads what is queued, or waits up to the poll interval for something.
    fn fill(&mut self) -> io::Result<usize> {
        let Some(batch) = self.batches.get_mut(self.current) else {
            return Ok(0);
        };
        let read = self.socket.recv_batch(batch)?;
        if read > 0 || !self.socket.wait_readable(self.poll_every)? {
            return Ok(read);
        }
        self.socket.recv_batch(batch)
    }
}

/// Is frame `index` of `current` a copy of one of the [`COPY_WINDOW`] frames
/// read before it (in `current`, then in `before`, which holds `read_before`
/// frames) that was seen on another device? Byte for byte the same network
/// layer (addresses, IP id, checksums, payload) is the same frame; one seen
/// on the same device twice was sent twice, and is left to the replay
/// guard. Loopback frames are never copies: nothing re-delivers them.
fn copy_of_earlier(
    current: &sys::Batch,
    index: usize,
    before: &sys::Batch,
    read_before: usize,
) -> bool {
    let frame = current.frame(index);
    let meta = current.meta(index);
    if frame.is_empty() || meta.on_loopback() {
        return false;
    }
    let here = index.saturating_sub(COPY_WINDOW)..index;
    let rest = COPY_WINDOW.saturating_sub(index);
    let there = read_before.saturating_sub(rest)..read_before;
    let earlier = here
        .rev()
        .map(|i| (current, i))
        .chain(there.rev().map(|i| (before, i)));
    for (batch, i) in earlier {
        let other = batch.meta(i);
        if other.ifindex != meta.ifindex && !other.on_loopback() && batch.frame(i) == frame {
            return true;
        }
    }
    false
}

/// Parses a network-layer frame into the UDP payload to `knock_port` and its
/// addresses, checking every length against the frame instead of trusting it.
pub fn parse_datagram(frame: &[u8], knock_port: u16) -> Option<Datagram<'_>> {
    let parsed = parse_frame(frame, knock_port)?;
    Some(Datagram {
        source: parsed.source,
        destination: parsed.destination,
        payload: frame.get(parsed.payload)?,
        arrived: None,
    })
}

/// A frame's UDP datagram, with its payload as a range of the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    source: IpAddr,
    destination: IpAddr,
    payload: Range<usize>,
}

fn parse_frame(frame: &[u8], knock_port: u16) -> Option<Parsed> {
    let version = frame.first()? >> 4;
    let (source, destination, udp_start, udp_end) = match version {
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
            let source = IpAddr::V4(ip.get_source());
            (source, IpAddr::V4(ip.get_destination()), header, total)
        }
        6 => {
            let ip = Ipv6Packet::new(frame)?;
            if ip.get_next_header().0 != 17 {
                return None;
            }
            let end = 40 + usize::from(ip.get_payload_length());
            let source = IpAddr::V6(ip.get_source());
            (source, IpAddr::V6(ip.get_destination()), 40, end)
        }
        _ => return None,
    };
    let udp = UdpPacket::new(frame.get(udp_start..udp_end)?)?;
    let length = usize::from(udp.get_length());
    if udp.get_destination() != knock_port || length < 8 || length > udp_end - udp_start {
        return None;
    }
    Some(Parsed {
        source,
        destination,
        payload: udp_start + 8..udp_start + length,
    })
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
        p[16..20].copy_from_slice(&[198, 18, 0, 1]);
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
        assert_eq!(d.destination, "198.18.0.1".parse::<IpAddr>().unwrap());
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
        p[24] = 0xfe;
        p[25] = 0x80;
        p[42..44].copy_from_slice(&62201u16.to_be_bytes());
        p[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[48..].copy_from_slice(payload);
        let d = parse_datagram(&p, 62201).unwrap();
        assert!(d.source.is_ipv6());
        assert_eq!(d.destination, "fe80::".parse::<IpAddr>().unwrap());
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

    fn on(ifindex: i32) -> sys::FrameMeta {
        sys::FrameMeta {
            ifindex,
            pkttype: libc::PACKET_HOST,
            hatype: 1,
            arrived: None,
        }
    }

    const LO: sys::FrameMeta = sys::FrameMeta {
        ifindex: 1,
        pkttype: libc::PACKET_HOST,
        hatype: libc::ARPHRD_LOOPBACK,
        arrived: None,
    };

    /// A batch of `frames`, each `(payload byte, device)`.
    fn batch(frames: &[(u8, sys::FrameMeta)]) -> sys::Batch {
        let mut batch = sys::Batch::new();
        for (i, (byte, meta)) in frames.iter().enumerate() {
            batch.set(i, &v4_frame(&[*byte; 60], 62201), *meta);
        }
        batch
    }

    #[test]
    fn a_frame_seen_on_another_device_just_before_is_a_copy() {
        let empty = sys::Batch::new();
        // A bond's slave (2) then the bond (5); a VLAN's parent (3) then the
        // VLAN (6).
        let b = batch(&[(1, on(2)), (1, on(5)), (2, on(3)), (9, on(3)), (2, on(6))]);
        let copies: Vec<bool> = (0..5).map(|i| copy_of_earlier(&b, i, &empty, 0)).collect();
        assert_eq!(copies, [false, true, false, false, true]);
        // The same frame twice on the same device was sent twice: the
        // replay guard's business.
        let b = batch(&[(1, on(2)), (1, on(2))]);
        assert!(!copy_of_earlier(&b, 1, &empty, 0));
        // Loopback frames are nobody's copies, nor copied.
        let b = batch(&[(1, LO), (1, on(2)), (1, LO)]);
        assert!(!copy_of_earlier(&b, 1, &empty, 0));
        assert!(!copy_of_earlier(&b, 2, &empty, 0));
        // A truncated frame (read as empty) is not compared.
        let mut b = batch(&[]);
        b.set(0, &[0u8; sys::FRAME_LEN + 1], on(2));
        b.set(1, &[0u8; sys::FRAME_LEN + 1], on(5));
        assert!(!copy_of_earlier(&b, 1, &empty, 0));
    }

    #[test]
    fn copies_are_looked_for_in_a_window_reaching_into_the_last_batch() {
        let empty = sys::Batch::new();
        for (between, copy) in [(COPY_WINDOW - 1, true), (COPY_WINDOW, false)] {
            let mut frames: Vec<(u8, sys::FrameMeta)> = vec![(1, on(2))];
            frames.extend((0..between as u8).map(|i| (100 + i, on(7))));
            frames.push((1, on(5)));
            let b = batch(&frames);
            assert_eq!(
                copy_of_earlier(&b, between + 1, &empty, 0),
                copy,
                "{between} frames between"
            );
        }

        // The original was the last frame of the batch before.
        let before = batch(&[(7, on(2)), (1, on(2))]);
        let now = batch(&[(1, on(5))]);
        assert!(copy_of_earlier(&now, 0, &before, 2));
        assert!(
            !copy_of_earlier(&now, 0, &before, 1),
            "only the frames that batch read"
        );
        let now = batch(&[(3, on(2)), (4, on(2)), (1, on(5))]);
        assert!(copy_of_earlier(&now, 2, &before, 2));
        let mut far: Vec<(u8, sys::FrameMeta)> =
            (0..COPY_WINDOW as u8).map(|i| (100 + i, on(2))).collect();
        far.push((1, on(5)));
        let now = batch(&far);
        assert!(
            !copy_of_earlier(&now, COPY_WINDOW, &before, 2),
            "the window is counted across both batches"
        );
    }
}
