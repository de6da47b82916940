//! Faults around the real knock-server in network namespaces: an unwritable
//! or full state directory, an administrator deleting our firewall rules,
//! the capture interface going down and up, a broken configuration on
//! reload. The server fails closed (no grant it cannot make durable), says
//! why in its log, keeps running, and recovers when the fault goes away.
//!
//! SIGKILL during a grant (the grant still expires on time in the kernel) is
//! `contract.rs`'s `sigkill_expiry_and_restart_without_duplicates`, on both
//! backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use knock_tests::*;

struct World {
    lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
}

fn world(firewall: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992"], "");
    set_config_key(&setup.config, "open_for", "\"3s\"");
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
    fn knock(&self, timeout: &str) -> (i32, String) {
        let (code, out, err) = client(
            &self.hosts.client,
            &self.alice,
            &["open", SERVER_V4, "4992", "--timeout", timeout],
        );
        (code, format!("{out}{err}"))
    }

    fn grants(&self) -> String {
        self.setup.status(&self.hosts.server)
    }

    fn assert_no_grant(&self, server: &Server, after: &str) {
        let grants = self.grants();
        assert!(
            grants.contains("no live grants"),
            "after {after}: {grants}\n{}",
            server.log()
        );
        assert!(
            !self.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
            "after {after}: the client got in"
        );
        assert!(
            server.alive(),
            "after {after}: the server died:\n{}",
            server.log()
        );
    }

    fn wait_expiry(&self) {
        self.setup.wait_no_grants(&self.hosts.server);
    }

    fn state(&self) -> PathBuf {
        self.setup.dir.join("state")
    }
}

/// The state directory cannot be written (even by root: it is immutable).
/// At start: exit 1 with one clear line, before touching the firewall. While
/// running: no grant (fail-closed), a clear error, the server keeps running
/// and grants again once the directory is writable.
#[test]
fn unwritable_state_dir_means_no_grant() {
    let w = world("nftables");
    std::fs::create_dir_all(w.state()).unwrap();
    let mut immutable = Immutable::new(&w.state());
    // Prove the fault is real for root before relying on it.
    assert!(
        std::fs::write(w.state().join("probe"), b"x").is_err(),
        "chattr +i did not stop root"
    );

    let config = w.setup.config.to_str().unwrap();
    let (code, _, err) = run_server_to_exit(
        &w.hosts.server,
        &["run", "--config", config],
        Duration::from_secs(10),
    );
    assert_eq!(code, 1, "start with an unwritable state dir: {err}");
    // Log lines may precede it; the error itself is one line, the last.
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line on stderr: {err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    // The first write there is the lock file, taken before anything else.
    assert!(
        errors[0].starts_with("knock-server: error: cannot use state_dir")
            && errors[0].contains(&*w.state().to_string_lossy())
            && errors[0].contains("lock file"),
        "{err}"
    );
    assert_eq!(
        w.hosts.server.sh("nft list ruleset").trim(),
        "",
        "the firewall was touched"
    );

    immutable.clear();
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "{out}");
    w.wait_expiry();
    let before = std::fs::read(w.state().join("replay.state")).unwrap();

    // The replay journal is a file the server keeps open and writes in
    // place, which an immutable directory does not stop: it is made
    // immutable too. Positive control: with the directory alone immutable,
    // a knock is still made durable (in the journal) and granted.
    let journal = w.state().join("replay.journal");
    assert!(journal.exists(), "no replay journal");
    immutable.set();
    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "the journal alone made no knock durable: {out}");
    w.wait_expiry();
    let mut journal_immutable = Immutable::new(&journal);
    let (code, out) = w.knock("2s");
    assert_eq!(
        code, 1,
        "a knock was honoured without durable replay state: {out}"
    );
    server.wait_for_log(
        "NOT granted: cannot make the replay state durable",
        Duration::from_secs(2),
    );
    w.assert_no_grant(&server, "knocks with an unwritable state dir");
    assert_eq!(
        std::fs::read(w.state().join("replay.state")).unwrap(),
        before,
        "the state changed"
    );

    immutable.clear();
    journal_immutable.clear();
    let (code, out) = w.knock("3s");
    assert_eq!(
        code,
        0,
        "no grant after the state dir became writable again: {out}\n{}",
        server.log()
    );
    // Once the journal has failed, grants wait for replay.state itself.
    assert_ne!(
        std::fs::read(w.state().join("replay.state")).unwrap(),
        before,
        "the state was not updated"
    );
}

