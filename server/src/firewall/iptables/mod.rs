//! The iptables + ipset backend, for hosts without nftables.
//!
//! For each of IPv4 (`iptables_cmd`, set `knock4`) and IPv6
//! (`ip6tables_cmd`, set `knock6`), our chains ([`rules`] says where each
//! hangs and why) and an ipset of timed grants:
//!
//! ```text
//! ipset -exist create knock4 hash:ip,port family inet timeout 0
//! -t mangle -A PREROUTING -j KNOCK-PREROUTING                  (first rule, once)
//! -A KNOCK-PREROUTING -i lo -j RETURN
//! -A KNOCK-PREROUTING -m set --match-set knock4 src,dst -j RETURN
//! -A KNOCK-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 4992 --tcp-flags RST,ACK NONE -j MARK --set-xmark 0x200000/0x200000
//! -t filter -A INPUT -j KNOCK-REJECT, -A FORWARD -j KNOCK-REJECT  (first, once each)
//! -A KNOCK-REJECT -p tcp -m mark --mark 0x200000/0x200000 -j REJECT --reject-with tcp-reset
//! -t security -A INPUT -j KNOCK-GUARD, -A FORWARD -j KNOCK-GUARD
//! -A KNOCK-GUARD -m mark --mark 0x200000/0x200000 -j DROP
//! ```
//!
//! Allowed traffic RETURNs rather than ACCEPTs, so the host's own rules
//! still apply after ours. A grant's set element matches only its own
//! protocol and port, and unprotected ports are never refused here, so the
//! set rule needs no port guard.
//!
//! Both families are checked with `iptables-restore --test` before either is
//! changed (once per policy: a reinstall of a policy already installed skips
//! it); each is then replaced in one `iptables-restore --noflush` run, and a
//! failure of the second rolls the first back. The ipsets are created
//! with `-exist` and never destroyed on restart, so live grants survive.
//! Grants go to the kernel over ipset netlink (no process per grant);
//! `grants` reads `ipset save`.

mod ipset;
pub mod rules;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use knock_proto::{PortSpec, Transport};

use self::ipset::{timeout_secs, Ipset};
use self::rules::{
    accepts, layout, parse_listing, removal_script, restore_script, rollback_script, ChainState,
    Layout, Placement, DECIDE, OLD, PLACEMENTS, TABLES,
};
use super::command::{self, DEADLINE, XTABLES_WAIT_SECONDS};
use super::{expect_rule_count, Firewall, FirewallError, Installed, LiveGrant, Policy};

/// Our deciding chain, in the mangle table of both families.
pub const CHAIN: &str = DECIDE.chain;
const IPSET: &str = "ipset";
const SET_TYPE: &str = "hash:ip,port";

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// The operator's iptables, from `server.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub iptables: String,
    pub ip6tables: String,
    /// The packet-mark bit that carries a refusal from the mangle table to
    /// the filter table (`refuse = "reject"`).
    pub mark: u32,
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
    /// What install left: the rules of our chains as `-S` shows them, per
    /// family.
    installed: Option<Installed<Vec<Vec<String>>>>,
    /// A policy this backend has installed before: the kernel took its
    /// scripts once, so a reinstall (after another tool removed our rules)
    /// need not test them again, and is back sooner.
    proven: Option<Policy>,
}

