//! The iptables + ipset backend, for hosts without nftables.
//!
//! For each of IPv4 (`iptables_cmd`, set `knock4`) and IPv6
//! (`ip6tables_cmd`, set `knock6`), in the mangle table, whose PREROUTING
//! runs before destination NAT, so that a port the host forwards (a
//! published container port) is closed by the number clients connect to:
//!
//! ```text
//! ipset -exist create knock4 hash:ip,port family inet timeout 0
//! -A PREROUTING -j KNOCK-PREROUTING                           (first rule, once)
//! -A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 62201 -j DROP
//! -A KNOCK-PREROUTING -i lo -j RETURN
//! -A KNOCK-PREROUTING -m set --match-set knock4 src,dst -j RETURN
//! -A KNOCK-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 4992 --tcp-flags SYN,ACK SYN -j DROP
//! ```
//!
//! As with nftables ([`chain_rules`] says why), TCP is closed by dropping
//! connection-opening segments, which needs no connection tracking; only
//! protected UDP ports use conntrack. Allowed traffic RETURNs rather than
//! ACCEPTs, so the host's own rules still apply after ours. A grant's set
//! element matches only its own protocol and port, and unprotected ports are
//! never dropped here, so the set rule needs no port guard.
//!
//! Both families are checked with `iptables-restore --test` before either is
//! changed; each is then replaced in one `iptables-restore --noflush`
//! transaction, and a failure of the second rolls the first back. The ipsets
//! are created with `-exist` and never destroyed on restart, so live grants
//! survive. Grants go to the kernel over ipset netlink (no process per
//! grant); `grants` reads `ipset save`.

mod ipset;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use knock_proto::{PortSpec, Transport};

use self::ipset::{timeout_secs, Ipset};
use super::command::{self, DEADLINE, XTABLES_WAIT_SECONDS};
use super::{expect_rule_count, Firewall, FirewallError, Installed, LiveGrant, Policy};

/// Our chain, in the mangle table of both families.
pub const CHAIN: &str = "KNOCK-PREROUTING";
/// Where our chain hangs.
const OURS: Hooked = Hooked {
    table: "mangle",
    hook: "PREROUTING",
    chain: CHAIN,
};
/// Where versions before the prerouting layout hung theirs; removed on
/// install so that an upgrade leaves no chain that drops established
/// sessions behind.
const OLD: Hooked = Hooked {
    table: "filter",
    hook: "INPUT",
    chain: "KNOCK-INPUT",
};
const IPSET: &str = "ipset";
const SET_TYPE: &str = "hash:ip,port";

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The commands of the operator's iptables, from `server.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub iptables: String,
    pub ip6tables: String,
}

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

    fn command<'a>(&self, settings: &'a Settings) -> &'a str {
        if self.v6 {
            &settings.ip6tables
        } else {
            &settings.iptables
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
#[derive(Debug)]
pub struct Iptables {
    settings: Settings,
    ipset: Ipset,
    /// What install left: our chain as `-S` shows it, per family.
    installed: Option<Installed<[Vec<String>; 2]>>,
}

impl Iptables {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ipset: Ipset::new(),
            installed: None,
        }
    }
}

/// A chain of ours and the built-in chain that jumps to it.
#[derive(Debug, Clone, Copy)]
struct Hooked {
    table: &'static str,
    hook: &'static str,
    chain: &'static str,
}

impl Hooked {
    fn jump(&self) -> String {
        format!("-A {} -j {}", self.hook, self.chain)
    }
}

/// Our chain's rules, as written to iptables-restore and as `-S` lists them.
pub fn chain_rules(policy: &Policy, family: Family) -> Vec<String> {
    const LOCAL: &str = "-m addrtype --dst-type LOCAL";
    let mut lines = vec![
        format!(
            "-A {CHAIN} -p udp {LOCAL} -m udp --dport {} -j DROP",
            policy.knock_port
        ),
        // Local processes are not the scanners we hide from.
        format!("-A {CHAIN} -i lo -j RETURN"),
    ];
    let ports = policy.protected();
    if ports.is_empty() {
        return lines;
    }
    lines.push(format!(
        "-A {CHAIN} -m set --match-set {} src,dst -j RETURN",
        family.set
    ));
    for port in ports {
        let p = port.port;
        match port.transport {
            Transport::Tcp => lines.push(format!(
                "-A {CHAIN} -p tcp {LOCAL} -m tcp --dport {p} --tcp-flags SYN,ACK SYN -j DROP"
            )),
            Transport::Udp => {
                lines.push(format!(
                    "-A {CHAIN} -p udp {LOCAL} -m udp --dport {p} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
                ));
                lines.push(format!(
                    "-A {CHAIN} -p udp {LOCAL} -m udp --dport {p} -j DROP"
                ));
            }
        }
    }
    lines
}

