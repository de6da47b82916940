//! Under a 60-second flood of junk and of same-length wrong-key knocks, the
//! server's memory stays bounded and every real knock is still honoured.
//! (Throughput and latency are measured by bench/run.sh, not asserted here.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use knock_tests::*;

/// Peak resident memory of `pid`, in KiB.
fn peak_rss_kib(ns: &Ns, pid: u32) -> u64 {
    let status = ns.sh(&format!("cat /proc/{pid}/status"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_minute_of_flood_keeps_memory_bounded_and_real_knocks_honoured() {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    // Short grants, so that every knock below has to be honoured anew.
    let config = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("open_for = \"5s\"", "open_for = \"1s\"");
    std::fs::write(&setup.config, config).unwrap();
    let alice = setup.keygen("alice", SERVER_V4, None);
    start_echo(&lab, &hosts.server, 4992);
    let server = Server::start(&hosts.server, &setup.config);
    let rss_before = peak_rss_kib(&hosts.server, server.pid());

    let flood = |mode: &str, seconds: u64| {
        let mut cmd = hosts.attacker.cmd(bin("knock-flood"));
        cmd.args([
            "--target",
            &format!("{SERVER_FOR_ATTACKER_V4}:62201"),
            "--mode",
            mode,
        ])
        .args([
            "--rate",
            "20000",
            "--count",
            &(20_000 * seconds).to_string(),
        ])
        .args(["--duration", &format!("{seconds}s"), "--profile"])
        .arg(&alice)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.spawn().expect("knock-flood")
    };

    let started = Instant::now();
    let mut knocks = 0;
    for (mode, seconds) in [("junk", 30), ("wrong-key", 30)] {
        let mut flooder = flood(mode, seconds);
        let phase = Instant::now();
        while phase.elapsed() < Duration::from_secs(seconds - 3) {
            std::thread::sleep(Duration::from_millis(1500));
            let (code, out, err) = client(&hosts.client, &alice, &["open", SERVER_V4, "4992"]);
            knocks += 1;
            assert_eq!(
                code,
                0,
                "knock {knocks} under a {mode} flood was not honoured: {out}{err}\n{}",
                server.log()
            );
        }
        let _ = flooder.wait();
    }
    assert!(
        started.elapsed() >= Duration::from_secs(55),
        "the flood was cut short"
    );
    assert!(knocks >= 30, "only {knocks} knocks were tried");
    let granted = server.count_log("granted tcp/4992 to 198.18.0.2");
    assert!(
        granted >= knocks,
        "{granted} grants for {knocks} honoured knocks"
    );

    let rss_after = peak_rss_kib(&hosts.server, server.pid());
    eprintln!("knock-server peak RSS: {rss_before} KiB before the flood, {rss_after} KiB after 60 s of it");
    assert!(
        rss_after <= 16 * 1024,
        "peak RSS {rss_after} KiB exceeds 16 MiB"
    );
    assert!(
        rss_after <= rss_before + 2048,
        "RSS grew by {} KiB under the flood",
        rss_after - rss_before
    );
}
