//! The nft script text of our table: what `install` feeds to `nft -f -` and
//! `check` prints. The chain's rules are rendered once, by [`chain_rules`];
//! `verify` counts that rendering, so the count is never typed by hand.

use std::fmt::Write as _;
use std::time::Duration;

use knock_proto::Transport;

use super::{Settings, CHAIN, SET4, SET6};
use crate::firewall::{LiveGrant, Policy, Refusal};

/// Our chain's rules, one line (one kernel rule) each, in order.
///
/// The chain sits on the prerouting hook before destination NAT, so a port
/// the host forwards (a published container port) is seen, and closed, by
/// the number the client connects to, exactly like a local one; `fib daddr
/// type local` keeps traffic that is only routed through the host out of it.
/// TCP is closed by refusing segments that carry neither ACK nor RST (a
/// connection-opening SYN, or a stray probe): that needs no connection
/// tracking, and segments of connections that existed before our rules, or
/// outlived their grant, pass. Only protected UDP ports, which have no such
/// marker, and `refuse = "drop"`, whose host tracks connections for its own
/// ruleset anyway, use conntrack.
pub fn chain_rules(policy: &Policy) -> Vec<String> {
    const LOCAL: &str = "fib daddr type local";
    let refuse_udp = match policy.refusal {
        // What the kernel sends for a port nothing listens on.
        Refusal::Reject => "reject",
        Refusal::Drop => "drop",
    };
    let mut rules = Vec::new();
    if policy.refusal == Refusal::Drop {
        // Where closed ports are dropped, so is the knock port; otherwise
        // the kernel answers it like any other port nothing listens on.
        rules.push(format!("{LOCAL} udp dport {} drop", policy.knock_port));
    }
    // The host's own processes are not the scanners we hide from, and local
    // services (tunnels, health checks) must keep working.
    rules.push("iif \"lo\" accept".to_owned());
    let ports = policy.protected();
    if ports.is_empty() {
        return rules;
    }
    let list = |ports: &mut dyn Iterator<Item = String>| ports.collect::<Vec<_>>().join(", ");
    let all = list(
        &mut ports
            .iter()
            .map(|p| format!("{} . {}", p.transport.name(), p.port)),
    );
    let guard = format!("{LOCAL} meta l4proto . th dport {{ {all} }}");
    rules.push(format!(
        "{guard} ip saddr . meta l4proto . th dport @{SET4} accept"
    ));
    rules.push(format!(
        "{guard} ip6 saddr . meta l4proto . th dport @{SET6} accept"
    ));
    let of = |transport: Transport| {
        list(
            &mut ports
                .iter()
                .filter(move |p| p.transport == transport)
                .map(|p| p.port.to_string()),
        )
    };
    let tcp = of(Transport::Tcp);
    if !tcp.is_empty() {
        rules.extend(match policy.refusal {
            // Every segment that opens nothing and belongs to nothing (no
            // ACK, no RST: a SYN, or a FIN, NULL or Xmas probe) gets the
            // reset a closed port sends; a listening socket would have
            // answered a SYN and silently ignored the others. Segments of
            // established connections always carry ACK.
            Refusal::Reject => vec![format!(
                "{LOCAL} tcp dport {{ {tcp} }} tcp flags & (ack | rst) == 0 reject with tcp reset"
            )],
            // Where the host drops closed ports, every segment outside a
            // connection is dropped, as its neighbours' are. Such a host's
            // own ruleset already tracks connections.
            Refusal::Drop => vec![
                format!("{LOCAL} tcp dport {{ {tcp} }} ct state established,related accept"),
                format!("{LOCAL} tcp dport {{ {tcp} }} drop"),
            ],
        });
    }
    let udp = of(Transport::Udp);
    if !udp.is_empty() {
        rules.push(format!(
            "{LOCAL} udp dport {{ {udp} }} ct state established,related accept"
        ));
        rules.push(format!("{LOCAL} udp dport {{ {udp} }} {refuse_udp}"));
    }
    rules
}

