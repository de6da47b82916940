//! The iptables side as text: the chains we want for a policy, the
//! iptables-restore input that puts them in place (and takes them back out),
//! and parsers of `iptables -S` listings.
//!
//! Where each chain hangs, and why:
//!
//! - `mangle` `KNOCK-PREROUTING` (from PREROUTING): decides. It runs before
//!   destination NAT, so a port the host forwards is judged by the number the
//!   client connects to. TCP is refused by its segments without ACK or RST
//!   only (openings and probes), which needs no connection tracking; only
//!   protected UDP ports, and `refuse = "drop"`, use conntrack.
//! - `filter` `KNOCK-REJECT` (from INPUT and FORWARD), with `refuse =
//!   "reject"`: the kernel lets REJECT answer only from the filter table, so
//!   the mangle chain marks a refusal (one packet-mark bit) and this chain
//!   answers it with a TCP reset or an ICMP port unreachable.
//! - `security` `KNOCK-GUARD` (from INPUT and FORWARD), with `refuse =
//!   "reject"`: drops a marked packet that a rule above our REJECT accepted,
//!   so no other rule can let a refused connection through.
//!
//! With `refuse = "drop"` the mangle chain drops, and the other two are not
//! installed.

use std::fmt::Write as _;

use knock_proto::{PortSpec, Transport};

use super::{Family, Settings};
use crate::firewall::{Policy, Refusal};

/// A chain of ours and the built-in chains that jump to it, first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub table: &'static str,
    pub chain: &'static str,
    pub hooks: &'static [&'static str],
}

pub const DECIDE: Placement = Placement {
    table: "mangle",
    chain: "KNOCK-PREROUTING",
    hooks: &["PREROUTING"],
};
pub const REJECT: Placement = Placement {
    table: "filter",
    chain: "KNOCK-REJECT",
    hooks: &["INPUT", "FORWARD"],
};
pub const GUARD: Placement = Placement {
    table: "security",
    chain: "KNOCK-GUARD",
    hooks: &["INPUT", "FORWARD"],
};
/// Where versions before the prerouting layout hung their chain; removed on
/// install so that an upgrade leaves no chain that drops established
/// sessions behind.
pub const OLD: Placement = Placement {
    table: "filter",
    chain: "KNOCK-INPUT",
    hooks: &["INPUT"],
};
/// Every chain we may own, in the order we install them.
pub const PLACEMENTS: [Placement; 4] = [DECIDE, REJECT, GUARD, OLD];
/// The tables they live in, each listed once.
pub const TABLES: [&str; 3] = ["mangle", "filter", "security"];

/// The rules each of [`PLACEMENTS`] should hold, as written to
/// iptables-restore and as `-S` lists them; `None` where the chain should
/// not exist.
pub type Layout = [Option<Vec<String>>; 4];

