//! Netlink plumbing shared by the firewall backends: building and parsing
//! netlink messages and attributes (nfnetlink in particular), requests and
//! nfnetlink batches, and one client that owns a lazily opened blocking
//! socket, numbers requests and collects the kernel's answers.
//!
//! The socket comes from socket2 (`AF_NETLINK`, unbound: the kernel
//! autobinds it on the first send, and a send without an address goes to
//! the kernel), and is read with `std::io::Read`. The one `unsafe` call,
//! joining a multicast group for change notifications, is in
//! [`Subscription::open`].

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

/// `NETLINK_NETFILTER`: nf_tables, ipset, conntrack, ...
pub const NETLINK_NETFILTER: i32 = 12;

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;
/// `sizeof(struct nfgenmsg)`.
pub const NFGENMSG_LEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
/// Set on dump messages when the dumped objects changed mid-dump.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

pub const NLA_F_NESTED: u16 = 1 << 15;
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// `nfgenmsg.version`.
pub const NFNETLINK_V0: u8 = 0;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFNL_SUBSYS_IPSET: u8 = 6;
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;

/// The netlink message type of nfnetlink message `msg` of subsystem `subsys`.
pub const fn nfnl_type(subsys: u8, msg: u8) -> u16 {
    ((subsys as u16) << 8) | msg as u16
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Largest datagram we read; nf_tables dumps come in skbs of at most 32 KiB.
const RECV_BUFFER: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("no answer from the kernel within {0:?}")]
    Timeout(Duration),
    #[error("the kernel refused the request: {}", describe_errno(*.errno))]
    Kernel { errno: i32, seq: u32 },
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
    #[error("netlink attribute or message too large")]
    TooLarge,
    #[error("the kernel's objects changed during a dump; try again")]
    DumpInterrupted,
}

impl NetlinkError {
    /// The kernel's errno (positive), when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The kernel's errno as words. ipset answers with codes of its own above
/// 4096 (`IPSET_ERR_PRIVATE`), which no other netfilter subsystem uses.
fn describe_errno(errno: i32) -> String {
    let ipset = match errno {
        4097 => "ipset protocol mismatch between kernel and knock-server",
        4102 => "ipset: set type mismatch",
        4106 => "ipset: address family mismatch",
        4107 => "ipset: the set has no timeout support",
        4108 => "ipset: the set is still referenced by a rule",
        4352 => "ipset: the set is full",
        4354 => "ipset: invalid protocol",
        _ => return io::Error::from_raw_os_error(errno).to_string(),
    };
    format!("{ipset} (error {errno})")
}

/// Builds one netlink message: header, optional nfgenmsg, attributes.
#[derive(Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    flags: u16,
    seq: u32,
    too_large: bool,
}

impl MessageBuilder {
    /// A message with a bare netlink header (length patched by `finish`).
    pub fn new(msg_type: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Self {
            buf,
            flags,
            seq,
            too_large: false,
        }
    }

    /// An nfnetlink message: header, then `struct nfgenmsg`.
    pub fn nfnl(msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut builder = Self::new(msg_type, flags, seq);
        builder.buf.push(family);
        builder.buf.push(NFNETLINK_V0);
        builder.buf.extend_from_slice(&res_id.to_be_bytes());
        builder
    }

