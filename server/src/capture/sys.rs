//! The server's only unsafe code: the socket option, batch read and poll
//! calls that socket2 and pnet do not offer.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use socket2::{Domain, SockFilter, Socket, Type};

use super::filter::Instruction;

/// Receive buffer we ask for: room for tens of thousands of knock-sized
/// packets, so a burst of junk does not push a real knock out of the queue
/// before we read it.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Opens an `AF_PACKET`/`SOCK_DGRAM` socket with the filter attached before
/// it can receive anything, and returns its descriptor for pnet to bind and
/// own.
///
/// The socket is created with protocol 0, which receives no packets at all
/// until it is bound; the filter is attached first, so no unfiltered packet
/// ever queues on it.
pub fn open_filtered_packet_socket(program: &[Instruction]) -> io::Result<RawFd> {
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
    Ok(socket.into_raw_fd())
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
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
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

/// Buffers for one batch of frames, reused for every read.
pub struct Batch {
    buffers: Box<[[u8; FRAME_LEN]; BATCH]>,
    lens: [usize; BATCH],
}

impl Batch {
    pub fn new() -> Self {
        Self {
            buffers: Box::new([[0u8; FRAME_LEN]; BATCH]),
            lens: [0; BATCH],
        }
    }

    /// Frame `index` of the last read; empty if it was truncated.
    pub fn frame(&self, index: usize) -> &[u8] {
        match (self.buffers.get(index), self.lens.get(index)) {
            (Some(buffer), Some(&len)) => buffer.get(..len).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// Reads up to [`BATCH`] queued frames without waiting. Returns how many were
/// read; 0 when none is queued.
pub fn recv_batch(fd: RawFd, batch: &mut Batch) -> io::Result<usize> {
    let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    for (iovec, buffer) in iovecs.iter_mut().zip(batch.buffers.iter_mut()) {
        iovec.iov_base = buffer.as_mut_ptr().cast();
        iovec.iov_len = FRAME_LEN;
    }
    // SAFETY: mmsghdr and the msghdr inside it are plain C structs for which
    // all-zero bytes are a valid value (null pointers, zero lengths).
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (header, iovec) in headers.iter_mut().zip(iovecs.iter_mut()) {
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers` holds BATCH valid mmsghdr, each pointing at one live
    // iovec that spans exactly FRAME_LEN writable bytes of `batch.buffers`;
    // all of them outlive the call, which is non-blocking (MSG_DONTWAIT) and
    // takes no timeout pointer.
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
    for (len, header) in batch.lens.iter_mut().zip(headers.iter()).take(count) {
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *len = if truncated {
            0
        } else {
            (header.msg_len as usize).min(FRAME_LEN)
        };
    }
    Ok(count)
}

/// Waits until `fd` is readable (or has an error to report), at most
/// `timeout`. Returns false on timeout or signal.
pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
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
