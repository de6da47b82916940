//! The capture interface on a real host: deleted and re-created under the
//! server's feet, or not there yet when the server starts; and what the
//! server publishes about its capture (`knock-server status`, the kernel's
//! drop counter). Down and up again is `faults.rs`'s
//! `capture_recovers_after_interface_down_and_up`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knock_tests::*;

/// The name the server waits for in [`a_missing_interface_is_waited_for`].
const LATE: &str = "knocklate0";

struct World {
    lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
    /// The server's end of the client's link, and the client's end.
    server_dev: String,
    client_dev: String,
}

fn world(firewall: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992"], "");
    set_config_key(&setup.config, "open_for", "\"3s\"");
    let alice = setup.keygen("alice", SERVER_V4, Some("tcp/4992"));
    start_echo(&lab, &hosts.server, 4992);
    let server_dev = interface_with(&hosts.server, SERVER_V4);
    let client_dev = interface_with(&hosts.client, CLIENT_V4);
    World {
        lab,
        hosts,
        setup,
        alice,
        server_dev,
        client_dev,
    }
}

impl World {
    fn knock(&self, timeout: &str) -> (i32, String) {
        let (code, out, err) = client(
            &self.hosts.client,
            &self.alice,
            &["open", SERVER_V4, "4992", "--timeout", timeout],
        );
        (code, format!("{out}{err}"))
    }

    /// Creates the client's link again, with the server's end named
    /// `server_dev` and the addresses it had.
    fn create_client_link(&self, server_dev: &str) {
        self.lab.link_named(
            &self.hosts.server,
            server_dev,
            &[SERVER_V4, SERVER_V6],
            &self.hosts.client,
            &self.client_dev,
            &[CLIENT_V4, CLIENT_V6],
        );
    }

    fn status(&self) -> String {
        self.setup.status(&self.hosts.server)
    }

    fn status_json(&self) -> String {
        let out = self
            .hosts
            .server
            .cmd(bin("knock-server"))
            .args(["status", "--json", "--config"])
            .arg(&self.setup.config)
            .output()
            .expect("knock-server status --json");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The kernel's index of `dev` in `ns`.
fn ifindex(ns: &Ns, dev: &str) -> u32 {
    ns.sh(&format!("cat /sys/class/net/{dev}/ifindex"))
        .trim()
        .parse()
        .expect("ifindex")
}

/// The position of the first log line after `skip` lines that contains
/// `needle`.
fn line_of(log: &str, needle: &str, skip: usize) -> Option<usize> {
    log.lines()
        .enumerate()
        .skip(skip)
        .find(|(_, line)| line.contains(needle))
        .map(|(i, _)| i)
}

/// The server's interface is deleted (as `ip link del wg0` or a VPN
/// restart does) and created again with a new index: knocks are honoured
/// again within 5 s (the contract's bound), and the server says "live
/// again" only once the new interface is there.
fn interface_deleted_and_recreated(firewall: &str) {
    let w = world(firewall);
    let dev = w.server_dev.clone();
    set_config_key(&w.setup.config, "interface", &format!("{dev:?}"));
    let server = Server::start(&w.hosts.server, &w.setup.config);
    server.wait_for_log(&format!("on {dev}"), Duration::from_secs(1));
    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "before: {out}\n{}", server.log());
    let index_before = ifindex(&w.hosts.server, &dev);

    w.hosts.server.sh(&format!("ip link del {dev}"));
    server.wait_for_log("capture failed", Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(3), || w
            .status()
            .contains(&format!("waiting for interface {dev} to appear"))),
        "status while the interface is gone:\n{}\n{}",
        w.status(),
        server.log()
    );
    // Several of the server's looks at the interface find it missing.
    std::thread::sleep(Duration::from_secs(1));
    assert!(server.alive(), "the server died:\n{}", server.log());
    assert_eq!(
        server.count_log("is live again"),
        0,
        "live again while the interface was gone:\n{}",
        server.log()
    );
    let lines_before = server.log().lines().count();
    let grants_before = server.count_log("granted");

    w.create_client_link(&dev);
    let back = Instant::now();
    let index_after = ifindex(&w.hosts.server, &dev);
    assert_ne!(
        index_before, index_after,
        "the interface was not re-created"
    );