/// The script `install` feeds to `nft -f -` when our table is absent or
/// compatible: it creates what is missing, keeps the sets' elements, and
/// replaces our chain's rules.
pub fn install_script(settings: &Settings, policy: &Policy) -> String {
    let table = &settings.table;
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
        "\t\ttype filter hook prerouting priority {}; policy accept;",
        settings.priority
    );
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "flush chain inet {table} {CHAIN}");
    let _ = writeln!(s, "table inet {table} {{");
    let _ = writeln!(s, "\tchain {CHAIN} {{");
    for rule in chain_rules(policy) {
        let _ = writeln!(s, "\t\t{rule}");
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    s
}

/// The script that replaces an incompatible table, carrying `keep` over.
pub fn recreate_script(settings: &Settings, policy: &Policy, keep: &[LiveGrant]) -> String {
    let table = &settings.table;
    let mut s = String::new();
    // Adding first makes the delete valid whether or not the table exists.
    let _ = writeln!(s, "table inet {table}");
    let _ = writeln!(s, "delete table inet {table}");
    s.push_str(&install_script(settings, policy));
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

#[cfg(test)]
mod tests {
    use knock_proto::PortSpec;

    use super::*;
    use crate::firewall::example_policy;

    fn settings() -> Settings {
        Settings {
            table: "knock".into(),
            priority: -150,
        }
    }

    #[test]
    fn script_layout() {
        let script = install_script(&settings(), &example_policy());
        assert!(script.contains("type filter hook prerouting priority -150; policy accept;"));
        assert!(script.contains("flush chain inet knock prerouting\n"));
        assert!(
            !script.contains("62201"),
            "the kernel answers the knock port"
        );
        assert!(script.contains(
            "fib daddr type local meta l4proto . th dport { tcp . 4992, udp . 53 } ip saddr . meta l4proto . th dport @allow4 accept"
        ));
        assert!(script.contains(
            "fib daddr type local tcp dport { 4992 } tcp flags & (ack | rst) == 0 reject with tcp reset"
        ));
        assert!(script
            .contains("fib daddr type local udp dport { 53 } ct state established,related accept"));
        assert!(script.contains("fib daddr type local udp dport { 53 } reject\n"));
        let dropping = install_script(&settings(), &example_policy().refusing(Refusal::Drop));
        assert!(dropping.contains("\t\tfib daddr type local udp dport 62201 drop\n"));
        assert!(dropping.contains(
            "fib daddr type local tcp dport { 4992 } ct state established,related accept\n"
        ));
        assert!(dropping.contains("fib daddr type local tcp dport { 4992 } drop\n"));
        assert!(dropping.contains("fib daddr type local udp dport { 53 } drop\n"));
        assert!(!dropping.contains("reject"));
        assert!(!script.contains("delete"));
        let keep = [LiveGrant {
            addr: "10.0.0.9".parse().expect("ip"),
            port: PortSpec::tcp(4992),
            expires_in: Duration::from_millis(12_345),
        }];
        let again = recreate_script(&settings(), &example_policy(), &keep);
        assert!(again.starts_with("table inet knock\ndelete table inet knock\n"));
        assert!(again.ends_with(
            "add element inet knock allow4 { 10.0.0.9 . tcp . 4992 timeout 12345ms }\n"
        ));
    }

    #[test]
    fn every_rendered_rule_is_one_line_of_the_chain() {
        let policy = example_policy();
        let script = install_script(&settings(), &policy);
        let rules = chain_rules(&policy);
        assert_eq!(rules.len(), 6);
        for rule in &rules {
            assert!(script.contains(&format!("\t\t{rule}\n")), "{rule}");
        }
        let unprotected = Policy::new(62201, &[]);
        assert_eq!(chain_rules(&unprotected).len(), 1);
        assert_eq!(chain_rules(&unprotected.refusing(Refusal::Drop)).len(), 2);
    }

    #[test]
    fn only_protected_udp_ports_need_connection_tracking() {
        let tcp_only = chain_rules(&Policy::new(
            62201,
            &[PortSpec::tcp(22), PortSpec::tcp(4992)],
        ));
        assert!(
            tcp_only.iter().all(|rule| !rule.contains("ct state")),
            "{tcp_only:?}"
        );
        assert!(tcp_only.contains(
            &"fib daddr type local tcp dport { 22, 4992 } tcp flags & (ack | rst) == 0 reject with tcp reset"
                .to_owned()
        ));
        let with_udp = chain_rules(&example_policy());
        assert_eq!(
            with_udp
                .iter()
                .filter(|rule| rule.contains("ct state"))
                .count(),
            1
        );
    }
}