    /// Appends attribute `attr_type` holding `data`.
    pub fn put(&mut self, attr_type: u16, data: &[u8]) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
        self.buf.extend_from_slice(data);
        self.close_attr(start, attr_type);
        self
    }

    pub fn put_u8(&mut self, attr_type: u16, value: u8) -> &mut Self {
        self.put(attr_type, &[value])
    }

    pub fn put_u16_be(&mut self, attr_type: u16, value: u16) -> &mut Self {
        self.put(attr_type, &value.to_be_bytes())
    }

    pub fn put_u32_be(&mut self, attr_type: u16, value: u32) -> &mut Self {
        self.put(attr_type, &value.to_be_bytes())
    }

    pub fn put_u64_be(&mut self, attr_type: u16, value: u64) -> &mut Self {
        self.put(attr_type, &value.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn put_strz(&mut self, attr_type: u16, value: &str) -> &mut Self {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.put(attr_type, &data)
    }

    /// A nested attribute (`NLA_F_NESTED` set) whose contents `build` appends.
    pub fn nested(&mut self, attr_type: u16, build: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
        build(self);
        self.close_attr(start, attr_type | NLA_F_NESTED);
        self
    }

    /// Writes the header of the attribute that starts at `start` and pads.
    fn close_attr(&mut self, start: usize, attr_type: u16) {
        let len = self.buf.len() - start;
        let len = match u16::try_from(len) {
            Ok(len) => len,
            Err(_) => {
                self.too_large = true;
                0
            }
        };
        if let Some(header) = self.buf.get_mut(start..start + NLA_HDRLEN) {
            header[..2].copy_from_slice(&len.to_ne_bytes());
            header[2..].copy_from_slice(&attr_type.to_ne_bytes());
        }
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// The finished message, its length patched in.
    pub fn finish(mut self) -> Result<Vec<u8>, NetlinkError> {
        let len = u32::try_from(self.buf.len()).map_err(|_| NetlinkError::TooLarge)?;
        if self.too_large {
            return Err(NetlinkError::TooLarge);
        }
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        Ok(self.buf)
    }
}

/// One parsed netlink message, borrowing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

fn read_u16_ne(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32_ne(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into netlink messages.
pub fn parse_messages(mut data: &[u8]) -> Result<Vec<Message<'_>>, NetlinkError> {
    let mut messages = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = read_u32_ne(data, 0).ok_or(NetlinkError::Malformed("short header"))? as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(NetlinkError::Malformed("message length out of bounds"));
        }
        messages.push(Message {
            msg_type: read_u16_ne(data, 4).ok_or(NetlinkError::Malformed("short header"))?,
            flags: read_u16_ne(data, 6).ok_or(NetlinkError::Malformed("short header"))?,
            seq: read_u32_ne(data, 8).ok_or(NetlinkError::Malformed("short header"))?,
            pid: read_u32_ne(data, 12).ok_or(NetlinkError::Malformed("short header"))?,
            payload: &data[NLMSG_HDRLEN..len],
        });
        data = data.get(align4(len)..).unwrap_or(&[]);
    }
    if data.is_empty() {
        Ok(messages)
    } else {
        Err(NetlinkError::Malformed(
            "trailing bytes after the last message",
        ))
    }
}

impl<'a> Message<'a> {
    /// For `NLMSG_ERROR`: `Some(0)` for an acknowledgement, else the errno
    /// (positive). `None` for any other message type.
    pub fn error_code(&self) -> Option<Result<i32, NetlinkError>> {
        if self.msg_type != NLMSG_ERROR {
            return None;
        }
        Some(
            self.payload
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(|b| i32::from_ne_bytes(b).saturating_neg())
                .ok_or(NetlinkError::Malformed("short error message")),
        )
    }

    /// The attributes of an nfnetlink message (after its nfgenmsg).
    pub fn nfnl_attrs(&self) -> Result<Vec<Attr<'a>>, NetlinkError> {
        let body = self
            .payload
            .get(NFGENMSG_LEN..)
            .ok_or(NetlinkError::Malformed("short nfgenmsg"))?;
        parse_attrs(body)
    }
}

/// One attribute, its type with the flag bits masked off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub attr_type: u16,
    pub nested: bool,
    pub data: &'a [u8],
}

/// Splits `data` into attributes.
pub fn parse_attrs(mut data: &[u8]) -> Result<Vec<Attr<'_>>, NetlinkError> {
    let mut attrs = Vec::new();
    while data.len() >= NLA_HDRLEN {
        let len = read_u16_ne(data, 0).ok_or(NetlinkError::Malformed("short attribute"))? as usize;
        let raw_type = read_u16_ne(data, 2).ok_or(NetlinkError::Malformed("short attribute"))?;
        if len < NLA_HDRLEN || len > data.len() {
            return Err(NetlinkError::Malformed("attribute length out of bounds"));
        }
        attrs.push(Attr {
            attr_type: raw_type & NLA_TYPE_MASK,
            nested: raw_type & NLA_F_NESTED != 0,
            data: &data[NLA_HDRLEN..len],
        });
        data = data.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(attrs)
}

