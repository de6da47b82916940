//! Attacks on the wire, against the real knock-server and the real firewall
//! in network namespaces: crafted packets from a raw socket in the attacker's
//! namespace (`knock-wire`), replays from anywhere (also spoofed as the
//! client, after restarts and after the state is lost), source-bound knocks
//! raced from the wrong address, knocks for another server, every single-byte
//! mutation, truncations, extensions, fragments, bad checksums, extreme
//! sizes, skewed clocks and revoked clients.
//!
//! After every attack: nothing is open for anyone (the kernel holds no grant,
//! and the attacker cannot connect), the server is still running, and it still
//! honours a legitimate knock.
//!
//! The knocks attacked are mostly *fresh* ones: made by the real
//! `knock-client`, but intercepted on their way (delivered to a socket on the
//! client's loopback, see [`intercept_knock`]). The server has never seen
//! them, so only its checks, not its replay memory, stand between the attacker
//! and a grant; each is delivered by the client at the end to prove it was
//! good all along.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use knock_proto::{MAX_KNOCK_LEN, MIN_KNOCK_LEN};
use knock_tests::*;

const KNOCK_PORT: u16 = 62201;
const ATTACKER_V6: &str = "fd00:18:1::66";
const SERVER_FOR_ATTACKER_V6: &str = "fd00:18:1::1";

/// A lab with one server protecting tcp/4992 (echo service behind it), the
/// client alice (in the client namespace) and the attacker.
struct World {
    lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
}

fn world(firewall: &str, open_for: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992"], "");
    set_config_key(&setup.config, "open_for", &format!("{open_for:?}"));
    let alice = setup.keygen("alice", SERVER_V4, Some("tcp/4992"));
    start_echo(&lab, &hosts.server, 4992);
    World {
        lab,
        hosts,
        setup,
        alice,
    }
}

impl World {
    /// `knock-server status` in the server's namespace: the grants the kernel
    /// holds.
    fn grants(&self) -> String {
        self.setup.status(&self.hosts.server)
    }

    /// Nothing is open for anyone: the kernel holds no grant, and neither the
    /// attacker (v4 and v6) nor the client can connect. The TCP probes run in
    /// parallel (each refused probe costs its 1 s timeout).
    fn assert_nothing_open(&self, server: &Server, after: &str) {
        let grants = self.grants();
        assert!(
            grants.contains("no live grants"),
            "after {after}: the kernel holds grants:\n{grants}\n{}",
            server.log()
        );
        let probes = [
            (self.hosts.attacker.clone(), ip(SERVER_FOR_ATTACKER_V4)),
            (self.hosts.attacker.clone(), ip(SERVER_FOR_ATTACKER_V6)),
            (self.hosts.client.clone(), ip(SERVER_V4)),
        ];
        let handles: Vec<_> = probes
            .into_iter()
            .map(|(ns, addr)| {
                std::thread::spawn(move || (ns.name.clone(), addr, ns.tcp_connects(addr, 4992)))
            })
            .collect();
        for handle in handles {
            let (ns, addr, connected) = handle.join().unwrap();
            assert!(
                !connected,
                "after {after}: {ns} could connect to {addr}:4992"
            );
        }
        assert!(
            server.alive(),
            "after {after}: the server died:\n{}",
            server.log()
        );
    }

    /// The client's own, fresh knock still opens, for the client alone.
    fn assert_legit_knock_works(&self, server: &Server, after: &str) {
        let (code, out, err) = client(
            &self.hosts.client,
            &self.alice,
            &["open", SERVER_V4, "4992", "--timeout", "4s"],
        );
        assert_eq!(
            code,
            0,
            "after {after}: a legitimate knock failed: {out}{err}\n{}",
            server.log()
        );
    }

    /// Waits for every grant to run out in the kernel.
    fn wait_expiry(&self) {
        self.setup.wait_no_grants(&self.hosts.server);
    }

