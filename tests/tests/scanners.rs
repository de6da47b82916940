//! The contract's line on scanners, proved with a real scanner: `nmap`, run
//! from the attacker namespace against the server, over IPv4 and IPv6, on
//! both firewall backends. Protected ports and the knock port must look
//! exactly like their neighbours, which nothing listens on:
//!
//! - on a bare host (no firewall but knock's) with `refuse` at its default:
//!   SYN and UDP scans find every port of a range `closed`, an ACK scan finds
//!   every port `unfiltered`, and FIN, NULL and Xmas scans, which tell a
//!   listening port from a closed one, find the protected port (which has a
//!   listener) `closed` like its neighbours;
//! - behind the admin's own default-drop ruleset with `refuse = "drop"`: SYN
//!   and ACK scans find every port of a range `filtered`, UDP scans every port
//!   `open|filtered`, the knock port included;
//! - in both, after the scans a real knock still opens the protected port
//!   for its sender, and while it is open the attacker still sees it like
//!   its neighbours.
//!
//! A scanner that saw nothing must not pass: `nmap_scan` fails unless nmap
//! gave every port asked for a state, and every scan either expects a state
//! only an answer produces (`closed`, `unfiltered`) or scans, beside the
//! range, a port it must see differently (the unprotected echo service
//! `open`, or `open|filtered` to a FIN scan; a UDP port the admin's ruleset
//! accepts `closed`; an accepted port `unfiltered` to an ACK scan).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use knock_tests::*;

/// The protected TCP port, with an echo service behind it.
const PORT: u16 = 4992;
/// The TCP ports scanned around it; nothing else listens on them.
const TCP_RANGE: [u16; 6] = [4990, 4991, 4992, 4993, 4994, 4995];
/// An unprotected TCP port with an echo service: the positive control
/// every TCP scan must see `open` (or `unfiltered` to an ACK scan, or
/// `open|filtered` to a FIN scan).
const UNPROTECTED_TCP: u16 = 8080;
/// The knock port (`Setup::new` writes `knock_port = 62201`) and the UDP
/// ports scanned around it.
const KNOCK_PORT: u16 = 62201;
const KNOCK_RANGE: [u16; 5] = [62199, 62200, 62201, 62202, 62203];
/// A protected UDP port, with a listener behind it, and the ports around it.
const PROTECTED_UDP: u16 = 5353;
const UDP_RANGE: [u16; 5] = [5351, 5352, 5353, 5354, 5355];
/// A UDP port nothing listens on that the admin's default-drop ruleset
/// accepts: the positive control that a UDP scan through that ruleset sees
/// the kernel's answer (`closed`).
const ACCEPTED_CLOSED_UDP: u16 = 5301;

const SERVER_FOR_ATTACKER_V6: &str = "fd00:18:1::1";

/// One knock server protecting tcp/4992 and udp/5353, with alice (allowed
/// tcp/4992) and her profiles for both of the server's addresses.
struct World {
    /// Holds the namespaces and services until the test ends.
    _lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
    alice6: PathBuf,
}

