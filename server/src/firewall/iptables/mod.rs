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

mod ipset;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use knock_proto::{PortSpec, Transport};

use self::ipset::{timeout_secs, Ipset};
use super::command::{self, DEADLINE, XTABLES_WAIT_SECONDS};
use super::{expect_rule_count, Firewall, FirewallError, Installed, LiveGrant, Policy};

/// Our chain, in the filter table of both families.
pub const CHAIN: &str = "KNOCK-INPUT";
const JUMP: &str = "-A INPUT -j KNOCK-INPUT";
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

/// Our chain's rules, as written to iptables-restore.
pub fn chain_rules(policy: &Policy, family: Family) -> Vec<String> {
    let mut lines = vec![
        format!(
            "-A {CHAIN} -p udp -m udp --dport {} -j DROP",
            policy.knock_port
        ),
        format!("-A {CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        // Local processes are not the scanners we hide from.
        format!("-A {CHAIN} -i lo -j RETURN"),
    ];
    let ports = policy.protected();
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
pub fn restore_script(policy: &Policy, family: Family, jumps: usize, jump_first: bool) -> String {
    let mut s = String::from("*filter\n");
    // Declaring an existing chain with --noflush empties it.
    let _ = writeln!(s, ":{CHAIN} - [0:0]");
    for line in chain_rules(policy, family) {
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

/// Runs `program args` (feeding `stdin`) and returns its output.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    Ok(command::run(program, args, stdin, DEADLINE)?)
}

/// Runs `<command>-restore --noflush` on `script`, waiting a bounded time
/// for the xtables lock.
fn restore(command: &str, script: &str) -> Result<(), FirewallError> {
    run(
        &restore_command(command),
        &["-w", XTABLES_WAIT_SECONDS, "--noflush"],
        Some(script),
    )
    .map(|_| ())
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

fn read_filter(settings: &Settings, family: Family) -> Result<FilterState, FirewallError> {
    Ok(parse_filter(&run(
        family.command(settings),
        &["-w", XTABLES_WAIT_SECONDS, "-t", "filter", "-S"],
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
        // Our chain references the set; it is refilled right after.
        let state = read_filter(&self.settings, family)?;
        if state.chain_exists {
            run(
                family.command(&self.settings),
                &["-w", XTABLES_WAIT_SECONDS, "-t", "filter", "-F", CHAIN],
                None,
            )?;
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
            let state = read_filter(&self.settings, family)?;
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
            s.push_str(&restore_script(policy, family, 0, false));
        }
        s
    }

    fn install(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        self.installed = None;
        for family in FAMILIES {
            self.ensure_set(family)?;
        }
        for family in FAMILIES {
            let state = read_filter(&self.settings, family)?;
            let script = restore_script(policy, family, state.jumps, state.jump_first);
            restore(family.command(&self.settings), &script)?;
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
            let state = read_filter(&self.settings, family)?;
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
            restore(family.command(&self.settings), &script)?;
        }
        for family in FAMILIES {
            self.ipset.destroy(family.set)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::example_policy;

    fn rules() -> Policy {
        example_policy()
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
}
