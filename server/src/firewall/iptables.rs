//! The iptables + ipset backend, for hosts without nftables.
//!
//! For each of IPv4 (`iptables_cmd`, set `knock4`) and IPv6
//! (`ip6tables_cmd`, set `knock6`), in the filter table:
//!
//! ```text
//! ipset -exist create knock4 hash:ip,port family inet timeout 0
//! -A INPUT -j KNOCK-INPUT                                   (first rule, once)
//! -A KNOCK-INPUT -p udp -m udp --dport 62201 -j DROP
//! -A KNOCK-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
//! -A KNOCK-INPUT -i lo -j RETURN
//! -A KNOCK-INPUT -m set --match-set knock4 src,dst -j RETURN
//! -A KNOCK-INPUT -p tcp -m tcp --dport 4992 -j DROP         (one per protected port)
//! ```
//!
//! Allowed traffic RETURNs to INPUT rather than ACCEPTing, so the host's own
//! INPUT rules still apply after ours (as with nftables, where an accept in
//! our chain does not bypass other base chains). A grant's set element
//! matches only its own protocol and port, and unprotected ports are never
//! dropped here, so the set rule needs no port guard.
//!
//! The chain's contents and the jump are replaced in one
//! `iptables-restore --noflush` transaction; the ipsets are created with
//! `-exist` and never destroyed on restart, so live grants survive. Grants
//! go to the kernel over ipset netlink (no process per grant); `grants`
//! reads `ipset save`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use knock_proto::{PortSpec, Transport};

use super::netlink::{
    find_attr, nfnl_type, MessageBuilder, NetlinkError, NetlinkSocket, OwnedMessage, Request,
    NETLINK_NETFILTER, NFNL_SUBSYS_IPSET, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_REQUEST,
};
use super::{Firewall, FirewallError, LiveGrant, RuleSet};

/// Our chain, in the filter table of both families.
pub const CHAIN: &str = "KNOCK-INPUT";
const JUMP: &str = "-A INPUT -j KNOCK-INPUT";
const IPSET: &str = "ipset";
const SET_TYPE: &str = "hash:ip,port";
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's largest ipset timeout, in seconds.
const IPSET_MAX_TIMEOUT: u32 = 2_147_483;

// ipset netlink protocol (linux/netfilter/ipset/ip_set.h)
const IPSET_PROTOCOL: u8 = 6;
const IPSET_CMD_DESTROY: u8 = 3;
const IPSET_CMD_ADD: u8 = 9;
const IPSET_CMD_HEADER: u8 = 12;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_TYPENAME: u16 = 3;
const IPSET_ATTR_FAMILY: u16 = 5;
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_PORT: u16 = 4;
const IPSET_ATTR_TIMEOUT: u16 = 6;
const IPSET_ATTR_PROTO: u16 = 7;
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;
const IPSET_ERR_REFERENCED: i32 = 4108;

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// One address family's commands and set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub v6: bool,
    pub set: &'static str,
    ipset_family: &'static str,
    nfproto: u8,
}

pub const V4: Family = Family {
    v6: false,
    set: "knock4",
    ipset_family: "inet",
    nfproto: NFPROTO_IPV4,
};
pub const V6: Family = Family {
    v6: true,
    set: "knock6",
    ipset_family: "inet6",
    nfproto: NFPROTO_IPV6,
};
const FAMILIES: [Family; 2] = [V4, V6];

impl Family {
    fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() {
            V4
        } else {
            V6
        }
    }

    fn command<'a>(&self, rules: &'a RuleSet) -> &'a str {
        if self.v6 {
            &rules.ip6tables_cmd
        } else {
            &rules.iptables_cmd
        }
    }

    fn create_args(&self) -> [&'static str; 8] {
        [
            "-exist",
            "create",
            self.set,
            SET_TYPE,
            "family",
            self.ipset_family,
            "timeout",
            "0",
        ]
    }
}

