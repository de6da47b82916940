//! The server's only unsafe code: socket options and capability calls that
//! the safe crates do not offer.
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
