//! nf_tables over netlink: the messages the nftables backend sends, and
//! parsers for the kernel's answers (tables, chains, sets, set elements).
//! What the objects should look like is the backend's business (`mod.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use knock_proto::{PortSpec, Transport};

use super::{SET4, SET6};
use crate::firewall::netlink::{
    find_attr, nfnl_type, Attr, MessageBuilder, NetlinkClient, NetlinkError, OwnedMessage,
    NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::firewall::FirewallError;

const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const NFPROTO_INET: u8 = 1;

// enum nf_tables_msg_types
pub(super) const NFT_MSG_GETTABLE: u8 = 1;
pub(super) const NFT_MSG_DELTABLE: u8 = 2;
pub(super) const NFT_MSG_GETCHAIN: u8 = 4;
pub(super) const NFT_MSG_GETRULE: u8 = 7;
pub(super) const NFT_MSG_GETSET: u8 = 10;
pub(super) const NFT_MSG_NEWSETELEM: u8 = 12;
pub(super) const NFT_MSG_GETSETELEM: u8 = 13;
pub(super) const NFT_MSG_DELSETELEM: u8 = 14;

pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_TABLE_FLAGS: u16 = 2;
pub(super) const NFT_TABLE_F_DORMANT: u32 = 1;

pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NF_INET_PRE_ROUTING: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;

pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;

pub(super) const NFTA_SET_TABLE: u16 = 1;
pub(super) const NFTA_SET_NAME: u16 = 2;
pub(super) const NFTA_SET_FLAGS: u16 = 3;
pub(super) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(super) const NFTA_SET_KEY_LEN: u16 = 5;
pub(super) const NFT_SET_ANONYMOUS: u32 = 0x1;
pub(super) const NFT_SET_CONSTANT: u32 = 0x2;
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_MAP: u32 = 0x8;
pub(super) const NFT_SET_TIMEOUT: u32 = 0x10;
pub(super) const NFT_SET_OBJECT: u32 = 0x40;

pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(super) const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
pub(super) const NFTA_DATA_VALUE: u16 = 1;

/// nft's type id of `ipv4_addr . inet_proto . inet_service` (each part is
/// 6 bits: ipv4_addr 7, ipv6_addr 8, inet_proto 12, inet_service 13).
pub(super) const KEY_TYPE4: u32 = (((7 << 6) | 12) << 6) | 13;
pub(super) const KEY_TYPE6: u32 = (((8 << 6) | 12) << 6) | 13;
/// Key lengths: every field of a concatenation is padded to 4 bytes.
pub(super) const KEY_LEN4: usize = 4 + 4 + 4;
pub(super) const KEY_LEN6: usize = 16 + 4 + 4;

/// The set a grant for `addr` goes to, and the element key.
pub fn element_key(addr: IpAddr, port: PortSpec) -> (&'static str, Vec<u8>) {
    let mut key = Vec::with_capacity(KEY_LEN6);
    let set = match addr {
        IpAddr::V4(a) => {
            key.extend_from_slice(&a.octets());
            SET4
        }
        IpAddr::V6(a) => {
            key.extend_from_slice(&a.octets());
            SET6
        }
    };
    key.extend_from_slice(&[port.transport.ip_proto(), 0, 0, 0]);
    key.extend_from_slice(&port.port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    (set, key)
}

/// Decodes an element key of either set; `None` for keys we never write.
pub fn decode_key(key: &[u8]) -> Option<(IpAddr, PortSpec)> {
    let (addr, rest) = match key.len() {
        KEY_LEN4 => {
            let octets: [u8; 4] = key.get(..4)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(octets)), key.get(4..)?)
        }
        KEY_LEN6 => {
            let octets: [u8; 16] = key.get(..16)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(octets)), key.get(16..)?)
        }
        _ => return None,
    };
    let transport = Transport::from_ip_proto(*rest.first()?)?;
    let port = u16::from_be_bytes(rest.get(4..6)?.try_into().ok()?);
    Some((addr, PortSpec { transport, port }))
}

/// A chain as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChainInfo {
    pub name: String,
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
    pub chain_type: Option<String>,
}

/// A set as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SetInfo {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
}

fn malformed(what: &'static str) -> NetlinkError {
    NetlinkError::Malformed(what)
}

