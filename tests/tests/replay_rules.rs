//! Honoured once, for the right address, on the real binaries: binding the
//! server demands, per-client `allow_from` and `expires`, replay memory that
//! follows the key across a rename, and replay rules that hold when the
//! server's clock steps back (within a process and across a restart, with
//! libfaketime) and when the state is lost while a client's clock runs
//! ahead. Every refusal has its positive control: the same knock opens a
//! twin server whose replay state is the one knock-keygen wrote, under the
//! same clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use knock_proto::{MAX_KNOCK_LEN, MIN_KNOCK_LEN};
use knock_tests::*;

const KNOCK_PORT: u16 = 62201;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The freshness window of these tests (max_clock_skew): short, so that
/// knocks go stale, and a lost state is paid for, within seconds.
const WINDOW_S: u64 = 3;

struct World {
    _lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
    /// The state directory as knock-keygen left it, before any start.
    pristine_state: PathBuf,
}

fn world(extra: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(
        &lab,
        "server",
        "nftables",
        &["tcp/4992"],
        &format!("max_clock_skew = \"{WINDOW_S}s\"\n{extra}"),
    );
    set_config_key(&setup.config, "open_for", "\"2s\"");
    let alice = setup.keygen("alice", SERVER_V4, None);
    let pristine_state = setup.dir.join("state.pristine");
    copy_dir(&setup.dir.join("state"), &pristine_state);
    assert!(
        pristine_state.join("replay.state").is_file(),
        "knock-keygen wrote no initial replay state"
    );
    start_echo(&lab, &hosts.server, 4992);
    World {
        _lab: lab,
        hosts,
        setup,
        alice,
        pristine_state,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    sh(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn unix_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl World {
    /// A knock from alice on the client host that the server has not seen.
    fn intercept(&self, extra: &[&str]) -> Vec<u8> {
        intercept_knock(
            &self.hosts.client,
            &self.alice,
            KNOCK_PORT,
            &["4992"],
            extra,
        )
    }

    fn deliver(&self, knock: &[u8]) {
        send_udp(&self.hosts.client, ip(SERVER_V4), KNOCK_PORT, knock);
    }

    /// `knock-server ARGS --config CONFIG`: (code, stdout, stderr).
    fn server_cmd(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .hosts
            .server
            .cmd(bin("knock-server"))
            .args(args)
            .arg("--config")
            .arg(&self.setup.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn reload(&self) {
        let (code, out, err) = self.server_cmd(&["reload"]);
        assert_eq!(code, 0, "reload: {out}{err}");
    }

    fn entry(&self, name: &str) -> PathBuf {
        self.setup
            .dir
            .join("clients.d")
            .join(format!("{name}.toml"))
    }

    fn append_to_entry(&self, name: &str, line: &str) {
        let path = self.entry(name);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{line}\n")).unwrap();
    }

    /// The server under libfaketime: the clock is offset by what `offset`
    /// (a file, re-read on every call) says. The monotonic clock is left
    /// alone.
    fn start_faked(&self, config: &Path, offset_file: &Path) -> Server {
        let mut cmd = self.hosts.server.cmd("env");
        cmd.arg(format!("LD_PRELOAD={LIBFAKETIME}"))
            .arg(format!("FAKETIME_TIMESTAMP_FILE={}", offset_file.display()))
            .args(["FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1"])
            .arg(bin("knock-server"))
            .args(["run", "--config"])
            .arg(config);
        Server::start_command(&self.hosts.server, config, cmd)
    }

    /// A configuration like ours, on a fresh copy of the state knock-keygen
    /// wrote: a server that has never seen any knock.
    fn twin_config(&self) -> PathBuf {
        let state = self.setup.dir.join("state.twin");
        copy_dir(&self.pristine_state, &state);
        let config = self.setup.dir.join("twin.toml");
        let text = std::fs::read_to_string(&self.setup.config)
            .unwrap()
            .replace(
                &format!("state_dir = \"{}\"", self.setup.dir.join("state").display()),
                &format!("state_dir = \"{}\"", state.display()),
            );
        assert!(text.contains("state.twin"), "{text}");
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Positive control: `knock` opens for the client on a server that has
    /// never seen it, with the clock offset as `offset_file` says.
    fn twin_honours(&self, knock: &[u8], offset_file: &Path) {
        let twin = self.start_faked(&self.twin_config(), offset_file);
        self.deliver(knock);
        twin.wait_for_log(
            &format!("granted tcp/4992 to {CLIENT_V4}"),
            Duration::from_secs(3),
        );
        assert!(self.hosts.client.tcp_connects(ip(SERVER_V4), 4992));
        drop(twin);
    }

    fn assert_not_granted(&self, server: &Server, what: &str) {
        assert_eq!(server.count_log("granted"), 0, "{what}:\n{}", server.log());
        assert!(
            !self.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
            "{what}: the client got in"
        );
    }
}

/// The environment of a knock-client whose clock is off by `offset`
/// (libfaketime's syntax: `+2s`, `-300s`).
fn client_clock(offset: &str) -> [(&str, &str); 3] {
    [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
}

/// The clock offset file libfaketime reads.
fn offset_file(w: &World, offset_s: i64) -> PathBuf {
    let path = w.setup.dir.join("faketime");
    std::fs::write(&path, format!("{offset_s:+}s\n")).unwrap();
    path
}

/// `require_bound_addr = true` in server.toml refuses an unbound knock
/// (reason `unbound`) without consuming it: once the requirement is lifted,
/// the very same bytes open. In a client's entry it binds that client.
#[test]
fn the_server_can_demand_binding() {
    let w = world("require_bound_addr = true\n");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let unbound = w.intercept(&[]);
    w.deliver(&unbound);
    server.wait_for_log("knock refused (unbound)", Duration::from_secs(3));
    assert!(
        server.log().contains("which server.toml requires"),
        "{}",
        server.log()
    );
    w.assert_not_granted(&server, "an unbound knock");

    set_config_key(&w.setup.config, "require_bound_addr", "false");
    w.reload();
    w.deliver(&unbound);
    server.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(3),
    );

    w.append_to_entry("alice", "require_bound_addr = true");
    w.reload();
    w.setup.wait_no_grants(&w.hosts.server);
    let (code, out, err) = client(
        &w.hosts.client,
        &w.alice,
        &["open", SERVER_V4, "4992", "--timeout", "2s"],
    );
    assert_eq!(
        code, 1,
        "an unbound knock of a client that must bind: {out}{err}"
    );
    server.wait_for_log("which its entry requires", Duration::from_secs(3));
    let (code, out, err) = client(
        &w.hosts.client,
        &w.alice,
        &["open", SERVER_V4, "4992", "--allow-ip", CLIENT_V4],
    );
    assert_eq!(code, 0, "a bound knock: {out}{err}\n{}", server.log());
}

/// `allow_from`: a knock from outside the blocks is refused without being
/// consumed (`not-allowed-from`); the same bytes from inside open, for that
/// source.
#[test]
fn allow_from_limits_where_knocks_come_from() {
    let w = world("");
    w.append_to_entry(
        "alice",
        "allow_from = [\"198.18.1.0/24\", \"fd00:18:1::/64\"]",
    );
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let knock = w.intercept(&[]);
    w.deliver(&knock);
    server.wait_for_log("knock refused (not-allowed-from)", Duration::from_secs(3));
    w.assert_not_granted(&server, "a knock from outside allow_from");
    send_udp(
        &w.hosts.attacker,
        ip(SERVER_FOR_ATTACKER_V4),
        KNOCK_PORT,
        &knock,
    );
    server.wait_for_log(
        &format!("granted tcp/4992 to {ATTACKER_V4}"),
        Duration::from_secs(3),
    );
    assert!(w
        .hosts
        .attacker
        .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992));
}

/// `expires`: an expired client is refused (`expired`), and `check` and
/// `status` list it; a client whose date is to come opens.
#[test]
fn expired_clients_are_refused_and_listed() {
    let w = world("");
    w.append_to_entry("alice", "expires = \"2099-12-31T00:00:00Z\"");
    let bob = w.setup.keygen("bob", SERVER_V4, None);
    w.append_to_entry("bob", "expires = 2020-01-01");
    let (code, out, err) = w.server_cmd(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("EXPIRED (2020-01-01)"), "{out}");
    assert!(out.contains("expires 2099-12-31T00:00:00Z"), "{out}");
    assert!(err.contains("client bob expired (2020-01-01)"), "{err}");
    let (_, json, _) = w.server_cmd(&["check", "--json"]);
    assert!(json.contains("\"expired\":[\"bob\"]"), "{json}");

    let server = Server::start(&w.hosts.server, &w.setup.config);
    let (code, out, err) = client(
        &w.hosts.client,
        &bob,
        &["open", SERVER_V4, "4992", "--timeout", "2s"],
    );
    assert_eq!(code, 1, "an expired client: {out}{err}");
    server.wait_for_log(
        "knock refused (expired): client bob",
        Duration::from_secs(3),
    );
    let status = w.setup.status(&w.hosts.server);
    assert!(
        status.contains("expired        bob (2020-01-01)"),
        "{status}"
    );
    let (code, out, err) = client(&w.hosts.client, &w.alice, &["open", SERVER_V4, "4992"]);
    assert_eq!(code, 0, "alice, who expires in 2099: {out}{err}");
}

/// Renaming a client's file, same key, then reloading: a knock it had
/// accepted is still a replay; the client's next knock opens.
#[test]
fn a_renamed_client_keeps_its_replay_history() {
    let w = world("");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let knock = w.intercept(&[]);
    w.deliver(&knock);
    server.wait_for_count("granted", 1, Duration::from_secs(3));
    std::fs::rename(w.entry("alice"), w.entry("alice-laptop")).unwrap();
    w.reload();
    w.setup.wait_no_grants(&w.hosts.server);
    w.deliver(&knock);
    server.wait_for_log(
        "knock refused (replay): client alice-laptop",
        Duration::from_secs(3),
    );
    assert_eq!(server.count_log("granted"), 1, "{}", server.log());
    assert!(!w.hosts.client.tcp_connects(ip(SERVER_V4), 4992));
    let (code, out, err) = client(&w.hosts.client, &w.alice, &["open", SERVER_V4, "4992"]);
    assert_eq!(code, 0, "the renamed client's next knock: {out}{err}");
}

/// Waits until a knock made at `made_at` (Unix seconds) is older than the
/// window by a margin, and returns the clock offset, in whole seconds, that
/// makes it fresh again.
fn let_it_go_stale(made_at: f64) -> i64 {
    let margin = 1.5;
    let until = made_at + WINDOW_S as f64 + margin;
    let left = until - unix_s();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
    -((unix_s() - made_at).round() as i64)
}

/// The clock steps back across a restart (a bad RTC, a restored VM): a knock
/// accepted before, and forgotten since, is fresh again by the stepped clock
/// but refused by the floor kept in the state.
#[test]
fn a_clock_stepped_back_across_a_restart_reopens_nothing() {
    let w = world("");
    let now = offset_file(&w, 0);
    let server = w.start_faked(&w.setup.config, &now);
    let made_at = unix_s();
    let knock = w.intercept(&[]);
    w.deliver(&knock);
    server.wait_for_count("granted", 1, Duration::from_secs(3));
    let offset = let_it_go_stale(made_at);
    w.deliver(&knock);
    server.wait_for_log("knock refused (too-old)", Duration::from_secs(3));
    assert_eq!(server.stop(), Some(0));

    let stepped = offset_file(&w, offset);
    let server = w.start_faked(&w.setup.config, &stepped);
    server.wait_for_log(
        "behind the latest time this server has seen",
        Duration::from_secs(3),
    );
    w.setup.wait_no_grants(&w.hosts.server);
    w.deliver(&knock);
    server.wait_for_log("knock refused (before-floor)", Duration::from_secs(3));
    w.assert_not_granted(
        &server,
        "a knock replayed after the clock stepped back across a restart",
    );
    drop(server);
    w.twin_honours(&knock, &stepped);
}

/// The clock steps back while the server runs, on a quiet server: a knock an
/// eavesdropper held back until it expired is fresh by the stepped clock but
/// refused by the floor.
#[test]
fn a_clock_stepping_back_in_a_running_server_reopens_nothing() {
    let w = world("");
    let clock = offset_file(&w, 0);
    let server = w.start_faked(&w.setup.config, &clock);
    let made_at = unix_s();
    let held = w.intercept(&[]);
    let offset = let_it_go_stale(made_at);
    std::fs::write(&clock, format!("{offset:+}s\n")).unwrap();
    server.wait_for_log(
        "behind the latest time this server has seen",
        Duration::from_secs(3),
    );
    w.deliver(&held);
    server.wait_for_log("knock refused (before-floor)", Duration::from_secs(3));
    w.assert_not_granted(&server, "a held knock after the clock stepped back");
    drop(server);
    w.twin_honours(&held, &clock);
}

/// The state directory is lost while a client's clock runs ahead of the
/// server's: the knock it had honoured, stamped after the restart, is
/// refused by the one window of refusals that follows a lost state.
#[test]
fn a_state_loss_with_a_client_clock_ahead_reopens_nothing() {
    let w = world("");
    let now = offset_file(&w, 0);
    let server = w.start_faked(&w.setup.config, &now);
    let knock = intercept_knock_with_env(
        &w.hosts.client,
        &w.alice,
        KNOCK_PORT,
        &["4992"],
        &[],
        &client_clock("+2s"),
    );
    w.deliver(&knock);
    server.wait_for_count("granted", 1, Duration::from_secs(3));
    drop(server);
    std::fs::remove_dir_all(w.setup.dir.join("state")).unwrap();
    let started = Instant::now();
    let server = w.start_faked(&w.setup.config, &now);
    server.wait_for_log("no replay state at", Duration::from_secs(1));
    w.setup.wait_no_grants(&w.hosts.server);
    w.deliver(&knock);
    server.wait_for_log("knock refused (state-lost)", Duration::from_secs(3));
    assert!(
        started.elapsed() < Duration::from_secs(WINDOW_S),
        "too slow: the knock may have gone stale instead"
    );
    w.assert_not_granted(&server, "a knock honoured before the state was lost");
    drop(server);
    w.twin_honours(&knock, &now);
}

/// The length of a knock says nothing of the request: 40 knocks for one port,
/// unbound, and 40 for eight ports, bound to an address, captured on the
/// wire, fall in the same range and have the same mean within noise (the
/// old format put the second 37 bytes above the first).
#[test]
fn knock_lengths_do_not_tell_requests_apart() {
    let ports: Vec<String> = (4992..5000).map(|p| format!("tcp/{p}")).collect();
    let quoted: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", "nftables", &[], "");
    set_config_key(
        &setup.config,
        "protected",
        &format!("[{}]", quoted.join(", ")),
    );
    let alice = setup.keygen("alice", SERVER_V4, None);
    let pcap = lab.dir.join("knocks.pcap");
    let dump = Tcpdump::start(
        &hosts.server,
        &format!("udp dst port {KNOCK_PORT}"),
        pcap.clone(),
    );
    let eight: Vec<&str> = ports.iter().map(String::as_str).collect();
    let shapes: [(&str, Vec<&str>); 2] = [
        ("1 port, unbound", vec!["4992"]),
        (
            "8 ports, bound",
            [eight.clone(), vec!["--allow-ip", CLIENT_V4]].concat(),
        ),
    ];
    for (_, args) in &shapes {
        for _ in 0..40 {
            let mut line = vec!["open", SERVER_V4];
            line.extend_from_slice(args);
            line.push("--no-wait");
            let (code, out, err) = client(&hosts.client, &alice, &line);
            assert_eq!(code, 0, "{out}{err}");
        }
    }
    let captured = dump.stop(&hosts.server);
    let lengths: Vec<usize> = read_pcap_udp(&pcap)
        .iter()
        .filter(|d| d.dest_port == KNOCK_PORT)
        .map(|d| d.payload.len())
        .collect();
    assert_eq!(lengths.len(), 80, "captured {captured:?}");
    let mut means = Vec::new();
    for (i, (shape, _)) in shapes.iter().enumerate() {
        let sample = &lengths[i * 40..(i + 1) * 40];
        let mean = sample.iter().sum::<usize>() as f64 / sample.len() as f64;
        let (min, max) = (sample.iter().min().unwrap(), sample.iter().max().unwrap());
        eprintln!("knock lengths, {shape}: min {min}, mean {mean:.1}, max {max} (40 knocks)");
        assert!(
            sample
                .iter()
                .all(|l| (MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(l)),
            "{shape}: {sample:?}"
        );
        means.push(mean);
    }
    // Uniform over 64 lengths: the difference of two means of 40 has a
    // standard deviation of 4.1 bytes; 25 is six of them.
    assert!(
        (means[0] - means[1]).abs() < 25.0,
        "the means differ: {means:?}"
    );
}

/// A replay state that remembers a stamp far in the future for alice's key
/// (a damaged file, or a server whose clock was far ahead when it wrote it):
/// clamped on start to the latest stamp a knock could have been accepted
/// with, one window ahead, so alice waits out at most one window instead of
/// a year. Clamped, not forgotten: her knocks within that window are
/// replays.
#[test]
fn a_far_future_stamp_in_the_state_locks_nobody_out() {
    let w = world("");
    let entry = knock_keys::entry::ClientEntry::load(&w.entry("alice")).unwrap();
    let knock_keys::entry::Credential::Shared(secret) = &entry.credential else {
        panic!("alice is a shared-key client")
    };
    let server_id = knock_keys::identity::load(&w.setup.dir.join("server.id")).unwrap();
    let id = knock_proto::PairKeys::shared(secret, &server_id)
        .replay_id()
        .to_hex();
    let now_ms = (unix_s() * 1000.0) as u64;
    let a_year = 365 * 86_400_000;
    std::fs::write(
        w.setup.dir.join("state/replay.state"),
        format!(
            "knock-replay-state v2\nfloor {now_ms}\n{id} {}\n",
            now_ms + a_year
        ),
    )
    .unwrap();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let started = Instant::now();
    let (code, out, err) = client(
        &w.hosts.client,
        &w.alice,
        &["open", SERVER_V4, "4992", "--timeout", "2s"],
    );
    assert_eq!(code, 1, "within the window of the clamp: {out}{err}");
    server.wait_for_log(
        "knock refused (replay): client alice",
        Duration::from_secs(1),
    );
    let after_clamp = Duration::from_secs(WINDOW_S + 1);
    if let Some(left) = after_clamp.checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let (code, out, err) = client(&w.hosts.client, &w.alice, &["open", SERVER_V4, "4992"]);
    assert_eq!(
        code,
        0,
        "alice still locked out one window later: {out}{err}\n{}",
        server.log()
    );
}

/// A copy of an old knock (stamped five minutes ago: outside the window,
/// inside the hints kept to name a client whose clock is off), sent 200
/// times within a second, is opened once and refused 199 times as
/// `stale-hint`, without cryptography.
#[test]
fn a_copied_stale_knock_is_opened_once_a_second() {
    let w = world("");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let stale = intercept_knock_with_env(
        &w.hosts.client,
        &w.alice,
        KNOCK_PORT,
        &["4992"],
        &[],
        &client_clock("-300s"),
    );
    let started = Instant::now();
    let python = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); p = bytes.fromhex('{}')\nfor _ in range(200): s.sendto(p, ('{SERVER_V4}', {KNOCK_PORT}))",
        hex(&stale)
    );
    let sent = w
        .hosts
        .client
        .cmd("python3")
        .args(["-c", &python])
        .status()
        .unwrap();
    assert!(sent.success());
    let elapsed = started.elapsed();
    server.wait_for_log("knock refused (too-old)", Duration::from_secs(3));
    let (_, log) = server.stop_with_log();
    let refused = refused_by_reason(&log);
    let opened = log.matches("knock refused (too-old)").count() as u64;
    assert_eq!(
        refused.get("too-old").copied().unwrap_or(0)
            + refused.get("stale-hint").copied().unwrap_or(0),
        200,
        "every copy was refused: {refused:?}\n{log}"
    );
    assert!(
        opened >= 1 && opened <= 1 + elapsed.as_secs(),
        "opened {opened} times in {elapsed:?}: {refused:?}"
    );
    assert_eq!(
        refused.get("stale-hint").copied(),
        Some(200 - opened),
        "{refused:?}"
    );
}