/// The state directory's file system is full (a 64 KiB tmpfs in a private
/// mount namespace of the server): no grant, a clear error, the previous
/// state file intact, and grants again once there is room.
#[test]
fn full_disk_means_no_grant_and_no_corruption() {
    let w = world("nftables");
    let state = w.state();
    std::fs::create_dir_all(&state).unwrap();
    // The tmpfs starts with the replay state knock-keygen wrote, as the
    // state directory it hides did.
    let initial = w.setup.dir.join("replay.state.initial");
    std::fs::copy(state.join("replay.state"), &initial).unwrap();
    let wrapper = format!(
        "mount -t tmpfs -o size=64k,mode=0700 knock-test-full {0} && cp -p {1} {0}/replay.state && exec \"$@\"",
        state.display(),
        initial.display()
    );
    let server = Server::start_wrapped(&w.hosts.server, &w.setup.config, &wrapper);
    let pid = server.pid().to_string();
    // Files in the server's private mount namespace.
    let in_server_mounts = |line: &str| -> (bool, String) {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "sh", "-c", line])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (mounted, _) = in_server_mounts(&format!(
        "grep -q ' {} tmpfs ' /proc/self/mounts",
        state.display()
    ));
    assert!(mounted, "the tmpfs is not mounted for the server");
    assert!(
        !state.join("lock").exists(),
        "the tmpfs leaked out of the server's mount namespace"
    );

    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "{out}\n{}", server.log());
    let (_, before) = in_server_mounts(&format!("cat {}/replay.state", state.display()));
    assert_eq!(remembered_keys(&before), 1, "{before}");

    let (filled, _) = in_server_mounts(&format!(
        "cat /dev/zero > {}/fill 2>/dev/null",
        state.display()
    ));
    assert!(!filled, "filling the tmpfs should end with ENOSPC");
    w.wait_expiry();
    let (code, out) = w.knock("2s");
    assert_eq!(code, 1, "a knock was honoured on a full disk: {out}");
    server.wait_for_log(
        "NOT granted: cannot make the replay state durable",
        Duration::from_secs(2),
    );
    assert!(
        server.log().contains("No space left on device"),
        "{}",
        server.log()
    );
    w.assert_no_grant(&server, "knocks on a full disk");
    let (_, after) = in_server_mounts(&format!(
        "cat {}/replay.state; ls -A {}",
        state.display(),
        state.display()
    ));
    assert_eq!(
        after,
        // Besides the state: the control socket, the lock, the rules saved
        // at start, the record of the configuration it runs, and `status`,
        // the daemon's status file, written at start.
        format!("{before}control\nfill\nlock\nreplay.state\nrules\nrunning-config\nstatus\n"),
        "the state file changed or a temporary file was left"
    );

    in_server_mounts(&format!("rm {}/fill", state.display()));
    let (code, out) = w.knock("3s");
    assert_eq!(
        code,
        0,
        "no grant once there was room again: {out}\n{}",
        server.log()
    );
    let (_, now) = in_server_mounts(&format!("cat {}/replay.state", state.display()));
    assert!(
        remembered_keys(&now) == 1 && now != before,
        "the state was not updated: {now}"
    );
}

