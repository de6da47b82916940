//! The contract's "On a real host" section, end to end on both firewall
//! backends, in network namespaces:
//!
//! - sessions that exist before `knock-server run` survive its install,
//!   reload, restart and stop, in a namespace where conntrack was never in
//!   use;
//! - with only TCP ports protected, knock's rules make the kernel track no
//!   flow;
//! - a port the host forwards with DNAT (to a "container" namespace behind
//!   the server) is closed and opened exactly like a local one;
//! - another table's accepts, or a default-drop policy, do not weaken
//!   protection, and `check` warns about an iptables rule that would;
//! - the iptables backend installs nothing when one family's command is
//!   missing.
//!
//! Every "did not happen" is paired with a positive control in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use knock_tests::*;

/// The protected port.
const PORT: u16 = 4992;
/// A TCP port with an echo service on the server that nobody protects.
const UNPROTECTED_TCP: u16 = 8080;
/// A UDP port on the server with a listener that nobody protects.
const UNPROTECTED_UDP: u16 = 5300;
/// A UDP port on the server where nothing listens.
const CLOSED_UDP: u16 = 9;
const SERVER_FOR_ATTACKER_V6: &str = "fd00:18:1::1";

fn srv() -> IpAddr {
    ip(SERVER_V4)
}

fn srv6() -> IpAddr {
    ip(SERVER_V6)
}

fn att_srv() -> IpAddr {
    ip(SERVER_FOR_ATTACKER_V4)
}

fn att_srv6() -> IpAddr {
    ip(SERVER_FOR_ATTACKER_V6)
}

/// A lab with one server configuration protecting tcp/4992 and alice, who
/// may open it, with a profile for each of the server's addresses.
struct World {
    lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
    alice6: PathBuf,
}

