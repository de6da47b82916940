//! Behaviour tests of the real firewall backends: the same checks for
//! nftables, iptables (default command) and iptables-legacy.
//!
//! Each test creates a fresh network namespace and re-runs this test binary
//! inside it (`ip netns exec NS <self> <test> --exact`), so the host's own
//! firewall is never touched. They need root, and fail (never skip) when a
//! namespace cannot be created.

mod netns;

use std::net::IpAddr;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use knock_proto::{PortSpec, Transport};
use knock_server::firewall::{
    iptables, nftables, Firewall, FirewallError, LiveGrant, Policy, Refusal, Settings,
};
use netns::in_fresh_netns;

/// Runs a shell command that must succeed; returns its stdout.
fn sh(command: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Retries `command` until it succeeds (a set a rule just let go of can
/// stay busy for a moment).
fn sh_retry(command: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ok = Command::new("sh")
            .args(["-c", command])
            .output()
            .expect("run sh")
            .status
            .success();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "`{command}` kept failing");
        sleep(Duration::from_millis(50));
    }
}

fn policy() -> Policy {
    Policy::new(
        62201,
        &[
            PortSpec::tcp(4992),
            PortSpec {
                transport: Transport::Udp,
                port: 53,
            },
        ],
    )
}

/// The commands the outside checks run (iptables backends).
struct Cmds {
    iptables_cmd: String,
    ip6tables_cmd: String,
}

/// What differs between backends: how to build one and how to look at
/// (and damage) its rules from the outside.
struct Backend {
    settings: Settings,
    policy: Policy,
    cmds: Cmds,
    /// Our rules as seen from outside: for each chain, its rule count (and
    /// for iptables, how often INPUT jumps to it).
    counts: fn(&Cmds) -> Vec<usize>,
    expected: Vec<usize>,
    /// Changes one of our rules without changing their number.
    tamper: fn(&Cmds),
    /// Deletes our rules behind the server's back.
    delete: fn(&Cmds),
    /// Leaves our rules in a state install cannot update in place, while
    /// 192.0.2.10 tcp/4992 stays granted.
    make_incompatible: fn(&Cmds),
    /// Asserts the incompatible state was replaced.
    check_replaced: fn(&Cmds),
    /// Anything of ours left in the kernel, as text ("" when clean).
    leftovers: fn(&Cmds) -> String,
    /// Something that changes when our objects are recreated rather than
    /// updated in place ("" when the backend has nothing such).
    identity: fn(&Cmds) -> String,
}

fn nft_counts(_: &Cmds) -> Vec<usize> {
    let listing = sh("nft -a list chain inet knock prerouting");
    vec![listing
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("chain "))
        .count()]
}