    fn intercept(&self, extra: &[&str]) -> Vec<u8> {
        let knock = intercept_knock(
            &self.hosts.client,
            &self.alice,
            KNOCK_PORT,
            &["4992"],
            extra,
        );
        assert!(
            (MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(&knock.len()),
            "an intercepted knock of {} bytes",
            knock.len()
        );
        knock
    }
}

fn from_attacker(payload: &[u8]) -> RawPacket {
    RawPacket::new(
        ip(ATTACKER_V4),
        ip(SERVER_FOR_ATTACKER_V4),
        KNOCK_PORT,
        payload,
    )
}

/// From the attacker's namespace, with the client's source address.
fn spoofed_as_client(payload: &[u8]) -> RawPacket {
    RawPacket::new(
        ip(CLIENT_V4),
        ip(SERVER_FOR_ATTACKER_V4),
        KNOCK_PORT,
        payload,
    )
}

fn from_attacker_v6(payload: &[u8]) -> RawPacket {
    RawPacket::new(
        ip(ATTACKER_V6),
        ip(SERVER_FOR_ATTACKER_V6),
        KNOCK_PORT,
        payload,
    )
}

/// Every single-byte mutation, truncations, extensions, fragments, bad and
/// missing checksums, zero-length and maximum-size datagrams of a fresh knock,
/// from the attacker's address and spoofed as the client. None opens anything
/// and none consumes the knock; each reaches the verifier and is refused for
/// the right reason, or is dropped by the kernel filter, as counted.
#[test]
fn mutations_truncations_extensions_fragments_and_sizes_open_nothing() {
    let w = world("nftables", "3s");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let knock = w.intercept(&[]);
    let len = knock.len();

    let mut packets = Vec::new();
    // Every byte position, once, with a position-dependent nonzero XOR; every
    // other one spoofed as the client; a quarter with a wrong UDP checksum and
    // a quarter without one.
    for i in 0..len {
        let mut m = knock.clone();
        m[i] ^= ((i * 151 + 7) % 255 + 1) as u8;
        let p = if i % 2 == 0 {
            from_attacker(&m)
        } else {
            spoofed_as_client(&m)
        };
        packets.push(match i % 4 {
            1 => p.mode("badsum"),
            3 => p.mode("zerosum"),
            _ => p,
        });
    }
    // Every truncation, zero bytes included.
    for n in 0..len {
        packets.push(from_attacker(&knock[..n]));
    }
    // Extensions: up to and past the longest knock, and the knock twice.
    let extensions: Vec<usize> = vec![
        1,
        2,
        7,
        16,
        MAX_KNOCK_LEN - len,
        MAX_KNOCK_LEN + 1 - len,
        300 - len,
        len,
    ];
    for &extra in &extensions {
        let mut e = knock.clone();
        e.extend((0..extra).map(|j| (j * 29 + 3) as u8));
        packets.push(from_attacker(&e));
    }
    // The knock itself, but split into IPv4 and IPv6 fragments, also spoofed:
    // the kernel filter drops fragments (a knock never needs them).
    for size in [8, 16, 48, 64] {
        packets.push(from_attacker(&knock).mode(&format!("frag:{size}")));
        packets.push(from_attacker_v6(&knock).mode(&format!("frag:{size}")));
    }
    packets.push(spoofed_as_client(&knock).mode("frag:24"));
    send_raw(&w.hosts.attacker, &packets);
    // Zero-length and maximum-size datagrams from ordinary sockets, over both
    // families (the maximum ones leave as fragments).
    for (addr, max) in [
        (SERVER_FOR_ATTACKER_V4, 65_507),
        (SERVER_FOR_ATTACKER_V6, 65_527),
    ] {
        send_udp_len(&w.hosts.attacker, ip(addr), KNOCK_PORT, 0);
        send_udp_len(&w.hosts.attacker, ip(addr), KNOCK_PORT, max);
        send_udp_len(&w.hosts.attacker, ip(addr), KNOCK_PORT, MAX_KNOCK_LEN + 1);
        send_udp_len(&w.hosts.attacker, ip(addr), KNOCK_PORT, MIN_KNOCK_LEN - 1);
    }

    std::thread::sleep(Duration::from_millis(300));
    w.assert_nothing_open(&server, "mutations, truncations, extensions, fragments");
    assert_eq!(server.count_log("granted"), 0, "{}", server.log());

    // None of that consumed the knock: the client delivers it and it opens,
    // for the client.
    send_udp(&w.hosts.client, ip(SERVER_V4), KNOCK_PORT, &knock);
    server.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(3),
    );
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "the delivered knock did not open"
    );
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "the grant leaked"
    );

    // Every datagram the kernel filter let through was refused for the right
    // reason: a changed hint names nobody; any other change fails the tag.
    // Everything out of MIN_KNOCK_LEN..=MAX_KNOCK_LEN bytes or fragmented
    // never reached us.
    let in_range = |n: usize| (MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(&n);
    let expected_bad_mac = (len - 8)
        + (0..len).filter(|&n| in_range(n)).count()
        + extensions.iter().filter(|&&e| in_range(len + e)).count()
        // the junk one byte too long and one too short from ordinary
        // sockets is out of range
        ;
    let expected = BTreeMap::from([
        ("bad-mac".to_owned(), expected_bad_mac as u64),
        ("unknown-client".to_owned(), 8),
    ]);
    let counted = eventually(Duration::from_secs(13), || {
        refused_by_reason(&server.log()) == expected
    });
    assert!(
        counted,
        "refusals by reason {:?}, expected {expected:?}:\n{}",
        refused_by_reason(&server.log()),
        server.log()
    );

    w.wait_expiry();
    w.assert_nothing_open(&server, "the grant expired");
    w.assert_legit_knock_works(&server, "the mutation flood");
}

