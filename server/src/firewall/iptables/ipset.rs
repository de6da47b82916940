//! ipset over netlink: the messages the iptables backend sends to add
//! timed elements, read a set's header and destroy a set. Reading a set's
//! members goes through `ipset save` (see `mod.rs`).

use std::net::IpAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use knock_proto::PortSpec;

use super::Family;
use crate::firewall::netlink::{
    find_attr, nfnl_type, MessageBuilder, NetlinkClient, NetlinkError, NETLINK_NETFILTER,
    NFNL_SUBSYS_IPSET, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_REQUEST,
};
use crate::firewall::FirewallError;

const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's largest ipset timeout, in seconds.
const IPSET_MAX_TIMEOUT: u32 = 2_147_483;

// ipset netlink protocol (linux/netfilter/ipset/ip_set.h)
pub(super) const IPSET_PROTOCOL: u8 = 6;
const IPSET_CMD_DESTROY: u8 = 3;
const IPSET_CMD_ADD: u8 = 9;
const IPSET_CMD_HEADER: u8 = 12;
pub(super) const IPSET_ATTR_PROTOCOL: u16 = 1;
pub(super) const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_TYPENAME: u16 = 3;
const IPSET_ATTR_FAMILY: u16 = 5;
pub(super) const IPSET_ATTR_DATA: u16 = 7;
pub(super) const IPSET_ATTR_IP: u16 = 1;
pub(super) const IPSET_ATTR_PORT: u16 = 4;
pub(super) const IPSET_ATTR_TIMEOUT: u16 = 6;
pub(super) const IPSET_ATTR_PROTO: u16 = 7;
pub(super) const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;
const IPSET_ERR_REFERENCED: i32 = 4108;

/// One element to add: `addr,proto:port timeout secs`.
pub(super) type Element = (IpAddr, PortSpec, u32);

/// One IPSET_CMD_ADD message: `addr,proto:port timeout secs` into the
/// family's set.
pub(super) fn add_message(seq: u32, family: Family, element: Element) -> MessageBuilder {
    let (addr, port, timeout_s) = element;
    let mut builder = MessageBuilder::nfnl(
        nfnl_type(NFNL_SUBSYS_IPSET, IPSET_CMD_ADD),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family.nfproto,
        0,
    );
    builder
        .put_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
        .put_strz(IPSET_ATTR_SETNAME, family.set)
        .nested(IPSET_ATTR_DATA, |b| {
            b.nested(IPSET_ATTR_IP, |b| {
                match addr {
                    IpAddr::V4(a) => {
                        b.put(IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets())
                    }
                    IpAddr::V6(a) => {
                        b.put(IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets())
                    }
                };
            })
            .put_u16_be(IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER, port.port)
            .put_u8(IPSET_ATTR_PROTO, port.transport.ip_proto())
            .put_u32_be(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, timeout_s);
        });
    builder
}

/// A message naming one set (HEADER, DESTROY).
fn set_message(seq: u32, cmd: u8, set: &str) -> MessageBuilder {
    let mut builder = MessageBuilder::nfnl(
        nfnl_type(NFNL_SUBSYS_IPSET, cmd),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        0,
        0,
    );
    builder
        .put_u8(IPSET_ATTR_PROTOCOL, IPSET_PROTOCOL)
        .put_strz(IPSET_ATTR_SETNAME, set);
    builder
}

/// Whole seconds for ipset, rounded up, never 0 (which means "forever").
pub(super) fn timeout_secs(duration: Duration) -> u32 {
    let secs = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    u32::try_from(secs)
        .unwrap_or(u32::MAX)
        .clamp(1, IPSET_MAX_TIMEOUT)
}

/// ipset requests over one netlink client.
#[derive(Debug)]
pub(super) struct Ipset {
    client: NetlinkClient,
}

impl Ipset {
    pub(super) fn new() -> Self {
        Self {
            client: NetlinkClient::new(NETLINK_NETFILTER, NETLINK_TIMEOUT),
        }
    }

    /// Adds (or, as no NLM_F_EXCL is set, refreshes) elements, all in one
    /// datagram.
    pub(super) fn add(&mut self, family: Family, elements: &[Element]) -> Result<(), NetlinkError> {
        let mut request = self.client.request();
        for &element in elements {
            let seq = request.seq();
            request.push(add_message(seq, family, element))?;
        }
        self.client.transact(request).map(|_| ())
    }