/// The first attribute of type `attr_type`.
pub fn find_attr<'a>(attrs: &[Attr<'a>], attr_type: u16) -> Option<Attr<'a>> {
    attrs.iter().copied().find(|a| a.attr_type == attr_type)
}

impl<'a> Attr<'a> {
    pub fn nested_attrs(&self) -> Result<Vec<Attr<'a>>, NetlinkError> {
        parse_attrs(self.data)
    }

    pub fn u8(&self) -> Result<u8, NetlinkError> {
        self.data
            .first()
            .copied()
            .ok_or(NetlinkError::Malformed("short u8 attribute"))
    }

    pub fn u16_be(&self) -> Result<u16, NetlinkError> {
        self.fixed::<2>().map(u16::from_be_bytes)
    }

    pub fn u32_be(&self) -> Result<u32, NetlinkError> {
        self.fixed::<4>().map(u32::from_be_bytes)
    }

    pub fn u64_be(&self) -> Result<u64, NetlinkError> {
        self.fixed::<8>().map(u64::from_be_bytes)
    }

    fn fixed<const N: usize>(&self) -> Result<[u8; N], NetlinkError> {
        self.data
            .get(..N)
            .and_then(|b| b.try_into().ok())
            .ok_or(NetlinkError::Malformed("short integer attribute"))
    }

    /// A string attribute, without its NUL terminator.
    pub fn str(&self) -> Result<&'a str, NetlinkError> {
        let bytes = match self.data.iter().position(|&b| b == 0) {
            Some(end) => &self.data[..end],
            None => self.data,
        };
        std::str::from_utf8(bytes)
            .map_err(|_| NetlinkError::Malformed("string attribute is not UTF-8"))
    }
}

/// A data message received in answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl OwnedMessage {
    pub fn nfnl_attrs(&self) -> Result<Vec<Attr<'_>>, NetlinkError> {
        let body = self
            .payload
            .get(NFGENMSG_LEN..)
            .ok_or(NetlinkError::Malformed("short nfgenmsg"))?;
        parse_attrs(body)
    }
}

/// Messages to send in one datagram, numbered from the client's sequence.
/// Made by [`NetlinkClient::request`] or [`NetlinkClient::batch`].
#[derive(Debug)]
pub struct Request {
    bytes: Vec<u8>,
    /// Every sequence number in the datagram: answers to others are stale.
    seqs: BTreeSet<u32>,
    /// Those whose answer (ack, error or end of dump) we wait for.
    awaited: BTreeSet<u32>,
    next_seq: u32,
    /// The nfnetlink subsystem of a batch, closed by `BATCH_END` on sending.
    batch: Option<u8>,
}

impl Request {
    fn starting_at(next_seq: u32) -> Self {
        Self {
            bytes: Vec::new(),
            seqs: BTreeSet::new(),
            awaited: BTreeSet::new(),
            next_seq,
            batch: None,
        }
    }

    /// The sequence number for the next message of this request.
    pub fn seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Appends a message built with a number from [`Request::seq`]. The
    /// kernel's answer is awaited when it asks for an ack or a dump; for any
    /// other message only an error can come back.
    pub fn push(&mut self, message: MessageBuilder) -> Result<&mut Self, NetlinkError> {
        let (seq, flags) = (message.seq, message.flags);
        self.bytes.extend_from_slice(&message.finish()?);
        self.seqs.insert(seq);
        if flags & (NLM_F_ACK | NLM_F_DUMP) != 0 {
            self.awaited.insert(seq);
        }
        Ok(self)
    }