/// The replay set: a knock is honoured once, whoever sends it again and from
/// wherever, before or after a restart, with or without the state directory;
/// a source-bound knock raced from the wrong address is refused without being
/// consumed, works from its own address, and is then a replay too.
fn replay_set(firewall: &str) {
    let w = world(firewall, "3s");
    // A shorter window than the default 30 s: after each loss of the state
    // below, knocks are refused for one window. It still outlasts the
    // replays up to the state losses (they must be refused as replays, not
    // as too old).
    set_config_key(&w.setup.config, "max_clock_skew", "\"15s\"");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let knock = w.intercept(&[]);
    send_udp(&w.hosts.client, ip(SERVER_V4), KNOCK_PORT, &knock);
    server.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(3),
    );
    assert!(w.hosts.client.tcp_connects(ip(SERVER_V4), 4992));

    // From another address, while the grant is live.
    let replays = server.count_log("replay: not newer");
    send_raw(
        &w.hosts.attacker,
        &[from_attacker(&knock), from_attacker_v6(&knock)],
    );
    server.wait_for_count("replay: not newer", replays + 2, Duration::from_secs(3));
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "a replay opened for the attacker"
    );

    // Spoofed as the client, once the client's grant has run out: it must not
    // open again (nor with a bad or no checksum, nor fragmented).
    w.wait_expiry();
    send_raw(
        &w.hosts.attacker,
        &[
            spoofed_as_client(&knock),
            spoofed_as_client(&knock).mode("badsum"),
            spoofed_as_client(&knock).mode("zerosum"),
            spoofed_as_client(&knock).mode("frag:16"),
        ],
    );
    server.wait_for_count("replay: not newer", replays + 5, Duration::from_secs(3));
    w.assert_nothing_open(&server, "a replay spoofed as the client");

    // After a restart: the replay state is durable.
    server.kill();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    send_raw(
        &w.hosts.attacker,
        &[spoofed_as_client(&knock), from_attacker(&knock)],
    );
    server.wait_for_count("knock refused", 2, Duration::from_secs(3));
    w.assert_nothing_open(&server, "a replay after a restart");

    // After the state directory is lost and the server restarts: refused
    // without any state, for one window after the start.
    server.kill();
    std::fs::remove_dir_all(w.setup.dir.join("state")).unwrap();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    send_raw(
        &w.hosts.attacker,
        &[spoofed_as_client(&knock), from_attacker(&knock)],
    );
    server.wait_for_count(
        "stamped before the replay state was lost",
        2,
        Duration::from_secs(3),
    );
    w.assert_nothing_open(&server, "a replay after the state was lost");
    assert_eq!(server.count_log("granted"), 0, "{}", server.log());

    // After the state file is corrupted and the server restarts: set aside,
    // and refused again.
    server.kill();
    std::fs::write(
        w.setup.dir.join("state/replay.state"),
        b"knock-replay-state v1\nalice x\n\xff",
    )
    .unwrap();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    server.wait_for_log("was unreadable", Duration::from_secs(1));
    assert!(
        w.setup.dir.join("state/replay.corrupt").exists(),
        "the corrupt state was not set aside"
    );
    send_raw(
        &w.hosts.attacker,
        &[spoofed_as_client(&knock), from_attacker(&knock)],
    );
    server.wait_for_count(
        "stamped before the replay state was lost",
        2,
        Duration::from_secs(3),
    );
    w.assert_nothing_open(&server, "a replay after the state was corrupted");
    // The price of a lost state is one window of refusals; then knocks pass.
    assert!(
        eventually(Duration::from_secs(20), || !w
            .grants()
            .contains("replay state")),
        "still refusing after a window:\n{}",
        w.grants()
    );

    // A knock bound to the client's address (--allow-ip), raced from the
    // attacker's own address: refused for the mismatch and NOT consumed.
    let bound = w.intercept(&["--allow-ip", CLIENT_V4]);
    send_raw(
        &w.hosts.attacker,
        &[from_attacker(&bound), from_attacker(&bound).mode("badsum")],
    );
    server.wait_for_count("not consumed", 2, Duration::from_secs(3));
    assert!(
        server
            .log()
            .contains(&format!("bound to {CLIENT_V4} but sent from {ATTACKER_V4}")),
        "{}",
        server.log()
    );
    w.assert_nothing_open(&server, "a bound knock raced from the wrong address");
    // The genuine copy still opens, for the client.
    send_udp(&w.hosts.client, ip(SERVER_V4), KNOCK_PORT, &bound);
    server.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(3),
    );
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "the genuine bound knock did not open"
    );
    // And afterwards it is a replay from everywhere, its own address included.
    w.wait_expiry();
    let replays = server.count_log("replay: not newer");
    send_raw(
        &w.hosts.attacker,
        &[spoofed_as_client(&bound), from_attacker(&bound)],
    );
    server.wait_for_count("replay: not newer", replays + 2, Duration::from_secs(3));
    w.assert_nothing_open(&server, "replays of the bound knock");
    assert_eq!(server.count_log("granted"), 1, "{}", server.log());

    w.assert_legit_knock_works(&server, "the replays");
}

