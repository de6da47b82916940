//! The nftables backend (the default).
//!
//! We own one table, `inet <nft_table>`:
//!
//! ```text
//! table inet knock {
//!     set allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
//!     set allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
//!     chain input {
//!         type filter hook input priority -10; policy accept;
//!         udp dport 62201 drop
//!         ct state established,related accept
//!         iif "lo" accept
//!         meta l4proto . th dport { tcp . 4992 } ip saddr . meta l4proto . th dport @allow4 accept
//!         meta l4proto . th dport { tcp . 4992 } ip6 saddr . meta l4proto . th dport @allow6 accept
//!         meta l4proto . th dport { tcp . 4992 } drop
//!     }
//! }
//! ```
//!
//! `install` feeds one `nft -f -` transaction that creates the table and sets
//! if missing (keeping the sets' live elements), and flushes and refills our
//! chain. A table that does not match this layout is deleted and recreated in
//! one transaction that carries its live grants over. Everything at run time
//! (grant, verify, grants, remove) speaks nf_tables netlink directly; no
//! process is spawned per grant.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use knock_proto::{PortSpec, Transport};

use super::netlink::{
    find_attr, nfnl_type, Attr, MessageBuilder, NetlinkError, NetlinkSocket, OwnedMessage, Request,
    NETLINK_NETFILTER, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use super::{Firewall, FirewallError, LiveGrant, RuleSet};

/// Our chain and sets inside our table.
pub const CHAIN: &str = "input";
pub const SET4: &str = "allow4";
pub const SET6: &str = "allow6";

const NFT: &str = "nft";
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

const AF_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;

// enum nf_tables_msg_types
const NFT_MSG_GETTABLE: u8 = 1;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_GETCHAIN: u8 = 4;
const NFT_MSG_GETRULE: u8 = 7;
const NFT_MSG_GETSET: u8 = 10;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_GETSETELEM: u8 = 13;
const NFT_MSG_DELSETELEM: u8 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFT_TABLE_F_DORMANT: u32 = 1;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_ACCEPT: u32 = 1;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_OBJECT: u32 = 0x40;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;

/// nft's type id of `ipv4_addr . inet_proto . inet_service` (each part is
/// 6 bits: ipv4_addr 7, ipv6_addr 8, inet_proto 12, inet_service 13).
const KEY_TYPE4: u32 = (((7 << 6) | 12) << 6) | 13;
const KEY_TYPE6: u32 = (((8 << 6) | 12) << 6) | 13;
/// Key lengths: every field of a concatenation is padded to 4 bytes.
const KEY_LEN4: usize = 4 + 4 + 4;
const KEY_LEN6: usize = 16 + 4 + 4;

/// The nftables backend. Keeps one netlink socket open across grants.
#[derive(Debug, Default)]
pub struct Nftables {
    socket: Option<NetlinkSocket>,
    /// Our table's name, learnt from the rules at install (grant has none).
    table: Option<String>,
    /// What install left in the kernel: the rules, and the expressions of
    /// our chain's rules as the kernel reports them.
    installed: Option<(RuleSet, Vec<Vec<u8>>)>,
}

impl Nftables {
    pub fn new() -> Self {
        Self::default()
    }
}

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

/// The protected ports, sorted and without duplicates.
fn protected(rules: &RuleSet) -> Vec<PortSpec> {
    rules
        .protected
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// How many rules our chain holds once installed.
pub fn expected_rule_count(rules: &RuleSet) -> usize {
    if rules.protected.is_empty() {
        3
    } else {
        6
    }
}

/// The script `install` feeds to `nft -f -` when our table is absent or
/// compatible: it creates what is missing, keeps the sets' elements, and
/// replaces our chain's rules.
pub fn install_script(rules: &RuleSet) -> String {
    let table = &rules.nft_table;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# knock-server: the table inet {table} is owned and rewritten by knock-server"
    );
    let _ = writeln!(s, "table inet {table} {{");
    for (set, addr_type) in [(SET4, "ipv4_addr"), (SET6, "ipv6_addr")] {
        let _ = writeln!(s, "\tset {set} {{");
        let _ = writeln!(s, "\t\ttype {addr_type} . inet_proto . inet_service");
        let _ = writeln!(s, "\t\tflags timeout");
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "\tchain {CHAIN} {{");
    let _ = writeln!(
        s,
        "\t\ttype filter hook input priority {}; policy accept;",
        rules.nft_priority
    );
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "flush chain inet {table} {CHAIN}");
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "\tchain {CHAIN} {{");
    let _ = writeln!(s, "\t\tudp dport {} drop", rules.knock_port);
    let _ = writeln!(s, "\t\tct state established,related accept");
    // The host's own processes are not the scanners we hide from, and local
    // services (tunnels, health checks) must keep working.
    let _ = writeln!(s, "\t\tiif \"lo\" accept");
    let ports = protected(rules);
    if !ports.is_empty() {
        let list = ports
            .iter()
            .map(|p| format!("{} . {}", p.transport.name(), p.port))
            .collect::<Vec<_>>()
            .join(", ");
        let guard = format!("meta l4proto . th dport {{ {list} }}");
        let _ = writeln!(
            s,
            "\t\t{guard} ip saddr . meta l4proto . th dport @{SET4} accept"
        );
        let _ = writeln!(
            s,
            "\t\t{guard} ip6 saddr . meta l4proto . th dport @{SET6} accept"
        );
        let _ = writeln!(s, "\t\t{guard} drop");
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    s
}

