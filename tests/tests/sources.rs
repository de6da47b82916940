//! Plausible sources, this host only: the capture socket sees frames before
//! the IP stack judges them, and the server must not honour what the stack
//! itself would never receive.
//!
//! - Frames for other hosts on the segment (a bridge floods them, a
//!   promiscuous NIC passes them up), or to an IP address that is not the
//!   server's, are not read: no grant, no refusal counted.
//! - Knocks whose source no remote host has (the server's own addresses,
//!   loopback, link-local), arriving on an outside interface, are refused as
//!   `implausible-source` without being consumed: the genuine copy opens
//!   afterwards. The host knocking itself over loopback still opens.
//! - With `interface = "any"`, a frame the kernel shows on two devices (a
//!   bridge port then the bridge, a macvlan's lower device then the
//!   macvlan) is read once. (This kernel has neither bonding nor 802.1Q;
//!   the bridge's second copy comes the same way, through the port's
//!   receive handler, as a bond's or a VLAN's.)
//!
//! Every negative check has its positive control in the same run: the
//! server's own counters and grants, which see the real knock, and a packet
//! capture on the server's devices, which proves the frames that must not
//! be read (or read twice) did reach it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use knock_tests::*;

const KNOCK_PORT: u16 = 62201;
const NEIGHBOUR_V4: &str = "198.18.0.3";
const NEIGHBOUR_V6: &str = "fd00:18::3";
const SERVER_FOR_ATTACKER_V6: &str = "fd00:18:1::1";

static LINKS: AtomicU32 = AtomicU32::new(0);

/// Two veth end names, unique in this process, at most 15 bytes.
fn veth_names() -> (String, String) {
    let n = LINKS.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 10_000;
    (format!("ks{pid}n{n}a"), format!("ks{pid}n{n}b"))
}

fn mac(ns: &Ns, dev: &str) -> String {
    ns.sh(&format!("cat /sys/class/net/{dev}/address"))
        .trim()
        .to_owned()
}

/// The server's configuration, alice's profile and an echo service on the
/// protected tcp/4992.
fn setup(lab: &Lab, server: &Ns) -> (Setup, PathBuf) {
    let setup = Setup::new(lab, "server", "nftables", &["tcp/4992"], "");
    let alice = setup.keygen("alice", SERVER_V4, Some("tcp/4992"));
    start_echo(lab, server, 4992);
    (setup, alice)
}

/// Sends a fresh knock from `ns` to `to`, without waiting for anything.
fn knock_at(ns: &Ns, alice: &Path, to: &str) {
    let (code, out, err) = client(ns, alice, &["open", to, "4992", "--no-wait"]);
    assert_eq!(code, 0, "knock-client open {to} --no-wait: {out}{err}");
}

/// Knocks from `ns` at `to` and proves the port opened (exit 0).
fn knock_and_connect(ns: &Ns, alice: &Path, to: &str, server: &Server) {
    let (code, out, err) = client(ns, alice, &["open", to, "4992", "--timeout", "5s"]);
    assert_eq!(
        code,
        0,
        "a knock at {to} did not open: {out}{err}\n{}",
        server.log()
    );
}

/// Starts tcpdump on `dev` in `ns`, capturing the knock port.
fn capture(lab: &Lab, ns: &Ns, dev: &str) -> Tcpdump {
    let file = lab.dir.join(format!("{}-{dev}.pcap", ns.name));
    Tcpdump::start_on(ns, dev, &format!("udp port {KNOCK_PORT}"), file)
}

/// How many captured frames (`tcpdump -e` lines) carry a datagram to
/// `dest`'s knock port, in an Ethernet frame to `mac` if given.
fn frames_to(lines: &[String], mac: Option<&str>, dest: &str) -> usize {
    let datagram = format!("> {dest}.{KNOCK_PORT}:");
    let frame = mac.map(|mac| format!("> {mac}, ethertype"));
    lines
        .iter()
        .filter(|l| l.contains(&datagram))
        .filter(|l| frame.as_ref().is_none_or(|f| l.contains(f.as_str())))
        .count()
}