#[test]
fn replay_set_nftables() {
    replay_set("nftables");
}

#[test]
fn replay_set_iptables() {
    replay_set("iptables");
}

/// A knock made for one server, aimed at another server that holds the same
/// client secret but has its own identity: its hint is no client's there, so
/// it is refused as "unknown-client" (v2 binds the pair keys to the server), nothing
/// opened there; the knock still works where it was meant to go.
#[test]
fn knock_for_another_server_is_refused() {
    let mut w = world("nftables", "3s");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    // The second server: its own namespace on the attacker's segment, its own
    // configuration directory (so its own server.id), alice's entry copied.
    let other_ns = w.lab.netns("srv2");
    w.lab.link(
        &other_ns,
        &["198.18.2.1"],
        &w.hosts.attacker,
        &["198.18.2.66"],
    );
    let other = Setup::new(&w.lab, "server2", "nftables", &["tcp/4992"], "");
    set_config_key(&other.config, "open_for", "\"3s\"");
    let entry = other.dir.join("clients.d/alice.toml");
    std::fs::copy(w.setup.dir.join("clients.d/alice.toml"), &entry).unwrap();
    std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // carol is the second server's own client (from the attacker's namespace).
    let carol = other.keygen("carol", "198.18.2.1", Some("tcp/4992"));
    start_echo(&w.lab, &other_ns, 4992);
    let other_server = Server::start(&other_ns, &other.config);
    other_server.wait_for_log("ready: 2 clients", Duration::from_secs(1));
    let ids = [w.setup.dir.join("server.id"), other.dir.join("server.id")]
        .map(|p| std::fs::read_to_string(p).unwrap());
    assert_ne!(
        ids[0], ids[1],
        "the two servers must have their own identities"
    );

    // A fresh knock for the first server (made after the second started, so
    // only the identity stands in the way).
    let knock = w.intercept(&[]);
    let other_addr = ip("198.18.2.1");
    let to_other = |src: &str| RawPacket::new(ip(src), other_addr, KNOCK_PORT, &knock);
    send_raw(
        &w.hosts.attacker,
        &[to_other("198.18.2.66"), to_other(CLIENT_V4)],
    );
    other.wait_refused(&other_ns, "unknown-client", 2, Duration::from_secs(12));
    assert!(
        !w.hosts.attacker.tcp_connects(other_addr, 4992),
        "the other server opened"
    );
    let status = sh(other_ns
        .cmd(bin("knock-server"))
        .args(["status", "--config"])
        .arg(&other.config));
    assert!(String::from_utf8_lossy(&status.stdout).contains("no live grants"));
    assert_eq!(other_server.count_log("granted"), 0);
    assert!(other_server.alive());
    w.assert_nothing_open(&server, "a knock sent to another server");

    // The second server still honours its own client.
    let (code, out, err) = client(
        &w.hosts.attacker,
        &carol,
        &["open", "198.18.2.1", "4992", "--timeout", "3s"],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", other_server.log());
    // And the knock was a good one for its own server all along.
    send_udp(&w.hosts.client, ip(SERVER_V4), KNOCK_PORT, &knock);
    server.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(3),
    );
}