/// The iptables backend. Keeps one ipset netlink socket open across grants.
#[derive(Debug, Default)]
pub struct Iptables {
    socket: Option<NetlinkSocket>,
    /// What install left: the rules, and our chain as `-S` shows it, per
    /// family.
    installed: Option<(RuleSet, [Vec<String>; 2])>,
}

impl Iptables {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Our chain's rules, as written to iptables-restore.
pub fn chain_rules(rules: &RuleSet, family: Family) -> Vec<String> {
    let mut lines = vec![
        format!(
            "-A {CHAIN} -p udp -m udp --dport {} -j DROP",
            rules.knock_port
        ),
        format!("-A {CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        // Local processes are not the scanners we hide from.
        format!("-A {CHAIN} -i lo -j RETURN"),
    ];
    let ports: BTreeSet<PortSpec> = rules.protected.iter().copied().collect();
    if !ports.is_empty() {
        lines.push(format!(
            "-A {CHAIN} -m set --match-set {} src,dst -j RETURN",
            family.set
        ));
        for port in ports {
            let t = port.transport.name();
            lines.push(format!(
                "-A {CHAIN} -p {t} -m {t} --dport {} -j DROP",
                port.port
            ));
        }
    }
    lines
}

/// The iptables-restore input that replaces our chain and leaves exactly
/// one jump to it, first in INPUT. `jumps` is how many exist now.
pub fn restore_script(rules: &RuleSet, family: Family, jumps: usize, jump_first: bool) -> String {
    let mut s = String::from("*filter\n");
    // Declaring an existing chain with --noflush empties it.
    let _ = writeln!(s, ":{CHAIN} - [0:0]");
    for line in chain_rules(rules, family) {
        let _ = writeln!(s, "{line}");
    }
    if !(jumps == 1 && jump_first) {
        for _ in 0..jumps {
            let _ = writeln!(s, "-D INPUT -j {CHAIN}");
        }
        let _ = writeln!(s, "-I INPUT 1 -j {CHAIN}");
    }
    s.push_str("COMMIT\n");
    s
}

fn restore_command(command: &str) -> String {
    format!("{command}-restore")
}

/// Runs `program args`, feeding `stdin`; returns stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let failed = |message: String| FirewallError::Command {
        command: command.clone(),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => failed(format!(
                "{program} not found; install it or set the command"
            )),
            _ => failed(e.to_string()),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| failed(format!("writing input: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(failed(if message.is_empty() {
            format!("exited with {}", output.status)
        } else {
            message
        }));
    }
    String::from_utf8(output.stdout).map_err(|_| FirewallError::Parse {
        command: command.clone(),
        message: "output is not UTF-8".into(),
    })
}

/// The filter table of one family, as `iptables -S` shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FilterState {
    pub chain_exists: bool,
    pub jumps: usize,
    pub jump_first: bool,
    pub chain_rules: Vec<String>,
}

pub fn parse_filter(listing: &str) -> FilterState {
    let mut state = FilterState::default();
    let mut first_input = None;
    let chain_prefix = format!("-A {CHAIN} ");
    for line in listing.lines().map(str::trim_end) {
        if line == format!("-N {CHAIN}") {
            state.chain_exists = true;
        } else if line.starts_with("-A INPUT ") {
            first_input.get_or_insert(line);
            if line == JUMP {
                state.jumps += 1;
            }
        } else if line.starts_with(&chain_prefix) {
            state.chain_rules.push(line.to_owned());
        }
    }
    state.jump_first = first_input == Some(JUMP);
    state
}

fn read_filter(rules: &RuleSet, family: Family) -> Result<FilterState, FirewallError> {
    Ok(parse_filter(&run(
        family.command(rules),
        &["-w", "-t", "filter", "-S"],
        None,
    )?))
}