/// A bridge in a switch namespace floods every frame to every port (it
/// learns no address), like a hub or a switch whose table is full: the
/// server's NIC, promiscuous, passes up frames for the neighbour. Knocks the
/// client sends to the neighbour's address, to the server's address but the
/// neighbour's MAC, or to the neighbour's address but the server's MAC (as a
/// host routing through the server would) reach the server's NIC and open
/// nothing; none is even counted. The same client's knocks to the server,
/// one at an address added after the server started, open.
#[test]
fn frames_for_other_hosts_are_not_read() {
    let mut lab = Lab::new();
    let switch = lab.netns("sw");
    let server = lab.netns("srv");
    let client_ns = lab.netns("cli");
    let neighbour = lab.netns("nb");
    switch.sh("ip link add br0 type bridge && ip link set br0 up");
    let mut host_dev = BTreeMap::new();
    for (ns, addrs) in [
        (&server, [SERVER_V4, SERVER_V6]),
        (&client_ns, [CLIENT_V4, CLIENT_V6]),
        (&neighbour, [NEIGHBOUR_V4, NEIGHBOUR_V6]),
    ] {
        let (port, dev) = veth_names();
        lab.link_named(&switch, &port, &[], ns, &dev, &addrs);
        // No learning before the port forwards: the host's first frames
        // (IPv6 router solicitations, DAD) would teach the bridge its MAC.
        switch.sh(&format!(
            "ip link set {port} down && ip link set {port} master br0 && \
             bridge link set dev {port} learning off && ip link set {port} up"
        ));
        host_dev.insert(ns.name.clone(), dev);
    }
    let server_dev = host_dev[&server.name].clone();
    let client_dev = host_dev[&client_ns.name].clone();
    server.sh(&format!("ip link set {server_dev} promisc on"));
    let server_mac = mac(&server, &server_dev);
    let neighbour_mac = mac(&neighbour, &host_dev[&neighbour.name]);

    let (setup, alice) = setup(&lab, &server);
    let knocker = Server::start(&server, &setup.config);
    let dump = capture(&lab, &server, &server_dev);

    // For the neighbour, by address and by MAC.
    knock_at(&client_ns, &alice, NEIGHBOUR_V4);
    knock_at(&client_ns, &alice, NEIGHBOUR_V6);
    // For the server's address, in a frame for the neighbour's MAC: the
    // server's IP stack drops it (PACKET_OTHERHOST).
    client_ns.sh(&format!(
        "ip neigh replace {SERVER_V4} lladdr {neighbour_mac} dev {client_dev} nud permanent && \
         ip -6 neigh replace {SERVER_V6} lladdr {neighbour_mac} dev {client_dev} nud permanent"
    ));
    knock_at(&client_ns, &alice, SERVER_V4);
    knock_at(&client_ns, &alice, SERVER_V6);
    // For the neighbour's address, in a frame for the server's MAC: a
    // router's case; this server does not forward, and must not honour it.
    client_ns.sh(&format!(
        "ip neigh replace {NEIGHBOUR_V4} lladdr {server_mac} dev {client_dev} nud permanent && \
         ip -6 neigh replace {NEIGHBOUR_V6} lladdr {server_mac} dev {client_dev} nud permanent"
    ));
    knock_at(&client_ns, &alice, NEIGHBOUR_V4);
    knock_at(&client_ns, &alice, NEIGHBOUR_V6);

    // Back to the truth; the knocks to the server open. Each is read after
    // every frame above: one socket, in order of arrival.
    client_ns.sh(&format!(
        "ip neigh replace {SERVER_V4} lladdr {server_mac} dev {client_dev} nud permanent && \
         ip -6 neigh replace {SERVER_V6} lladdr {server_mac} dev {client_dev} nud permanent"
    ));
    knock_and_connect(&client_ns, &alice, SERVER_V4, &knocker);
    knock_and_connect(&client_ns, &alice, SERVER_V6, &knocker);
    // An address the server did not have at start is this host's at once.
    server.sh(&format!("ip addr add 198.18.0.4/24 dev {server_dev}"));
    client_ns.sh(&format!(
        "ip neigh replace 198.18.0.4 lladdr {server_mac} dev {client_dev} nud permanent"
    ));
    knock_and_connect(&client_ns, &alice, "198.18.0.4", &knocker);

    let lines = dump.stop_link_layer(&server);
    let (code, log) = knocker.stop_with_log();
    assert_eq!(code, Some(0), "{log}");
    for (mac, dest) in [
        (&neighbour_mac, NEIGHBOUR_V4),
        (&neighbour_mac, NEIGHBOUR_V6),
        (&neighbour_mac, SERVER_V4),
        (&neighbour_mac, SERVER_V6),
        (&server_mac, NEIGHBOUR_V4),
        (&server_mac, NEIGHBOUR_V6),
    ] {
        assert_eq!(
            frames_to(&lines, Some(mac), dest),
            1,
            "the server's NIC should have seen one knock to {dest} in a frame to {mac}:\n{}\n{}",
            lines.join("\n"),
            switch.sh("bridge fdb show")
        );
    }
    let granted: Vec<&str> = log.lines().filter(|l| l.contains("granted")).collect();
    assert_eq!(
        granted.len(),
        3,
        "only the three knocks to the server may open:\n{log}"
    );
    assert!(
        granted
            .iter()
            .all(|l| l.contains(CLIENT_V4) || l.contains(CLIENT_V6)),
        "{log}"
    );
    assert!(
        refused_by_reason(&log).is_empty(),
        "frames for other hosts must not even be counted: {:?}\n{log}",
        refused_by_reason(&log)
    );
}