/// The iptables-restore input that replaces our chain and leaves exactly
/// one jump to it, first in PREROUTING, given what the table holds now; and
/// that removes the chain of the old layout, if any.
pub fn restore_script(
    policy: &Policy,
    family: Family,
    now: &TableState,
    old: &TableState,
) -> String {
    let mut s = format!("*{}\n", OURS.table);
    // Declaring an existing chain with --noflush empties it.
    let _ = writeln!(s, ":{CHAIN} - [0:0]");
    for line in chain_rules(policy, family) {
        let _ = writeln!(s, "{line}");
    }
    if !(now.jumps == 1 && now.jump_first) {
        for _ in 0..now.jumps {
            let _ = writeln!(s, "-D {} -j {CHAIN}", OURS.hook);
        }
        let _ = writeln!(s, "-I {} 1 -j {CHAIN}", OURS.hook);
    }
    s.push_str("COMMIT\n");
    s.push_str(&removal_script(OLD, old));
    s
}

/// The iptables-restore input that removes the chain `at` and its jumps
/// ("" when there is nothing to remove).
fn removal_script(at: Hooked, state: &TableState) -> String {
    if state.jumps == 0 && !state.chain_exists {
        return String::new();
    }
    let mut s = format!("*{}\n", at.table);
    for _ in 0..state.jumps {
        let _ = writeln!(s, "-D {} -j {}", at.hook, at.chain);
    }
    if state.chain_exists {
        let _ = writeln!(s, "-F {}\n-X {}", at.chain, at.chain);
    }
    s.push_str("COMMIT\n");
    s
}

/// The iptables-restore input that puts our chain back as `before` had it,
/// after a restore that succeeded for this family failed for the other.
fn rollback_script(before: &TableState) -> String {
    let mut s = format!("*{}\n:{CHAIN} - [0:0]\n", OURS.table);
    for line in &before.chain_rules {
        let _ = writeln!(s, "{line}");
    }
    if before.jumps == 0 {
        let _ = writeln!(s, "-D {} -j {CHAIN}", OURS.hook);
    }
    if !before.chain_exists {
        let _ = writeln!(s, "-X {CHAIN}");
    }
    s.push_str("COMMIT\n");
    s
}

fn restore_command(command: &str) -> String {
    format!("{command}-restore")
}

/// Runs `program args` (feeding `stdin`) and returns its output.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    Ok(command::run(program, args, stdin, DEADLINE)?)
}

/// Runs `<command>-restore --noflush` on `script` (with `--test`, only
/// checks it), waiting a bounded time for the xtables lock.
fn restore(command: &str, script: &str, test: bool) -> Result<(), FirewallError> {
    let mut args = vec!["-w", XTABLES_WAIT_SECONDS, "--noflush"];
    if test {
        args.push("--test");
    }
    run(&restore_command(command), &args, Some(script)).map(|_| ())
}

/// One table of one family, as `iptables -S` shows it, seen from one chain
/// of ours.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableState {
    pub chain_exists: bool,
    pub jumps: usize,
    pub jump_first: bool,
    pub chain_rules: Vec<String>,
    /// The rules of the built-in chain above our first jump.
    pub above_jump: Vec<String>,
}

fn parse_table(listing: &str, at: Hooked) -> TableState {
    let mut state = TableState::default();
    let jump = at.jump();
    let hook_prefix = format!("-A {} ", at.hook);
    let chain_prefix = format!("-A {} ", at.chain);
    let declared = format!("-N {}", at.chain);
    let mut seen_hook_rule = false;
    for line in listing.lines().map(str::trim_end) {
        if line == declared {
            state.chain_exists = true;
        } else if line.starts_with(&hook_prefix) {
            if line == jump {
                state.jump_first |= !seen_hook_rule;
                state.jumps += 1;
            } else if state.jumps == 0 {
                state.above_jump.push(line.to_owned());
            }
            seen_hook_rule = true;
        } else if line.starts_with(&chain_prefix) {
            state.chain_rules.push(line.to_owned());
        }
    }
    state
}