/// The [`Layout`] for `policy`.
pub fn layout(settings: &Settings, policy: &Policy, family: Family) -> Layout {
    const LOCAL: &str = "-m addrtype --dst-type LOCAL";
    let chain = DECIDE.chain;
    let mark = format!("{:#x}/{:#x}", settings.mark, settings.mark);
    let refuse = match policy.refusal {
        Refusal::Reject => format!("-j MARK --set-xmark {mark}"),
        Refusal::Drop => "-j DROP".to_owned(),
    };
    let mut decide = Vec::new();
    if policy.refusal == Refusal::Drop {
        // Where closed ports are dropped, so is the knock port; otherwise
        // the kernel answers it like any other port nothing listens on.
        decide.push(format!(
            "-A {chain} -p udp {LOCAL} -m udp --dport {} -j DROP",
            policy.knock_port
        ));
    }
    // Local processes are not the scanners we hide from.
    decide.push(format!("-A {chain} -i lo -j RETURN"));
    let ports = policy.protected();
    if !ports.is_empty() {
        decide.push(format!(
            "-A {chain} -m set --match-set {} src,dst -j RETURN",
            family.set
        ));
    }
    for port in ports {
        let p = port.port;
        match (port.transport, policy.refusal) {
            // As with nftables (see its `script::chain_rules`): a segment
            // with neither ACK nor RST opens something or probes; where
            // closed ports are dropped, everything outside a connection is.
            (Transport::Tcp, Refusal::Reject) => decide.push(format!(
                "-A {chain} -p tcp {LOCAL} -m tcp --dport {p} --tcp-flags RST,ACK NONE {refuse}"
            )),
            (Transport::Tcp, Refusal::Drop) => {
                decide.push(format!(
                    "-A {chain} -p tcp {LOCAL} -m tcp --dport {p} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
                ));
                decide.push(format!(
                    "-A {chain} -p tcp {LOCAL} -m tcp --dport {p} {refuse}"
                ));
            }
            (Transport::Udp, _) => {
                decide.push(format!(
                    "-A {chain} -p udp {LOCAL} -m udp --dport {p} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
                ));
                decide.push(format!(
                    "-A {chain} -p udp {LOCAL} -m udp --dport {p} {refuse}"
                ));
            }
        }
    }
    let answer = (policy.refusal == Refusal::Reject && !ports.is_empty()).then(|| {
        let has = |t: Transport| ports.iter().any(|p: &PortSpec| p.transport == t);
        let unreachable = if family.v6 {
            "icmp6-port-unreachable"
        } else {
            "icmp-port-unreachable"
        };
        let mut rules = Vec::new();
        if has(Transport::Tcp) {
            rules.push(format!(
                "-A {} -p tcp -m mark --mark {mark} -j REJECT --reject-with tcp-reset",
                REJECT.chain
            ));
        }
        if has(Transport::Udp) {
            rules.push(format!(
                "-A {} -p udp -m mark --mark {mark} -j REJECT --reject-with {unreachable}",
                REJECT.chain
            ));
        }
        rules
    });
    let guard = answer
        .is_some()
        .then(|| vec![format!("-A {} -m mark --mark {mark} -j DROP", GUARD.chain)]);
    [Some(decide), answer, guard, None]
}

/// One built-in chain, seen from a chain of ours that it should jump to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HookState {
    pub jumps: usize,
    /// Is its first rule a jump to us?
    pub first: bool,
    /// Its rules above the first jump to us.
    pub above: Vec<String>,
}

/// One chain of ours as `iptables -S` of its table shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub exists: bool,
    pub rules: Vec<String>,
    /// One per hook of the placement, in its order.
    pub hooks: Vec<HookState>,
}

impl ChainState {
    fn is_absent(&self) -> bool {
        !self.exists && self.hooks.iter().all(|h| h.jumps == 0)
    }
}

/// What the `-S` listing of `at`'s table says about `at`.
pub fn parse_listing(listing: &str, at: Placement) -> ChainState {
    let declared = format!("-N {}", at.chain);
    let ours = format!("-A {} ", at.chain);
    let mut state = ChainState {
        hooks: vec![HookState::default(); at.hooks.len()],
        ..ChainState::default()
    };
    let mut seen = vec![false; at.hooks.len()];
    for line in listing.lines().map(str::trim_end) {
        if line == declared {
            state.exists = true;
        } else if line.starts_with(&ours) {
            state.rules.push(line.to_owned());
        } else {
            for ((hook, hook_state), seen) in at.hooks.iter().zip(&mut state.hooks).zip(&mut seen) {
                if !line.starts_with(&format!("-A {hook} ")) {
                    continue;
                }
                if line == format!("-A {hook} -j {}", at.chain) {
                    hook_state.first |= !*seen;
                    hook_state.jumps += 1;
                } else if hook_state.jumps == 0 {
                    hook_state.above.push(line.to_owned());
                }
                *seen = true;
            }
        }
    }
    state
}