/// An administrator deletes our rules while we run. Decided behaviour: the
/// server notices within `verify_every` (2 s), says so loudly and reinstalls
/// them; protection is back, and knocks work.
fn rules_deleted_are_reinstalled(firewall: &str, delete: &str, present: &str) {
    let w = world(firewall);
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "{out}");
    w.wait_expiry();

    w.hosts.server.sh(delete);
    let deleted = Instant::now();
    // No check that the rules are gone: the server may have put them back
    // before a probe could look. Its error line below is the proof that
    // they were deleted.
    let back = eventually(Duration::from_secs(6), || w.hosts.server.try_sh(present).0);
    let took = deleted.elapsed();
    assert!(back, "the rules were not reinstalled:\n{}", server.log());
    assert!(
        took < Duration::from_secs(4),
        "reinstalling took {took:?} (verify_every is 2 s)"
    );
    server.wait_for_log("were changed or removed", Duration::from_secs(1));
    server.wait_for_log("firewall rules reinstalled", Duration::from_secs(1));
    assert!(server
        .log()
        .lines()
        .any(|l| l.contains("ERROR") && l.contains("were changed or removed")));
    // Protected again, for everyone.
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "protection not restored"
    );
    w.assert_no_grant(&server, "the rules were reinstalled");
    let (code, out) = w.knock("3s");
    assert_eq!(
        code,
        0,
        "no grant after the reinstall: {out}\n{}",
        server.log()
    );
    assert!(!w
        .hosts
        .attacker
        .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992));
}

/// Another tool flushes the whole ruleset, as `systemctl reload nftables`
/// does with Debian's stock /etc/nftables.conf. The server learns it from
/// nf_tables change notifications (`verify_every` is a minute here, so the
/// periodic check cannot explain it): the protected port is closed again and
/// the live grant is back, with its remaining time, within moments.
fn flushed_ruleset_is_restored_with_live_grants(firewall: &str, present: &str) {
    let w = world(firewall);
    set_config_key(&w.setup.config, "open_for", "\"30s\"");
    set_config_key(&w.setup.config, "verify_every", "\"60s\"");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "{out}");
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "the attacker got in before the flush"
    );

    // Flush, then time, inside the namespace, until our rules are back.
    let gap_ns = w.hosts.server.sh(&format!(
        "nft flush ruleset; t0=$(date +%s%N); i=0; \
         until {present} >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 20000 ] || exit 1; done; \
         echo $(( $(date +%s%N) - t0 ))"
    ));
    let gap_ms = gap_ns.trim().parse::<u64>().expect("nanoseconds") / 1_000_000;
    eprintln!("{firewall}: our rules were back {gap_ms} ms after `nft flush ruleset`");
    server.wait_for_log("were changed or removed", Duration::from_secs(2));
    server.wait_for_log("live grants restored", Duration::from_secs(2));
    assert!(
        gap_ms < 1000,
        "our rules took {gap_ms} ms to come back (verify_every is 60 s, so no notification was seen?)\n{}",
        server.log()
    );

    // The grant is back with the time it had left, and only for its owner.
    let grants = w.grants();
    let left: u64 = grants
        .lines()
        .find(|l| l.contains(CLIENT_V4) && l.contains("tcp/4992"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the grant was not restored:\n{grants}\n{}", server.log()));
    assert!((15..=30).contains(&left), "{left} s left:\n{grants}");
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "the restored grant does not let its owner in"
    );
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "the protected port is open to the attacker after the flush"
    );
}

/// A knock arrives while our set is gone and nobody has told the server
/// (iptables-legacy sends no change notifications, and `verify_every` is a
/// minute): the grant fails, the server reinstalls its rules at once and
/// grants again, so the knock is honoured all the same.
#[test]
fn a_grant_that_finds_our_set_missing_reinstalls_and_grants() {
    let w = world("iptables");
    set_config_key(&w.setup.config, "iptables_cmd", "\"iptables-legacy\"");
    set_config_key(&w.setup.config, "ip6tables_cmd", "\"ip6tables-legacy\"");
    set_config_key(&w.setup.config, "verify_every", "\"60s\"");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    // Our chain references the set: empty it first, then the set can go.
    w.hosts
        .server
        .sh("iptables-legacy -w -t mangle -F KNOCK-PREROUTING && ipset destroy knock4");
    let (present, _) = w.hosts.server.try_sh("ipset list -n knock4");
    assert!(
        !present,
        "positive control: the set is gone before the knock"
    );
    // The port is open to everyone while our chain is empty, so the
    // client's own check proves nothing; the server's log and the set do.
    let (code, out) = w.knock("5s");
    assert_eq!(code, 0, "{out}\n{}", server.log());
    server.wait_for_log(
        "reinstalling our rules and trying again",
        Duration::from_secs(2),
    );
    server.wait_for_log("firewall rules reinstalled", Duration::from_secs(5));
    server.wait_for_log("granted tcp/4992 to 198.18.0.2", Duration::from_secs(5));
    let grants = w.grants();
    assert!(
        grants.contains(CLIENT_V4),
        "the knock's grant is not in the reinstalled set:\n{grants}\n{}",
        server.log()
    );
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
        "the attacker got in after the repair:\n{}",
        server.log()
    );
    assert!(
        w.hosts.client.tcp_connects(ip(SERVER_V4), 4992),
        "the grant made after the repair does not let its owner in"
    );
}