/// Parses `ipset save SET` output into grants.
pub fn parse_save(text: &str, set: &str) -> Vec<LiveGrant> {
    let prefix = format!("add {set} ");
    let mut grants = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(member) = words.next() else { continue };
        let Some((addr, proto_port)) = member.split_once(',') else {
            continue;
        };
        let Some((proto, port)) = proto_port.rsplit_once(':') else {
            continue;
        };
        let transport = match proto {
            "tcp" | "6" => Transport::Tcp,
            "udp" | "17" => Transport::Udp,
            _ => continue,
        };
        let (Ok(addr), Ok(port)) = (addr.parse::<IpAddr>(), port.parse::<u16>()) else {
            continue;
        };
        let mut expires_in = Duration::MAX;
        while let Some(word) = words.next() {
            if word == "timeout" {
                if let Some(secs) = words.next().and_then(|s| s.parse::<u64>().ok()) {
                    expires_in = Duration::from_secs(secs);
                }
            }
        }
        grants.push(LiveGrant {
            addr,
            port: PortSpec { transport, port },
            expires_in,
        });
    }
    grants
}

/// An ipset error code as words.
fn describe_ipset_error(error: &NetlinkError) -> String {
    let text = match error.errno() {
        Some(libc::ENOENT) => "the set does not exist",
        Some(4097) => "ipset protocol mismatch between kernel and knock-server",
        Some(4102) => "set type mismatch",
        Some(4106) => "address family mismatch",
        Some(4107) => "the set has no timeout support",
        Some(IPSET_ERR_REFERENCED) => "the set is still referenced by a rule",
        Some(4352) => "the set is full",
        Some(4354) => "invalid protocol",
        _ => return error.to_string(),
    };
    format!("ipset: {text}")
}

/// One IPSET_CMD_ADD message: `addr,proto:port timeout secs` into `set`.
pub fn add_message(
    seq: u32,
    family: Family,
    addr: IpAddr,
    port: PortSpec,
    timeout_s: u32,
) -> Result<Vec<u8>, NetlinkError> {
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
    builder.finish()
}

/// A message naming one set (HEADER, DESTROY).
fn set_message(seq: u32, cmd: u8, set: &str) -> Result<Vec<u8>, NetlinkError> {
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
    builder.finish()
}

/// Whole seconds for ipset, rounded up, never 0 (which means "forever").
fn timeout_secs(duration: Duration) -> u32 {
    let secs = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    u32::try_from(secs)
        .unwrap_or(u32::MAX)
        .clamp(1, IPSET_MAX_TIMEOUT)
}

