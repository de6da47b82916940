//! The contract's last section, "Behaviour on the wire and in the firewall",
//! tested end to end on both firewall backends: real knock-server, real
//! knock-client, real nftables or iptables+ipset, in network namespaces;
//! each with a shared-key client and with a public-key client (issue 13):
//! `contract::{nftables,iptables}::{shared,public}::*`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use knock_tests::*;

/// One server with alice (tcp/4992 only) on a lab with client and attacker.
struct World {
    lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: std::path::PathBuf,
    alice6: std::path::PathBuf,
}

fn world(firewall: &str, mode: Mode, extra: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992", "tcp/2222"], extra);
    let alice = setup.enrol("alice", SERVER_V4, Some("tcp/4992"), mode);
    // The same client key can be reached over IPv6 through an alias profile.
    let alice6 = setup.dir.join("alice6.knock");
    let text = std::fs::read_to_string(&alice).unwrap().replace(
        &format!("host = \"{SERVER_V4}\""),
        &format!("host = \"{SERVER_V6}\""),
    );
    std::fs::write(&alice6, text).unwrap();
    std::fs::set_permissions(&alice6, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    start_echo(&lab, &hosts.server, 4992);
    start_echo(&lab, &hosts.server, 2222);
    World {
        lab,
        hosts,
        setup,
        alice,
        alice6,
    }
}

fn knock(w: &World, profile: &std::path::Path, host: &str, port: &str) -> (i32, String, String) {
    client(
        &w.hosts.client,
        profile,
        &["open", host, port, "--timeout", "3s"],
    )
}

fn rule_dump(w: &World, firewall: &str) -> String {
    match firewall {
        "nftables" => w.hosts.server.sh("nft list ruleset"),
        _ => w
            .hosts
            .server
            .sh("iptables -S; ip6tables -S; ipset list -n"),
    }
}

fn sender_only_and_permitted_ports_only(firewall: &str, mode: Mode) {
    let w = world(firewall, mode, "");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let (srv, att_srv) = (ip(SERVER_V4), ip(SERVER_FOR_ATTACKER_V4));
    assert!(
        !w.hosts.client.tcp_connects(srv, 4992),
        "open before any knock"
    );
    assert!(
        !w.hosts.attacker.tcp_connects(att_srv, 4992),
        "open to attacker before any knock"
    );

    let (code, out, err) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(code, 0, "knock failed: {out}{err}\n{}", server.log());
    assert_eq!(out.lines().count(), 1, "one line on success: {out}");
    assert!(
        w.hosts.client.tcp_connects(srv, 4992),
        "knocked port not open for the sender"
    );
    assert!(
        !w.hosts.attacker.tcp_connects(att_srv, 4992),
        "grant leaked to another address"
    );
    assert!(
        !w.hosts.client.tcp_connects(srv, 2222),
        "a port that was not requested opened"
    );
    server.wait_for_log("granted tcp/4992 to 198.18.0.2", Duration::from_secs(2));

    // tcp/2222 is protected but not permitted for alice. Her profile knows
    // that; a profile that does not (an old one, or edited) asks anyway.
    let unrestricted = w.setup.dir.join("alice-any.knock");
    let text = std::fs::read_to_string(&w.alice)
        .unwrap()
        .replace("ports = [\"tcp/4992\"]", "ports = []");
    std::fs::write(&unrestricted, text).unwrap();
    std::fs::set_permissions(
        &unrestricted,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (code, _, err) = knock(&w, &unrestricted, SERVER_V4, "2222");
    assert_eq!(code, 1, "a port not permitted must not open: {err}");
    assert!(!w.hosts.client.tcp_connects(srv, 2222));
    server.wait_for_log("port-not-permitted", Duration::from_secs(2));
}

fn expiry_keeps_established_connections(firewall: &str, mode: Mode) {
    let w = world(firewall, mode, "");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let srv = ip(SERVER_V4);
    let opened = Instant::now();
    let (code, out, err) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(code, 0, "{out}{err}\n{}", server.log());
    let mut session = Session::open(&w.hosts.client, srv, 4992);
    assert!(session.echoes("before expiry"), "session did not work");
    // open_for is 5 s: new connections must be refused after it, not before.
    assert!(w.hosts.client.tcp_connects(srv, 4992));
    assert!(
        eventually(Duration::from_secs(12), || !w
            .hosts
            .client
            .tcp_connects(srv, 4992)),
        "the grant never expired"
    );
    let lasted = opened.elapsed();
    assert!(
        lasted >= Duration::from_secs(4),
        "grant ended early, after {lasted:?}"
    );
    assert!(
        session.echoes("after expiry"),
        "an established connection was cut at expiry"
    );
    drop(server);
}

fn sigkill_expiry_and_restart_without_duplicates(firewall: &str, mode: Mode) {
    let w = world(firewall, mode, "");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let before = rule_dump(&w, firewall);
    let srv = ip(SERVER_V4);
    let (code, out, err) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(code, 0, "{out}{err}");
    server.kill();
    assert!(
        w.hosts.client.tcp_connects(srv, 4992),
        "grant vanished with the process"
    );
    assert!(
        eventually(Duration::from_secs(12), || !w
            .hosts
            .client
            .tcp_connects(srv, 4992)),
        "grant did not expire after SIGKILL"
    );
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "protection lost after SIGKILL"
    );

    let server = Server::start(&w.hosts.server, &w.setup.config);
    let after = rule_dump(&w, firewall);
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains("expires") && !l.contains("elements"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "restart changed or duplicated rules"
    );
    let (code, out, err) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(code, 0, "knock after restart: {out}{err}\n{}", server.log());
    assert_eq!(server.stop(), Some(0), "SIGTERM must exit 0");
    // Fail-closed: after SIGTERM nobody new gets in.
    assert!(!w
        .hosts
        .attacker
        .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992));
}