fn parse_chain(message: &OwnedMessage) -> Result<(String, ChainInfo), NetlinkError> {
    let attrs = message.nfnl_attrs()?;
    let table = find_attr(&attrs, NFTA_CHAIN_TABLE)
        .ok_or(malformed("chain without table"))?
        .str()?
        .to_owned();
    let name = find_attr(&attrs, NFTA_CHAIN_NAME)
        .ok_or(malformed("chain without name"))?
        .str()?
        .to_owned();
    let hook = match find_attr(&attrs, NFTA_CHAIN_HOOK) {
        Some(hook) => {
            let hook = hook.nested_attrs()?;
            let num = find_attr(&hook, NFTA_HOOK_HOOKNUM)
                .ok_or(malformed("hook without number"))?
                .u32_be()?;
            let prio = find_attr(&hook, NFTA_HOOK_PRIORITY)
                .ok_or(malformed("hook without priority"))?
                .u32_be()?;
            Some((num, i32::from_be_bytes(prio.to_be_bytes())))
        }
        None => None,
    };
    let policy = find_attr(&attrs, NFTA_CHAIN_POLICY)
        .map(|a| a.u32_be())
        .transpose()?;
    let chain_type = find_attr(&attrs, NFTA_CHAIN_TYPE)
        .map(|a| a.str().map(str::to_owned))
        .transpose()?;
    Ok((
        table,
        ChainInfo {
            name,
            hook,
            policy,
            chain_type,
        },
    ))
}

fn parse_set(message: &OwnedMessage) -> Result<(String, SetInfo), NetlinkError> {
    let attrs = message.nfnl_attrs()?;
    let u32_of = |ty| {
        find_attr(&attrs, ty)
            .map(|a| a.u32_be())
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let table = find_attr(&attrs, NFTA_SET_TABLE)
        .ok_or(malformed("set without table"))?
        .str()?
        .to_owned();
    let name = find_attr(&attrs, NFTA_SET_NAME)
        .ok_or(malformed("set without name"))?
        .str()?
        .to_owned();
    Ok((
        table,
        SetInfo {
            name,
            flags: u32_of(NFTA_SET_FLAGS)?,
            key_type: u32_of(NFTA_SET_KEY_TYPE)?,
            key_len: u32_of(NFTA_SET_KEY_LEN)?,
        },
    ))
}

/// A set element's key, and the milliseconds it has left (none: no timeout).
pub(super) type Element = (Vec<u8>, Option<u64>);

/// A NEWSETELEM or DELSETELEM message for `keys` (with `timeout_ms` if any).
pub(super) fn setelem_message(
    msg: u8,
    flags: u16,
    seq: u32,
    table: &str,
    set: &str,
    keys: &[Vec<u8>],
    timeout_ms: Option<u64>,
) -> MessageBuilder {
    let mut builder = MessageBuilder::nfnl(
        nfnl_type(NFNL_SUBSYS_NFTABLES, msg),
        flags,
        seq,
        NFPROTO_INET,
        0,
    );
    builder
        .put_strz(NFTA_SET_ELEM_LIST_TABLE, table)
        .put_strz(NFTA_SET_ELEM_LIST_SET, set)
        .nested(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            for key in keys {
                b.nested(NFTA_LIST_ELEM, |b| {
                    b.nested(NFTA_SET_ELEM_KEY, |b| {
                        b.put(NFTA_DATA_VALUE, key);
                    });
                    if let Some(ms) = timeout_ms {
                        b.put_u64_be(NFTA_SET_ELEM_TIMEOUT, ms);
                    }
                });
            }
        });
    builder
}

fn parse_element(element: Attr<'_>) -> Result<Element, NetlinkError> {
    let attrs = element.nested_attrs()?;
    let key = find_attr(&attrs, NFTA_SET_ELEM_KEY)
        .ok_or(malformed("element without key"))?
        .nested_attrs()?;
    let value = find_attr(&key, NFTA_DATA_VALUE).ok_or(malformed("element key without value"))?;
    let expiration = find_attr(&attrs, NFTA_SET_ELEM_EXPIRATION)
        .map(|a| a.u64_be())
        .transpose()?;
    Ok((value.data.to_vec(), expiration))
}

/// nf_tables requests about one table of family inet.
#[derive(Debug)]
pub(super) struct Nfnl {
    client: NetlinkClient,
}