/// A client clock 2 minutes off either way: refused, and the log says why
/// (naming the client and the skew). Within the window (10 s off), accepted.
/// libfaketime shifts the client's clock (it intercepts clock_gettime, which
/// Rust's SystemTime uses).
#[test]
fn skewed_client_clocks() {
    let w = world("nftables", "3s");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let started = std::time::Instant::now();
    let knock_at = |offset: &str, wait: bool| {
        let mut cmd = w.hosts.client.cmd("faketime");
        cmd.args(["-f", offset]).arg(bin("knock-client")).args([
            "open",
            SERVER_V4,
            "4992",
            "--profile",
        ]);
        cmd.arg(&w.alice).env("KNOCK_HOME", &w.setup.dir);
        if wait {
            cmd.args(["--timeout", "3s"]);
        } else {
            cmd.arg("--no-wait");
        }
        let out = cmd.output().expect("faketime knock-client");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, _) = knock_at("-120s", false);
    assert_eq!(code, Some(0));
    server.wait_for_log("too old: stamped", Duration::from_secs(3));
    let (code, _) = knock_at("+120s", false);
    assert_eq!(code, Some(0));
    server.wait_for_log("from the future: stamped", Duration::from_secs(3));
    // The log names the client and how far off its clock is: about 2 minutes.
    let skews: Vec<u64> = server
        .log()
        .lines()
        .filter(|l| {
            l.contains("client alice: too old") || l.contains("client alice: from the future")
        })
        .filter_map(|l| {
            l.split("stamped ")
                .nth(1)?
                .split(" ms")
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(skews.len(), 2, "{}", server.log());
    for skew in skews {
        assert!(
            (110_000..=130_000).contains(&skew),
            "a 120 s skew logged as {skew} ms"
        );
    }
    w.assert_nothing_open(&server, "knocks from skewed clocks");

    // Within the window: 10 s behind, then 10 s ahead (in that order: each
    // knock must be newer than the last accepted one). A knock stamped 10 s
    // behind is only acceptable once the server has run for 10 s: until then
    // it is stamped before the server started, and the start floor refuses it.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(started.elapsed()));
    let (code, err) = knock_at("-10s", true);
    assert_eq!(
        code,
        Some(0),
        "a knock 10 s behind was refused: {err}\n{}",
        server.log()
    );
    // The grant is in the kernel a moment before its log line.
    assert!(
        eventually(Duration::from_secs(2), || server.count_log("granted") == 1),
        "{}",
        server.log()
    );
    w.wait_expiry();
    let (code, err) = knock_at("+10s", true);
    assert_eq!(
        code,
        Some(0),
        "a knock 10 s ahead was refused: {err}\n{}",
        server.log()
    );
    // The grant is in the kernel a moment before its log line.
    assert!(
        eventually(Duration::from_secs(2), || server.count_log("granted") == 2),
        "{}",
        server.log()
    );
}

/// Revocation: remove a client's file and send SIGHUP. Its knocks are
/// refused from then on; other clients are unaffected; live grants (its own
/// included) stay until they run out.
#[test]
fn revoked_client_is_refused_and_live_grants_stay_nftables() {
    revoked_client_is_refused_and_live_grants_stay("nftables");
}

#[test]
fn revoked_client_is_refused_and_live_grants_stay_iptables() {
    revoked_client_is_refused_and_live_grants_stay("iptables");
}

fn revoked_client_is_refused_and_live_grants_stay(firewall: &str) {
    let w = world(firewall, "5s");
    // bob knocks from the attacker's namespace, so the two grants differ.
    let bob = w
        .setup
        .keygen("bob", SERVER_FOR_ATTACKER_V4, Some("tcp/4992"));
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let bob_knock = |timeout: &str| {
        client(
            &w.hosts.attacker,
            &bob,
            &["open", SERVER_FOR_ATTACKER_V4, "4992", "--timeout", timeout],
        )
    };
    let (code, out, err) = bob_knock("3s");
    assert_eq!(code, 0, "{out}{err}");
    w.assert_legit_knock_works(&server, "bob's knock");
    server.wait_for_count("granted", 2, Duration::from_secs(2));

    std::fs::remove_file(w.setup.dir.join("clients.d/bob.toml")).unwrap();
    server.signal("HUP");
    server.wait_for_log("reloaded: 1 clients", Duration::from_secs(3));
    // Live grants stay, bob's included.
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "alice's live grant was dropped by the reload"
    );
    assert!(
        w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "bob's live grant was dropped by the reload"
    );
    w.wait_expiry();
    // bob's knocks are refused now; he can no longer get in.
    let (code, _, err) = bob_knock("2s");
    assert_eq!(code, 1, "a revoked client's knock must fail: {err}");
    assert_eq!(server.count_log("granted"), 2, "{}", server.log());
    w.assert_nothing_open(&server, "the revoked client's knock");
    // alice is unaffected.
    w.assert_legit_knock_works(&server, "revoking bob");
}