fn read_table(
    settings: &Settings,
    family: Family,
    at: Hooked,
) -> Result<TableState, FirewallError> {
    Ok(parse_table(
        &run(
            family.command(settings),
            &["-w", XTABLES_WAIT_SECONDS, "-t", at.table, "-S"],
            None,
        )?,
        at,
    ))
}

/// Does `rule` (of the built-in chain, above our jump) accept `port` for
/// some sources, so that our chain never sees it?
fn accepts(rule: &str, port: PortSpec) -> bool {
    if !rule.ends_with("-j ACCEPT") {
        return false;
    }
    let words: Vec<&str> = rule.split_whitespace().collect();
    let value = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1).copied())
    };
    if let Some(proto) = value("-p") {
        if proto != port.transport.name() {
            return false;
        }
    }
    let Some(ports) = value("--dport").or_else(|| value("--dports")) else {
        return true;
    };
    ports.split(',').any(|range| {
        let (low, high) = range.split_once(':').unwrap_or((range, range));
        match (low.parse::<u16>(), high.parse::<u16>()) {
            (Ok(low), Ok(high)) => (low..=high).contains(&port.port),
            // A named service or a form we do not read: assume it may.
            _ => true,
        }
    })
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

impl Iptables {
    fn family_grants(&mut self, family: Family) -> Result<Vec<LiveGrant>, FirewallError> {
        match run(IPSET, &["save", family.set], None) {
            Ok(text) => Ok(parse_save(&text, family.set)),
            Err(e) if self.ipset.header(family.set)?.is_none() => Err(FirewallError::Missing(
                format!("ipset {} does not exist ({e})", family.set),
            )),
            Err(e) => Err(e),
        }
    }