/// The iptables-restore input that gives every placement the rules `want`
/// says (replacing ours, with exactly one jump from each hook, first) or
/// removes it, given `now`. Empty when there is nothing to do.
pub fn restore_script(want: &[Option<Vec<String>>], now: &[ChainState]) -> String {
    let mut s = String::new();
    for table in TABLES {
        let mut body = String::new();
        for ((at, want), now) in PLACEMENTS.iter().zip(want).zip(now) {
            if at.table != table {
                continue;
            }
            match want {
                Some(rules) => {
                    // Declaring an existing chain with --noflush empties it.
                    let _ = writeln!(body, ":{} - [0:0]", at.chain);
                    for rule in rules {
                        let _ = writeln!(body, "{rule}");
                    }
                    for (hook, state) in at.hooks.iter().zip(&now.hooks) {
                        if state.jumps == 1 && state.first {
                            continue;
                        }
                        for _ in 0..state.jumps {
                            let _ = writeln!(body, "-D {hook} -j {}", at.chain);
                        }
                        let _ = writeln!(body, "-I {hook} 1 -j {}", at.chain);
                    }
                }
                None => body.push_str(&removal(*at, now)),
            }
        }
        if !body.is_empty() {
            let _ = write!(s, "*{table}\n{body}COMMIT\n");
        }
    }
    s
}

/// Lines that remove `at` and the jumps to it ("" if there is nothing).
fn removal(at: Placement, now: &ChainState) -> String {
    let mut s = String::new();
    for (hook, state) in at.hooks.iter().zip(&now.hooks) {
        for _ in 0..state.jumps {
            let _ = writeln!(s, "-D {hook} -j {}", at.chain);
        }
    }
    if now.exists {
        let _ = writeln!(s, "-F {}\n-X {}", at.chain, at.chain);
    }
    s
}

/// The iptables-restore input that removes every chain of ours.
pub fn removal_script(now: &[ChainState]) -> String {
    restore_script(&[None, None, None, None], now)
}

/// The iptables-restore input that puts our chains back as `before` had
/// them, after a restore of `want` that succeeded for this family failed for
/// the other.
pub fn rollback_script(want: &[Option<Vec<String>>], before: &[ChainState]) -> String {
    let mut s = String::new();
    for table in TABLES {
        let mut body = String::new();
        for ((at, want), before) in PLACEMENTS.iter().zip(want).zip(before) {
            if at.table != table || (want.is_none() && before.is_absent()) {
                continue;
            }
            // Declaring the chain flushes it, or creates it again if the
            // restore removed it; then it gets its old rules and jumps.
            let _ = writeln!(body, ":{} - [0:0]", at.chain);
            for rule in &before.rules {
                let _ = writeln!(body, "{rule}");
            }
            for (hook, state) in at.hooks.iter().zip(&before.hooks) {
                if want.is_some() {
                    // The restore left exactly one jump from each hook.
                    let _ = writeln!(body, "-D {hook} -j {}", at.chain);
                }
                for _ in 0..state.jumps {
                    let _ = writeln!(body, "-I {hook} 1 -j {}", at.chain);
                }
            }
            if before.is_absent() {
                let _ = writeln!(body, "-X {}", at.chain);
            }
        }
        if !body.is_empty() {
            let _ = write!(s, "*{table}\n{body}COMMIT\n");
        }
    }
    s
}