fn replays_open_nothing(firewall: &str, mode: Mode) {
    // A short window: after the state is lost, knocks are refused for one.
    let w = world(firewall, mode, "max_clock_skew = \"3s\"\n");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let dump = Tcpdump::start(
        &w.hosts.client,
        "udp port 62201",
        w.lab.dir.join("knock.pcap"),
    );
    let (code, out, err) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(code, 0, "{out}{err}");
    let _ = dump.stop(&w.hosts.client);
    let knocks = read_pcap_udp(&w.lab.dir.join("knock.pcap"));
    let sent: Vec<_> = knocks.iter().filter(|d| d.dest_port == 62201).collect();
    assert!(!sent.is_empty(), "captured no knock");
    let captured = sent[0].payload.clone();

    let att_srv = ip(SERVER_FOR_ATTACKER_V4);
    send_udp(&w.hosts.attacker, att_srv, 62201, &captured);
    server.wait_for_log("replay", Duration::from_secs(3));
    assert!(
        !w.hosts.attacker.tcp_connects(att_srv, 4992),
        "replay from another address opened"
    );

    // After a restart, and after a restart with the state directory lost.
    server.kill();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    send_udp(&w.hosts.attacker, att_srv, 62201, &captured);
    server.wait_for_log("knock refused", Duration::from_secs(3));
    assert!(
        !w.hosts.attacker.tcp_connects(att_srv, 4992),
        "replay after restart opened"
    );
    server.kill();
    std::fs::remove_dir_all(w.setup.dir.join("state")).unwrap();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    send_udp(&w.hosts.attacker, att_srv, 62201, &captured);
    server.wait_for_log("knock refused", Duration::from_secs(3));
    assert!(
        !w.hosts.attacker.tcp_connects(att_srv, 4992),
        "replay after state loss opened"
    );
    assert_eq!(server.count_log("granted"), 0, "{}", server.log());
    // Losing state never locks the real client out: after one window of
    // refusals (so that nothing honoured before can be again), it knocks in.
    server.wait_for_log("knocks are refused for the next 3s", Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(8), || !w
            .setup
            .status(&w.hosts.server)
            .contains("replay state")),
        "{}",
        w.setup.status(&w.hosts.server)
    );
    let (code, out, err) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(
        code,
        0,
        "client locked out after state loss: {out}{err}\n{}",
        server.log()
    );
}

/// A UDP port on the server where nothing listens: a datagram sent there is
/// answered with an ICMP port unreachable, which the silence check must see.
const CLOSED_UDP_PORT: u16 = 9;

/// The source and destination of a `tcpdump -n -r` line, as printed
/// (`198.18.0.2.41234`, `fd00:18::1.62201:` or `fd00:18::1:`).
fn endpoints(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "IP" || *w == "IP6")?;
    let source = words.next()?;
    (words.next()? == ">").then_some(())?;
    Some((source, words.next()?))
}