    /// Creates the set if missing; replaces an incompatible one, carrying
    /// its live grants over.
    fn ensure_set(&mut self, family: Family) -> Result<(), FirewallError> {
        let error = match run(IPSET, &family.create_args(), None) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if self.ipset.header(family.set)?.is_none() {
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
        // Our chains reference the set; ours is refilled right after.
        for at in [OURS, OLD] {
            if read_table(&self.settings, family, at)?.chain_exists {
                run(
                    family.command(&self.settings),
                    &["-w", XTABLES_WAIT_SECONDS, "-t", at.table, "-F", at.chain],
                    None,
                )?;
            }
        }
        self.ipset.destroy(family.set)?;
        run(IPSET, &family.create_args(), None)?;
        let elements: Vec<_> = keep
            .iter()
            .filter(|g| g.expires_in != Duration::MAX && !g.expires_in.is_zero())
            .map(|g| (g.addr, g.port, timeout_secs(g.expires_in)))
            .collect();
        if !elements.is_empty() {
            if let Err(e) = self.ipset.add(family, &elements) {
                tracing::warn!(
                    "iptables: could not restore grants into ipset {}: {e}",
                    family.set
                );
            }
        }
        Ok(())
    }

    /// Checks both families against what `policy` renders; returns our
    /// chain's rules per family.
    fn check(&mut self, policy: &Policy) -> Result<[Vec<String>; 2], FirewallError> {
        let mut found: [Vec<String>; 2] = Default::default();
        for (slot, family) in found.iter_mut().zip(FAMILIES) {
            let command = family.command(&self.settings).to_owned();
            let state = read_table(&self.settings, family, OURS)?;
            if !state.chain_exists {
                return Err(FirewallError::Missing(format!(
                    "{command}: chain {CHAIN} does not exist"
                )));
            }
            if state.jumps != 1 {
                return Err(FirewallError::Missing(format!(
                    "{command}: PREROUTING jumps to {CHAIN} {} times",
                    state.jumps
                )));
            }
            // Install puts the jump first, but tools such as fail2ban insert
            // their own jumps at position 1 later. Treating that as damage
            // would make us fight them every few seconds; an ACCEPT placed
            // before our jump is the operator's explicit choice.
            expect_rule_count(
                &format!("{CHAIN} of {command}"),
                state.chain_rules.len(),
                chain_rules(policy, family).len(),
            )?;
            match self.ipset.header(family.set)? {
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

    fn plan(&self, policy: &Policy) -> String {
        let mut s = String::from(
            "# knock-server (iptables backend): ipsets are created if missing, never flushed\n",
        );
        for family in FAMILIES {
            let _ = writeln!(s, "{IPSET} {}", family.create_args().join(" "));
        }
        for family in FAMILIES {
            let _ = writeln!(
                s,
                "# {} -w {XTABLES_WAIT_SECONDS} --noflush",
                restore_command(family.command(&self.settings))
            );
            s.push_str(&restore_script(
                policy,
                family,
                &TableState::default(),
                &TableState::default(),
            ));
        }
        s
    }

    fn install(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        self.installed = None;
        for family in FAMILIES {
            self.ensure_set(family)?;
        }
        // Both families, or neither: check both scripts before changing
        // either, and roll the first back if the second fails after all.
        let mut plans = Vec::with_capacity(FAMILIES.len());
        for family in FAMILIES {
            let now = read_table(&self.settings, family, OURS)?;
            let old = read_table(&self.settings, family, OLD)?;
            let script = restore_script(policy, family, &now, &old);
            restore(family.command(&self.settings), &script, true)?;
            plans.push((family, now, script));
        }
        let mut done: Vec<(Family, TableState)> = Vec::new();
        for (family, before, script) in plans {
            if let Err(err) = restore(family.command(&self.settings), &script, false) {
                for (family, before) in done {
                    if let Err(undo) = restore(
                        family.command(&self.settings),
                        &rollback_script(&before),
                        false,
                    ) {
                        tracing::error!(
                            "iptables: could not roll back {}: {undo}",
                            family.command(&self.settings)
                        );
                    }
                }
                return Err(err);
            }
            done.push((family, before));
        }
        let found = self.check(policy);
        self.installed = Some(Installed::read_back(policy, found)?);
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
        self.ipset
            .add(family, &elements)
            .map_err(|e| match e.errno() {
                Some(libc::ENOENT) => {
                    FirewallError::Missing(format!("ipset {} does not exist", family.set))
                }
                _ => FirewallError::netlink(format!("adding to ipset {}", family.set))(e),
            })
    }

    fn verify(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        let found = self.check(policy)?;
        Installed::compare(self.installed.as_ref(), policy, &found, CHAIN)
    }

    fn grants(&mut self) -> Result<Vec<LiveGrant>, FirewallError> {
        let mut grants = Vec::new();
        for family in FAMILIES {
            grants.extend(self.family_grants(family)?);
        }
        grants.sort_by_key(|g| (g.addr, g.port));
        Ok(grants)
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        self.installed = None;
        for family in FAMILIES {
            for at in [OURS, OLD] {
                let state = read_table(&self.settings, family, at)?;
                let script = removal_script(at, &state);
                if !script.is_empty() {
                    restore(family.command(&self.settings), &script, false)?;
                }
            }
        }
        for family in FAMILIES {
            self.ipset.destroy(family.set)?;
        }
        Ok(())
    }

    fn audit(&mut self, policy: &Policy) -> Result<Vec<String>, FirewallError> {
        let mut warnings = Vec::new();
        for family in FAMILIES {
            let command = family.command(&self.settings);
            let state = read_table(&self.settings, family, OURS)?;
            for rule in &state.above_jump {
                for port in policy.protected() {
                    if accepts(rule, *port) {
                        warnings.push(format!(
                            "{command} -t {}: `{rule}` comes before the jump to {CHAIN} and accepts {port}: knock never sees those packets",
                            OURS.table
                        ));
                    }
                }
            }
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::example_policy;

    fn rules() -> Policy {
        example_policy()
    }

    fn state(jumps: usize, jump_first: bool) -> TableState {
        TableState {
            chain_exists: jumps > 0,
            jumps,
            jump_first,
            ..TableState::default()
        }
    }

    #[test]
    fn restore_script_declares_chain_and_jumps_once() {
        let none = TableState::default();
        let fresh = restore_script(&rules(), V4, &none, &none);
        assert_eq!(
            fresh,
            "*mangle\n:KNOCK-PREROUTING - [0:0]\n\
             -A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 62201 -j DROP\n\
             -A KNOCK-PREROUTING -i lo -j RETURN\n\
             -A KNOCK-PREROUTING -m set --match-set knock4 src,dst -j RETURN\n\
             -A KNOCK-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 4992 --tcp-flags SYN,ACK SYN -j DROP\n\
             -A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 53 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 53 -j DROP\n\
             -I PREROUTING 1 -j KNOCK-PREROUTING\nCOMMIT\n"
        );
        let kept = restore_script(&rules(), V6, &state(1, true), &none);
        assert!(!kept.contains("PREROUTING 1") && !kept.contains("-D PREROUTING"));
        assert!(kept.contains("--match-set knock6 src,dst"));
        let fixed = restore_script(&rules(), V4, &state(2, false), &none);
        assert_eq!(
            fixed.matches("-D PREROUTING -j KNOCK-PREROUTING\n").count(),
            2
        );
        assert_eq!(
            fixed
                .matches("-I PREROUTING 1 -j KNOCK-PREROUTING\n")
                .count(),
            1
        );
        // An upgrade removes the chain of the old layout in the same run.
        let upgrade = restore_script(&rules(), V4, &none, &state(1, true));
        assert!(upgrade.ends_with(
            "*filter\n-D INPUT -j KNOCK-INPUT\n-F KNOCK-INPUT\n-X KNOCK-INPUT\nCOMMIT\n"
        ));
    }

    #[test]
    fn only_protected_udp_ports_need_connection_tracking() {
        let tcp_only = Policy::new(62201, &[PortSpec::tcp(22), PortSpec::tcp(4992)]);
        assert!(chain_rules(&tcp_only, V4)
            .iter()
            .all(|rule| !rule.contains("conntrack")));
        assert!(chain_rules(&rules(), V4)
            .iter()
            .any(|rule| rule.contains("conntrack")));
    }

    #[test]
    fn rollback_puts_the_previous_chain_back() {
        let previous = TableState {
            chain_exists: true,
            jumps: 1,
            jump_first: true,
            chain_rules: vec!["-A KNOCK-PREROUTING -i lo -j RETURN".into()],
            above_jump: Vec::new(),
        };
        assert_eq!(
            rollback_script(&previous),
            "*mangle\n:KNOCK-PREROUTING - [0:0]\n-A KNOCK-PREROUTING -i lo -j RETURN\nCOMMIT\n"
        );
        assert_eq!(
            rollback_script(&TableState::default()),
            "*mangle\n:KNOCK-PREROUTING - [0:0]\n-D PREROUTING -j KNOCK-PREROUTING\n-X KNOCK-PREROUTING\nCOMMIT\n"
        );
    }

    #[test]
    fn table_listing_parses() {
        let listing = "-P PREROUTING ACCEPT\n-N KNOCK-PREROUTING\n-A PREROUTING -p tcp --dport 22 -j ACCEPT\n\
                       -A PREROUTING -j KNOCK-PREROUTING\n-A PREROUTING -j KNOCK-PREROUTING\n\
                       -A KNOCK-PREROUTING -p udp -m udp --dport 1 -j DROP\n";
        let state = parse_table(listing, OURS);
        assert!(state.chain_exists);
        assert_eq!(state.jumps, 2);
        assert!(!state.jump_first);
        assert_eq!(
            state.above_jump,
            ["-A PREROUTING -p tcp --dport 22 -j ACCEPT"]
        );
        assert_eq!(
            state.chain_rules,
            ["-A KNOCK-PREROUTING -p udp -m udp --dport 1 -j DROP"]
        );
        assert!(parse_table("-A PREROUTING -j KNOCK-PREROUTING\n", OURS).jump_first);
    }

    #[test]
    fn accept_rules_above_our_jump_are_recognised() {
        let ssh = PortSpec::tcp(22);
        for (rule, expected) in [
            ("-A PREROUTING -p tcp -m tcp --dport 22 -j ACCEPT", true),
            ("-A PREROUTING -s 10.0.0.0/8 -j ACCEPT", true),
            (
                "-A PREROUTING -p tcp -m multiport --dports 20:25,80 -j ACCEPT",
                true,
            ),
            ("-A PREROUTING -p tcp -m tcp --dport 23 -j ACCEPT", false),
            ("-A PREROUTING -p udp -m udp --dport 22 -j ACCEPT", false),
            (
                "-A PREROUTING -p tcp -m tcp --dport 22 -j MARK --set-mark 1",
                false,
            ),
        ] {
            assert_eq!(accepts(rule, ssh), expected, "{rule}");
        }
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
}