    /// The set's type and family, or `None` if it does not exist.
    pub(super) fn header(&mut self, set: &str) -> Result<Option<(String, u8)>, FirewallError> {
        let doing = format!("reading the header of ipset {set}");
        let messages = match self
            .client
            .transact_one(|seq| set_message(seq, IPSET_CMD_HEADER, set))
        {
            Ok(messages) => messages,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(FirewallError::netlink(doing)(e)),
        };
        let message = messages.first().ok_or_else(|| {
            FirewallError::netlink(doing.clone())(NetlinkError::Malformed(
                "no header in the answer",
            ))
        })?;
        let attrs = message
            .nfnl_attrs()
            .map_err(FirewallError::netlink(&doing))?;
        let type_name = find_attr(&attrs, IPSET_ATTR_TYPENAME)
            .map(|a| a.str().map(str::to_owned))
            .transpose()
            .map_err(FirewallError::netlink(&doing))?
            .unwrap_or_default();
        let family = find_attr(&attrs, IPSET_ATTR_FAMILY)
            .and_then(|a| a.u8().ok())
            .unwrap_or(0);
        Ok(Some((type_name, family)))
    }

    /// Destroys `set`, waiting a little while a just-deleted rule still
    /// holds it (iptables-nft releases references asynchronously).
    pub(super) fn destroy(&mut self, set: &str) -> Result<(), FirewallError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self
                .client
                .transact_one(|seq| set_message(seq, IPSET_CMD_DESTROY, set))
            {
                Ok(_) => return Ok(()),
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
                Err(e) if e.errno() == Some(IPSET_ERR_REFERENCED) && Instant::now() < deadline => {
                    sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(FirewallError::netlink(format!("destroying set {set}"))(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::iptables::V4;
    use crate::firewall::netlink::{parse_attrs, parse_messages, NLA_F_NESTED};

    #[test]
    fn timeouts_round_up_and_never_reach_zero() {
        assert_eq!(timeout_secs(Duration::ZERO), 1);
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::from_secs(30)), 30);
        assert_eq!(timeout_secs(Duration::MAX), IPSET_MAX_TIMEOUT);
    }

    #[test]
    fn add_message_encodes_ipset_attributes() {
        let bytes = add_message(
            3,
            V4,
            ("10.0.0.1".parse().expect("ip"), PortSpec::tcp(4992), 30),
        )
        .finish()
        .expect("small");
        let messages = parse_messages(&bytes).expect("parse");
        assert_eq!(messages[0].msg_type, 0x0609);
        assert_eq!(messages[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(messages[0].payload[..4], [V4.nfproto, 0, 0, 0]);
        let attrs = messages[0].nfnl_attrs().expect("attrs");
        assert_eq!(
            find_attr(&attrs, IPSET_ATTR_PROTOCOL)
                .expect("p")
                .u8()
                .expect("u8"),
            IPSET_PROTOCOL
        );
        assert_eq!(
            find_attr(&attrs, IPSET_ATTR_SETNAME).expect("n").data,
            b"knock4\0"
        );
        let data = find_attr(&attrs, IPSET_ATTR_DATA).expect("data");
        assert!(data.nested);
        // raw view, to see the NLA_F_NET_BYTEORDER bits the kernel insists on
        let raw = data.data;
        assert_eq!(
            u16::from_ne_bytes([raw[2], raw[3]]),
            IPSET_ATTR_IP | NLA_F_NESTED
        );
        assert_eq!(
            u16::from_ne_bytes([raw[6], raw[7]]),
            IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER
        );
        assert_eq!(raw[8..12], [10, 0, 0, 1]);
        let inner = parse_attrs(raw).expect("inner");
        assert_eq!(
            find_attr(&inner, IPSET_ATTR_PORT)
                .expect("port")
                .u16_be()
                .expect("u16"),
            4992
        );
        assert_eq!(
            find_attr(&inner, IPSET_ATTR_PROTO)
                .expect("proto")
                .u8()
                .expect("u8"),
            6
        );
        assert_eq!(
            find_attr(&inner, IPSET_ATTR_TIMEOUT)
                .expect("t")
                .u32_be()
                .expect("u32"),
            30
        );
    }
}