    // Knock every 100 ms until one is honoured; watch the log meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let knocker = {
        let stop = Arc::clone(&stop);
        let ns = w.hosts.client.clone();
        let alice = w.alice.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                client(&ns, &alice, &["open", SERVER_V4, "4992", "--no-wait"]);
                sent += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };
    let mut live_after = None;
    let mut honoured_after = None;
    while back.elapsed() < Duration::from_secs(15) && honoured_after.is_none() {
        if live_after.is_none() && server.count_log("is live again") > 0 {
            live_after = Some(back.elapsed());
        }
        if server.count_log("granted") > grants_before {
            honoured_after = Some(back.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = knocker.join().expect("knocker");
    println!(
        "{firewall}: interface back -> capture live again: {live_after:?}, -> first honoured knock: {honoured_after:?} ({sent} knocks sent, one every 100 ms)"
    );
    let honoured = honoured_after.unwrap_or_else(|| {
        panic!(
            "no knock honoured within 15 s of the interface's return:\n{}",
            server.log()
        )
    });
    assert!(
        honoured <= Duration::from_secs(5),
        "first knock honoured {honoured:?} after the interface came back (contract: 5 s)"
    );
    // The grant is real: the client gets in.
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "granted, but the client cannot connect:\n{}",
        server.log()
    );

    let log = server.log();
    assert_eq!(server.count_log("capture failed"), 1, "{log}");
    assert_eq!(server.count_log("is live again"), 1, "{log}");
    let live = line_of(&log, "is live again", lines_before).expect("live again");
    let granted = line_of(&log, "granted", lines_before).expect("granted");
    assert!(
        live < granted,
        "live again said after the first grant, or before the re-creation:\n{log}"
    );
    let status = w.status();
    assert!(status.contains(&format!("live on {dev}")), "{status}");
}

on_both_backends!(interface_deleted_and_recreated);

/// `interface` names an interface that does not exist yet (a VPN that comes
/// up later, a slow driver at boot): the server installs its rules, waits
/// without saying `ready`, and is ready once the interface appears.
#[test]
fn a_missing_interface_is_waited_for() {
    let w = world("nftables");
    set_config_key(&w.setup.config, "interface", &format!("{LATE:?}"));
    let server = Server::spawn(&w.hosts.server, &w.setup.config);
    server.wait_for_log(
        &format!("waiting for interface {LATE} to appear"),
        Duration::from_secs(15),
    );
    // The client's own link is there (echo service listening): only our
    // rules keep this probe out. A knock opens it below.
    assert!(
        !w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "the protected port is open while the server waits:\n{}",
        server.log()
    );
    let status = w.status();
    assert!(
        status.contains("not ready yet")
            && status.contains(&format!("waiting for interface {LATE} to appear")),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(server.alive(), "the server gave up:\n{}", server.log());
    assert!(
        !server.log().contains("ready"),
        "ready before its interface exists:\n{}",
        server.log()
    );

    // The interface appears: the client's link, created again under the
    // awaited name.
    w.hosts.server.sh(&format!("ip link del {}", w.server_dev));
    w.create_client_link(LATE);
    let created = Instant::now();
    server.wait_for_log("ready", Duration::from_secs(5));
    println!("interface created -> ready: {:?}", created.elapsed());
    assert!(
        server.log().contains(&format!("on {LATE}")),
        "{}",
        server.log()
    );
    let (code, out) = w.knock("5s");
    assert_eq!(code, 0, "{out}\n{}", server.log());
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "the same probe, after a knock"
    );
    let status = w.status();
    assert!(
        status.contains(&format!("live on {LATE}")) && status.contains(", ready,"),
        "{status}"
    );
}

/// SIGTERM while waiting for the interface: exit 0 at once, as when running.
#[test]
fn sigterm_while_waiting_for_the_interface_exits_0() {
    let w = world("nftables");
    set_config_key(&w.setup.config, "interface", &format!("{LATE:?}"));
    let server = Server::spawn(&w.hosts.server, &w.setup.config);
    server.wait_for_log("waiting for interface", Duration::from_secs(15));
    let asked = Instant::now();
    let code = server.stop();
    println!("SIGTERM while waiting -> exit: {:?}", asked.elapsed());
    assert_eq!(code, Some(0), "exit code after SIGTERM while waiting");
}

/// The first number after `label` on a line of `text`.
fn number_after(text: &str, label: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once(label)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    })
}

/// `knock-server status` shows the daemon's capture and the kernel's drop
/// counter, which a frozen server under a flood makes count; the refusal
/// summary's rhythm reports the drops too. Stopped, the server is reported
/// as not running, without failing.
#[test]
fn status_shows_capture_and_kernel_drops() {
    let w = world("nftables");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let status = w.status();
    assert!(
        status.contains("running, pid")
            && status.contains("live on any")
            && status.contains("kernel drops   0 since start"),
        "{status}"
    );
    let json = w.status_json();
    assert!(
        json.contains("\"daemon\":{\"state\":\"running\"")
            && json.contains("\"capture\":\"live\"")
            && json.contains("\"kernel_drops\":0"),
        "{json}"
    );

    // Frozen, the server reads nothing: its receive queue (16 MiB) fills and
    // the kernel drops the rest.
    server.signal("STOP");
    let flood = w
        .hosts
        .attacker
        .cmd(bin("knock-flood"))
        .args([
            "--target",
            &format!("{SERVER_FOR_ATTACKER_V4}:62201"),
            "--mode",
            "junk",
            "--rate",
            "200000",
            "--count",
            "100000",
            "--duration",
            "20s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("knock-flood");
    server.signal("CONT");
    assert!(flood.success(), "knock-flood failed");

    // The file is rewritten every 10 s.
    let mut drops = 0;
    let counted = eventually(Duration::from_secs(25), || {
        drops = number_after(&w.status(), "kernel drops").unwrap_or(0);
        drops > 0
    });
    assert!(counted, "no kernel drops in status:\n{}", w.status());
    server.wait_for_log("kernel dropped", Duration::from_secs(15));
    let logged: u64 = server
        .log()
        .lines()
        .filter_map(|l| number_after(l, "kernel dropped"))
        .sum();
    println!("kernel drops: status {drops}, log {logged}");
    assert!(logged > 0, "{}", server.log());
    let json = w.status_json();
    assert!(
        number_after(&json, "\"kernel_drops\":").is_some_and(|n| n >= drops),
        "{json}"
    );
    // The server still works after it.
    let (code, out) = w.knock("5s");
    assert_eq!(code, 0, "{out}\n{}", server.log());

    assert_eq!(server.stop(), Some(0));
    let status = w.status();
    assert!(
        status.contains("daemon         not running (no status file"),
        "{status}"
    );
}