impl Nfnl {
    pub(super) fn new() -> Self {
        Self {
            client: NetlinkClient::new(NETLINK_NETFILTER, NETLINK_TIMEOUT),
        }
    }

    /// One GET (or, with `dump`, a dump) of nf_tables message `msg`. A dump
    /// the kernel marks as interrupted (the ruleset changed meanwhile) is
    /// retried.
    fn query(
        &mut self,
        msg: u8,
        dump: bool,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Result<Vec<OwnedMessage>, NetlinkError> {
        let mut attempts = 0;
        loop {
            let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
            let result = self.client.transact_one(|seq| {
                let mut builder = MessageBuilder::nfnl(
                    nfnl_type(NFNL_SUBSYS_NFTABLES, msg),
                    flags,
                    seq,
                    NFPROTO_INET,
                    0,
                );
                attrs(&mut builder);
                builder
            });
            match result {
                Err(NetlinkError::DumpInterrupted) if attempts < 3 => attempts += 1,
                result => return result,
            }
        }
    }

    /// `Ok(None)` when the kernel says the object does not exist.
    fn get_one(
        &mut self,
        msg: u8,
        doing: &str,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Result<Option<OwnedMessage>, FirewallError> {
        match self.query(msg, false, attrs) {
            Ok(messages) => Ok(messages.into_iter().next()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(FirewallError::netlink(doing)(e)),
        }
    }

    fn dump(
        &mut self,
        msg: u8,
        doing: &str,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Result<Vec<OwnedMessage>, FirewallError> {
        self.query(msg, true, attrs)
            .map_err(FirewallError::netlink(doing))
    }

    /// The table's flags, or `None` if it does not exist.
    pub(super) fn table_flags(&mut self, table: &str) -> Result<Option<u32>, FirewallError> {
        let doing = format!("reading table inet {table}");
        let Some(message) = self.get_one(NFT_MSG_GETTABLE, &doing, |b| {
            b.put_strz(NFTA_TABLE_NAME, table);
        })?
        else {
            return Ok(None);
        };
        let flags = message.nfnl_attrs().and_then(|attrs| {
            find_attr(&attrs, NFTA_TABLE_FLAGS)
                .map(|a| a.u32_be())
                .transpose()
        });
        flags
            .map(|flags| Some(flags.unwrap_or(0)))
            .map_err(FirewallError::netlink(doing))
    }

    pub(super) fn chain(
        &mut self,
        table: &str,
        chain: &str,
    ) -> Result<Option<ChainInfo>, FirewallError> {
        let doing = format!("reading chain inet {table} {chain}");
        let message = self.get_one(NFT_MSG_GETCHAIN, &doing, |b| {
            b.put_strz(NFTA_CHAIN_TABLE, table)
                .put_strz(NFTA_CHAIN_NAME, chain);
        })?;
        message
            .map(|m| parse_chain(&m).map(|(_, chain)| chain))
            .transpose()
            .map_err(FirewallError::netlink(doing))
    }

    pub(super) fn set(&mut self, table: &str, set: &str) -> Result<Option<SetInfo>, FirewallError> {
        let doing = format!("reading set inet {table} {set}");
        let message = self.get_one(NFT_MSG_GETSET, &doing, |b| {
            b.put_strz(NFTA_SET_TABLE, table)
                .put_strz(NFTA_SET_NAME, set);
        })?;
        message
            .map(|m| parse_set(&m).map(|(_, set)| set))
            .transpose()
            .map_err(FirewallError::netlink(doing))
    }

    /// Every chain of `table`.
    pub(super) fn chains(&mut self, table: &str) -> Result<Vec<ChainInfo>, FirewallError> {
        self.dump_of_table(
            table,
            NFT_MSG_GETCHAIN,
            NFTA_CHAIN_TABLE,
            "chains",
            parse_chain,
        )
    }

    /// Every set of `table`, anonymous ones included.
    pub(super) fn sets(&mut self, table: &str) -> Result<Vec<SetInfo>, FirewallError> {
        self.dump_of_table(table, NFT_MSG_GETSET, NFTA_SET_TABLE, "sets", parse_set)
    }

    /// Dumps the objects (`what`) of `table` with `msg`, keeping only those
    /// that `parse` says belong to it.
    fn dump_of_table<T>(
        &mut self,
        table: &str,
        msg: u8,
        table_attr: u16,
        what: &str,
        parse: fn(&OwnedMessage) -> Result<(String, T), NetlinkError>,
    ) -> Result<Vec<T>, FirewallError> {
        let doing = format!("listing the {what} of table inet {table}");
        let messages = self.dump(msg, &doing, |b| {
            b.put_strz(table_attr, table);
        })?;
        let mut objects = Vec::new();
        for message in &messages {
            let (owner, object) = parse(message).map_err(FirewallError::netlink(&doing))?;
            if owner == table {
                objects.push(object);
            }
        }
        Ok(objects)
    }

    /// The expressions of each rule of `chain`, in order.
    pub(super) fn rules(
        &mut self,
        table: &str,
        chain: &str,
    ) -> Result<Vec<Vec<u8>>, FirewallError> {
        let doing = format!("listing the rules of chain inet {table} {chain}");
        let messages = self.dump(NFT_MSG_GETRULE, &doing, |b| {
            b.put_strz(NFTA_RULE_TABLE, table)
                .put_strz(NFTA_RULE_CHAIN, chain);
        })?;
        let mut rules = Vec::new();
        for message in &messages {
            let rule = parse_rule(message).map_err(FirewallError::netlink(&doing))?;
            if rule.table == Some(table) && rule.chain == Some(chain) {
                rules.push(rule.expressions);
            }
        }
        Ok(rules)
    }

    /// The live elements of one set: key and milliseconds left.
    pub(super) fn elements(
        &mut self,
        table: &str,
        set: &str,
    ) -> Result<Vec<Element>, FirewallError> {
        let doing = format!("listing the elements of set inet {table} {set}");
        let messages = match self.query(NFT_MSG_GETSETELEM, true, |b| {
            b.put_strz(NFTA_SET_ELEM_LIST_TABLE, table)
                .put_strz(NFTA_SET_ELEM_LIST_SET, set);
        }) {
            Ok(messages) => messages,
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                return Err(FirewallError::Missing(format!(
                    "set inet {table} {set} does not exist"
                )))
            }
            Err(e) => return Err(FirewallError::netlink(doing)(e)),
        };
        let mut elements = Vec::new();
        for message in &messages {
            let parsed = parse_elements(message).map_err(FirewallError::netlink(&doing))?;
            elements.extend(parsed);
        }
        Ok(elements)
    }

    /// Adds (or refreshes) elements `keys` of `set` for `timeout_ms`, in one
    /// transaction: NEWSETELEM, DELSETELEM, NEWSETELEM. The delete makes the
    /// second add start a fresh timeout on kernels that keep an existing
    /// element's timeout on a plain add; the first add makes the delete
    /// valid whether or not the element existed.
    pub(super) fn add_elements(
        &mut self,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
        timeout_ms: u64,
    ) -> Result<(), NetlinkError> {
        let mut request = self.client.batch(NFNL_SUBSYS_NFTABLES)?;
        for (msg, flags, timeout) in [
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, Some(timeout_ms)),
            (NFT_MSG_DELSETELEM, 0, None),
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, Some(timeout_ms)),
        ] {
            let seq = request.seq();
            request.push(setelem_message(
                msg,
                flags | NLM_F_REQUEST | NLM_F_ACK,
                seq,
                table,
                set,
                keys,
                timeout,
            ))?;
        }
        self.client.transact(request).map(|_| ())
    }

    /// Deletes `table` in one transaction.
    pub(super) fn delete_table(&mut self, table: &str) -> Result<(), NetlinkError> {
        let mut request = self.client.batch(NFNL_SUBSYS_NFTABLES)?;
        let seq = request.seq();
        let mut delete = MessageBuilder::nfnl(
            nfnl_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        delete.put_strz(NFTA_TABLE_NAME, table);
        request.push(delete)?;
        self.client.transact(request).map(|_| ())
    }
}

/// One rule as a GETRULE dump lists it.
struct RuleInfo<'a> {
    table: Option<&'a str>,
    chain: Option<&'a str>,
    expressions: Vec<u8>,
}

fn parse_rule(message: &OwnedMessage) -> Result<RuleInfo<'_>, NetlinkError> {
    let attrs = message.nfnl_attrs()?;
    Ok(RuleInfo {
        table: find_attr(&attrs, NFTA_RULE_TABLE)
            .map(|a| a.str())
            .transpose()?,
        chain: find_attr(&attrs, NFTA_RULE_CHAIN)
            .map(|a| a.str())
            .transpose()?,
        expressions: find_attr(&attrs, NFTA_RULE_EXPRESSIONS)
            .map(|a| a.data.to_vec())
            .unwrap_or_default(),
    })
}