impl Iptables {
    fn transact(
        &mut self,
        build: impl FnOnce(&mut NetlinkSocket) -> Result<Request, NetlinkError>,
    ) -> Result<Vec<OwnedMessage>, NetlinkError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            none => none.insert(NetlinkSocket::open(NETLINK_NETFILTER, NETLINK_TIMEOUT)?),
        };
        let result = build(socket).and_then(|request| socket.transact(&request));
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    /// Adds (or, as no NLM_F_EXCL is set, refreshes) elements.
    fn add(
        &mut self,
        family: Family,
        elements: &[(IpAddr, PortSpec, u32)],
    ) -> Result<(), NetlinkError> {
        self.transact(|socket| {
            let mut request = Request::new();
            for &(addr, port, timeout_s) in elements {
                let seq = socket.next_seq();
                request.push(seq, &add_message(seq, family, addr, port, timeout_s)?, true);
            }
            Ok(request)
        })
        .map(|_| ())
    }

    /// The set's type and family, or `None` if it does not exist.
    fn header(&mut self, set: &str) -> Result<Option<(String, u8)>, FirewallError> {
        let result = self.transact(|socket| {
            let mut request = Request::new();
            let seq = socket.next_seq();
            request.push(seq, &set_message(seq, IPSET_CMD_HEADER, set)?, true);
            Ok(request)
        });
        let messages = match result {
            Ok(messages) => messages,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(FirewallError::Netlink(describe_ipset_error(&e))),
        };
        let Some(message) = messages.first() else {
            return Err(FirewallError::Netlink(format!(
                "ipset: no header for set {set}"
            )));
        };
        let attrs = message
            .nfnl_attrs()
            .map_err(|e| FirewallError::Netlink(e.to_string()))?;
        let type_name = find_attr(&attrs, IPSET_ATTR_TYPENAME)
            .map(|a| a.str().map(str::to_owned))
            .transpose()
            .map_err(|e| FirewallError::Netlink(e.to_string()))?
            .unwrap_or_default();
        let family = find_attr(&attrs, IPSET_ATTR_FAMILY)
            .and_then(|a| a.u8().ok())
            .unwrap_or(0);
        Ok(Some((type_name, family)))
    }

    /// Destroys `set`, waiting a little while a just-deleted rule still
    /// holds it (iptables-nft releases references asynchronously).
    fn destroy(&mut self, set: &str) -> Result<(), FirewallError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let result = self.transact(|socket| {
                let mut request = Request::new();
                let seq = socket.next_seq();
                request.push(seq, &set_message(seq, IPSET_CMD_DESTROY, set)?, true);
                Ok(request)
            });
            match result {
                Ok(_) => return Ok(()),
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
                Err(e) if e.errno() == Some(IPSET_ERR_REFERENCED) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(FirewallError::Netlink(format!(
                        "destroying set {set}: {}",
                        describe_ipset_error(&e)
                    )))
                }
            }
        }
    }

    fn family_grants(&mut self, family: Family) -> Result<Vec<LiveGrant>, FirewallError> {
        match run(IPSET, &["save", family.set], None) {
            Ok(text) => Ok(parse_save(&text, family.set)),
            Err(e) if self.header(family.set)?.is_none() => Err(FirewallError::Missing(format!(
                "ipset {} does not exist ({e})",
                family.set
            ))),
            Err(e) => Err(e),
        }
    }

    /// Creates the set if missing; replaces an incompatible one, carrying
    /// its live grants over.
    fn ensure_set(&mut self, rules: &RuleSet, family: Family) -> Result<(), FirewallError> {
        let error = match run(IPSET, &family.create_args(), None) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if self.header(family.set)?.is_none() {
            return Err(error);
        }
        let keep = self.family_grants(family).unwrap_or_else(|e| {
            tracing::warn!(
                "iptables: cannot read live grants of ipset {} before recreating it: {e}",
                family.set
            );
            Vec::new()
        });
        tracing::warn!(
            "iptables: ipset {} does not match our layout ({error}); recreating it with {} live grants",
            family.set,
            keep.len()
        );
        // Our chain references the set; it is refilled right after.
        let state = read_filter(rules, family)?;
        if state.chain_exists {
            run(
                family.command(rules),
                &["-w", "-t", "filter", "-F", CHAIN],
                None,
            )?;
        }
        self.destroy(family.set)?;
        run(IPSET, &family.create_args(), None)?;
        let elements: Vec<_> = keep
            .iter()
            .filter(|g| g.expires_in != Duration::MAX && !g.expires_in.is_zero())
            .map(|g| (g.addr, g.port, timeout_secs(g.expires_in)))
            .collect();
        if !elements.is_empty() {
            if let Err(e) = self.add(family, &elements) {
                tracing::warn!(
                    "iptables: could not restore grants into ipset {}: {}",
                    family.set,
                    describe_ipset_error(&e)
                );
            }
        }
        Ok(())
    }

    /// Checks both families; returns our chain's rules per family.
    fn check(&mut self, rules: &RuleSet) -> Result<[Vec<String>; 2], FirewallError> {
        let mut found: [Vec<String>; 2] = Default::default();
        for (slot, family) in found.iter_mut().zip(FAMILIES) {
            let command = family.command(rules);
            let state = read_filter(rules, family)?;
            if !state.chain_exists {
                return Err(FirewallError::Missing(format!(
                    "{command}: chain {CHAIN} does not exist"
                )));
            }
            if state.jumps != 1 {
                return Err(FirewallError::Missing(format!(
                    "{command}: INPUT jumps to {CHAIN} {} times",
                    state.jumps
                )));
            }
            // Install puts the jump first, but tools such as fail2ban insert
            // their own jumps at position 1 later. Treating that as damage
            // would make us fight them every few seconds; an ACCEPT placed
            // before our jump is the operator's explicit choice.
            let expected = chain_rules(rules, family).len();
            if state.chain_rules.len() != expected {
                return Err(FirewallError::Missing(format!(
                    "{command}: chain {CHAIN} holds {} rules, expected {expected}",
                    state.chain_rules.len()
                )));
            }
            match self.header(family.set)? {
                None => return Err(FirewallError::Missing(format!("ipset {} does not exist", family.set))),
                Some((type_name, nfproto)) if type_name != SET_TYPE || nfproto != family.nfproto => {
                    return Err(FirewallError::Missing(format!(
                        "ipset {} has type {type_name} family {nfproto}, expected {SET_TYPE} family {}",
                        family.set, family.ipset_family
                    )))
                }
                Some(_) => {}
            }
            *slot = state.chain_rules;
        }
        Ok(found)
    }
}