/// Is `printed` (an endpoint as tcpdump prints it) the address `host`, with
/// or without a port?
fn is_host(printed: &str, host: &str) -> bool {
    let printed = printed.trim_end_matches(':');
    printed == host
        || printed
            .strip_prefix(host)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// Does the line mention `udp port PORT` (and not a longer number)?
fn mentions_udp_port(line: &str, port: u16) -> bool {
    let needle = format!("udp port {port}");
    line.match_indices(&needle).any(|(at, _)| {
        !line[at + needle.len()..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit())
    })
}

/// IPv6 works end to end, and the knock port is answered exactly as a port
/// nothing listens on: an ICMP port unreachable (within the kernel's rate
/// limit), whatever the datagram holds, a valid knock or junk.
fn ipv6_end_to_end_and_answers_like_a_closed_port(firewall: &str, mode: Mode) {
    let w = world(firewall, mode, "");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let srv6 = ip(SERVER_V6);
    // What the server sends to the client over UDP or ICMP (errors only, not
    // neighbour discovery), and, as positive controls, the client's datagrams
    // to the knock port.
    let filter = format!(
        "(src host {SERVER_V4} and (udp or icmp)) or (src host {SERVER_V6} and (udp or (icmp6 and ip6[40] < 128))) \
         or ((src host {CLIENT_V4} or src host {CLIENT_V6}) and udp dst port 62201)"
    );
    let pcap = w.lab.dir.join("replies.pcap");
    let dump = Tcpdump::start(&w.hosts.client, &filter, pcap.clone());
    assert!(
        !w.hosts.client.tcp_connects(srv6, 4992),
        "open over IPv6 before any knock"
    );
    let (code, out, err) = knock(&w, &w.alice6, SERVER_V6, "4992");
    assert_eq!(code, 0, "IPv6 knock: {out}{err}\n{}", server.log());
    assert!(
        w.hosts.client.tcp_connects(srv6, 4992),
        "IPv6 grant does not work"
    );
    assert!(
        !w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "IPv6 knock opened IPv4"
    );
    // Junk and a knock to the v4 address too: answered, if at all, like the
    // closed port below.
    send_udp(&w.hosts.client, ip(SERVER_V4), 62201, &[0u8; 120]);
    send_udp(&w.hosts.client, srv6, 62201, &[1u8; 120]);
    let (code, _, _) = knock(&w, &w.alice, SERVER_V4, "4992");
    assert_eq!(code, 0);
    // Positive control: the same host does answer a datagram to a closed
    // UDP port, over both families, and the same capture must see that.
    send_udp(&w.hosts.client, ip(SERVER_V4), CLOSED_UDP_PORT, b"probe");
    send_udp(&w.hosts.client, srv6, CLOSED_UDP_PORT, b"probe");
    let lines = dump.stop(&w.hosts.client);
    let datagrams = read_pcap_udp(&pcap);

    // The capture saw the knocks and the junk leave, in both families...
    for (client, server_addr) in [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)] {
        let sent = datagrams
            .iter()
            .filter(|d| d.source == ip(client) && d.dest_port == 62201)
            .count();
        assert!(
            sent >= 2,
            "positive control: the capture saw {sent} of the client's datagrams to \
             {server_addr}:62201 (a knock and junk were sent): {lines:?}"
        );
    }
    // ...and the server host's answers to the probes of the closed port.
    let is_knock = |line: &str| {
        endpoints(line).is_some_and(|(from, to)| {
            [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)]
                .iter()
                .any(|(client, server)| is_host(from, client) && to == format!("{server}.62201:"))
        })
    };
    let is_unreachable = |line: &str, server: &str, port: u16| {
        endpoints(line).is_some_and(|(from, _)| is_host(from, server))
            && line.contains("unreachable")
            && mentions_udp_port(line, port)
    };
    let is_closed_port_answer = |line: &str| {
        [SERVER_V4, SERVER_V6].iter().any(|server| {
            [CLOSED_UDP_PORT, 62201]
                .iter()
                .any(|&port| is_unreachable(line, server, port))
        })
    };
    for server_addr in [SERVER_V4, SERVER_V6] {
        assert!(
            lines
                .iter()
                .any(|l| is_unreachable(l, server_addr, CLOSED_UDP_PORT)),
            "positive control: the capture missed {server_addr}'s ICMP port unreachable \
             for udp/{CLOSED_UDP_PORT}, so it could not have seen a reply: {lines:?}"
        );
    }
    // Anything else captured is an answer no closed port would give.
    let replies: Vec<&String> = lines
        .iter()
        .filter(|l| !is_knock(l) && !is_closed_port_answer(l))
        .collect();
    assert!(
        replies.is_empty(),
        "the server answered unlike a closed port: {replies:?}"
    );
}

on_both_backends_and_modes!(
    sender_only_and_permitted_ports_only,
    expiry_keeps_established_connections,
    sigkill_expiry_and_restart_without_duplicates,
    replays_open_nothing,
    ipv6_end_to_end_and_answers_like_a_closed_port,
);