#[test]
fn nftables_flushed_ruleset_is_restored_with_live_grants() {
    flushed_ruleset_is_restored_with_live_grants(
        "nftables",
        "nft list chain inet knock prerouting",
    );
}

#[test]
fn iptables_flushed_ruleset_is_restored_with_live_grants() {
    flushed_ruleset_is_restored_with_live_grants(
        "iptables",
        "iptables -w -t mangle -C PREROUTING -j KNOCK-PREROUTING",
    );
}

#[test]
fn nftables_table_deleted_is_reinstalled() {
    rules_deleted_are_reinstalled(
        "nftables",
        "nft delete table inet knock",
        "nft list table inet knock >/dev/null",
    );
}

#[test]
fn iptables_chain_deleted_is_reinstalled() {
    rules_deleted_are_reinstalled(
        "iptables",
        "iptables -t mangle -D PREROUTING -j KNOCK-PREROUTING && iptables -t mangle -F KNOCK-PREROUTING && iptables -t mangle -X KNOCK-PREROUTING",
        "iptables -t mangle -S KNOCK-PREROUTING >/dev/null 2>&1 && iptables -t mangle -S PREROUTING | grep -q -- '-j KNOCK-PREROUTING'",
    );
}

/// The capture interface (named, not "any") goes down and comes back up:
/// capture recovers without a restart.
#[test]
fn capture_recovers_after_interface_down_and_up() {
    let w = world("nftables");
    let dev = interface_with(&w.hosts.server, SERVER_V4);
    set_config_key(&w.setup.config, "interface", &format!("{dev:?}"));
    let server = Server::start(&w.hosts.server, &w.setup.config);
    server.wait_for_log(&format!("on {dev}"), Duration::from_secs(1));
    let (code, out) = w.knock("3s");
    assert_eq!(code, 0, "{out}");

    w.hosts.server.sh(&format!("ip link set {dev} down"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        server.alive(),
        "the server died when its interface went down:\n{}",
        server.log()
    );
    w.hosts.server.sh(&format!("ip link set {dev} up"));
    w.wait_expiry();
    let (code, out) = w.knock("5s");
    assert_eq!(
        code,
        0,
        "capture did not recover after the interface came back: {out}\n{}",
        server.log()
    );
    // The client gets in as soon as the grant is in the kernel, which can be
    // a moment before the server's log line about it reaches us.
    server.wait_for_count("granted", 2, Duration::from_secs(2));
    assert_eq!(server.count_log("granted"), 2, "{}", server.log());
    // Said once each, not once per reopening attempt while the link was down.
    assert_eq!(server.count_log("capture failed"), 1, "{}", server.log());
    assert_eq!(server.count_log("is live again"), 1, "{}", server.log());
}

/// SIGHUP with a broken server.toml (or a broken client file, or a change
/// that cannot be made live): the server keeps running on the old
/// configuration, logs the error naming the file or key at fault, leaves its
/// rules as they were, and still honours knocks; a fixed file reloads.
#[test]
fn broken_config_on_reload_keeps_the_old_one() {
    let w = world("nftables");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let good = std::fs::read_to_string(&w.setup.config).unwrap();
    let rules = || w.hosts.server.sh("nft list chain inet knock prerouting");
    let rules_before = rules();
    let config = w.setup.config.display().to_string();
    let bad_client = w.setup.dir.join("clients.d/mallory.toml");
    let with = |key: &str, value: &str| {
        let path = w.lab.dir.join("edit.toml");
        std::fs::write(&path, &good).unwrap();
        set_config_key(&path, key, value);
        std::fs::read(&path).unwrap()
    };
    let bad_interface = String::from_utf8(with("interface", "\"nosuch0\""))
        .unwrap()
        .replace("[\"tcp/4992\"]", "[\"tcp/4992\", \"tcp/2222\"]")
        .into_bytes();
    // (what, server.toml, a client file's mode if one is added, culprit)
    let cases: Vec<(&str, Vec<u8>, Option<u32>, String)> = vec![
        (
            "a TOML syntax error",
            b"protected = [\"tcp/4992\"\n".to_vec(),
            None,
            config.clone(),
        ),
        (
            "an unknown backend",
            with("firewall", "\"pf\""),
            None,
            config.clone(),
        ),
        (
            "non-UTF-8 bytes",
            b"protected = [\"tcp/\xff\"]\n".to_vec(),
            None,
            config.clone(),
        ),
        ("an empty file", Vec::new(), None, config.clone()),
        (
            "a negative duration",
            with("open_for", "\"-5s\""),
            None,
            "open_for".into(),
        ),
        (
            "a world-readable client file",
            good.clone().into_bytes(),
            Some(0o644),
            bad_client.display().to_string(),
        ),
        // These parse, but cannot be applied: a new interface that does not
        // exist (with a new port list, which must not reach the firewall),
        // a new backend, a renamed table.
        (
            "an interface that does not exist",
            bad_interface,
            None,
            "nosuch0".into(),
        ),
        (
            "another backend",
            with("firewall", "\"iptables\""),
            None,
            "firewall".into(),
        ),
        (
            "a renamed nftables table",
            with("nft_table", "\"knock2\""),
            None,
            "nft_table".into(),
        ),
    ];
    for (i, (what, text, client_mode, culprit)) in cases.iter().enumerate() {
        std::fs::write(&w.setup.config, text).unwrap();
        if let Some(mode) = client_mode {
            std::fs::copy(w.setup.dir.join("clients.d/alice.toml"), &bad_client).unwrap();
            std::fs::set_permissions(
                &bad_client,
                std::os::unix::fs::PermissionsExt::from_mode(*mode),
            )
            .unwrap();
        }
        server.signal("HUP");
        server.wait_for_count(
            "reload failed, still running on the previous configuration",
            i + 1,
            Duration::from_secs(3),
        );
        let line = server
            .log()
            .lines()
            .rfind(|l| l.contains("reload failed"))
            .unwrap()
            .to_owned();
        assert!(
            line.contains(culprit.as_str()),
            "{what}: the error does not name {culprit}: {line}"
        );
        assert!(server.alive(), "{what}: the server died");
        assert_eq!(
            rules(),
            rules_before,
            "{what}: a failed reload changed our rules"
        );
        assert_eq!(
            w.hosts.server.sh("nft list tables").trim(),
            "table inet knock",
            "{what}"
        );
        let (code, out) = w.knock("3s");
        assert_eq!(
            code,
            0,
            "{what}: knocks no longer honoured: {out}\n{}",
            server.log()
        );
        // A new grant, not the previous one still running.
        server.wait_for_count("granted", i + 1, Duration::from_secs(1));
        assert!(
            !w.hosts
                .attacker
                .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992),
            "{what}: protection lost"
        );
        if client_mode.is_some() {
            std::fs::remove_file(&bad_client).unwrap();
        }
    }
    // Fixed: the reload goes through.
    std::fs::write(&w.setup.config, &good).unwrap();
    server.signal("HUP");
    server.wait_for_log("reloaded: 1 clients", Duration::from_secs(3));
    assert!(server.alive());
    assert_eq!(rules(), rules_before);
}

/// The keys a replay state remembers: its `REPLAY-ID STAMP` lines.
fn remembered_keys(state: &str) -> usize {
    state
        .lines()
        .filter(|line| {
            line.split_once(' ')
                .is_some_and(|(id, _)| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .count()
}