impl Firewall for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn plan(&self, rules: &RuleSet) -> String {
        let mut s = String::from(
            "# knock-server (iptables backend): ipsets are created if missing, never flushed\n",
        );
        for family in FAMILIES {
            let _ = writeln!(s, "{IPSET} {}", family.create_args().join(" "));
        }
        for family in FAMILIES {
            let _ = writeln!(
                s,
                "# {} -w --noflush",
                restore_command(family.command(rules))
            );
            s.push_str(&restore_script(rules, family, 0, false));
        }
        s
    }

    fn install(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        self.installed = None;
        for family in FAMILIES {
            self.ensure_set(rules, family)?;
        }
        for family in FAMILIES {
            let state = read_filter(rules, family)?;
            let script = restore_script(rules, family, state.jumps, state.jump_first);
            run(
                &restore_command(family.command(rules)),
                &["-w", "--noflush"],
                Some(&script),
            )?;
        }
        let found = self.check(rules).map_err(super::after_install)?;
        self.installed = Some((rules.clone(), found));
        Ok(())
    }

    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError> {
        let family = Family::of(addr);
        let timeout_s = timeout_secs(duration);
        let elements: Vec<_> = ports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|p| (addr, p, timeout_s))
            .collect();
        if elements.is_empty() {
            return Ok(());
        }
        self.add(family, &elements).map_err(|e| match e.errno() {
            Some(libc::ENOENT) => {
                FirewallError::Missing(format!("ipset {} does not exist", family.set))
            }
            _ => FirewallError::Netlink(describe_ipset_error(&e)),
        })
    }

    fn verify(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        let found = self.check(rules)?;
        if let Some((installed, fingerprint)) = &self.installed {
            if installed != rules {
                return Err(FirewallError::Missing(
                    "the configured rules differ from those installed".into(),
                ));
            }
            if *fingerprint != found {
                return Err(FirewallError::Missing(format!(
                    "rules of chain {CHAIN} were changed"
                )));
            }
        }
        Ok(())
    }

    fn grants(&mut self, _rules: &RuleSet) -> Result<Vec<LiveGrant>, FirewallError> {
        let mut grants = Vec::new();
        for family in FAMILIES {
            grants.extend(self.family_grants(family)?);
        }
        grants.sort_by_key(|g| (g.addr, g.port));
        Ok(grants)
    }

    fn remove(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        self.installed = None;
        for family in FAMILIES {
            let state = read_filter(rules, family)?;
            if state.jumps == 0 && !state.chain_exists {
                continue;
            }
            let mut script = String::from("*filter\n");
            for _ in 0..state.jumps {
                let _ = writeln!(script, "-D INPUT -j {CHAIN}");
            }
            if state.chain_exists {
                let _ = writeln!(script, "-F {CHAIN}\n-X {CHAIN}");
            }
            script.push_str("COMMIT\n");
            run(
                &restore_command(family.command(rules)),
                &["-w", "--noflush"],
                Some(&script),
            )?;
        }
        for family in FAMILIES {
            self.destroy(family.set)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::netlink::{parse_attrs, parse_messages, NLA_F_NESTED};

    fn rules() -> RuleSet {
        RuleSet {
            knock_port: 62201,
            protected: vec![
                PortSpec::tcp(4992),
                PortSpec {
                    transport: Transport::Udp,
                    port: 53,
                },
            ],
            nft_table: "knock".into(),
            nft_priority: -10,
            iptables_cmd: "iptables".into(),
            ip6tables_cmd: "ip6tables".into(),
        }
    }

    #[test]
    fn restore_script_declares_chain_and_jumps_once() {
        let fresh = restore_script(&rules(), V4, 0, false);
        assert_eq!(
            fresh,
            "*filter\n:KNOCK-INPUT - [0:0]\n\
             -A KNOCK-INPUT -p udp -m udp --dport 62201 -j DROP\n\
             -A KNOCK-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A KNOCK-INPUT -i lo -j RETURN\n\
             -A KNOCK-INPUT -m set --match-set knock4 src,dst -j RETURN\n\
             -A KNOCK-INPUT -p tcp -m tcp --dport 4992 -j DROP\n\
             -A KNOCK-INPUT -p udp -m udp --dport 53 -j DROP\n\
             -I INPUT 1 -j KNOCK-INPUT\nCOMMIT\n"
        );
        let kept = restore_script(&rules(), V6, 1, true);
        assert!(!kept.contains("INPUT 1") && !kept.contains("-D INPUT"));
        assert!(kept.contains("--match-set knock6 src,dst"));
        let fixed = restore_script(&rules(), V4, 2, false);
        assert_eq!(fixed.matches("-D INPUT -j KNOCK-INPUT\n").count(), 2);
        assert_eq!(fixed.matches("-I INPUT 1 -j KNOCK-INPUT\n").count(), 1);
    }

    #[test]
    fn filter_listing_parses() {
        let listing = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-N KNOCK-INPUT\n-A INPUT -j KNOCK-INPUT\n\
                       -A INPUT -p tcp -j ACCEPT\n-A INPUT -j KNOCK-INPUT\n-A KNOCK-INPUT -p udp -m udp --dport 1 -j DROP\n";
        let state = parse_filter(listing);
        assert!(state.chain_exists);
        assert_eq!(state.jumps, 2);
        assert!(state.jump_first);
        assert_eq!(
            state.chain_rules,
            ["-A KNOCK-INPUT -p udp -m udp --dport 1 -j DROP"]
        );
        assert!(!parse_filter("-A INPUT -p tcp -j ACCEPT\n-A INPUT -j KNOCK-INPUT\n").jump_first);
    }

    #[test]
    fn save_output_parses() {
        let text = "create knock6 hash:ip,port family inet6 hashsize 1024 maxelem 65536 timeout 0\n\
                    add knock6 2001:db8::1,tcp:4992 timeout 29\nadd knock6 2001:db8::2,udp:53 timeout 3\n\
                    add knock6 2001:db8::3,icmpv6:128/0 timeout 3\nadd knock6 2001:db8::4,tcp:22\n";
        let grants = parse_save(text, "knock6");
        assert_eq!(grants.len(), 3);
        assert_eq!(grants[0].addr, "2001:db8::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(grants[0].port, PortSpec::tcp(4992));
        assert_eq!(grants[0].expires_in, Duration::from_secs(29));
        assert_eq!(
            grants[1].port,
            PortSpec {
                transport: Transport::Udp,
                port: 53
            }
        );
        assert_eq!(grants[2].expires_in, Duration::MAX);
    }

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
            "10.0.0.1".parse().expect("ip"),
            PortSpec::tcp(4992),
            30,
        )
        .expect("small");
        let messages = parse_messages(&bytes).expect("parse");
        assert_eq!(messages[0].msg_type, 0x0609);
        assert_eq!(messages[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(messages[0].payload[..4], [NFPROTO_IPV4, 0, 0, 0]);
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