fn world(firewall: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992"], "");
    let alice = setup.keygen("alice", SERVER_V4, Some("tcp/4992"));
    let alice6 = setup.dir.join("alice6.knock");
    let text = std::fs::read_to_string(&alice).unwrap().replace(
        &format!("host = \"{SERVER_V4}\""),
        &format!("host = \"{SERVER_V6}\""),
    );
    std::fs::write(&alice6, text).unwrap();
    std::fs::set_permissions(&alice6, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    World {
        lab,
        hosts,
        setup,
        alice,
        alice6,
    }
}

impl World {
    /// Echo services on the protected and an unprotected TCP port, and a
    /// UDP sink on an unprotected UDP port, all in the server namespace.
    fn local_services(&self) {
        start_echo(&self.lab, &self.hosts.server, PORT);
        start_echo(&self.lab, &self.hosts.server, UNPROTECTED_TCP);
        start_udp_sink(&self.lab, &self.hosts.server, UNPROTECTED_UDP);
    }

    /// `knock-client open HOST 4992` from the client with `profile`.
    fn knock(&self, profile: &Path, host: &str) -> (i32, String) {
        let (code, out, err) = client(
            &self.hosts.client,
            profile,
            &["open", host, "4992", "--timeout", "3s"],
        );
        (code, format!("{out}{err}"))
    }

    /// Everything in the server namespace's firewall, for failure messages.
    fn rules(&self) -> String {
        rules(&self.hosts.server)
    }

    /// TCP and UDP to the server's unprotected ports, from the client (both
    /// families) and the attacker: traffic knock has no business tracking.
    fn unrelated_traffic(&self) {
        let h = &self.hosts;
        for (ns, addr) in [
            (&h.client, srv()),
            (&h.client, srv6()),
            (&h.attacker, att_srv()),
            (&h.attacker, att_srv6()),
        ] {
            assert!(
                ns.tcp_connects(addr, UNPROTECTED_TCP),
                "unrelated TCP from {} to {addr}:{UNPROTECTED_TCP} did not connect\n{}",
                ns.name,
                self.rules()
            );
            send_udp(ns, addr, UNPROTECTED_UDP, b"unrelated");
            send_udp(ns, addr, CLOSED_UDP, b"unrelated");
        }
    }
}

/// A UDP listener on `port` (v4 and v6) in `ns` that swallows datagrams.
fn start_udp_sink(lab: &Lab, ns: &Ns, port: u16) {
    let mut cmd = ns.cmd("socat");
    cmd.args(["-u", &format!("UDP6-RECV:{port},ipv6only=0"), "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(cmd);
    assert!(
        eventually(Duration::from_secs(5), || ns
            .try_sh(&format!("ss -Hlun 'sport = :{port}'"))
            .1
            .contains(&format!(":{port}"))),
        "UDP sink on {port} never listened"
    );
}

/// Everything in a namespace's firewall, for failure messages.
fn rules(ns: &Ns) -> String {
    ns.try_sh("nft list ruleset 2>&1; iptables-save 2>&1; ip6tables-save 2>&1; ipset list -n 2>&1")
        .1
}

/// `knock-server check --config CONFIG` in `ns`: (exit code, stdout, stderr).
fn check(ns: &Ns, config: &Path) -> (i32, String, String) {
    let config = config.to_str().expect("utf-8 path");
    run_server_to_exit(ns, &["check", "--config", config], Duration::from_secs(30))
}

/// The scratch table of [`conntrack_sees`].
const SCRATCH: &str = "knock_test_scratch";

/// Positive control for a conntrack count of 0: with a `ct state` rule of
/// our own in a scratch table (which makes the namespace track every flow),
/// `traffic` must show up in the same probe. Returns the count it saw.
fn conntrack_sees(ns: &Ns, traffic: impl FnOnce()) -> usize {
    ns.sh(&format!(
        "nft add table inet {SCRATCH} && \
         nft add chain inet {SCRATCH} pre '{{ type filter hook prerouting priority 0; policy accept; }}' && \
         nft add rule inet {SCRATCH} pre ct state new counter"
    ));
    traffic();
    let mut count = 0;
    let seen = eventually(Duration::from_secs(5), || {
        count = ns.conntrack_count();
        count > 0
    });
    ns.sh(&format!("nft delete table inet {SCRATCH}"));
    assert!(
        seen,
        "positive control: with a ct rule of our own, conntrack -C in {} still counted 0, \
         so the probe cannot see tracked flows",
        ns.name
    );
    count
}

// ---------------------------------------------------------------------------
// 1. Sessions that predate knock-server survive install, reload, restart and
//    stop, where conntrack was not in use before.

fn sessions_that_predate_us_survive(firewall: &str) {
    let w = world(firewall);
    w.local_services();
    let h = &w.hosts;

    // A fresh namespace: no ruleset at all, so nothing uses conntrack.
    let before = h.server.sh("nft list ruleset");
    assert!(
        before.trim().is_empty(),
        "precondition: the server namespace has a ruleset already:\n{before}"
    );
    // Positive control for every "refused" below: before knock-server the
    // port is open to both.
    assert!(h.client.tcp_connects(srv(), PORT), "precondition: echo");
    assert!(h.attacker.tcp_connects(att_srv(), PORT), "precondition");

    // The old session, opened before knock-server runs, then left idle.
    let mut old = Session::open(&h.client, srv(), PORT);
    assert!(
        old.echoes("before knock-server"),
        "old session never worked"
    );
    let tracked = h.server.conntrack_count();
    assert_eq!(
        tracked,
        0,
        "precondition: conntrack was already tracking flows:\n{}",
        h.server.conntrack_list()
    );

    // Install.
    let server = Server::start(&h.server, &w.setup.config);
    assert!(
        !h.client.tcp_connects(srv(), PORT),
        "rules installed, yet a NEW connection from the client (no knock) opened\n{}",
        w.rules()
    );
    assert!(
        !h.attacker.tcp_connects(att_srv(), PORT),
        "rules installed, yet the attacker connected"
    );
    assert!(
        old.echoes("after install"),
        "a session that predates knock-server was cut when it installed its rules\n{}\n{}",
        w.rules(),
        server.log()
    );

    // A session opened under a grant must survive the rest too.
    let (code, out) = w.knock(&w.alice, SERVER_V4);
    assert_eq!(code, 0, "knock: {out}\n{}", server.log());
    let mut granted = Session::open(&h.client, srv(), PORT);
    assert!(
        granted.echoes("granted"),
        "the granted session never worked"
    );

    // Reload.
    server.signal("HUP");
    server.wait_for_log("reloaded", Duration::from_secs(10));
    assert!(
        !h.attacker.tcp_connects(att_srv(), PORT),
        "after reload: the attacker connected"
    );
    assert!(old.echoes("after reload"), "old session cut by a reload");
    assert!(
        granted.echoes("after reload"),
        "granted session cut by a reload"
    );

    // Restart: SIGTERM (rules stay), then start again.
    assert_eq!(server.stop(), Some(0), "SIGTERM must exit 0");
    assert!(
        !h.attacker.tcp_connects(att_srv(), PORT),
        "between stop and start: the attacker connected"
    );
    let server = Server::start(&h.server, &w.setup.config);
    assert!(
        !h.attacker.tcp_connects(att_srv(), PORT),
        "after restart: the attacker connected"
    );
    assert!(
        old.echoes("after restart"),
        "old session cut by a restart\n{}",
        server.log()
    );
    assert!(
        granted.echoes("after restart"),
        "granted session cut by a restart"
    );

    // Stop: the rules stay (on_exit = "stay-closed", the default).
    assert_eq!(server.stop(), Some(0), "SIGTERM must exit 0");
    assert!(
        !h.attacker.tcp_connects(att_srv(), PORT),
        "stopped: the port opened to the attacker\n{}",
        w.rules()
    );
    w.setup.wait_no_grants(&h.server);
    assert!(
        !h.client.tcp_connects(srv(), PORT),
        "stopped, grant over: a NEW connection from the client opened"
    );
    assert!(old.echoes("after stop"), "old session cut by a stop");
    assert!(
        granted.echoes("after stop"),
        "granted session cut by a stop"
    );

    // Throughout, nothing made the namespace track a flow; the probe can see
    // flows once a ct rule exists (positive control).
    let tracked = h.server.conntrack_count();
    assert_eq!(
        tracked,
        0,
        "knock's rules made the kernel track flows:\n{}\n{}",
        h.server.conntrack_list(),
        w.rules()
    );
    let seen = conntrack_sees(&h.server, || {
        assert!(old.echoes("control"));
        w.unrelated_traffic();
    });
    println!("{firewall}: sessions survived; conntrack entries: 0 throughout, {seen} with a ct rule of our own");
}

// ---------------------------------------------------------------------------
// 2. With only TCP ports protected, knock's rules make the kernel track no
//    flow.

fn only_tcp_protected_tracks_no_flow(firewall: &str) {
    let w = world(firewall);
    w.local_services();
    let h = &w.hosts;
    let server = Server::start(&h.server, &w.setup.config);
    let (_, plan, _) = check(&h.server, &w.setup.config);
    assert!(
        !plan.contains("ct state") && !plan.contains("conntrack"),
        "with only TCP protected the rules use conntrack:\n{plan}"
    );

    // A knock (v4 and v6), granted connections, a refused attacker, and
    // unrelated TCP and UDP.
    assert!(
        !h.attacker.tcp_connects(att_srv(), PORT),
        "open before knock"
    );
    let (code, out) = w.knock(&w.alice, SERVER_V4);
    assert_eq!(code, 0, "knock: {out}\n{}", server.log());
    let (code, out) = w.knock(&w.alice6, SERVER_V6);
    assert_eq!(code, 0, "knock over IPv6: {out}\n{}", server.log());
    let mut session = Session::open(&h.client, srv(), PORT);
    assert!(session.echoes("granted"), "granted session");
    let mut session6 = Session::open(&h.client, srv6(), PORT);
    assert!(session6.echoes("granted"), "granted IPv6 session");
    assert!(!h.attacker.tcp_connects(att_srv(), PORT), "grant leaked");
    w.unrelated_traffic();
    assert!(session.echoes("again"));

    let tcp_only = h.server.conntrack_count();
    println!(
        "{firewall}: conntrack entries after a knock, granted connections and unrelated TCP/UDP \
         traffic, only TCP ports protected: {tcp_only}"
    );
    assert_eq!(
        tcp_only,
        0,
        "with only TCP ports protected, the kernel tracks flows:\n{}\n{}",
        h.server.conntrack_list(),
        w.rules()
    );

    // Positive control, same run, same probe: protect a UDP port too (which
    // needs conntrack), and the same unrelated traffic is tracked.
    assert_eq!(server.stop(), Some(0));
    set_config_key(&w.setup.config, "protected", "[\"tcp/4992\", \"udp/5353\"]");
    let (_, plan, _) = check(&h.server, &w.setup.config);
    assert!(
        plan.contains("ct state") || plan.contains("conntrack"),
        "a protected UDP port should use conntrack:\n{plan}"
    );
    let server = Server::start(&h.server, &w.setup.config);
    w.unrelated_traffic();
    assert!(session.echoes("with udp protected"));
    let mut with_udp = 0;
    let seen = eventually(Duration::from_secs(5), || {
        with_udp = h.server.conntrack_count();
        with_udp > 0
    });
    println!(
        "{firewall}: conntrack entries for the same traffic with udp/5353 protected too \
         (positive control): {with_udp}"
    );
    assert!(
        seen,
        "positive control: with a UDP port protected, conntrack -C still counts 0\n{}",
        w.rules()
    );
    drop(server);
}

// ---------------------------------------------------------------------------
// 3. A port the host forwards with DNAT is protected like a local one.

/// The container's addresses, behind the server.
const CONTAINER_V4: &str = "198.18.2.2";
const CONTAINER_V6: &str = "fd00:18:2::2";
/// Forwarded to the container's port 80: protected, and not protected.
const FORWARDED: u16 = 4992;
const FORWARDED_OPEN: u16 = 4993;

/// The admin's own DNAT, written with the tool of the server's backend.
fn admin_dnat(ns: &Ns, firewall: &str) {
    match firewall {
        "nftables" => {
            ns.sh(&format!(
                "nft -f - <<'EOF'\n\
                 table ip nat {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                 tcp dport {FORWARDED} dnat to {CONTAINER_V4}:80\n    tcp dport {FORWARDED_OPEN} dnat to {CONTAINER_V4}:80\n  }}\n}}\n\
                 table ip6 nat {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                 tcp dport {FORWARDED} dnat to [{CONTAINER_V6}]:80\n    tcp dport {FORWARDED_OPEN} dnat to [{CONTAINER_V6}]:80\n  }}\n}}\n\
                 EOF"
            ));
        }
        _ => {
            for port in [FORWARDED, FORWARDED_OPEN] {
                ns.sh(&format!(
                    "iptables -t nat -A PREROUTING -p tcp --dport {port} -j DNAT --to-destination {CONTAINER_V4}:80 && \
                     ip6tables -t nat -A PREROUTING -p tcp --dport {port} -j DNAT --to-destination [{CONTAINER_V6}]:80"
                ));
            }
        }
    }
}

fn forwarded_port_is_protected(firewall: &str) {
    let mut w = world(firewall);
    let container = w.lab.netns("ctr");
    let h = w.hosts.clone();
    w.lab.link(
        &h.server,
        &["198.18.2.1", "fd00:18:2::1"],
        &container,
        &[CONTAINER_V4, CONTAINER_V6],
    );
    container.sh("ip route add default via 198.18.2.1 && ip -6 route add default via fd00:18:2::1");
    h.server
        .sh("sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv6.conf.all.forwarding=1");
    // The new link's link-local addresses finish duplicate address
    // detection before IPv6 can route across it.
    for ns in [&h.server, &container] {
        assert!(
            eventually(Duration::from_secs(10), || ns
                .sh("ip -6 addr show tentative")
                .trim()
                .is_empty()),
            "IPv6 addresses in {} stayed tentative",
            ns.name
        );
    }
    start_echo(&w.lab, &container, 80);
    admin_dnat(&h.server, firewall);
    let (_, listening) = h.server.try_sh(&format!("ss -Hltn 'sport = :{FORWARDED}'"));
    assert!(
        listening.trim().is_empty(),
        "something listens on {FORWARDED} in the server namespace: {listening}"
    );

    // Positive control, server not running: the forwarded ports reach the
    // container's echo, for the client and the attacker, in both families.
    let mut forwarded_before = Session::open(&h.client, srv(), FORWARDED);
    assert!(
        forwarded_before.echoes("through the DNAT"),
        "positive control: the client does not reach the container through {SERVER_V4}:{FORWARDED}\n{}",
        w.rules()
    );
    for (ns, addr, port) in [
        (&h.client, srv6(), FORWARDED),
        (&h.attacker, att_srv(), FORWARDED),
        (&h.attacker, att_srv6(), FORWARDED),
        (&h.attacker, att_srv(), FORWARDED_OPEN),
        (&h.attacker, att_srv6(), FORWARDED_OPEN),
    ] {
        assert!(
            eventually(Duration::from_secs(5), || ns.tcp_connects(addr, port)),
            "positive control: {} does not reach the container through {addr}:{port}",
            ns.name
        );
    }

    let server = Server::start(&h.server, &w.setup.config);
    for (ns, addr) in [
        (&h.client, srv()),
        (&h.client, srv6()),
        (&h.attacker, att_srv()),
        (&h.attacker, att_srv6()),
    ] {
        assert!(
            !ns.tcp_connects(addr, FORWARDED),
            "before any knock, {} connected to the forwarded port {addr}:{FORWARDED}\n{}",
            ns.name,
            w.rules()
        );
    }
    // The attacker's positive control: its path to the container works,
    // through the forwarded port nobody protects.
    for addr in [att_srv(), att_srv6()] {
        let mut s = Session::open(&h.attacker, addr, FORWARDED_OPEN);
        assert!(
            s.echoes("unprotected forward"),
            "positive control: the attacker no longer reaches the container via {addr}:{FORWARDED_OPEN}"
        );
    }
    assert!(
        forwarded_before.echoes("after install"),
        "a forwarded session that predates knock-server was cut"
    );

    // A knock opens the forwarded port for the client alone, per family.
    let (code, out) = w.knock(&w.alice, SERVER_V4);
    assert_eq!(
        code,
        0,
        "knock for the forwarded port: {out}\n{}\n{}",
        server.log(),
        w.rules()
    );
    let mut session = Session::open(&h.client, srv(), FORWARDED);
    assert!(
        session.echoes("granted, forwarded"),
        "after a knock the client does not reach the container"
    );
    let (code, out) = w.knock(&w.alice6, SERVER_V6);
    assert_eq!(code, 0, "IPv6 knock for the forwarded port: {out}");
    let mut session6 = Session::open(&h.client, srv6(), FORWARDED);
    assert!(
        session6.echoes("granted, forwarded, v6"),
        "after an IPv6 knock the client does not reach the container"
    );
    for addr in [att_srv(), att_srv6()] {
        assert!(
            !h.attacker.tcp_connects(addr, FORWARDED),
            "the client's grant opened the forwarded port to the attacker ({addr})"
        );
        assert!(
            h.attacker.tcp_connects(addr, FORWARDED_OPEN),
            "positive control: the attacker lost its path to the container ({addr})"
        );
    }
    drop(server);
}

// ---------------------------------------------------------------------------
// 4. Another table's rules do not weaken protection.

/// An admin ruleset loaded beside knock's.
struct AdminRules {
    name: &'static str,
    load: String,
    unload: String,
    /// Prints the admin's packet counters for its accept of 4992.
    counters: String,
    /// Does it drop everything not accepted (an unprotected port included)?
    default_drop: bool,
}

fn admin_rulesets() -> Vec<AdminRules> {
    let nft_counters = "nft list table inet knock_admin".to_owned();
    let nft_unload = "nft delete table inet knock_admin".to_owned();
    let accepting = |pre: i32, input: i32| {
        format!(
            "nft -f - <<'EOF'\ntable inet knock_admin {{\n  \
             chain pre {{ type filter hook prerouting priority {pre}; policy accept; tcp dport {PORT} counter accept; }}\n  \
             chain input {{ type filter hook input priority {input}; policy accept; tcp dport {PORT} counter accept; }}\n}}\nEOF"
        )
    };
    vec![
        AdminRules {
            name: "nft table, policy accept, accepts 4992 before ours (priority -300)",
            load: accepting(-300, -300),
            unload: nft_unload.clone(),
            counters: nft_counters.clone(),
            default_drop: false,
        },
        AdminRules {
            name: "nft table, policy accept, accepts 4992 after ours (priority 0 / 100)",
            load: accepting(0, 100),
            unload: nft_unload.clone(),
            counters: nft_counters.clone(),
            default_drop: false,
        },
        AdminRules {
            name: "nft table, input policy drop, accepts 4992",
            load: format!(
                "nft -f - <<'EOF'\ntable inet knock_admin {{\n  chain input {{\n    \
                 type filter hook input priority 0; policy drop;\n    \
                 ct state established,related accept\n    iif lo accept\n    \
                 meta l4proto ipv6-icmp accept\n    tcp dport {PORT} counter accept\n  }}\n}}\nEOF"
            ),
            unload: nft_unload,
            counters: nft_counters,
            default_drop: true,
        },
        AdminRules {
            name: "iptables -I INPUT 1 -p tcp --dport 4992 -j ACCEPT",
            load: format!(
                "iptables -I INPUT 1 -p tcp --dport {PORT} -j ACCEPT && \
                 ip6tables -I INPUT 1 -p tcp --dport {PORT} -j ACCEPT"
            ),
            unload: format!(
                "iptables -D INPUT -p tcp --dport {PORT} -j ACCEPT && \
                 ip6tables -D INPUT -p tcp --dport {PORT} -j ACCEPT"
            ),
            counters: "iptables -v -x -n -L INPUT".to_owned(),
            default_drop: false,
        },
        AdminRules {
            name: "iptables INPUT policy DROP, accepts 4992",
            load: format!(
                "iptables -A INPUT -i lo -j ACCEPT && \
                 iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
                 iptables -A INPUT -p tcp --dport {PORT} -j ACCEPT && \
                 iptables -P INPUT DROP"
            ),
            unload: "iptables -P INPUT ACCEPT && iptables -F INPUT".to_owned(),
            counters: "iptables -v -x -n -L INPUT".to_owned(),
            default_drop: true,
        },
    ]
}

/// The packets the admin's accept of 4992 has counted, from `nft list` or
/// `iptables -v -x -n -L` output.
fn accept_counter(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains(&format!("dport {PORT}")) || l.contains(&format!("dpt:{PORT}")))
        .map(|l| {
            if let Some((_, rest)) = l.split_once("counter packets ") {
                rest.split_whitespace().next()
            } else {
                l.split_whitespace().next()
            }
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no packet counter in {l:?}"))
        })
        .sum()
}

fn other_tables_do_not_weaken_protection(firewall: &str) {
    let w = world(firewall);
    w.local_services();
    let h = &w.hosts;
    let server = Server::start(&h.server, &w.setup.config);
    assert!(
        h.client.tcp_connects(srv(), UNPROTECTED_TCP),
        "positive control: the unprotected port does not answer"
    );

    for admin in admin_rulesets() {
        h.server.sh(&admin.load);
        if admin.default_drop {
            assert!(
                !h.client.tcp_connects(srv(), UNPROTECTED_TCP),
                "positive control: [{}] is not live: an unaccepted port still opens\n{}",
                admin.name,
                w.rules()
            );
        }
        assert!(
            !h.attacker.tcp_connects(att_srv(), PORT),
            "[{}]: the attacker connected without a knock\n{}",
            admin.name,
            w.rules()
        );
        assert!(
            !h.client.tcp_connects(srv(), PORT),
            "[{}]: the client connected before its knock\n{}",
            admin.name,
            w.rules()
        );
        let (code, out) = w.knock(&w.alice, SERVER_V4);
        assert_eq!(
            code,
            0,
            "[{}]: the knock did not open the port: {out}\n{}\n{}",
            admin.name,
            server.log(),
            w.rules()
        );
        let mut session = Session::open(&h.client, srv(), PORT);
        assert!(session.echoes("granted"), "[{}]: no echo", admin.name);
        assert!(
            !h.attacker.tcp_connects(att_srv(), PORT),
            "[{}]: the grant opened the port to the attacker",
            admin.name
        );
        // Positive control: the admin's accept rule saw the port's traffic.
        let counters = h.server.sh(&admin.counters);
        assert!(
            accept_counter(&counters) > 0,
            "positive control: [{}] never matched a packet to {PORT}:\n{counters}",
            admin.name
        );
        drop(session);
        h.server.sh(&admin.unload);
        w.setup.wait_no_grants(&h.server);
    }

    if firewall == "iptables" {
        audit_warns_about_accept_above_our_jump(&w);
    }
    drop(server);
}

/// `knock-server check` warns when a rule above our jump in mangle
/// PREROUTING accepts a protected port; it did not before that rule existed.
fn audit_warns_about_accept_above_our_jump(w: &World) {
    let h = &w.hosts;
    let warns = |err: &str| -> Vec<String> {
        err.lines()
            .filter(|l| l.contains("warning") && l.contains(&PORT.to_string()))
            .map(str::to_owned)
            .collect()
    };
    let (code, _, err) = check(&h.server, &w.setup.config);
    assert_eq!(code, 0, "check: {err}");
    assert!(
        warns(&err).is_empty(),
        "check warned with nothing above our jump: {err}"
    );
    h.server.sh(&format!(
        "iptables -t mangle -I PREROUTING 1 -p tcp --dport {PORT} -j ACCEPT"
    ));
    let (code, _, err) = check(&h.server, &w.setup.config);
    assert_eq!(code, 0, "check: {err}");
    let warnings = warns(&err);
    assert!(
        !warnings.is_empty(),
        "check did not warn about an ACCEPT of {PORT} above the jump to KNOCK-PREROUTING:\n{err}\n{}",
        w.rules()
    );
    println!("iptables: check warns: {}", warnings.join(" | "));
    h.server.sh(&format!(
        "iptables -t mangle -D PREROUTING -p tcp --dport {PORT} -j ACCEPT"
    ));
}

// ---------------------------------------------------------------------------
// 5. iptables: a missing ip6tables_cmd leaves everything untouched.

/// What knock could have left in `ns`: our chains in mangle and filter of
/// both families, ipsets, an nft table named knock.
fn knock_traces(ns: &Ns) -> Vec<String> {
    let listing = ns
        .try_sh(
            "for t in mangle filter; do iptables -t $t -S; ip6tables -t $t -S; done 2>&1; \
             echo '# ipsets'; ipset list -n 2>&1; echo '# nft'; nft list tables 2>&1",
        )
        .1;
    listing
        .lines()
        .filter(|l| l.contains("KNOCK") || l.starts_with("knock") || l.contains("inet knock"))
        .map(str::to_owned)
        .collect()
}

fn iptables_missing_ip6tables_installs_nothing() {
    let mut lab = Lab::new();
    let ns = lab.netns("srv");
    let setup = Setup::new(
        &lab,
        "server",
        "iptables",
        &["tcp/4992"],
        "ip6tables_cmd = \"ip6tables-nosuch\"\n",
    );
    // A client (and the server identity), so that nothing else is missing.
    setup.keygen("alice", "198.18.0.1", Some("tcp/4992"));
    let config = setup.config.to_str().unwrap();
    for command in ["check", "run"] {
        let (code, out, err) =
            run_server_to_exit(&ns, &[command, "--config", config], Duration::from_secs(20));
        assert_eq!(
            code, 2,
            "{command} with ip6tables_cmd missing: exit {code}\n{out}{err}"
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{command}: one line on stderr, got:\n{err}"
        );
        assert!(
            err.contains("ip6tables_cmd"),
            "{command}: the error does not name ip6tables_cmd: {err}"
        );
        let traces = knock_traces(&ns);
        assert!(
            traces.is_empty(),
            "{command} failed, yet installed: {traces:?}\n{}",
            rules(&ns)
        );
    }

    // Positive control: with the right command, run installs the chain in
    // both families and both sets, and the same probe sees them.
    set_config_key(&setup.config, "ip6tables_cmd", "\"ip6tables\"");
    let server = Server::start(&ns, &setup.config);
    let traces = knock_traces(&ns);
    for expected in [
        "-A PREROUTING -j KNOCK-PREROUTING",
        "-N KNOCK-PREROUTING",
        "knock4",
        "knock6",
    ] {
        assert!(
            traces.iter().any(|l| l.contains(expected)),
            "positive control: after run, {expected:?} is not found: {traces:?}\n{}",
            rules(&ns)
        );
    }
    let jumps = traces
        .iter()
        .filter(|l| l.contains("-A PREROUTING -j KNOCK-PREROUTING"))
        .count();
    assert_eq!(jumps, 2, "one jump per family: {traces:?}");
    drop(server);
}

on_both_backends!(
    sessions_that_predate_us_survive,
    only_tcp_protected_tracks_no_flow,
    forwarded_port_is_protected,
    other_tables_do_not_weaken_protection,
);

#[test]
fn iptables_missing_ip6tables_cmd_installs_nothing() {
    iptables_missing_ip6tables_installs_nothing();
}