fn world(firewall: &str, extra: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(
        &lab,
        "server",
        firewall,
        &[&format!("tcp/{PORT}"), &format!("udp/{PROTECTED_UDP}")],
        extra,
    );
    let alice = setup.keygen("alice", SERVER_V4, Some(&format!("tcp/{PORT}")));
    let alice6 = setup.dir.join("alice6.knock");
    let text = std::fs::read_to_string(&alice).unwrap().replace(
        &format!("host = \"{SERVER_V4}\""),
        &format!("host = \"{SERVER_V6}\""),
    );
    std::fs::write(&alice6, text).unwrap();
    std::fs::set_permissions(&alice6, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Real services behind the protected ports, and an unprotected one.
    start_echo(&lab, &hosts.server, PORT);
    start_echo(&lab, &hosts.server, UNPROTECTED_TCP);
    start_udp_sink(&lab, &hosts.server, PROTECTED_UDP);

    // The kernel rate-limits the ICMP errors it sends to each destination
    // (net.ipv4.icmp_ratelimit: one per 1000 ms after a burst of about 6;
    // net.ipv6.icmp.ratelimit: 100 ms), so a UDP scan of more than a handful
    // of closed ports gets some of them unanswered and calls them
    // `open|filtered` at random (seen: 5352 of a 13-port scan, knock or no
    // knock). The limit applies alike to every closed port, knock's or not,
    // and the question here is only whether knock's ports look like their
    // neighbours, so it is lifted in the server namespace (these sysctls are
    // per namespace) to make every scan deterministic.
    hosts
        .server
        .sh("sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0");
    World {
        _lab: lab,
        hosts,
        setup,
        alice,
        alice6,
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

/// One address family: the server's address for the client and for the
/// attacker, and alice's profile for it.
struct Family<'a> {
    name: &'static str,
    server: IpAddr,
    server_for_attacker: IpAddr,
    profile: &'a PathBuf,
}

fn families(w: &World) -> [Family<'_>; 2] {
    [
        Family {
            name: "IPv4",
            server: ip(SERVER_V4),
            server_for_attacker: ip(SERVER_FOR_ATTACKER_V4),
            profile: &w.alice,
        },
        Family {
            name: "IPv6",
            server: ip(SERVER_V6),
            server_for_attacker: ip(SERVER_FOR_ATTACKER_V6),
            profile: &w.alice6,
        },
    ]
}

/// `ports` followed by `control`.
fn with(ports: &[u16], control: u16) -> Vec<u16> {
    ports.iter().copied().chain([control]).collect()
}

impl World {
    /// Everything in the server namespace's firewall and knock's log, for
    /// failure messages.
    fn context(&self, server: &Server) -> String {
        let rules = self
            .hosts
            .server
            .try_sh("nft list ruleset 2>&1; iptables-save 2>&1; ip6tables-save 2>&1")
            .1;
        format!("--- rules\n{rules}--- knock-server log\n{}", server.log())
    }

    /// nmap from the attacker against the server's address `f`.
    fn scan(&self, f: &Family<'_>, scan: &str, ports: &[u16], extra: &[&str]) -> NmapScan {
        let result = nmap_scan(
            &self.hosts.attacker,
            scan,
            f.server_for_attacker,
            ports,
            extra,
        );
        println!("{} {scan}:\n{}", f.name, result.output);
        result
    }

    /// The SYN scan of the protected port's range: every port of it in
    /// `expected`, the unprotected echo service `open`.
    fn syn_scan(&self, f: &Family<'_>, expected: &str, when: &str) {
        let scan = self.scan(f, "-sS", &with(&TCP_RANGE, UNPROTECTED_TCP), &[]);
        assert_eq!(
            scan.state(UNPROTECTED_TCP),
            "open",
            "positive control ({}, {when}): the SYN scan does not see the unprotected echo \
             service open\n$ {}\n{}",
            f.name,
            scan.command,
            scan.output
        );
        scan.assert_all(
            TCP_RANGE,
            expected,
            &format!(
                "{} SYN scan {when}: tcp/{PORT} must look like its neighbours",
                f.name
            ),
        );
    }

    /// A knock from the client opens tcp/4992 for it (it connects and gets
    /// the echo), and while the grant lasts the attacker's SYN scan still
    /// sees the port like its neighbours.
    fn knock_still_opens(&self, server: &Server, f: &Family<'_>, expected: &str) {
        let h = &self.hosts;
        let host = f.server.to_string();
        let (code, out, err) = client(
            &h.client,
            f.profile,
            &["open", &host, &PORT.to_string(), "--timeout", "3s"],
        );
        assert_eq!(
            code,
            0,
            "{}: after the scans, the knock did not open tcp/{PORT}: {out}{err}\n{}",
            f.name,
            self.context(server)
        );
        let mut session = Session::open(&h.client, f.server, PORT);
        assert!(
            session.echoes("knocked"),
            "{}: no echo from tcp/{PORT} after the knock\n{}",
            f.name,
            self.context(server)
        );
        self.syn_scan(f, expected, "while the client holds a grant");
        // The grant (open_for = 5s) outlived the scan: the scan ran while
        // the port was open to the client.
        assert!(
            h.client.tcp_connects(f.server, PORT),
            "{}: the grant was over before the attacker's scan ended: the scan proves nothing",
            f.name
        );
        assert!(session.echoes("still there"), "{}: session cut", f.name);
    }
}

// ---------------------------------------------------------------------------
// 1. A bare host, `refuse` at its default: knock's ports are closed ports.

fn bare_host_scans_see_only_closed_ports(firewall: &str) {
    let w = world(firewall, "");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    for f in families(&w) {
        w.syn_scan(&f, "closed", "before any knock");

        // An ACK scan maps the firewall: every port the packet reaches
        // answers with a reset.
        let ack = w.scan(&f, "-sA", &with(&TCP_RANGE, UNPROTECTED_TCP), &[]);
        ack.assert_all(
            with(&TCP_RANGE, UNPROTECTED_TCP),
            "unfiltered",
            &format!(
                "{} ACK scan: tcp/{PORT} must look like its neighbours",
                f.name
            ),
        );

        // UDP: nmap's own probes (empty datagrams to ports it has no payload
        // for), then knock-sized junk, which knock-server reads and refuses:
        // either way the knock port and the protected UDP port answer like
        // their neighbours, with an ICMP port unreachable.
        let udp_ports: Vec<u16> = KNOCK_RANGE.iter().chain(&UDP_RANGE).copied().collect();
        for extra in [&[][..], &["--data-length", "120"][..]] {
            let udp = w.scan(&f, "-sU", &udp_ports, extra);
            udp.assert_all(
                udp_ports.iter().copied(),
                "closed",
                &format!(
                    "{} UDP scan {extra:?}: udp/{KNOCK_PORT} (the knock port) and \
                     udp/{PROTECTED_UDP} (protected, with a listener) must look like \
                     their neighbours",
                    f.name
                ),
            );
        }

        w.knock_still_opens(&server, &f, "closed");
    }
    drop(server);
}

/// FIN, NULL and Xmas scans tell a listening port from a closed one: a
/// closed port answers them with a reset, a listening socket drops them
/// (the unprotected echo service shows `open|filtered`, the positive
/// control). The protected port has a listener, yet must look closed.
fn bare_host_stray_segments_see_no_listener(firewall: &str) {
    let w = world(firewall, "");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    for f in families(&w) {
        for scan_type in ["-sF", "-sN", "-sX"] {
            let scan = w.scan(&f, scan_type, &with(&TCP_RANGE, UNPROTECTED_TCP), &[]);
            assert_eq!(
                scan.state(UNPROTECTED_TCP),
                "open|filtered",
                "positive control ({} {scan_type}): the listening unprotected port should \
                 be open|filtered\n$ {}\n{}",
                f.name,
                scan.command,
                scan.output
            );
            scan.assert_all(
                TCP_RANGE,
                "closed",
                &format!(
                    "{} {scan_type} scan: tcp/{PORT} (protected, with a listener) must look \
                     like its neighbours, which nothing listens on",
                    f.name
                ),
            );
        }
        w.knock_still_opens(&server, &f, "closed");
    }
    drop(server);
}

// ---------------------------------------------------------------------------
// 2. Behind the admin's own default-drop ruleset, `refuse = "drop"`:
//    knock's ports are dropped ports.

/// The admin's ruleset in the server namespace: input policy drop, accepting
/// established flows, loopback, ICMP and ICMPv6, the protected ports (a grant
/// could not open them otherwise), the unprotected echo service and a UDP
/// port nothing listens on. The nftables backend gets an nft table, the
/// iptables backend iptables and ip6tables INPUT policies.
fn load_default_drop(ns: &Ns, firewall: &str) {
    if firewall == "nftables" {
        ns.sh(&format!(
            "nft -f - <<'EOF'\ntable inet knock_admin {{\n  chain input {{\n    \
             type filter hook input priority 0; policy drop;\n    \
             ct state established,related accept\n    iif lo accept\n    \
             meta l4proto {{ icmp, ipv6-icmp }} accept\n    \
             tcp dport {{ {PORT}, {UNPROTECTED_TCP} }} accept\n    \
             udp dport {{ {PROTECTED_UDP}, {ACCEPTED_CLOSED_UDP} }} accept\n  }}\n}}\nEOF"
        ));
    } else {
        for (cmd, icmp) in [("iptables", "icmp"), ("ip6tables", "ipv6-icmp")] {
            ns.sh(&format!(
                "{cmd} -A INPUT -i lo -j ACCEPT && \
                 {cmd} -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
                 {cmd} -A INPUT -p {icmp} -j ACCEPT && \
                 {cmd} -A INPUT -p tcp -m multiport --dports {PORT},{UNPROTECTED_TCP} -j ACCEPT && \
                 {cmd} -A INPUT -p udp -m multiport --dports {PROTECTED_UDP},{ACCEPTED_CLOSED_UDP} -j ACCEPT && \
                 {cmd} -P INPUT DROP"
            ));
        }
    }
}

fn default_drop_scans_see_only_filtered_ports(firewall: &str) {
    let w = world(firewall, "refuse = \"drop\"\n");
    load_default_drop(&w.hosts.server, firewall);
    let server = Server::start(&w.hosts.server, &w.setup.config);
    for f in families(&w) {
        w.syn_scan(&f, "filtered", "before any knock");

        // The UDP scans must see the kernel's answer from the port the
        // admin accepts (positive control), and nothing from the others.
        let udp_ports: Vec<u16> = KNOCK_RANGE.iter().chain(&UDP_RANGE).copied().collect();
        for extra in [&[][..], &["--data-length", "120"][..]] {
            let udp = w.scan(&f, "-sU", &with(&udp_ports, ACCEPTED_CLOSED_UDP), extra);
            assert_eq!(
                udp.state(ACCEPTED_CLOSED_UDP),
                "closed",
                "positive control ({} {extra:?}): the UDP scan does not see the port the \
                 admin accepts answered\n$ {}\n{}",
                f.name,
                udp.command,
                udp.output
            );
            udp.assert_all(
                udp_ports.iter().copied(),
                "open|filtered",
                &format!(
                    "{} UDP scan {extra:?}: udp/{KNOCK_PORT} (the knock port) and \
                     udp/{PROTECTED_UDP} (protected) must look like their neighbours",
                    f.name
                ),
            );
        }

        w.knock_still_opens(&server, &f, "filtered");
    }
    drop(server);
}

/// The ACK scan behind the default-drop ruleset: the admin accepts tcp/4992
/// (else no grant could open it), so an ACK that reaches it is answered
/// with a reset, while its neighbours' are dropped. Combined with a SYN scan
/// that finds it `filtered`, that would single it out; it must be
/// `filtered` like its neighbours. The unprotected echo service, accepted by
/// the admin, is `unfiltered` (positive control).
fn default_drop_ack_scan_sees_only_filtered_ports(firewall: &str) {
    let w = world(firewall, "refuse = \"drop\"\n");
    load_default_drop(&w.hosts.server, firewall);
    let server = Server::start(&w.hosts.server, &w.setup.config);
    for f in families(&w) {
        let scan = w.scan(&f, "-sA", &with(&TCP_RANGE, UNPROTECTED_TCP), &[]);
        assert_eq!(
            scan.state(UNPROTECTED_TCP),
            "unfiltered",
            "positive control ({}): the ACK scan does not see the accepted port answer\n$ {}\n{}",
            f.name,
            scan.command,
            scan.output
        );
        scan.assert_all(
            TCP_RANGE,
            "filtered",
            &format!(
                "{} ACK scan: tcp/{PORT} must look like its neighbours",
                f.name
            ),
        );
        w.knock_still_opens(&server, &f, "filtered");
    }
    drop(server);
}

on_both_backends!(
    bare_host_scans_see_only_closed_ports,
    bare_host_stray_segments_see_no_listener,
    default_drop_scans_see_only_filtered_ports,
    default_drop_ack_scan_sees_only_filtered_ports,
);