/// A valid knock (made by the real client, intercepted before the server saw
/// it) is sent by the attacker from sources no remote host has: the server's
/// own addresses (one added after it started), loopback and link-local, over
/// IPv4 and IPv6, arriving on the server's outside interface. Each is
/// refused as `implausible-source` and opens nothing; the genuine copy from
/// the client then opens, so none of them consumed it. The server knocking
/// itself (127.0.0.1, ::1, and its own outside address, all over loopback)
/// still opens. (The server's count of exactly one refusal per spoofed copy
/// is the proof that each reached it.)
#[test]
fn sources_no_remote_host_has_are_refused_unconsumed() {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let (setup, alice) = setup(&lab, &hosts.server);
    let knocker = Server::start(&hosts.server, &setup.config);
    let outside = interface_with(&hosts.server, SERVER_FOR_ATTACKER_V4);
    hosts
        .server
        .sh(&format!("ip addr add 198.18.1.9/24 dev {outside}"));

    // The attacker knows the server's MAC already: a spoofed source would
    // not get its address resolved.
    let attacker_dev = interface_with(&hosts.attacker, ATTACKER_V4);
    let outside_mac = mac(&hosts.server, &outside);
    hosts.attacker.sh(&format!(
        "ip neigh replace {SERVER_FOR_ATTACKER_V4} lladdr {outside_mac} dev {attacker_dev} nud permanent && \
         ip -6 neigh replace {SERVER_FOR_ATTACKER_V6} lladdr {outside_mac} dev {attacker_dev} nud permanent"
    ));

    let knock = intercept_knock(&hosts.client, &alice, KNOCK_PORT, &["4992"], &[]);
    let spoofed: Vec<RawPacket> = [
        ("198.18.0.1", SERVER_FOR_ATTACKER_V4),
        ("198.18.1.1", SERVER_FOR_ATTACKER_V4),
        ("198.18.1.9", SERVER_FOR_ATTACKER_V4),
        ("127.0.0.1", SERVER_FOR_ATTACKER_V4),
        ("127.3.2.1", SERVER_FOR_ATTACKER_V4),
        ("169.254.7.7", SERVER_FOR_ATTACKER_V4),
        ("fd00:18::1", SERVER_FOR_ATTACKER_V6),
        ("::1", SERVER_FOR_ATTACKER_V6),
        ("fe80::7", SERVER_FOR_ATTACKER_V6),
        ("::ffff:127.0.0.1", SERVER_FOR_ATTACKER_V6),
        ("::ffff:198.18.1.1", SERVER_FOR_ATTACKER_V6),
    ]
    .iter()
    .map(|(src, dst)| RawPacket::new(ip(src), ip(dst), KNOCK_PORT, &knock))
    .collect();
    send_raw(&hosts.attacker, &spoofed);
    let expected = spoofed.len() as u64;
    let counted = eventually(Duration::from_secs(5), || {
        setup
            .status(&hosts.server)
            .contains(&format!("implausible-source={expected}"))
    });
    assert!(
        counted,
        "the server should count {expected} implausible sources:\n{}\n{}",
        setup.status(&hosts.server),
        knocker.log()
    );
    assert_eq!(knocker.count_log("granted"), 0, "{}", knocker.log());
    assert!(
        !hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "the attacker got in:\n{}",
        knocker.log()
    );

    // The genuine copy, from the client: not consumed, it opens.
    send_udp(&hosts.client, ip(SERVER_V4), KNOCK_PORT, &knock);
    knocker.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(5),
    );
    assert!(
        hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "granted, but the client cannot connect:\n{}",
        knocker.log()
    );

    // The host knocks itself, over loopback.
    for to in ["127.0.0.1", "::1", SERVER_V4] {
        knock_at(&hosts.server, &alice, to);
        knocker.wait_for_log(
            &format!("granted tcp/4992 to {to} "),
            Duration::from_secs(5),
        );
    }

    let (code, log) = knocker.stop_with_log();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        refused_by_reason(&log),
        BTreeMap::from([("implausible-source".to_owned(), expected)]),
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("granted")).count(),
        4,
        "{log}"
    );
}