/// The script that replaces an incompatible table, carrying `keep` over.
pub fn recreate_script(rules: &RuleSet, keep: &[LiveGrant]) -> String {
    let table = &rules.nft_table;
    let mut s = String::new();
    // Adding first makes the delete valid whether or not the table exists.
    let _ = writeln!(s, "table inet {table}");
    let _ = writeln!(s, "delete table inet {table}");
    s.push_str(&install_script(rules));
    for grant in keep {
        let ms = grant.expires_in.as_millis();
        if ms == 0 || grant.expires_in == Duration::MAX {
            continue;
        }
        let set = if grant.addr.is_ipv4() { SET4 } else { SET6 };
        let _ = writeln!(
            s,
            "add element inet {table} {set} {{ {} . {} . {} timeout {ms}ms }}",
            grant.addr,
            grant.port.transport.name(),
            grant.port.port
        );
    }
    s
}

/// Runs `nft -f -` on `script`.
fn run_nft(script: &str) -> Result<(), FirewallError> {
    let command = format!("{NFT} -f -");
    let failed = |message: String| FirewallError::Command {
        command: command.clone(),
        message,
    };
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                failed("not found; install the nftables package".into())
            }
            _ => failed(e.to_string()),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| failed(format!("writing the script: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    Err(failed(if message.is_empty() {
        format!("exited with {}", output.status)
    } else {
        message
    }))
}

/// A chain as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainInfo {
    name: String,
    hook: Option<(u32, i32)>,
    policy: Option<u32>,
    chain_type: Option<String>,
}

/// A set as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetInfo {
    name: String,
    flags: u32,
    key_type: u32,
    key_len: u32,
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

/// Is `chain` our input chain as `rules` want it?
fn check_chain(table: &str, chain: &ChainInfo, rules: &RuleSet) -> Result<(), String> {
    let want = (NF_INET_LOCAL_IN, rules.nft_priority);
    if chain.hook != Some(want) || chain.chain_type.as_deref() != Some("filter") {
        return Err(format!(
            "chain inet {table} {CHAIN} is not a filter chain on hook input at priority {} (found {:?} {:?})",
            rules.nft_priority, chain.chain_type, chain.hook
        ));
    }
    if chain.policy != Some(NF_ACCEPT) {
        return Err(format!(
            "chain inet {table} {CHAIN} no longer has policy accept"
        ));
    }
    Ok(())
}

/// Is `set` one of ours, of the right type?
fn check_set(table: &str, set: &SetInfo) -> Result<(), String> {
    let (key_type, key_len) = if set.name == SET4 {
        (KEY_TYPE4, KEY_LEN4)
    } else {
        (KEY_TYPE6, KEY_LEN6)
    };
    let forbidden =
        NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL | NFT_SET_MAP | NFT_SET_OBJECT;
    if set.key_type != key_type
        || usize::try_from(set.key_len).ok() != Some(key_len)
        || set.flags & NFT_SET_TIMEOUT == 0
        || set.flags & forbidden != 0
    {
        return Err(format!(
            "set inet {table} {} has another type (key type {}, length {}, flags {:#x})",
            set.name, set.key_type, set.key_len, set.flags
        ));
    }
    Ok(())
}