fn nftables() -> Backend {
    Backend {
        settings: Settings::Nftables(nftables::Settings {
            table: "knock".into(),
            priority: -10,
        }),
        policy: policy(),
        cmds: Cmds {
            iptables_cmd: "iptables".into(),
            ip6tables_cmd: "ip6tables".into(),
        },
        counts: nft_counts,
        expected: vec![6],
        tamper: |_| {
            let listing = sh("nft -a list chain inet knock prerouting");
            let handle = listing
                .lines()
                .find(|l| l.contains("iif \"lo\" accept"))
                .and_then(|l| l.rsplit("# handle ").next())
                .map(|h| h.trim().to_owned())
                .expect("loopback rule and its handle");
            sh(&format!(
                "nft replace rule inet knock prerouting handle {handle} iif \"lo\" drop"
            ));
        },
        delete: |_| {
            sh("nft delete table inet knock");
        },
        make_incompatible: |_| {
            sh("nft add chain inet knock stray");
        },
        check_replaced: |_| {
            assert!(
                !sh("nft list table inet knock").contains("stray"),
                "the stray chain survived install"
            );
        },
        leftovers: |_| sh("nft list ruleset"),
        identity: |_| {
            let listing = sh("nft -a list table inet knock");
            listing
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    l.contains("# handle") && (l.starts_with("table ") || l.starts_with("set "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    }
}

fn ipt_counts(rules: &Cmds) -> Vec<usize> {
    let mut counts = Vec::new();
    for cmd in [&rules.iptables_cmd, &rules.ip6tables_cmd] {
        for (table, chain, hooks) in [
            ("mangle", "KNOCK-PREROUTING", &["PREROUTING"][..]),
            ("filter", "KNOCK-REJECT", &["INPUT", "FORWARD"][..]),
            ("security", "KNOCK-GUARD", &["INPUT", "FORWARD"][..]),
        ] {
            let listing = sh(&format!("{cmd} -w -t {table} -S"));
            let rule = format!("-A {chain} ");
            counts.push(listing.lines().filter(|l| l.starts_with(&rule)).count());
            for hook in hooks {
                let jump = format!("-A {hook} -j {chain}");
                counts.push(listing.lines().filter(|l| l.trim() == jump).count());
            }
        }
    }
    counts
}

fn iptables_with(iptables: &str, ip6tables: &str) -> Backend {
    Backend {
        settings: Settings::Iptables(iptables::Settings {
            iptables: iptables.into(),
            ip6tables: ip6tables.into(),
            mark: 0x0020_0000,
        }),
        policy: policy(),
        cmds: Cmds {
            iptables_cmd: iptables.into(),
            ip6tables_cmd: ip6tables.into(),
        },
        counts: ipt_counts,
        // Per family. mangle: loopback, set match, a SYN mark for tcp/4992,
        // an established RETURN and a mark for udp/53, one jump; filter: a
        // reset for tcp and a port unreachable for udp, a jump from INPUT
        // and from FORWARD; security: the drop of marked packets, two jumps.
        expected: vec![5, 1, 2, 1, 1, 1, 1, 1, 5, 1, 2, 1, 1, 1, 1, 1],
        tamper: |rules| {
            sh(&format!(
                "{} -w -t mangle -R KNOCK-PREROUTING 1 -p udp -m udp --dport 62202 -j DROP",
                rules.ip6tables_cmd
            ));
        },
        delete: |rules| {
            sh(&format!(
                "{} -w -t mangle -D PREROUTING -j KNOCK-PREROUTING",
                rules.iptables_cmd
            ));
        },
        make_incompatible: |rules| {
            sh(&format!(
                "{} -w -t mangle -F KNOCK-PREROUTING",
                rules.iptables_cmd
            ));
            sh_retry("ipset destroy knock4");
            sh("ipset create knock4 hash:ip,port family inet timeout 0 counters");
            sh("ipset add knock4 192.0.2.10,tcp:4992 timeout 30");
        },
        check_replaced: |_| {
            assert!(
                !sh("ipset save knock4").contains("counters"),
                "the incompatible set survived install"
            );
        },
        leftovers: |rules| {
            let mut left = String::new();
            for cmd in [&rules.iptables_cmd, &rules.ip6tables_cmd] {
                left.extend(
                    sh(&format!(
                        "{cmd} -w -S; {cmd} -w -t mangle -S; {cmd} -w -t security -S"
                    ))
                    .lines()
                    .filter(|l| l.contains("KNOCK"))
                    .map(|l| format!("{l}\n")),
                );
            }
            left.extend(
                sh("ipset list -n")
                    .lines()
                    .filter(|l| l.starts_with("knock"))
                    .map(|l| format!("{l}\n")),
            );
            left
        },
        identity: |_| {
            sh("ipset list -t")
                .lines()
                .filter(|l| l.contains("initval"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn find(grants: &[LiveGrant], addr: IpAddr, port: PortSpec) -> Option<Duration> {
    grants
        .iter()
        .find(|g| g.addr == addr && g.port == port)
        .map(|g| g.expires_in)
}

fn left(fw: &mut dyn Firewall, addr: IpAddr, port: PortSpec) -> Option<Duration> {
    find(&fw.grants().expect("grants"), addr, port)
}

fn assert_missing(result: Result<(), FirewallError>, what: &str) {
    assert!(
        matches!(result, Err(FirewallError::Missing(_))),
        "{what}: expected Missing, got {result:?}"
    );
}

fn behaviour(backend: &Backend) {
    let (policy, rules) = (&backend.policy, &backend.cmds);
    let tcp = PortSpec::tcp(4992);
    let udp = PortSpec {
        transport: Transport::Udp,
        port: 53,
    };
    let mut fw = backend.settings.build();

    // plan changes nothing; verify fails before install
    let plan = fw.plan(policy);
    assert!(plan.contains("4992"), "plan:\n{plan}");
    // Refusing by drop, the knock port is dropped too.
    let dropping = fw.plan(&policy.clone().refusing(Refusal::Drop));
    assert!(
        dropping.contains("62201") && !plan.contains("62201"),
        "plan:\n{dropping}"
    );
    assert_eq!(
        (backend.leftovers)(rules).trim(),
        "",
        "plan must not touch the kernel"
    );
    assert_missing(fw.verify(policy), "verify before install");

    // installing twice, or from a restarted server, leaves one copy
    fw.install(policy).expect("first install");
    fw.install(policy).expect("second install");
    assert_eq!(
        (backend.counts)(rules),
        backend.expected,
        "rules after two installs"
    );
    backend
        .settings
        .build()
        .install(policy)
        .expect("install by a restarted server");
    assert_eq!(
        (backend.counts)(rules),
        backend.expected,
        "rules after a restart"
    );
    fw.verify(policy).expect("verify after install");

    // grants appear with sensible time left, for their address and ports only
    let a4 = ip("192.0.2.10");
    let a6 = ip("2001:db8::10");
    fw.grant(a4, &[tcp, udp], Duration::from_secs(30))
        .expect("grant v4");
    fw.grant(a6, &[tcp], Duration::from_secs(30))
        .expect("grant v6");
    let grants = fw.grants().expect("grants");
    assert_eq!(grants.len(), 3, "grants: {grants:?}");
    for (addr, port) in [(a4, tcp), (a4, udp), (a6, tcp)] {
        let left = find(&grants, addr, port).expect("granted element is listed");
        assert!(
            left > Duration::from_secs(25) && left <= Duration::from_secs(30),
            "{addr} {port}: {left:?}"
        );
    }
    assert_eq!(find(&grants, a6, udp), None);

    // granting again refreshes the timeout (to the new duration)
    let r = ip("198.51.100.7");
    fw.grant(r, &[tcp], Duration::from_secs(10)).expect("grant");
    sleep(Duration::from_millis(1500));
    let before = left(fw.as_mut(), r, tcp).expect("listed");
    assert!(
        before <= Duration::from_millis(8600),
        "no time passed? {before:?}"
    );
    fw.grant(r, &[tcp], Duration::from_secs(10))
        .expect("re-grant");
    let after = left(fw.as_mut(), r, tcp).expect("listed");
    assert!(
        after >= Duration::from_secs(9),
        "re-grant did not refresh: {before:?} -> {after:?}"
    );
    fw.grant(r, &[tcp], Duration::from_secs(3))
        .expect("shorter re-grant");
    let shorter = left(fw.as_mut(), r, tcp).expect("listed");
    assert!(
        shorter <= Duration::from_secs(3),
        "re-grant did not set the new timeout: {shorter:?}"
    );

    // a 2 s grant goes away on its own
    let e = ip("203.0.113.5");
    fw.grant(e, &[tcp], Duration::from_secs(2))
        .expect("short grant");
    let start = Instant::now();
    assert!(
        left(fw.as_mut(), e, tcp).is_some(),
        "short grant not listed"
    );
    while left(fw.as_mut(), e, tcp).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "2 s grant still listed after 6 s"
        );
        sleep(Duration::from_millis(100));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "2 s grant vanished after {:?}",
        start.elapsed()
    );

    // install keeps live grants, updating our objects in place
    let identity = (backend.identity)(rules);
    fw.install(policy).expect("install with live grants");
    assert_eq!(
        (backend.identity)(rules),
        identity,
        "install recreated what it should have kept"
    );
    let kept = left(fw.as_mut(), a4, tcp).expect("grant survives install");
    assert!(kept > Duration::from_secs(15), "{kept:?}");
    assert!(
        left(fw.as_mut(), a6, tcp).is_some(),
        "v6 grant survives install"
    );
    assert_eq!(
        (backend.counts)(rules),
        backend.expected,
        "rules after install with grants"
    );

    // a layout install cannot update in place is replaced, grants kept
    (backend.make_incompatible)(rules);
    fw.install(policy)
        .expect("install over an incompatible layout");
    (backend.check_replaced)(rules);
    let kept = left(fw.as_mut(), a4, tcp).expect("grant survives replacing the layout");
    assert!(kept > Duration::from_secs(10), "{kept:?}");
    assert_eq!(
        (backend.counts)(rules),
        backend.expected,
        "rules after replacing the layout"
    );
    fw.verify(policy)
        .expect("verify after replacing the layout");

    // a changed rule is noticed, and install repairs it
    (backend.tamper)(rules);
    assert_missing(fw.verify(policy), "verify after a rule was changed");
    fw.install(policy).expect("install repairs a changed rule");
    fw.verify(policy).expect("verify after repair");

    // deleted rules are noticed, and install restores them
    (backend.delete)(rules);
    assert_missing(fw.verify(policy), "verify after our rules were deleted");
    fw.install(policy).expect("install after deletion");
    fw.verify(policy).expect("verify after reinstall");
    assert_eq!(
        (backend.counts)(rules),
        backend.expected,
        "rules after reinstall"
    );

    // remove leaves nothing, and may be repeated
    fw.remove().expect("remove");
    assert_eq!((backend.leftovers)(rules).trim(), "", "left after remove");
    fw.remove().expect("second remove");
    assert_missing(fw.verify(policy), "verify after remove");

    // a grant with nothing installed fails promptly, and says why
    let start = Instant::now();
    assert_missing(
        fw.grant(a4, &[tcp], Duration::from_secs(5)),
        "grant after remove",
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "grant error took {:?}",
        start.elapsed()
    );
}

#[test]
fn nftables_backend() {
    in_fresh_netns("knockfw", "nftables_backend", || behaviour(&nftables()));
}

#[test]
fn iptables_backend() {
    in_fresh_netns("knockfw", "iptables_backend", || {
        behaviour(&iptables_with("iptables", "ip6tables"))
    });
}

#[test]
fn iptables_legacy_backend() {
    in_fresh_netns("knockfw", "iptables_legacy_backend", || {
        behaviour(&iptables_with("iptables-legacy", "ip6tables-legacy"))
    });
}
