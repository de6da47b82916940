//! This host's own addresses, for the two questions capture asks of every
//! datagram before anything else: is it addressed to this host, and does it
//! claim a source that no remote host can have?
//!
//! The table is read with an rtnetlink dump (`RTM_GETADDR`) and read again
//! whenever the kernel says an address came or went (an
//! [`AddressWatch`](super::sys::AddressWatch) subscribed to `RTM_NEWADDR` and
//! `RTM_DELADDR`). Capture asks after every batch of frames it reads: the
//! kernel queues the notification before `ip addr add` returns, so a frame
//! that arrived after an address changed is judged by the new table (a knock
//! to an address added a moment ago is read; a source that became ours a
//! moment ago is refused). That costs one system call per batch, not per
//! frame. Lookups are binary searches in two sorted vectors: no allocation
//! and no hashing on the packet path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::firewall::netlink::{
    find_attr, parse_attrs, MessageBuilder, NetlinkClient, NetlinkError, OwnedMessage, AF_UNSPEC,
    NLM_F_DUMP, NLM_F_REQUEST,
};

use super::sys::{AddressWatch, FrameMeta};

/// How long one dump may take before we give up on it.
const DUMP_TIMEOUT: Duration = Duration::from_secs(1);
/// A dump that the kernel says changed under it is tried this many times.
const DUMP_ATTEMPTS: usize = 3;
/// `sizeof(struct ifaddrmsg)`.
const IFADDRMSG_LEN: usize = 8;

/// The addresses of this host's interfaces.
#[derive(Debug)]
pub struct LocalAddrs {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    /// Where the table comes from; `None` for a fixed table (tests).
    kernel: Option<Kernel>,
}

#[derive(Debug)]
struct Kernel {
    watch: AddressWatch,
    dumps: NetlinkClient,
}

impl LocalAddrs {
    /// Reads the table from the kernel, subscribed first to its changes so
    /// that none made during the read is missed.
    pub fn load() -> Result<Self, NetlinkError> {
        let watch = AddressWatch::open()?;
        let mut kernel = Kernel {
            watch,
            dumps: NetlinkClient::new(libc::NETLINK_ROUTE, DUMP_TIMEOUT),
        };
        let (v4, v6) = kernel.dump()?;
        Ok(Self {
            v4,
            v6,
            kernel: Some(kernel),
        })
    }

    /// A table that never changes.
    #[cfg(test)]
    pub fn fixed(addresses: &[IpAddr]) -> Self {
        let (v4, v6) = sorted(addresses.iter().copied());
        Self {
            v4,
            v6,
            kernel: None,
        }
    }

    /// Reads the table again if the kernel said that it changed. Returns
    /// whether it was read again. Costs one system call when nothing
    /// changed. On an error the old table stays.
    pub fn refresh(&mut self) -> Result<bool, NetlinkError> {
        let Some(kernel) = &mut self.kernel else {
            return Ok(false);
        };
        // A watch that fails to read cannot say what changed: read again.
        let changed = kernel.watch.changed().unwrap_or(true);
        if !changed {
            return Ok(false);
        }
        let (v4, v6) = kernel.dump()?;
        self.v4 = v4;
        self.v6 = v6;
        Ok(true)
    }

    /// Is `addr` one of this host's addresses?
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.binary_search(&a).is_ok(),
            IpAddr::V6(a) => self.v6.binary_search(&a).is_ok(),
        }
    }

    /// Would this host's IP stack take a datagram to `destination` that
    /// arrived as `meta` says? Loopback destinations only on loopback (the
    /// kernel drops them elsewhere as martians); other addresses when they
    /// are ours.
    pub fn addressed_here(&self, destination: IpAddr, meta: FrameMeta) -> bool {
        if destination.is_loopback() {
            return meta.on_loopback();
        }
        self.contains(destination)
    }

    /// Can a datagram from `source` that arrived as `meta` says have come
    /// from another host? Not if it arrived on a device other than loopback
    /// claiming a loopback source, a link-local one, or one of our own
    /// addresses: those are sources no remote host has. A packet socket sees
    /// such frames before the kernel's martian and reverse-path checks drop
    /// them, so capture must refuse them itself. On loopback, every source
    /// is this host, sending to itself.
    pub fn plausible_source(&self, source: IpAddr, meta: FrameMeta) -> bool {
        if meta.on_loopback() {
            return true;
        }
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        let remote_can_have = match source {
            IpAddr::V4(a) => !(a.is_loopback() || a.is_link_local()),
            IpAddr::V6(a) => !(a.is_loopback() || is_link_local_v6(a)),
        };
        remote_can_have && !self.contains(source)
    }
}