/// A set element's key, and the milliseconds it has left (none: no timeout).
type Element = (Vec<u8>, Option<u64>);

/// What install finds in the kernel before it starts.
#[derive(Debug)]
enum TableState {
    Absent,
    Compatible,
    Incompatible(String),
}

impl Nftables {
    fn table_for_grant(&self) -> Result<String, FirewallError> {
        self.table.clone().ok_or_else(|| {
            FirewallError::Missing(
                "nftables rules are not installed yet (grant before install)".into(),
            )
        })
    }

    /// Sends `request` on our socket (opened if needed, dropped on error so
    /// the next call starts clean).
    fn transact(&mut self, request: &Request) -> Result<Vec<OwnedMessage>, NetlinkError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            none => none.insert(NetlinkSocket::open(NETLINK_NETFILTER, NETLINK_TIMEOUT)?),
        };
        let result = socket.transact(request);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    fn next_seq(&mut self) -> Result<u32, NetlinkError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            none => none.insert(NetlinkSocket::open(NETLINK_NETFILTER, NETLINK_TIMEOUT)?),
        };
        Ok(socket.next_seq())
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
            let seq = self.next_seq()?;
            let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
            let mut builder = MessageBuilder::nfnl(
                nfnl_type(NFNL_SUBSYS_NFTABLES, msg),
                flags,
                seq,
                NFPROTO_INET,
                0,
            );
            attrs(&mut builder);
            let mut request = Request::new();
            request.push(seq, &builder.finish()?, true);
            match self.transact(&request) {
                Err(NetlinkError::DumpInterrupted) if attempts < 3 => attempts += 1,
                result => return result,
            }
        }
    }

    /// `Ok(None)` when the kernel says the object does not exist.
    fn get_one(
        &mut self,
        msg: u8,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> Result<Option<OwnedMessage>, FirewallError> {
        match self.query(msg, false, attrs) {
            Ok(messages) => Ok(messages.into_iter().next()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(FirewallError::Netlink(e.to_string())),
        }
    }

    fn get_table_flags(&mut self, table: &str) -> Result<Option<u32>, FirewallError> {
        let Some(message) = self.get_one(NFT_MSG_GETTABLE, |b| {
            b.put_strz(NFTA_TABLE_NAME, table);
        })?
        else {
            return Ok(None);
        };
        let attrs = message.nfnl_attrs().map_err(nl)?;
        Ok(Some(
            find_attr(&attrs, NFTA_TABLE_FLAGS)
                .map(|a| a.u32_be())
                .transpose()
                .map_err(nl)?
                .unwrap_or(0),
        ))
    }

    fn get_chain(&mut self, table: &str) -> Result<Option<ChainInfo>, FirewallError> {
        let message = self.get_one(NFT_MSG_GETCHAIN, |b| {
            b.put_strz(NFTA_CHAIN_TABLE, table)
                .put_strz(NFTA_CHAIN_NAME, CHAIN);
        })?;
        message
            .map(|m| parse_chain(&m).map(|(_, chain)| chain))
            .transpose()
            .map_err(nl)
    }

    fn get_set(&mut self, table: &str, set: &str) -> Result<Option<SetInfo>, FirewallError> {
        let message = self.get_one(NFT_MSG_GETSET, |b| {
            b.put_strz(NFTA_SET_TABLE, table)
                .put_strz(NFTA_SET_NAME, set);
        })?;
        message
            .map(|m| parse_set(&m).map(|(_, set)| set))
            .transpose()
            .map_err(nl)
    }

    /// Every chain of our table.
    fn dump_chains(&mut self, table: &str) -> Result<Vec<ChainInfo>, FirewallError> {
        let messages = self
            .query(NFT_MSG_GETCHAIN, true, |b| {
                b.put_strz(NFTA_CHAIN_TABLE, table);
            })
            .map_err(nl)?;
        let mut chains = Vec::new();
        for message in &messages {
            let (owner, chain) = parse_chain(message).map_err(nl)?;
            if owner == table {
                chains.push(chain);
            }
        }
        Ok(chains)
    }

    /// Every set of our table, anonymous ones included.
    fn dump_sets(&mut self, table: &str) -> Result<Vec<SetInfo>, FirewallError> {
        let messages = self
            .query(NFT_MSG_GETSET, true, |b| {
                b.put_strz(NFTA_SET_TABLE, table);
            })
            .map_err(nl)?;
        let mut sets = Vec::new();
        for message in &messages {
            let (owner, set) = parse_set(message).map_err(nl)?;
            if owner == table {
                sets.push(set);
            }
        }
        Ok(sets)
    }

    /// The expressions of each rule of our chain, in order.
    fn dump_rules(&mut self, table: &str) -> Result<Vec<Vec<u8>>, FirewallError> {
        let messages = self
            .query(NFT_MSG_GETRULE, true, |b| {
                b.put_strz(NFTA_RULE_TABLE, table)
                    .put_strz(NFTA_RULE_CHAIN, CHAIN);
            })
            .map_err(nl)?;
        let mut rules = Vec::new();
        for message in &messages {
            let attrs = message.nfnl_attrs().map_err(nl)?;
            let owner = find_attr(&attrs, NFTA_RULE_TABLE)
                .map(|a| a.str())
                .transpose()
                .map_err(nl)?;
            let chain = find_attr(&attrs, NFTA_RULE_CHAIN)
                .map(|a| a.str())
                .transpose()
                .map_err(nl)?;
            if owner == Some(table) && chain == Some(CHAIN) {
                rules.push(
                    find_attr(&attrs, NFTA_RULE_EXPRESSIONS)
                        .map(|a| a.data.to_vec())
                        .unwrap_or_default(),
                );
            }
        }
        Ok(rules)
    }

    /// The live elements of one of our sets: key and milliseconds left.
    fn dump_elements(&mut self, table: &str, set: &str) -> Result<Vec<Element>, FirewallError> {
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
            Err(e) => return Err(nl(e)),
        };
        let mut elements = Vec::new();
        for message in &messages {
            let attrs = message.nfnl_attrs().map_err(nl)?;
            let Some(list) = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for element in list.nested_attrs().map_err(nl)? {
                if element.attr_type != NFTA_LIST_ELEM {
                    continue;
                }
                elements.push(parse_element(element).map_err(nl)?);
            }
        }
        Ok(elements)
    }

    /// Looks at what is in the kernel before install.
    fn inspect(&mut self, rules: &RuleSet) -> Result<TableState, FirewallError> {
        let table = rules.nft_table.as_str();
        let Some(flags) = self.get_table_flags(table)? else {
            return Ok(TableState::Absent);
        };
        if flags & NFT_TABLE_F_DORMANT != 0 {
            return Ok(TableState::Incompatible(format!(
                "table inet {table} is dormant"
            )));
        }
        for chain in self.dump_chains(table)? {
            if chain.name != CHAIN {
                return Ok(TableState::Incompatible(format!(
                    "unexpected chain {} in table inet {table}",
                    chain.name
                )));
            }
            // The script resets a changed policy; it cannot move a chain to
            // another hook or priority.
            let mut wanted = chain.clone();
            wanted.policy = Some(NF_ACCEPT);
            if let Err(reason) = check_chain(table, &wanted, rules) {
                return Ok(TableState::Incompatible(reason));
            }
        }
        for set in self.dump_sets(table)? {
            if set.flags & NFT_SET_ANONYMOUS != 0 {
                continue;
            }
            if set.name != SET4 && set.name != SET6 {
                return Ok(TableState::Incompatible(format!(
                    "unexpected set {} in table inet {table}",
                    set.name
                )));
            }
            if let Err(reason) = check_set(table, &set) {
                return Ok(TableState::Incompatible(reason));
            }
        }
        Ok(TableState::Compatible)
    }

    /// Checks table, chain and sets; returns the chain's rule expressions.
    fn check(&mut self, rules: &RuleSet) -> Result<Vec<Vec<u8>>, FirewallError> {
        let table = rules.nft_table.as_str();
        match self.get_table_flags(table)? {
            None => {
                return Err(FirewallError::Missing(format!(
                    "table inet {table} does not exist"
                )))
            }
            Some(flags) if flags & NFT_TABLE_F_DORMANT != 0 => {
                return Err(FirewallError::Missing(format!(
                    "table inet {table} is dormant"
                )))
            }
            Some(_) => {}
        }
        let chain = self.get_chain(table)?.ok_or_else(|| {
            FirewallError::Missing(format!("chain inet {table} {CHAIN} does not exist"))
        })?;
        check_chain(table, &chain, rules).map_err(FirewallError::Missing)?;
        for name in [SET4, SET6] {
            let set = self.get_set(table, name)?.ok_or_else(|| {
                FirewallError::Missing(format!("set inet {table} {name} does not exist"))
            })?;
            check_set(table, &set).map_err(FirewallError::Missing)?;
        }
        let found = self.dump_rules(table)?;
        let expected = expected_rule_count(rules);
        if found.len() != expected {
            return Err(FirewallError::Missing(format!(
                "chain inet {table} {CHAIN} holds {} rules, expected {expected}",
                found.len()
            )));
        }
        Ok(found)
    }

    /// Adds (or refreshes) elements `keys` of `set` for `timeout_ms`, in one
    /// batch: NEWSETELEM, DELSETELEM, NEWSETELEM. The delete makes the
    /// second add start a fresh timeout on kernels that keep an existing
    /// element's timeout on a plain add; the first add makes the delete
    /// valid whether or not the element existed.
    fn add_elements(
        &mut self,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
        timeout_ms: u64,
    ) -> Result<(), NetlinkError> {
        let mut request = Request::new();
        let begin = self.next_seq()?;
        let res_id = u16::from(NFNL_SUBSYS_NFTABLES);
        request.push(
            begin,
            &MessageBuilder::nfnl(
                NFNL_MSG_BATCH_BEGIN,
                NLM_F_REQUEST,
                begin,
                AF_UNSPEC,
                res_id,
            )
            .finish()?,
            false,
        );
        for (msg, flags, timeout) in [
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, Some(timeout_ms)),
            (NFT_MSG_DELSETELEM, 0, None),
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, Some(timeout_ms)),
        ] {
            let seq = self.next_seq()?;
            request.push(
                seq,
                &setelem_message(
                    msg,
                    flags | NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    table,
                    set,
                    keys,
                    timeout,
                )?,
                true,
            );
        }
        let end = self.next_seq()?;
        request.push(
            end,
            &MessageBuilder::nfnl(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, AF_UNSPEC, res_id)
                .finish()?,
            false,
        );
        self.transact(&request).map(|_| ())
    }
}