/// With `interface = "any"`, a frame that the kernel shows on two devices is
/// read once: one junk datagram is one refusal, one knock one grant and no
/// replay. `topology` puts the server's address on a bridge over its veth
/// end (the port has the bridge's MAC: the kernel hands the frame to packet
/// taps on the port, then on the bridge, both as addressed to this host), or
/// on a macvlan over it (on the lower device the frame is for another MAC).
fn one_copy_per_frame(topology: &str) {
    let mut lab = Lab::new();
    let server = lab.netns("srv");
    let client_ns = lab.netns("cli");
    let (lower, client_dev) = veth_names();
    lab.link_named(
        &server,
        &lower,
        &[],
        &client_ns,
        &client_dev,
        &[CLIENT_V4, CLIENT_V6],
    );
    let upper = match topology {
        "bridge" => {
            server.sh(&format!(
                "ip link add kbr0 type bridge && ip link set {lower} master kbr0 && \
                 ip link set kbr0 address $(cat /sys/class/net/{lower}/address) && ip link set kbr0 up"
            ));
            "kbr0"
        }
        "macvlan" => {
            server.sh(&format!(
                "ip link add link {lower} name kmv0 type macvlan mode bridge && ip link set kmv0 up"
            ));
            "kmv0"
        }
        other => panic!("unknown topology {other}"),
    };
    server.sh(&format!(
        "ip addr add {SERVER_V4}/24 dev {upper} && ip addr add {SERVER_V6}/64 nodad dev {upper}"
    ));
    // The client sends to the device holding the address (the lower device
    // would answer ARP for it too, being on the same host).
    let upper_mac = mac(&server, upper);
    client_ns.sh(&format!(
        "ip neigh replace {SERVER_V4} lladdr {upper_mac} dev {client_dev} nud permanent && \
         ip -6 neigh replace {SERVER_V6} lladdr {upper_mac} dev {client_dev} nud permanent"
    ));
    let (setup, alice) = setup(&lab, &server);
    let knocker = Server::start(&server, &setup.config);
    let dumps = [
        capture(&lab, &server, &lower),
        capture(&lab, &server, upper),
    ];

    // One junk datagram per family, of a knock's length, so that the filter
    // passes it; then one knock per family (sent once: no re-knock).
    let length = intercept_knock(&client_ns, &alice, KNOCK_PORT, &["4992"], &[]).len();
    send_udp_len(&client_ns, ip(SERVER_V4), KNOCK_PORT, length);
    send_udp_len(&client_ns, ip(SERVER_V6), KNOCK_PORT, length);
    for (to, from) in [(SERVER_V4, CLIENT_V4), (SERVER_V6, CLIENT_V6)] {
        knock_at(&client_ns, &alice, to);
        knocker.wait_for_log(
            &format!("granted tcp/4992 to {from} "),
            Duration::from_secs(5),
        );
        assert!(
            client_ns.tcp_connects(ip(to), 4992),
            "{topology}: granted, but the client cannot connect to {to}:\n{}",
            knocker.log()
        );
    }

    // The kernel showed each datagram on both devices: the port or lower
    // device, then the one holding the address.
    for (dump, dev) in dumps.into_iter().zip([lower.as_str(), upper]) {
        let lines = dump.stop_link_layer(&server);
        for dest in [SERVER_V4, SERVER_V6] {
            assert_eq!(
                frames_to(&lines, None, dest),
                2,
                "{topology}: {dev} should have shown both datagrams to {dest}:\n{}",
                lines.join("\n")
            );
        }
    }
    let (code, log) = knocker.stop_with_log();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        refused_total(&log),
        2,
        "{topology}: two junk datagrams, two refusals: {:?}\n{log}",
        refused_by_reason(&log)
    );
    assert!(!refused_by_reason(&log).contains_key("replay"), "{log}");
    assert_eq!(
        log.lines().filter(|l| l.contains("granted")).count(),
        2,
        "{topology}: {log}"
    );
}

#[test]
fn one_copy_per_frame_from_a_bridge_port() {
    one_copy_per_frame("bridge");
}

#[test]
fn one_copy_per_frame_from_a_macvlan_lower_device() {
    one_copy_per_frame("macvlan");
}