/// fe80::/10.
fn is_link_local_v6(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

fn sorted(addresses: impl Iterator<Item = IpAddr>) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for addr in addresses {
        match addr {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    v4.sort_unstable();
    v4.dedup();
    v6.sort_unstable();
    v6.dedup();
    (v4, v6)
}

impl Kernel {
    /// Every address of every interface, both families.
    fn dump(&mut self) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), NetlinkError> {
        let mut attempt = 1;
        loop {
            // An `RTM_GETADDR` dump request needs only a `struct rtgenmsg`
            // (one byte: the family, here every family) after the header;
            // the four bytes `nfnl` writes are that and three zeros.
            let answer = self.dumps.transact_one(|seq| {
                MessageBuilder::nfnl(
                    libc::RTM_GETADDR,
                    NLM_F_REQUEST | NLM_F_DUMP,
                    seq,
                    AF_UNSPEC,
                    0,
                )
            });
            match answer {
                Ok(messages) => return Ok(sorted(addresses(&messages))),
                Err(NetlinkError::DumpInterrupted) if attempt < DUMP_ATTEMPTS => attempt += 1,
                Err(err) => return Err(err),
            }
        }
    }
}

/// The addresses in `RTM_NEWADDR` messages: the local address (`IFA_LOCAL`)
/// where there is one (on a point-to-point link `IFA_ADDRESS` is the peer's),
/// else `IFA_ADDRESS`. Messages that do not parse are skipped.
fn addresses(messages: &[OwnedMessage]) -> impl Iterator<Item = IpAddr> + '_ {
    messages
        .iter()
        .filter(|m| m.msg_type == libc::RTM_NEWADDR)
        .filter_map(|m| {
            let family = i32::from(*m.payload.first()?);
            let attrs = parse_attrs(m.payload.get(IFADDRMSG_LEN..)?).ok()?;
            let attr = find_attr(&attrs, libc::IFA_LOCAL)
                .or_else(|| find_attr(&attrs, libc::IFA_ADDRESS))?;
            match family {
                libc::AF_INET => {
                    let octets: [u8; 4] = attr.data.get(..4)?.try_into().ok()?;
                    Some(IpAddr::from(octets))
                }
                libc::AF_INET6 => {
                    let octets: [u8; 16] = attr.data.get(..16)?.try_into().ok()?;
                    Some(IpAddr::from(octets))
                }
                _ => None,
            }
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const ETH: FrameMeta = FrameMeta {
        ifindex: 2,
        pkttype: 0,
        hatype: 1,
        arrived: None,
    };
    const LO: FrameMeta = FrameMeta {
        ifindex: 1,
        pkttype: 0,
        hatype: libc::ARPHRD_LOOPBACK,
        arrived: None,
    };

    fn table() -> LocalAddrs {
        LocalAddrs::fixed(&[
            ip("127.0.0.1"),
            ip("198.18.0.1"),
            ip("198.18.1.1"),
            ip("::1"),
            ip("fd00:18::1"),
            ip("fe80::1"),
        ])
    }

    #[test]
    fn sources_no_remote_host_has_are_implausible_off_loopback() {
        let local = table();
        for source in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.7.7",
            "fe80::66",
            "febf::1",
            "198.18.0.1",
            "198.18.1.1",
            "::ffff:198.18.0.1",
            "fd00:18::1",
        ] {
            assert!(!local.plausible_source(ip(source), ETH), "{source} on eth");
            assert!(local.plausible_source(ip(source), LO), "{source} on lo");
        }
        for source in [
            "198.18.0.2",
            "fd00:18::2",
            "fec0::1",
            "169.255.0.1",
            "::ffff:198.18.0.2",
        ] {
            assert!(local.plausible_source(ip(source), ETH), "{source}");
        }
    }

    #[test]
    fn only_our_addresses_are_addressed_here() {
        let local = table();
        for dest in ["198.18.0.1", "198.18.1.1", "fd00:18::1", "fe80::1"] {
            assert!(local.addressed_here(ip(dest), ETH), "{dest}");
            assert!(local.addressed_here(ip(dest), LO), "{dest} on lo");
        }
        for dest in [
            "198.18.0.3",
            "198.18.0.255",
            "fd00:18::3",
            "::ffff:198.18.0.1",
        ] {
            assert!(!local.addressed_here(ip(dest), ETH), "{dest}");
        }
        // Loopback destinations are the host's on loopback only.
        assert!(local.addressed_here(ip("127.0.0.53"), LO));
        assert!(local.addressed_here(ip("::1"), LO));
        assert!(!local.addressed_here(ip("127.0.0.1"), ETH));
        assert!(!local.addressed_here(ip("::1"), ETH));
    }

    #[test]
    fn dump_messages_give_local_addresses_not_peers() {
        let message = |family: u8, attrs: &[(u16, &[u8])]| {
            let mut payload = vec![family, 24, 0, 0, 2, 0, 0, 0];
            for (kind, data) in attrs {
                let len = (4 + data.len()) as u16;
                payload.extend_from_slice(&len.to_ne_bytes());
                payload.extend_from_slice(&kind.to_ne_bytes());
                payload.extend_from_slice(data);
                payload.resize(payload.len().div_ceil(4) * 4, 0);
            }
            OwnedMessage {
                msg_type: libc::RTM_NEWADDR,
                flags: 0,
                seq: 1,
                payload,
            }
        };
        let v4 = [198u8, 18, 0, 1];
        let peer = [198u8, 18, 0, 9];
        let v6 = ip("fd00:18::1");
        let IpAddr::V6(v6) = v6 else { panic!() };
        let messages = vec![
            message(libc::AF_INET as u8, &[(libc::IFA_ADDRESS, &v4)]),
            message(
                libc::AF_INET as u8,
                &[
                    (libc::IFA_ADDRESS, &peer),
                    (libc::IFA_LOCAL, &[10, 0, 0, 1]),
                ],
            ),
            message(libc::AF_INET6 as u8, &[(libc::IFA_ADDRESS, &v6.octets())]),
            // Too short to be an address, and a family we do not know.
            message(libc::AF_INET as u8, &[(libc::IFA_ADDRESS, &[1, 2])]),
            message(99, &[(libc::IFA_ADDRESS, &v4)]),
            OwnedMessage {
                msg_type: libc::RTM_NEWADDR,
                flags: 0,
                seq: 1,
                payload: vec![2, 0],
            },
        ];
        let found: Vec<IpAddr> = addresses(&messages).collect();
        assert_eq!(found, [ip("198.18.0.1"), ip("10.0.0.1"), ip("fd00:18::1")]);
    }

    #[test]
    fn the_kernel_table_holds_loopback() {
        let local = LocalAddrs::load().expect("rtnetlink dump");
        // Loopback has 127.0.0.1 whenever it is up.
        let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap_or_default();
        let up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0) & 1;
        if up == 1 {
            assert!(local.contains(ip("127.0.0.1")), "{local:?}");
        }
        assert!(local.v4.windows(2).all(|w| w[0] < w[1]), "{local:?}");
        assert!(local.v6.windows(2).all(|w| w[0] < w[1]), "{local:?}");
    }
}