impl Nftables {
    /// One batch deleting our table.
    fn delete_table_request(&mut self, table: &str) -> Result<Request, NetlinkError> {
        let res_id = u16::from(NFNL_SUBSYS_NFTABLES);
        let (begin, del, end) = (self.next_seq()?, self.next_seq()?, self.next_seq()?);
        let mut delete = MessageBuilder::nfnl(
            nfnl_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_DELTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            del,
            NFPROTO_INET,
            0,
        );
        delete.put_strz(NFTA_TABLE_NAME, table);
        let mut request = Request::new();
        request.push(
            begin,
            &MessageBuilder::nfnl(
                NFNL_MSG_BATCH_BEGIN,
                NLM_F_REQUEST,
                begin,
                AF_UNSPEC,
                res_id,
            )
            .finish()?,
            false,
        );
        request.push(del, &delete.finish()?, true);
        request.push(
            end,
            &MessageBuilder::nfnl(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, AF_UNSPEC, res_id)
                .finish()?,
            false,
        );
        Ok(request)
    }
}

fn nl(error: NetlinkError) -> FirewallError {
    FirewallError::Netlink(error.to_string())
}

/// A NEWSETELEM or DELSETELEM message for `keys` (with `timeout_ms` if any).
pub fn setelem_message(
    msg: u8,
    flags: u16,
    seq: u32,
    table: &str,
    set: &str,
    keys: &[Vec<u8>],
    timeout_ms: Option<u64>,
) -> Result<Vec<u8>, NetlinkError> {
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
    builder.finish()
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

impl Firewall for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn plan(&self, rules: &RuleSet) -> String {
        install_script(rules)
    }

    fn install(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        let table = rules.nft_table.clone();
        self.table = Some(table.clone());
        self.installed = None;
        let recreate_because = match self.inspect(rules)? {
            TableState::Incompatible(reason) => Some(reason),
            TableState::Absent => {
                run_nft(&install_script(rules))?;
                None
            }
            TableState::Compatible => match run_nft(&install_script(rules)) {
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(reason) = recreate_because {
            let keep = match self.grants(rules) {
                Ok(keep) => keep,
                Err(e) => {
                    tracing::warn!("nftables: cannot read live grants of table inet {table} before recreating it: {e}");
                    Vec::new()
                }
            };
            tracing::warn!(
                "nftables: table inet {table} does not match our layout ({reason}); recreating it with {} live grants",
                keep.len()
            );
            run_nft(&recreate_script(rules, &keep))?;
        }
        let fingerprint = self.check(rules).map_err(super::after_install)?;
        self.installed = Some((rules.clone(), fingerprint));
        Ok(())
    }

    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError> {
        let ports: BTreeSet<PortSpec> = ports.iter().copied().collect();
        if ports.is_empty() {
            return Ok(());
        }
        let table = self.table_for_grant()?;
        // Never 0: an element without a timeout would never expire.
        let timeout_ms = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut set = SET4;
        let mut keys = Vec::with_capacity(ports.len());
        for port in ports {
            let (s, key) = element_key(addr, port);
            set = s;
            keys.push(key);
        }
        self.add_elements(&table, set, &keys, timeout_ms)
            .map_err(|e| match e.errno() {
                Some(libc::ENOENT) => {
                    FirewallError::Missing(format!("set inet {table} {set} does not exist: {e}"))
                }
                _ => nl(e),
            })
    }

    fn verify(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        self.table = Some(rules.nft_table.clone());
        let found = self.check(rules)?;
        if let Some((installed, fingerprint)) = &self.installed {
            if installed != rules {
                return Err(FirewallError::Missing(
                    "the configured rules differ from those installed".into(),
                ));
            }
            if *fingerprint != found {
                return Err(FirewallError::Missing(format!(
                    "rules of chain inet {} {CHAIN} were changed",
                    rules.nft_table
                )));
            }
        }
        Ok(())
    }

    fn grants(&mut self, rules: &RuleSet) -> Result<Vec<LiveGrant>, FirewallError> {
        let table = rules.nft_table.as_str();
        let mut grants = Vec::new();
        for set in [SET4, SET6] {
            for (key, expiration) in self.dump_elements(table, set)? {
                let Some((addr, port)) = decode_key(&key) else {
                    continue;
                };
                // An element without timeout (added by hand) never expires.
                let expires_in = expiration.map_or(Duration::MAX, Duration::from_millis);
                grants.push(LiveGrant {
                    addr,
                    port,
                    expires_in,
                });
            }
        }
        grants.sort_by_key(|g| (g.addr, g.port));
        Ok(grants)
    }

    fn remove(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        let table = rules.nft_table.as_str();
        self.installed = None;
        let request = self.delete_table_request(table).map_err(nl)?;
        match self.transact(&request) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::netlink::{parse_attrs, parse_messages};

    fn rules() -> RuleSet {
        RuleSet {
            knock_port: 62201,
            protected: vec![
                PortSpec::tcp(4992),
                PortSpec {
                    transport: Transport::Udp,
                    port: 53,
                },
                PortSpec::tcp(4992),
            ],
            nft_table: "knock".into(),
            nft_priority: -10,
            iptables_cmd: "iptables".into(),
            ip6tables_cmd: "ip6tables".into(),
        }
    }

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

    #[test]
    fn script_layout() {
        let script = install_script(&rules());
        assert!(script.contains("type filter hook input priority -10; policy accept;"));
        assert!(script.contains("flush chain inet knock input\n"));
        assert!(script.contains("\t\tudp dport 62201 drop\n"));
        assert!(script.contains(
            "meta l4proto . th dport { tcp . 4992, udp . 53 } ip saddr . meta l4proto . th dport @allow4 accept"
        ));
        assert!(script.contains("meta l4proto . th dport { tcp . 4992, udp . 53 } drop"));
        assert!(!script.contains("delete"));
        let keep = [LiveGrant {
            addr: "10.0.0.9".parse().expect("ip"),
            port: PortSpec::tcp(4992),
            expires_in: Duration::from_millis(12_345),
        }];
        let again = recreate_script(&rules(), &keep);
        assert!(again.starts_with("table inet knock\ndelete table inet knock\n"));
        assert!(again.ends_with(
            "add element inet knock allow4 { 10.0.0.9 . tcp . 4992 timeout 12345ms }\n"
        ));
    }
}
