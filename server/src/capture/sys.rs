//! The server's only unsafe code: the packet socket's bind, address, option,
//! statistics, interface lookup, batch read (with the kernel's receive
//! timestamp of each frame) and poll calls that socket2 does not offer, and
//! the bind of the netlink socket that hears of address changes.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime};

use socket2::{Domain, SockFilter, Socket, Type};

use super::filter::Instruction;

/// Receive buffer we ask for: room for tens of thousands of knock-sized
/// packets, so a burst of junk does not push a real knock out of the queue
/// before we read it.
const RECEIVE_BUFFER: usize = 8 << 20;

/// An interface, as the kernel knows it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    /// Administratively up (`IFF_UP`): only then does it deliver packets.
    pub up: bool,
}

/// The kernel's counters for a packet socket since they were last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames that passed the filter, dropped ones included.
    pub packets: u32,
    /// Frames that passed the filter but found the receive queue full.
    pub drops: u32,
}

/// An `AF_PACKET`/`SOCK_DGRAM` socket with the knock filter attached.
///
/// It is created with protocol 0, which receives no packets at all until it
/// is bound; the filter is attached first, so no unfiltered packet ever
/// queues on it. It can be bound again (to an interface that was deleted and
/// re-created under the same name), keeping its filter, buffer and counters.
#[derive(Debug)]
pub struct PacketSocket {
    socket: Socket,
}