    /// Appends one nfnetlink batch delimiter (`BATCH_BEGIN`/`BATCH_END`).
    fn push_delimiter(&mut self, msg_type: u16, subsys: u8) -> Result<(), NetlinkError> {
        let seq = self.seq();
        self.push(MessageBuilder::nfnl(
            msg_type,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            u16::from(subsys),
        ))
        .map(|_| ())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// `nfgenmsg.nfgen_family` of messages that name no address family.
pub const AF_UNSPEC: u8 = 0;

/// A blocking netlink socket.
#[derive(Debug)]
struct NetlinkSocket {
    socket: Socket,
    timeout: Duration,
    buf: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens a socket of netlink family `protocol`; reads give up after
    /// `timeout`.
    fn open(protocol: i32, timeout: Duration) -> Result<Self, NetlinkError> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(protocol)),
        )?;
        socket.set_read_timeout(Some(timeout))?;
        Ok(Self {
            socket,
            timeout,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends `request` and reads until every awaited message is answered.
    /// Returns the data messages received (for a dump: all of them); the
    /// first error the kernel reported makes the whole call fail. An error
    /// for a message that was not awaited (a batch header) ends it at once.
    fn transact(&mut self, request: &Request) -> Result<Vec<OwnedMessage>, NetlinkError> {
        let sent = self.socket.send(request.bytes())?;
        if sent != request.bytes().len() {
            return Err(NetlinkError::Malformed("short send"));
        }
        let mut pending = request.awaited.clone();
        let mut data = Vec::new();
        let mut first_error: Option<NetlinkError> = None;
        let mut interrupted = false;
        while !pending.is_empty() {
            let len = match (&self.socket).read(&mut self.buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NetlinkError::Timeout(self.timeout))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if len >= self.buf.len() {
                return Err(NetlinkError::Malformed(
                    "datagram larger than the receive buffer",
                ));
            }
            let buf = self.buf.get(..len).unwrap_or(&[]);
            for message in parse_messages(buf)? {
                if !request.seqs.contains(&message.seq) {
                    continue; // stale answer to an earlier, failed request
                }
                interrupted |= message.flags & NLM_F_DUMP_INTR != 0;
                match message.msg_type {
                    NLMSG_ERROR | NLMSG_DONE => {
                        // An ack carries 0; the end of a dump may carry an
                        // error of its own.
                        let code = match message.error_code() {
                            Some(code) => code?,
                            None => message
                                .payload
                                .get(..4)
                                .and_then(|b| b.try_into().ok())
                                .map_or(0, |b| i32::from_ne_bytes(b).saturating_neg()),
                        };
                        if code != 0 {
                            first_error.get_or_insert(NetlinkError::Kernel {
                                errno: code,
                                seq: message.seq,
                            });
                            if !request.awaited.contains(&message.seq) {
                                pending.clear();
                            }
                        }
                        pending.remove(&message.seq);
                    }
                    NLMSG_NOOP => {}
                    _ => data.push(OwnedMessage {
                        msg_type: message.msg_type,
                        flags: message.flags,
                        seq: message.seq,
                        payload: message.payload.to_vec(),
                    }),
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None if interrupted => Err(NetlinkError::DumpInterrupted),
            None => Ok(data),
        }
    }
}

/// The one netlink client of a backend: a socket opened on first use and
/// dropped after any failure (so the next request starts clean), and the
/// sequence numbers of its requests.
#[derive(Debug)]
pub struct NetlinkClient {
    protocol: i32,
    timeout: Duration,
    socket: Option<NetlinkSocket>,
    next_seq: u32,
}

impl NetlinkClient {
    /// A client of netlink family `protocol` whose reads give up after
    /// `timeout`. Opens nothing yet.
    pub fn new(protocol: i32, timeout: Duration) -> Self {
        Self {
            protocol,
            timeout,
            socket: None,
            // Sequence numbers only need to differ from those of earlier
            // requests on this socket; start away from zero for readability.
            next_seq: 1,
        }
    }

    /// An empty request, numbered after the previous one.
    pub fn request(&self) -> Request {
        Request::starting_at(self.next_seq)
    }

    /// A request that is one nfnetlink transaction of subsystem `subsys`:
    /// the kernel applies all of its messages or none.
    pub fn batch(&self, subsys: u8) -> Result<Request, NetlinkError> {
        let mut request = self.request();
        request.push_delimiter(NFNL_MSG_BATCH_BEGIN, subsys)?;
        request.batch = Some(subsys);
        Ok(request)
    }

    /// Sends `request` (closing its batch) and collects the answers.
    pub fn transact(&mut self, mut request: Request) -> Result<Vec<OwnedMessage>, NetlinkError> {
        if let Some(subsys) = request.batch.take() {
            request.push_delimiter(NFNL_MSG_BATCH_END, subsys)?;
        }
        self.next_seq = request.next_seq;
        let socket = match &mut self.socket {
            Some(socket) => socket,
            none => none.insert(NetlinkSocket::open(self.protocol, self.timeout)?),
        };
        let result = socket.transact(&request);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    /// Sends one message built by `build` from its sequence number.
    pub fn transact_one(
        &mut self,
        build: impl FnOnce(u32) -> MessageBuilder,
    ) -> Result<Vec<OwnedMessage>, NetlinkError> {
        let mut request = self.request();
        let seq = request.seq();
        request.push(build(seq))?;
        self.transact(request)
    }
}

/// `SOL_NETLINK` and its `NETLINK_ADD_MEMBERSHIP` option (linux/netlink.h).
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

/// A socket that receives the kernel's change notifications of one netlink
/// multicast group (for example every nf_tables ruleset change).
#[derive(Debug)]
pub struct Subscription {
    socket: Socket,
    buf: Vec<u8>,
}

/// What one wait on a [`Subscription`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// Nothing within the timeout.
    Nothing,
    /// These message types (the kernel's notifications).
    Messages(Vec<u16>),
    /// Notifications were lost (the socket's buffer overflowed): anything
    /// may have changed.
    Lost,
}

impl Subscription {
    /// Joins multicast `group` of netlink family `protocol`.
    #[allow(unsafe_code)]
    pub fn open(protocol: i32, group: u32) -> Result<Self, NetlinkError> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(protocol)),
        )?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        // An unbound netlink socket gets no multicast: bind it first, to an
        // address the kernel picks (port id 0).
        // SAFETY: an all-zero sockaddr_nl is valid (it is plain integers);
        // we set its family, and pass a pointer to it with its exact size,
        // as bind(2) requires; `fd` is open for the lifetime of `socket`.
        let rc = unsafe {
            let mut address: libc::sockaddr_nl = std::mem::zeroed();
            address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::bind(
                fd,
                std::ptr::from_ref(&address).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let group = libc::c_uint::from(group);
        // SAFETY: NETLINK_ADD_MEMBERSHIP reads exactly one unsigned int; we
        // pass a pointer to a live one and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                std::ptr::from_ref(&group).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Waits up to `timeout` for notifications, then takes every one that
    /// is already queued too, so a burst of changes is seen as one.
    pub fn wait(&mut self, timeout: Duration) -> Result<Notified, NetlinkError> {
        self.socket.set_read_timeout(Some(timeout))?;
        let mut types = Vec::new();
        loop {
            match (&self.socket).read(&mut self.buf) {
                Ok(len) => {
                    let datagram = self.buf.get(..len).unwrap_or(&[]);
                    types.extend(parse_messages(datagram)?.iter().map(|m| m.msg_type));
                    self.socket.set_nonblocking(true)?;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.socket.set_nonblocking(false)?;
                    return Ok(Notified::Lost);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.socket.set_nonblocking(false)?;
                    return Ok(if types.is_empty() {
                        Notified::Nothing
                    } else {
                        Notified::Messages(types)
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = self.socket.set_nonblocking(false);
                    return Err(e.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfnl_type_combines_subsystem_and_message() {
        assert_eq!(nfnl_type(NFNL_SUBSYS_NFTABLES, 12), 0x0a0c);
        assert_eq!(nfnl_type(NFNL_SUBSYS_IPSET, 9), 0x0609);
    }

    #[test]
    fn message_header_nfgenmsg_and_attributes_encode_exactly() {
        let mut builder = MessageBuilder::nfnl(0x0a0c, NLM_F_REQUEST | NLM_F_ACK, 7, 1, 0);
        builder
            .put_strz(1, "knock")
            .put_u64_be(4, 30_000)
            .nested(3, |b| {
                b.put_u8(7, 6);
            });
        let bytes = builder.finish().expect("small message");
        let mut expected = Vec::new();
        // nlmsghdr: length, type, flags, seq, pid (host order)
        expected.extend_from_slice(&56u32.to_ne_bytes());
        expected.extend_from_slice(&0x0a0cu16.to_ne_bytes());
        expected.extend_from_slice(&5u16.to_ne_bytes());
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, res_id (big endian)
        expected.extend_from_slice(&[1, 0, 0, 0]);
        // "knock\0": len 10, padded to 12
        expected.extend_from_slice(&10u16.to_ne_bytes());
        expected.extend_from_slice(&1u16.to_ne_bytes());
        expected.extend_from_slice(b"knock\0\0\0");
        // u64 big endian
        expected.extend_from_slice(&12u16.to_ne_bytes());
        expected.extend_from_slice(&4u16.to_ne_bytes());
        expected.extend_from_slice(&30_000u64.to_be_bytes());
        // nested: header (len 12) + inner u8 attribute (len 5, padded to 8)
        expected.extend_from_slice(&12u16.to_ne_bytes());
        expected.extend_from_slice(&(3u16 | NLA_F_NESTED).to_ne_bytes());
        expected.extend_from_slice(&5u16.to_ne_bytes());
        expected.extend_from_slice(&7u16.to_ne_bytes());
        expected.extend_from_slice(&[6, 0, 0, 0]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn messages_and_attributes_parse_back() {
        let mut builder = MessageBuilder::nfnl(0x0a0c, NLM_F_REQUEST, 9, 1, 0);
        builder.put_strz(1, "knock").nested(3, |b| {
            b.put_u32_be(2, 0xdead_beef).put_u16_be(4, 4992);
        });
        let first = builder.finish().expect("small");
        let second = MessageBuilder::new(NLMSG_DONE, NLM_F_MULTI, 10)
            .finish()
            .expect("small");
        let mut datagram = first.clone();
        datagram.extend_from_slice(&second);

        let messages = parse_messages(&datagram).expect("well formed");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].msg_type, 0x0a0c);
        assert_eq!(messages[0].seq, 9);
        assert_eq!(messages[1].msg_type, NLMSG_DONE);
        let attrs = messages[0].nfnl_attrs().expect("attrs");
        assert_eq!(
            find_attr(&attrs, 1).expect("name").str().expect("utf8"),
            "knock"
        );
        let nested = find_attr(&attrs, 3).expect("nested");
        assert!(nested.nested);
        let inner = nested.nested_attrs().expect("inner");
        assert_eq!(
            find_attr(&inner, 2)
                .expect("u32")
                .u32_be()
                .expect("4 bytes"),
            0xdead_beef
        );
        assert_eq!(
            find_attr(&inner, 4)
                .expect("u16")
                .u16_be()
                .expect("2 bytes"),
            4992
        );
    }

    #[test]
    fn error_messages_give_positive_errno_and_acks_zero() {
        let mut ack = MessageBuilder::new(NLMSG_ERROR, 0, 3);
        // nlmsgerr: error, then the original header (abbreviated here)
        ack.buf.extend_from_slice(&0i32.to_ne_bytes());
        let mut err = MessageBuilder::new(NLMSG_ERROR, 0, 4);
        err.buf.extend_from_slice(&(-2i32).to_ne_bytes());
        let mut datagram = ack.finish().expect("small");
        datagram.extend_from_slice(&err.finish().expect("small"));
        let messages = parse_messages(&datagram).expect("well formed");
        assert_eq!(messages[0].error_code().expect("error").expect("code"), 0);
        assert_eq!(messages[1].error_code().expect("error").expect("code"), 2);
    }

    #[test]
    fn truncated_input_is_rejected_not_trusted() {
        let bytes = MessageBuilder::new(NLMSG_DONE, 0, 1)
            .finish()
            .expect("small");
        assert!(parse_messages(&bytes[..10]).is_err());
        let mut lying = bytes.clone();
        lying[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(parse_messages(&lying).is_err());
        // attribute claiming more bytes than present
        let attr = [20u8, 0, 1, 0, 1, 2, 3, 4];
        assert!(parse_attrs(&attr).is_err());
        let tiny = Attr {
            attr_type: 1,
            nested: false,
            data: &[1, 2],
        };
        assert!(tiny.u32_be().is_err());
    }

    #[test]
    fn oversized_attribute_is_an_error_not_a_wrap() {
        let mut builder = MessageBuilder::new(0x0a0c, 0, 1);
        builder.put(1, &vec![0u8; 70_000]);
        assert!(matches!(builder.finish(), Err(NetlinkError::TooLarge)));
    }
}