/// The elements one GETSETELEM answer lists.
fn parse_elements(message: &OwnedMessage) -> Result<Vec<Element>, NetlinkError> {
    let attrs = message.nfnl_attrs()?;
    let Some(list) = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Ok(Vec::new());
    };
    list.nested_attrs()?
        .into_iter()
        .filter(|element| element.attr_type == NFTA_LIST_ELEM)
        .map(parse_element)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::netlink::{parse_attrs, parse_messages};

    #[test]
    fn keys_pad_every_field_to_four_bytes() {
        let (set, key) = element_key("10.0.0.1".parse().expect("ip"), PortSpec::tcp(4992));
        assert_eq!(set, SET4);
        assert_eq!(key, [10, 0, 0, 1, 6, 0, 0, 0, 0x13, 0x80, 0, 0]);
        let (set, key) = element_key(
            "2001:db8::1".parse().expect("ip"),
            PortSpec {
                transport: Transport::Udp,
                port: 53,
            },
        );
        assert_eq!(set, SET6);
        assert_eq!(key.len(), KEY_LEN6);
        assert_eq!(key[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(key[16..], [17, 0, 0, 0, 0, 53, 0, 0]);
    }

    #[test]
    fn keys_decode_back() {
        for (addr, port) in [
            ("192.0.2.7".parse().expect("ip"), PortSpec::tcp(22)),
            (
                "fe80::1".parse().expect("ip"),
                PortSpec {
                    transport: Transport::Udp,
                    port: 65535,
                },
            ),
        ] {
            let (_, key) = element_key(addr, port);
            assert_eq!(decode_key(&key), Some((addr, port)));
        }
        assert_eq!(decode_key(&[1, 2, 3]), None);
        // an unknown protocol (icmp) is not a grant of ours
        assert_eq!(decode_key(&[10, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn setelem_message_nests_key_and_timeout() {
        let keys = vec![element_key("10.0.0.1".parse().expect("ip"), PortSpec::tcp(4992)).1];
        let bytes = setelem_message(
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            5,
            "knock",
            SET4,
            &keys,
            Some(2500),
        )
        .finish()
        .expect("small");
        let messages = parse_messages(&bytes).expect("parse");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].msg_type, 0x0a0c);
        assert_eq!(messages[0].flags, 0x405);
        assert_eq!(messages[0].payload[..4], [NFPROTO_INET, 0, 0, 0]);
        let attrs = messages[0].nfnl_attrs().expect("attrs");
        assert_eq!(
            find_attr(&attrs, NFTA_SET_ELEM_LIST_TABLE).expect("t").data,
            b"knock\0"
        );
        assert_eq!(
            find_attr(&attrs, NFTA_SET_ELEM_LIST_SET).expect("s").data,
            b"allow4\0"
        );
        let list = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS).expect("list");
        assert!(list.nested);
        let elements = list.nested_attrs().expect("elements");
        assert_eq!(elements.len(), 1);
        let (key, _) = parse_element(elements[0]).expect("element");
        assert_eq!(key, keys[0]);
        let inner = parse_attrs(elements[0].data).expect("inner");
        assert_eq!(
            find_attr(&inner, NFTA_SET_ELEM_TIMEOUT)
                .expect("timeout")
                .data,
            2500u64.to_be_bytes()
        );

        let del = setelem_message(
            NFT_MSG_DELSETELEM,
            NLM_F_REQUEST,
            6,
            "knock",
            SET4,
            &keys,
            None,
        )
        .finish()
        .expect("small");
        let messages = parse_messages(&del).expect("parse");
        let attrs = messages[0].nfnl_attrs().expect("attrs");
        let elements = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS)
            .expect("l")
            .nested_attrs()
            .expect("e");
        let inner = parse_attrs(elements[0].data).expect("inner");
        assert!(find_attr(&inner, NFTA_SET_ELEM_TIMEOUT).is_none());
    }
}