/// Does `rule` (of a built-in chain, above our jump) accept `port` for
/// some sources, so that our chain never sees it?
pub fn accepts(rule: &str, port: PortSpec) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::example_policy;
    use crate::firewall::iptables::{V4, V6};

    fn settings() -> Settings {
        Settings {
            iptables: "iptables".into(),
            ip6tables: "ip6tables".into(),
            mark: 0x0020_0000,
        }
    }

    fn absent() -> Vec<ChainState> {
        PLACEMENTS.iter().map(|at| parse_listing("", *at)).collect()
    }

    /// A chain of ours that exists, holds `rules`, and is jumped to from
    /// its hooks as `jumps` says: (how often, whether first).
    fn present(rules: &[&str], jumps: &[(usize, bool)]) -> ChainState {
        ChainState {
            exists: true,
            rules: rules.iter().map(|r| (*r).to_owned()).collect(),
            hooks: jumps
                .iter()
                .map(|&(jumps, first)| HookState {
                    jumps,
                    first,
                    above: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_fresh_install_creates_every_chain_and_one_jump_per_hook() {
        let want = layout(&settings(), &example_policy(), V4);
        assert_eq!(
            restore_script(&want, &absent()),
            "*mangle\n:KNOCK-PREROUTING - [0:0]\n\
             -A KNOCK-PREROUTING -i lo -j RETURN\n\
             -A KNOCK-PREROUTING -m set --match-set knock4 src,dst -j RETURN\n\
             -A KNOCK-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 4992 --tcp-flags RST,ACK NONE -j MARK --set-xmark 0x200000/0x200000\n\
             -A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 53 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 53 -j MARK --set-xmark 0x200000/0x200000\n\
             -I PREROUTING 1 -j KNOCK-PREROUTING\nCOMMIT\n\
             *filter\n:KNOCK-REJECT - [0:0]\n\
             -A KNOCK-REJECT -p tcp -m mark --mark 0x200000/0x200000 -j REJECT --reject-with tcp-reset\n\
             -A KNOCK-REJECT -p udp -m mark --mark 0x200000/0x200000 -j REJECT --reject-with icmp-port-unreachable\n\
             -I INPUT 1 -j KNOCK-REJECT\n-I FORWARD 1 -j KNOCK-REJECT\nCOMMIT\n\
             *security\n:KNOCK-GUARD - [0:0]\n\
             -A KNOCK-GUARD -m mark --mark 0x200000/0x200000 -j DROP\n\
             -I INPUT 1 -j KNOCK-GUARD\n-I FORWARD 1 -j KNOCK-GUARD\nCOMMIT\n"
        );
        let v6 = layout(&settings(), &example_policy(), V6);
        assert!(v6[0].as_ref().expect("decide")[1].contains("knock6"));
        assert!(v6[1].as_ref().expect("reject")[1].ends_with("icmp6-port-unreachable"));
    }

    #[test]
    fn drop_mode_drops_in_mangle_and_removes_the_answering_chains() {
        let policy = example_policy().refusing(Refusal::Drop);
        let want = layout(&settings(), &policy, V4);
        let decide = want[0].as_ref().expect("decide");
        assert_eq!(
            decide[0],
            "-A KNOCK-PREROUTING -p udp -m addrtype --dst-type LOCAL -m udp --dport 62201 -j DROP"
        );
        assert!(decide.iter().all(|rule| !rule.contains("MARK")));
        assert_eq!((&want[1], &want[2], &want[3]), (&None, &None, &None));
        let mut now = absent();
        now[1] = present(&["-A KNOCK-REJECT -p tcp -j REJECT"], &[(1, true); 2]);
        let script = restore_script(&want, &now);
        assert!(script.contains(
            "*filter\n-D INPUT -j KNOCK-REJECT\n-D FORWARD -j KNOCK-REJECT\n-F KNOCK-REJECT\n-X KNOCK-REJECT\nCOMMIT\n"
        ));
        assert!(!script.contains("*security"), "nothing to remove there");
    }

    #[test]
    fn drop_mode_keeps_connections_and_drops_everything_else() {
        let policy = example_policy().refusing(Refusal::Drop);
        let decide = layout(&settings(), &policy, V4)[0].clone().expect("decide");
        assert!(decide.contains(
            &"-A KNOCK-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 4992 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_owned()
        ));
        assert!(decide.contains(
            &"-A KNOCK-PREROUTING -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 4992 -j DROP"
                .to_owned()
        ));
    }

    #[test]
    fn only_protected_udp_ports_need_connection_tracking() {
        let tcp_only = Policy::new(62201, &[PortSpec::tcp(22), PortSpec::tcp(4992)]);
        for rules in layout(&settings(), &tcp_only, V4).iter().flatten() {
            assert!(rules.iter().all(|rule| !rule.contains("conntrack")));
        }
        assert!(layout(&settings(), &example_policy(), V4)[0]
            .as_ref()
            .expect("decide")
            .iter()
            .any(|rule| rule.contains("conntrack")));
    }

    #[test]
    fn jumps_are_repaired_and_the_old_layout_removed() {
        let want = layout(&settings(), &example_policy(), V4);
        let mut now = absent();
        now[0] = present(&[], &[(2, false)]);
        now[3] = present(&["-A KNOCK-INPUT -j DROP"], &[(1, true)]);
        let script = restore_script(&want, &now);
        assert_eq!(
            script
                .matches("-D PREROUTING -j KNOCK-PREROUTING\n")
                .count(),
            2
        );
        assert_eq!(
            script
                .matches("-I PREROUTING 1 -j KNOCK-PREROUTING\n")
                .count(),
            1
        );
        assert!(script.contains("-D INPUT -j KNOCK-INPUT\n-F KNOCK-INPUT\n-X KNOCK-INPUT\n"));
    }

    #[test]
    fn rollback_puts_the_previous_chains_back() {
        let mut before = absent();
        before[0] = present(&["-A KNOCK-PREROUTING -i lo -j RETURN"], &[(1, true)]);
        let want = layout(&settings(), &example_policy(), V4);
        let script = rollback_script(&want, &before);
        assert!(script.starts_with(
            "*mangle\n:KNOCK-PREROUTING - [0:0]\n-A KNOCK-PREROUTING -i lo -j RETURN\n\
             -D PREROUTING -j KNOCK-PREROUTING\n-I PREROUTING 1 -j KNOCK-PREROUTING\nCOMMIT\n"
        ));
        // A chain that did not exist before is gone again.
        assert!(script.contains(
            ":KNOCK-REJECT - [0:0]\n-D INPUT -j KNOCK-REJECT\n-D FORWARD -j KNOCK-REJECT\n-X KNOCK-REJECT\n"
        ));
        // A chain the restore removed comes back, with its jump.
        before[3] = present(&["-A KNOCK-INPUT -j DROP"], &[(1, true)]);
        assert!(rollback_script(&want, &before)
            .contains(":KNOCK-INPUT - [0:0]\n-A KNOCK-INPUT -j DROP\n-I INPUT 1 -j KNOCK-INPUT\n"));
    }

    #[test]
    fn listings_parse() {
        let listing = "-P PREROUTING ACCEPT\n-N KNOCK-PREROUTING\n-A PREROUTING -p tcp --dport 22 -j ACCEPT\n\
                       -A PREROUTING -j KNOCK-PREROUTING\n-A PREROUTING -j KNOCK-PREROUTING\n\
                       -A KNOCK-PREROUTING -p udp -m udp --dport 1 -j DROP\n";
        let state = parse_listing(listing, DECIDE);
        assert!(state.exists);
        assert_eq!(state.hooks[0].jumps, 2);
        assert!(!state.hooks[0].first);
        assert_eq!(
            state.hooks[0].above,
            ["-A PREROUTING -p tcp --dport 22 -j ACCEPT"]
        );
        assert_eq!(
            state.rules,
            ["-A KNOCK-PREROUTING -p udp -m udp --dport 1 -j DROP"]
        );
        let filter = "-N KNOCK-REJECT\n-A INPUT -j KNOCK-REJECT\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j KNOCK-REJECT\n";
        let state = parse_listing(filter, REJECT);
        assert!(state.hooks[0].first && !state.hooks[1].first);
        assert_eq!(state.hooks[1].above, ["-A FORWARD -j DOCKER-USER"]);
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
}