impl PacketSocket {
    /// Creates the socket: this is where a missing CAP_NET_RAW shows.
    pub fn new(program: &[Instruction]) -> io::Result<Self> {
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, None)?;
        let filter: Vec<SockFilter> = program
            .iter()
            .map(|ins| SockFilter::new(ins.code, ins.jt, ins.jf, ins.k))
            .collect();
        socket.attach_filter(&filter)?;
        if set_int_option(
            &socket,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RECEIVE_BUFFER,
        )
        .is_err()
        {
            // Without CAP_NET_ADMIN the kernel caps us at net.core.rmem_max.
            socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
        }
        // Our own transmissions are no knocks; the filter drops them too, this
        // saves the kernel the clone.
        let _ = set_int_option(&socket, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
        // Every frame read comes with the time the kernel received it
        // (SCM_TIMESTAMPNS), for the arrival-to-grant latency. Only a
        // measurement: should the kernel refuse, frames carry no time.
        let _ = set_int_option(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
        Ok(Self { socket })
    }

    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Binds to interface `index` (0: every interface) for every protocol;
    /// from here the filter decides. Binding again moves the socket.
    pub fn bind(&self, index: u32) -> io::Result<()> {
        let ifindex = libc::c_int::try_from(index)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let protocol = u16::try_from(libc::ETH_P_ALL)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as libc::c_ushort,
            sll_protocol: protocol.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `address` is a fully initialised sockaddr_ll that lives
        // across the call, and the length passed is exactly its size.
        let rc = unsafe {
            libc::bind(
                self.fd(),
                std::ptr::from_ref(&address).cast(),
                socklen_of::<libc::sockaddr_ll>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The interface index the socket is bound to now: 0 for every interface
    /// (or not bound yet), -1 once the kernel unregistered the interface it
    /// was bound to (deleted, or moved to another namespace).
    pub fn bound_index(&self) -> io::Result<i32> {
        let mut address = libc::sockaddr_ll {
            sll_family: 0,
            sll_protocol: 0,
            sll_ifindex: 0,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let mut len = socklen_of::<libc::sockaddr_ll>();
        // SAFETY: `address` is a writable sockaddr_ll and `len` says its
        // exact size; the kernel writes at most `len` bytes (it truncates
        // longer hardware addresses) and updates `len`.
        let rc = unsafe {
            libc::getsockname(self.fd(), std::ptr::from_mut(&mut address).cast(), &mut len)
        };
        if rc == 0 {
            Ok(address.sll_ifindex)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Clears an error the kernel queued on the socket (the ENETDOWN of an
    /// interface we have since left), so that the next read does not report
    /// it as news.
    pub fn clear_error(&self) {
        let _ = self.socket.take_error();
    }

    /// Reads the kernel's counters, which reading resets
    /// (`PACKET_STATISTICS`).
    pub fn take_stats(&self) -> io::Result<KernelStats> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = socklen_of::<libc::tpacket_stats>();
        // SAFETY: `stats` is a writable tpacket_stats and `len` its exact
        // size; without a packet ring the kernel writes at most that struct.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                std::ptr::from_mut(&mut stats).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(KernelStats {
                packets: stats.tp_packets,
                drops: stats.tp_drops,
            })
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The interface called `name` in our network namespace, if there is
    /// one. Two ioctls on this socket (any socket will do; the kernel
    /// answers interface ioctls for every family).
    pub fn link(&self, name: &str) -> io::Result<Option<LinkInfo>> {
        let Some(mut request) = ifreq_for(name) else {
            // Longer than IFNAMSIZ - 1 or with a NUL: no interface has it.
            return Ok(None);
        };
        // SAFETY: `request` is a valid ifreq with a NUL-terminated name; for
        // SIOCGIFINDEX the kernel reads the name and writes the index into
        // the union, all within the struct.
        let rc = unsafe {
            libc::ioctl(
                self.fd(),
                libc::SIOCGIFINDEX,
                std::ptr::from_mut(&mut request),
            )
        };
        if rc != 0 {
            return absent_or(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFINDEX succeeded, so the kernel stored a c_int in
        // ifru_ifindex; every bit pattern is a valid c_int anyway.
        let index = unsafe { request.ifr_ifru.ifru_ifindex };
        // SAFETY: as above, for SIOCGIFFLAGS, which writes ifru_flags.
        let rc = unsafe {
            libc::ioctl(
                self.fd(),
                libc::SIOCGIFFLAGS,
                std::ptr::from_mut(&mut request),
            )
        };
        if rc != 0 {
            return absent_or(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS succeeded and stored a c_short in ifru_flags;
        // every bit pattern is a valid c_short.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        let Ok(index) = u32::try_from(index) else {
            return Ok(None);
        };
        Ok(Some(LinkInfo {
            index,
            up: i32::from(flags) & libc::IFF_UP != 0,
        }))
    }

    /// Reads up to [`BATCH`] queued frames without waiting. Returns how many
    /// were read; 0 when none is queued.
    pub fn recv_batch(&self, batch: &mut Batch) -> io::Result<usize> {
        recv_batch(self.fd(), batch)
    }

    /// Waits until the socket is readable (or has an error to report), at
    /// most `timeout`. Returns false on timeout or signal.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        wait_readable(self.fd(), timeout)
    }
}

/// "No such device" (the name is free) is an answer, not an error.
fn absent_or(err: io::Error) -> io::Result<Option<LinkInfo>> {
    match err.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => Ok(None),
        _ => Err(err),
    }
}

/// An ifreq naming `name`, or None if no interface can have that name.
fn ifreq_for(name: &str) -> Option<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: ifreq is a C struct of a char array and a union of integers,
    // sockaddrs and a pointer, for all of which all-zero bytes are valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Some(request)
}

fn socklen_of<T>() -> libc::socklen_t {
    // Every struct passed here is a few dozen bytes.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

fn set_int_option(socket: &Socket, level: i32, name: i32, value: usize) -> io::Result<()> {
    let value =
        libc::c_int::try_from(value).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for the lifetime of `socket`; `value` is a
    // live c_int and the length passed is exactly its size, as setsockopt(2)
    // requires for integer options.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Frames longer than this cannot pass the filter (a knock is at most
/// `MAX_KNOCK_LEN` + 8 bytes of UDP + 60 bytes of IPv4 header with options).
pub const FRAME_LEN: usize = 512;
/// How many frames one `recvmmsg` may return.
pub const BATCH: usize = 64;

/// 8-byte words of control-message room per frame: 64 bytes, twice what the
/// one control message we ask for takes (`CMSG_SPACE` of a timespec, 32
/// bytes on 64-bit Linux). Words, so that the buffer is aligned for a
/// `cmsghdr`.
const CONTROL_WORDS: usize = 8;
/// One frame's control buffer.
type Control = [u64; CONTROL_WORDS];
const CONTROL_LEN: usize = std::mem::size_of::<Control>();
const TIMESPEC_LEN: usize = std::mem::size_of::<libc::timespec>();
// SAFETY: CMSG_SPACE is arithmetic on its argument (a `const unsafe fn` in
// libc only because C macros are); it touches no memory.
const _: () =
    assert!(unsafe { libc::CMSG_SPACE(TIMESPEC_LEN as libc::c_uint) } as usize <= CONTROL_LEN);

/// Where a frame came from, as the kernel's `sockaddr_ll` says, and when
/// the kernel received it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// The device the frame was seen on (where the packet tap saw it: a
    /// bond's slave, then the bond, each have their own).
    pub ifindex: i32,
    /// `PACKET_HOST`, `PACKET_OTHERHOST`, ... (linux/if_packet.h).
    pub pkttype: u8,
    /// The device's type: `ARPHRD_LOOPBACK` for loopback.
    pub hatype: u16,
    /// When the kernel received the frame (CLOCK_REALTIME, from the
    /// frame's `SCM_TIMESTAMPNS` control message); None if the read did not
    /// carry one.
    pub arrived: Option<SystemTime>,
}

impl FrameMeta {
    /// Seen on the loopback device: sent by this host to itself.
    pub fn on_loopback(&self) -> bool {
        self.hatype == libc::ARPHRD_LOOPBACK
    }
}

/// Buffers for one batch of frames, reused for every read.
pub struct Batch {
    buffers: Box<[[u8; FRAME_LEN]; BATCH]>,
    /// The control messages of each frame (its receive timestamp).
    controls: Box<[Control; BATCH]>,
    lens: [usize; BATCH],
    meta: [FrameMeta; BATCH],
}

impl Batch {
    pub fn new() -> Self {
        Self {
            buffers: Box::new([[0u8; FRAME_LEN]; BATCH]),
            controls: Box::new([[0u64; CONTROL_WORDS]; BATCH]),
            lens: [0; BATCH],
            meta: [FrameMeta::default(); BATCH],
        }
    }

    /// Frame `index` of the last read; empty if it was truncated.
    pub fn frame(&self, index: usize) -> &[u8] {
        match (self.buffers.get(index), self.lens.get(index)) {
            (Some(buffer), Some(&len)) => buffer.get(..len).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Where frame `index` of the last read came from.
    pub fn meta(&self, index: usize) -> FrameMeta {
        self.meta.get(index).copied().unwrap_or_default()
    }

    /// Puts `frame` at `index`, as a read would (for tests of what is done
    /// with frames). Frames longer than [`FRAME_LEN`] are truncated ones.
    #[cfg(test)]
    pub fn set(&mut self, index: usize, frame: &[u8], meta: FrameMeta) {
        let (Some(buffer), Some(len), Some(slot)) = (
            self.buffers.get_mut(index),
            self.lens.get_mut(index),
            self.meta.get_mut(index),
        ) else {
            return;
        };
        *len = match buffer.get_mut(..frame.len()) {
            Some(room) => {
                room.copy_from_slice(frame);
                frame.len()
            }
            None => 0,
        };
        *slot = meta;
    }
}

fn recv_batch(fd: RawFd, batch: &mut Batch) -> io::Result<usize> {
    let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    for (iovec, buffer) in iovecs.iter_mut().zip(batch.buffers.iter_mut()) {
        iovec.iov_base = buffer.as_mut_ptr().cast();
        iovec.iov_len = FRAME_LEN;
    }
    // SAFETY: sockaddr_ll is a C struct of integers and a byte array, for
    // which all-zero bytes are a valid value.
    let mut names: [libc::sockaddr_ll; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: mmsghdr and the msghdr inside it are plain C structs for which
    // all-zero bytes are a valid value (null pointers, zero lengths).
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (((header, iovec), name), control) in headers
        .iter_mut()
        .zip(iovecs.iter_mut())
        .zip(names.iter_mut())
        .zip(batch.controls.iter_mut())
    {
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
        header.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_ll>();
        header.msg_hdr.msg_control = control.as_mut_ptr().cast();
        header.msg_hdr.msg_controllen = CONTROL_LEN as _;
    }
    // SAFETY: `headers` holds BATCH valid mmsghdr, each pointing at one live
    // iovec that spans exactly FRAME_LEN writable bytes of `batch.buffers`,
    // at one live sockaddr_ll whose exact size is its msg_namelen (the
    // kernel writes at most that much of the sender's address, truncating a
    // longer hardware address), and at one live control buffer of
    // `batch.controls` whose exact size is its msg_controllen (the kernel
    // writes at most that much, setting MSG_CTRUNC if more did not fit);
    // all of them outlive the call, which is non-blocking (MSG_DONTWAIT)
    // and takes no timeout pointer.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(err),
        };
    }
    let count = usize::try_from(received).unwrap_or(0).min(BATCH);
    for ((((len, meta), header), name), control) in batch
        .lens
        .iter_mut()
        .zip(batch.meta.iter_mut())
        .zip(headers.iter())
        .zip(names.iter())
        .zip(batch.controls.iter())
        .take(count)
    {
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *len = if truncated {
            0
        } else {
            (header.msg_len as usize).min(FRAME_LEN)
        };
        // msg_controllen is what the kernel wrote: size_t with glibc,
        // socklen_t with musl.
        #[allow(clippy::unnecessary_cast)]
        let arrived = arrival_time(control, header.msg_hdr.msg_controllen as usize);
        // A packet socket always names the sender; should it not, the frame
        // counts as coming from nowhere we know (index 0, not loopback).
        *meta = if header.msg_hdr.msg_namelen >= socklen_of::<libc::sockaddr_ll>() {
            FrameMeta {
                ifindex: name.sll_ifindex,
                pkttype: name.sll_pkttype,
                hatype: name.sll_hatype,
                arrived,
            }
        } else {
            FrameMeta {
                arrived,
                ..FrameMeta::default()
            }
        };
    }
    Ok(count)
}

/// The kernel's receive time in the first `len` bytes of `control`, the
/// control messages of one read: its `SCM_TIMESTAMPNS` message. None if
/// there is none, or none that is whole and sensible.
fn arrival_time(control: &Control, len: usize) -> Option<SystemTime> {
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are a
    // valid value (null pointers, zero lengths).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // The kernel only ever lowers msg_controllen to what it wrote; clamping
    // keeps every walk below within `control` whatever `len` says.
    let len = len.min(CONTROL_LEN);
    header.msg_control = control.as_ptr().cast_mut().cast();
    header.msg_controllen = len as _;
    let start = control.as_ptr() as usize;
    let payload = TIMESPEC_LEN;
    // SAFETY: CMSG_LEN is arithmetic on its argument; it touches no memory.
    let wanted = unsafe { libc::CMSG_LEN(payload as libc::c_uint) } as usize;
    // SAFETY: `header` points at `control`, of which its msg_controllen
    // bytes are readable; CMSG_FIRSTHDR only reads the header's fields and
    // returns null or `control` itself when a whole cmsghdr fits in those
    // bytes.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR and CMSG_NXTHDR return a pointer only when a
        // whole cmsghdr lies within the msg_controllen bytes of `control`,
        // at an offset that is a multiple of the word size, so aligned (the
        // buffer is of u64); `control` is borrowed, so nothing writes it.
        let message = unsafe { &*cmsg };
        let offset = (cmsg as usize).saturating_sub(start);
        if message.cmsg_level == libc::SOL_SOCKET
            && message.cmsg_type == libc::SCM_TIMESTAMPNS
            && message.cmsg_len as usize >= wanted
            && offset.checked_add(wanted).is_some_and(|end| end <= len)
        {
            // SAFETY: the message's data starts CMSG_LEN(0) bytes after its
            // header and, as just checked, its first TIMESPEC_LEN bytes lie
            // within the msg_controllen bytes of `control`; they may be
            // unaligned for a timespec, hence read_unaligned, and every bit
            // pattern is a valid timespec (two integers).
            let stamp = unsafe {
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::timespec>()
                    .read_unaligned()
            };
            return system_time(&stamp);
        }
        if message.cmsg_len as usize > len.saturating_sub(offset) {
            // It claims more than there is (the kernel never does): nothing
            // whole follows. Stopping here also keeps CMSG_NXTHDR from
            // adding a huge length.
            return None;
        }
        // SAFETY: `cmsg` is a whole cmsghdr within `header`'s control
        // bytes (above); CMSG_NXTHDR reads its cmsg_len and the header's
        // fields, and returns null or a whole cmsghdr within those bytes
        // (it also rejects a cmsg_len too short to move on, and wrapping).
        cmsg = unsafe { libc::CMSG_NXTHDR(&header, cmsg) };
    }
    None
}

/// A CLOCK_REALTIME timespec as a SystemTime; None if it is before the
/// epoch or not normalised.
fn system_time(stamp: &libc::timespec) -> Option<SystemTime> {
    let seconds = u64::try_from(stamp.tv_sec).ok()?;
    let nanos = u32::try_from(stamp.tv_nsec)
        .ok()
        .filter(|&nanos| nanos < 1_000_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, and the count passed is 1.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if ready < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(ready > 0)
}

/// A netlink socket that hears of every address added to or removed from
/// an interface of our network namespace (`RTM_NEWADDR`, `RTM_DELADDR`), to
/// know when the table of this host's addresses must be read again. It is
/// never waited on: [`Self::changed`] only looks at what is queued.
#[derive(Debug)]
pub struct AddressWatch {
    socket: Socket,
    buf: Box<[u8; 8192]>,
}

impl AddressWatch {
    pub fn open() -> io::Result<Self> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(socket2::Protocol::from(libc::NETLINK_ROUTE)),
        )?;
        socket.set_nonblocking(true)?;
        // SAFETY: sockaddr_nl is a C struct of integers (and padding), for
        // which all-zero bytes are a valid value.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // Port id 0: the kernel picks one.
        address.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: `address` is a fully initialised sockaddr_nl that lives
        // across the call, and the length passed is exactly its size.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                std::ptr::from_ref(&address).cast(),
                socklen_of::<libc::sockaddr_nl>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            buf: Box::new([0; 8192]),
        })
    }

    /// Takes every notification queued since the last call: true if there
    /// was one, or if some were lost (the queue overflowed). One system call
    /// when nothing changed.
    pub fn changed(&mut self) -> io::Result<bool> {
        let mut changed = false;
        loop {
            match std::io::Read::read(&mut &self.socket, &mut self.buf[..]) {
                Ok(_) => changed = true,
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(changed),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: usize = std::mem::size_of::<libc::cmsghdr>();

    /// A control buffer holding `messages`, each (level, type, cmsg_len,
    /// data), laid out as the kernel does (each padded to the word size).
    fn control(messages: &[(i32, i32, usize, &[u8])]) -> (Control, usize) {
        let mut bytes = [0u8; CONTROL_LEN];
        let mut at = 0;
        for (level, kind, len, data) in messages {
            bytes[at..at + 8].copy_from_slice(&len.to_ne_bytes());
            bytes[at + 8..at + 12].copy_from_slice(&level.to_ne_bytes());
            bytes[at + 12..at + 16].copy_from_slice(&kind.to_ne_bytes());
            bytes[at + HEADER..at + HEADER + data.len()].copy_from_slice(data);
            at += HEADER + data.len().next_multiple_of(8);
        }
        let mut words = [0u64; CONTROL_WORDS];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        (words, at)
    }

    fn timespec(seconds: i64, nanos: i64) -> [u8; 16] {
        let mut data = [0u8; 16];
        data[..8].copy_from_slice(&seconds.to_ne_bytes());
        data[8..].copy_from_slice(&nanos.to_ne_bytes());
        data
    }

    const STAMP: (i32, i32, usize, &[u8]) = (
        libc::SOL_SOCKET,
        libc::SCM_TIMESTAMPNS,
        HEADER + TIMESPEC_LEN,
        &[0; 16],
    );

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_receive_time_is_read_from_its_control_message() {
        let data = timespec(1_700_000_000, 123_456_789);
        let (buffer, len) = control(&[(STAMP.0, STAMP.1, STAMP.2, &data)]);
        assert_eq!(len, 32);
        let expected = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(arrival_time(&buffer, len), Some(expected));
        // After another message.
        let (buffer, len) = control(&[
            (libc::SOL_SOCKET, libc::SO_MARK, HEADER + 4, &[1, 2, 3, 4]),
            (STAMP.0, STAMP.1, STAMP.2, &data),
        ]);
        assert_eq!(arrival_time(&buffer, len), Some(expected));
        // A length beyond the buffer is the buffer.
        assert_eq!(arrival_time(&buffer, usize::MAX), Some(expected));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn no_whole_sensible_time_is_none() {
        let data = timespec(1_700_000_000, 5);
        let (buffer, len) = control(&[(STAMP.0, STAMP.1, STAMP.2, &data)]);
        // No control messages, or cut short.
        for cut in 0..len {
            assert_eq!(arrival_time(&buffer, cut), None, "{cut} bytes");
        }
        // Another level or type, or a length too short for a timespec.
        for (level, kind, message_len) in [
            (libc::SOL_IP, STAMP.1, STAMP.2),
            (STAMP.0, libc::SO_TIMESTAMP, STAMP.2),
            (STAMP.0, STAMP.1, STAMP.2 - 1),
            (STAMP.0, STAMP.1, 0),
        ] {
            let (buffer, len) = control(&[(level, kind, message_len, &data)]);
            assert_eq!(arrival_time(&buffer, len), None);
        }
        // A length that claims more than there is: the walk stops.
        let (buffer, len) = control(&[
            (
                libc::SOL_SOCKET,
                libc::SO_MARK,
                usize::MAX - 3,
                &[1, 2, 3, 4],
            ),
            (STAMP.0, STAMP.1, STAMP.2, &data),
        ]);
        assert_eq!(arrival_time(&buffer, len), None);
        // Before the epoch, or not normalised.
        for (seconds, nanos) in [(-1, 0), (0, -1), (0, 1_000_000_000)] {
            let data = timespec(seconds, nanos);
            let (buffer, len) = control(&[(STAMP.0, STAMP.1, STAMP.2, &data)]);
            assert_eq!(arrival_time(&buffer, len), None);
        }
    }

    #[test]
    fn impossible_interface_names_have_no_request() {
        assert!(ifreq_for("").is_none());
        assert!(ifreq_for("sixteen-chars-xx").is_none());
        assert!(ifreq_for("nul\0name").is_none());
        let request = ifreq_for("eth0").expect("a valid name");
        assert_eq!(
            request.ifr_name[..5],
            [b'e', b't', b'h', b'0', 0].map(|b| b as libc::c_char)
        );
    }
}