impl Iptables {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ipset: Ipset::new(),
            installed: None,
            proven: None,
        }
    }
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
    if script.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-w", XTABLES_WAIT_SECONDS, "--noflush"];
    if test {
        args.push("--test");
    }
    run(&restore_command(command), &args, Some(script)).map(|_| ())
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
    /// What the kernel holds of `at`, for `family`.
    fn read(&self, family: Family, at: Placement) -> Result<ChainState, FirewallError> {
        Ok(parse_listing(&self.listing(family, at.table)?, at))
    }

    /// `iptables -S` of one table.
    fn listing(&self, family: Family, table: &str) -> Result<String, FirewallError> {
        run(
            family.command(&self.settings),
            &["-w", XTABLES_WAIT_SECONDS, "-t", table, "-S"],
            None,
        )
    }

    /// What the kernel holds of each of our placements, for `family`: one
    /// listing per table.
    fn read_all(&self, family: Family) -> Result<Vec<ChainState>, FirewallError> {
        let mut listings = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            listings.push((table, self.listing(family, table)?));
        }
        Ok(PLACEMENTS
            .iter()
            .map(|at| {
                let listing = listings
                    .iter()
                    .find(|(table, _)| *table == at.table)
                    .map_or("", |(_, listing)| listing.as_str());
                parse_listing(listing, *at)
            })
            .collect())
    }

    /// [`Self::read_all`] for both families at once: a reinstall after
    /// another tool flushed our rules waits for half as many commands.
    fn read_both(&self) -> Result<[Vec<ChainState>; 2], FirewallError> {
        std::thread::scope(|scope| {
            let v6 = scope.spawn(|| self.read_all(V6));
            let v4 = self.read_all(V4)?;
            let v6 = v6.join().map_err(|_| {
                FirewallError::Missing("reading the IPv6 rules failed unexpectedly".into())
            })??;
            Ok([v4, v6])
        })
    }

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
        for at in [DECIDE, OLD] {
            if self.read(family, at)?.exists {
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

    /// Checks both families against what `policy` renders; returns the
    /// rules of our chains per family.
    fn check(&mut self, policy: &Policy) -> Result<Vec<Vec<String>>, FirewallError> {
        let mut found = Vec::new();
        for (family, states) in FAMILIES.into_iter().zip(self.read_both()?) {
            let command = family.command(&self.settings).to_owned();
            let want = layout(&self.settings, policy, family);
            for ((at, want), state) in PLACEMENTS.iter().zip(want).zip(states) {
                let Some(rules) = want else { continue };
                if !state.exists {
                    return Err(FirewallError::Missing(format!(
                        "{command} -t {}: chain {} does not exist",
                        at.table, at.chain
                    )));
                }
                for (hook, hook_state) in at.hooks.iter().zip(&state.hooks) {
                    // Install puts the jump first, but tools such as
                    // fail2ban insert their own jumps at position 1 later.
                    // Treating that as damage would make us fight them every
                    // few seconds; `check` warns about ACCEPTs above ours.
                    if hook_state.jumps != 1 {
                        return Err(FirewallError::Missing(format!(
                            "{command} -t {}: {hook} jumps to {} {} times",
                            at.table, at.chain, hook_state.jumps
                        )));
                    }
                }
                expect_rule_count(
                    &format!("{} of {command} -t {}", at.chain, at.table),
                    state.rules.len(),
                    rules.len(),
                )?;
                found.push(state.rules);
            }
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
        let nothing: Vec<ChainState> = PLACEMENTS.iter().map(|at| parse_listing("", *at)).collect();
        for family in FAMILIES {
            let _ = writeln!(
                s,
                "# {} -w {XTABLES_WAIT_SECONDS} --noflush",
                restore_command(family.command(&self.settings))
            );
            s.push_str(&restore_script(
                &layout(&self.settings, policy, family),
                &nothing,
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
        for (family, before) in FAMILIES.into_iter().zip(self.read_both()?) {
            let want = layout(&self.settings, policy, family);
            let script = restore_script(&want, &before);
            plans.push((family, want, before, script));
        }
        if self.proven.as_ref() != Some(policy) {
            self.proven = None;
            // The two tests take tens of milliseconds each with
            // iptables-nft: run them side by side.
            std::thread::scope(|scope| {
                let tests: Vec<_> = plans
                    .iter()
                    .map(|(family, _, _, script)| {
                        let command = family.command(&self.settings);
                        scope.spawn(move || restore(command, script, true))
                    })
                    .collect();
                tests.into_iter().try_for_each(|test| {
                    test.join().map_err(|_| {
                        FirewallError::Missing("testing our rules failed unexpectedly".into())
                    })?
                })
            })?;
        }
        let mut done: Vec<(Family, Layout, Vec<ChainState>)> = Vec::new();
        for (family, want, before, script) in plans {
            let command = family.command(&self.settings);
            if let Err(err) = restore(command, &script, false) {
                for (family, want, before) in done {
                    let command = family.command(&self.settings);
                    let undo = rollback_script(&want, &before);
                    if let Err(undo) = restore(command, &undo, false) {
                        tracing::error!("iptables: could not roll back {command}: {undo}");
                    }
                }
                return Err(err);
            }
            done.push((family, want, before));
        }
        let found = self.check(policy);
        self.installed = Some(Installed::read_back(policy, found)?);
        self.proven = Some(policy.clone());
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
        Installed::compare(self.installed.as_ref(), policy, &found, "KNOCK-*")
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
            let now = self.read_all(family)?;
            restore(family.command(&self.settings), &removal_script(&now), false)?;
        }
        for family in FAMILIES {
            self.ipset.destroy(family.set)?;
        }
        Ok(())
    }

    fn audit(&mut self, policy: &Policy) -> Result<Vec<String>, FirewallError> {
        let mut warnings = Vec::new();
        for (family, states) in FAMILIES.into_iter().zip(self.read_both()?) {
            let command = family.command(&self.settings);
            let want = layout(&self.settings, policy, family);
            for ((at, want), state) in PLACEMENTS.iter().zip(want).zip(states) {
                if want.is_none() || *at == OLD {
                    continue;
                }
                for (hook, hook_state) in at.hooks.iter().zip(&state.hooks) {
                    for rule in &hook_state.above {
                        for port in policy.protected() {
                            if accepts(rule, *port) {
                                warnings.push(format!(
                                    "{command} -t {}: `{rule}` comes before the jump to {} in {hook} and accepts {port}: knock never sees those packets",
                                    at.table, at.chain
                                ));
                            }
                        }
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
