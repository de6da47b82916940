//! Changing a running server without locking anyone out: `knock-server
//! reload` reports what the server did, `apply` keeps a change only when it
//! is confirmed, and puts the previous files back when it is not; live
//! grants survive both ways. Real knock-server, real firewall, namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use knock_tests::*;

struct World {
    _lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
}

/// A server protecting tcp/4992 with open_for 60 s (so that a grant outlives
/// an apply); alice knocks from the client host.
fn world(firewall: &str) -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992"], "");
    set_config_key(&setup.config, "open_for", "\"60s\"");
    let alice = setup.keygen("alice", SERVER_V4, None);
    start_echo(&lab, &hosts.server, 4992);
    start_echo(&lab, &hosts.server, 2222);
    World {
        _lab: lab,
        hosts,
        setup,
        alice,
    }
}

impl World {
    /// `knock-server ARGS --config CONFIG` on the server: (code, stdout, stderr).
    fn server_cmd(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .hosts
            .server
            .cmd(bin("knock-server"))
            .args(args)
            .arg("--config")
            .arg(&self.setup.config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A knock from the client host for a short grant; exit code and output.
    fn knock(&self, profile: &Path, ports: &[&str]) -> (i32, String) {
        let mut args = vec!["open", SERVER_V4];
        args.extend_from_slice(ports);
        args.extend_from_slice(&["--open-for", "2s", "--timeout", "2s"]);
        let (code, out, err) = client(&self.hosts.client, profile, &args);
        (code, format!("{out}{err}"))
    }

    /// Waits until no grant for the client host is live.
    fn wait_client_grants_gone(&self) {
        assert!(
            eventually(Duration::from_secs(10), || !self
                .setup
                .status(&self.hosts.server)
                .contains(CLIENT_V4)),
            "the client's grants never ran out:\n{}",
            self.setup.status(&self.hosts.server)
        );
    }

    fn clients_dir(&self) -> PathBuf {
        self.setup.dir.join("clients.d")
    }

    fn apply(&self, timeout: &str) -> Apply {
        let mut cmd = self.hosts.server.cmd(bin("knock-server"));
        cmd.args(["apply", "--timeout", timeout, "--config"])
            .arg(&self.setup.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Apply::spawn(cmd.spawn().unwrap())
    }
}

/// A running `knock-server apply`, its output collected as it comes.
struct Apply {
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Apply {
    fn spawn(mut child: Child) -> Self {
        let out = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut pipe in pipes {
            let out = Arc::clone(&out);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Self {
            child,
            out,
            readers,
        }
    }

    /// What the apply's terminal going away does to it.
    fn hang_up(&self) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn wait_for(&self, needle: &str) {
        assert!(
            eventually(Duration::from_secs(10), || self.output().contains(needle)),
            "apply never said {needle:?}:\n{}",
            self.output()
        );
    }

    /// Waits for the exit: (code, everything it printed).
    fn wait(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for reader in self.readers.drain(..) {
                    reader.join().unwrap();
                }
                return (status.code().unwrap_or(-1), self.output());
            }
            assert!(
                Instant::now() < deadline,
                "apply did not exit within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Apply {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A change confirmed from another session is kept: the new client opens,
/// during the trial and after it; a grant made before the change is still
/// live; a second confirmation finds nothing to confirm.
#[test]
fn apply_confirmed_is_kept() {
    let w = world("nftables");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    // A live grant for the attacker host's address, made before the change.
    let carol = w.setup.keygen("carol", SERVER_FOR_ATTACKER_V4, None);
    let (code, out, err) = w.server_cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = client(
        &w.hosts.attacker,
        &carol,
        &["open", SERVER_FOR_ATTACKER_V4, "4992"],
    );
    assert_eq!(code, 0, "carol: {out}{err}");

    let bob = w.setup.keygen("bob", SERVER_V4, None);
    let (code, out) = w.knock(&bob, &["4992"]);
    assert_eq!(code, 1, "bob opened before the change was applied: {out}");
    let (code, out) = w.knock(&w.alice, &["4992"]);
    assert_eq!(code, 0, "positive control, alice: {out}");
    w.wait_client_grants_gone();

    let apply = w.apply("30s");
    apply.wait_for("the running server loaded it: 3 clients");
    assert!(
        apply.output().contains("client bob added"),
        "{}",
        apply.output()
    );
    let (code, out) = w.knock(&bob, &["4992"]);
    assert_eq!(code, 0, "bob, during the trial: {out}\n{}", server.log());

    let (code, out, err) = w.server_cmd(&["confirm"]);
    assert_eq!(code, 0, "confirm: {out}{err}");
    assert!(
        out.starts_with("confirmed: `knock-server apply` (pid "),
        "{out}"
    );
    let (code, out) = apply.wait(Duration::from_secs(5));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("confirmed by knock-server confirm: the new configuration stays"),
        "{out}"
    );

    let (code, out, err) = w.server_cmd(&["confirm"]);
    assert_eq!(code, 1, "a second confirm: {out}{err}");
    assert!(err.contains("nothing to confirm"), "{err}");
    w.wait_client_grants_gone();
    let (code, out) = w.knock(&bob, &["4992"]);
    assert_eq!(code, 0, "bob, after the confirmation: {out}");
    assert!(w.clients_dir().join("bob.toml").exists());
    assert!(
        w.setup.status(&w.hosts.server).contains(ATTACKER_V4),
        "carol's grant did not survive the change:\n{}",
        w.setup.status(&w.hosts.server)
    );
    assert_eq!(
        server.count_log("reloaded: 3 clients"),
        1,
        "{}",
        server.log()
    );
}

/// A change nobody confirms is undone: alice re-keyed and a second port
/// protected, then the deadline passes. During the trial the new profile
/// opens both ports and the old one nothing; afterwards the old profile
/// opens again, the new one does not, the second port is no longer
/// protected, and the unconfirmed files are kept aside. A grant made before
/// the change outlives both reloads. The apply's session hanging up changes
/// nothing of this.
fn apply_unconfirmed_rolls_back(firewall: &str) {
    let w = world(firewall);
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let carol = w.setup.keygen("carol", SERVER_FOR_ATTACKER_V4, None);
    assert_eq!(w.server_cmd(&["reload"]).0, 0);
    let (code, out, err) = client(
        &w.hosts.attacker,
        &carol,
        &["open", SERVER_FOR_ATTACKER_V4, "4992"],
    );
    assert_eq!(code, 0, "carol: {out}{err}");
    let carol_holds_a_grant = || w.setup.status(&w.hosts.server).contains(ATTACKER_V4);

    let config_before = std::fs::read_to_string(&w.setup.config).unwrap();
    let alice_before = std::fs::read_to_string(w.clients_dir().join("alice.toml")).unwrap();
    assert!(
        w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 2222),
        "positive control: tcp/2222 is not protected yet"
    );
    set_config_key(&w.setup.config, "protected", "[\"tcp/4992\", \"tcp/2222\"]");
    let new_alice = w.setup.dir.join("alice-new.knock");
    sh(w.hosts.server.cmd(bin("knock-keygen")).args([
        "alice",
        "--host",
        SERVER_V4,
        "--force",
        "--config",
        w.setup.config.to_str().unwrap(),
        "--out",
        new_alice.to_str().unwrap(),
    ]));
    let config_new = std::fs::read_to_string(&w.setup.config).unwrap();
    let alice_new = std::fs::read_to_string(w.clients_dir().join("alice.toml")).unwrap();

    let apply = w.apply("6s");
    apply.wait_for("the running server loaded it: 2 clients, protecting tcp/4992,tcp/2222");
    // The session that ran apply dies (the lock-out this guards against):
    // the rollback must still happen.
    apply.hang_up();
    let (code, out) = w.knock(&w.alice, &["4992"]);
    assert_eq!(code, 1, "the old profile opened during the trial: {out}");
    let (code, out) = w.knock(&new_alice, &["4992", "2222"]);
    assert_eq!(
        code,
        0,
        "the new profile, during the trial: {out}\n{}",
        server.log()
    );
    assert!(
        !w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 2222),
        "tcp/2222 is not protected during the trial"
    );
    assert!(
        carol_holds_a_grant(),
        "carol's grant lost when the change loaded"
    );

    let (code, out) = apply.wait(Duration::from_secs(20));
    assert_eq!(code, 1, "{out}");
    let last = out.lines().last().unwrap_or("");
    let config = w.setup.config.display();
    assert_eq!(
        last,
        format!("knock-server: error: not confirmed within 6s: rolled back ({config} restored; client alice restored); the server runs the previous configuration again: 2 clients, protecting tcp/4992"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "undid: {config} restored (the unconfirmed version is kept as {config}.unconfirmed)"
        )),
        "{out}"
    );

    w.wait_client_grants_gone();
    let (code, out) = w.knock(&new_alice, &["4992"]);
    assert_eq!(code, 1, "the new profile opened after the rollback: {out}");
    let (code, out) = w.knock(&w.alice, &["4992"]);
    assert_eq!(
        code,
        0,
        "the old profile after the rollback: {out}\n{}",
        server.log()
    );
    assert!(
        w.hosts
            .attacker
            .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 2222),
        "tcp/2222 is still protected after the rollback"
    );
    assert!(carol_holds_a_grant(), "carol's grant lost in the rollback");

    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(w.setup.config.clone()), config_before);
    assert_eq!(
        read(w.setup.dir.join("server.toml.unconfirmed")),
        config_new
    );
    assert_eq!(read(w.clients_dir().join("alice.toml")), alice_before);
    assert_eq!(
        read(w.clients_dir().join(".alice.toml.unconfirmed")),
        alice_new
    );
    let (code, out, err) = w.server_cmd(&["confirm"]);
    assert_eq!(code, 1, "confirm after the rollback: {out}{err}");
    let log = server.log();
    let reloads: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("reloaded: ").map(|(_, summary)| summary))
        .collect();
    assert_eq!(
        reloads,
        [
            "2 clients, protecting tcp/4992",
            "2 clients, protecting tcp/4992,tcp/2222",
            "2 clients, protecting tcp/4992"
        ],
        "{}",
        server.log()
    );
}

on_both_backends!(apply_unconfirmed_rolls_back);

/// What `apply` cannot load changes nothing, exit 2: files the check refuses
/// (the server is not even asked), and a file the running server refuses (an
/// interface that does not exist). No trial is left waiting, the files stay
/// as the operator wrote them, alice still opens.
#[test]
fn apply_of_a_broken_file_changes_nothing() {
    let w = world("nftables");
    let server = Server::start(&w.hosts.server, &w.setup.config);
    let good = std::fs::read_to_string(&w.setup.config).unwrap();
    let loose = w.clients_dir().join("mallory.toml");

    std::fs::copy(w.clients_dir().join("alice.toml"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, out, err) = w.server_cmd(&["apply", "--timeout", "5s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(loose.to_str().unwrap()), "{err}");
    assert!(loose.exists(), "apply changed the operator's files");
    std::fs::remove_file(&loose).unwrap();

    std::fs::write(&w.setup.config, format!("{good}bogus = 1\n")).unwrap();
    let (code, out, err) = w.server_cmd(&["apply"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(
        server.count_log("reload"),
        0,
        "the server was asked to reload:\n{}",
        server.log()
    );

    std::fs::write(&w.setup.config, &good).unwrap();
    set_config_key(&w.setup.config, "interface", "\"nosuch0\"");
    let edited = std::fs::read_to_string(&w.setup.config).unwrap();
    let (code, out, err) = w.server_cmd(&["apply", "--timeout", "5s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(
            "the running server refused it and runs the previous configuration, unchanged"
        ) && err.contains("nosuch0"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&w.setup.config).unwrap(), edited);
    assert!(!w.setup.dir.join("state/apply.pending").exists());
    let (code, out, err) = w.server_cmd(&["confirm"]);
    assert_eq!(code, 1, "{out}{err}");

    let (code, out) = w.knock(&w.alice, &["4992"]);
    assert_eq!(
        code,
        0,
        "alice after the refused changes: {out}\n{}",
        server.log()
    );
    std::fs::write(&w.setup.config, &good).unwrap();
    let (code, out, err) = w.server_cmd(&["apply"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to apply"), "{out}");
}

/// `knock-server reload` waits for the server and says what it did: exit 0
/// with a summary (and warnings for doubtful configurations), exit 2 with
/// the culprit when refused; `status` shows the refusal, the last reload,
/// refusals by reason and the client count, also as JSON and Prometheus.
#[test]
fn reload_reports_its_outcome() {
    let w = world("nftables");
    let server = Server::start(&w.hosts.server, &w.setup.config);

    let (code, out, err) = w.server_cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "reloaded: 1 clients, protecting tcp/4992");
    assert_eq!(err, "", "nothing doubtful yet");

    set_config_key(&w.setup.config, "protected", "[\"tcp/4992\", \"tcp/2222\"]");
    let (code, out, err) = w.server_cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("knock-server: warning: protected port tcp/2222 is permitted to no client"),
        "{err}"
    );
    server.wait_for_log(
        "protected port tcp/2222 is permitted to no client",
        Duration::from_secs(2),
    );
    let (code, out, err) = w.server_cmd(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("protected port tcp/2222 is permitted to no client"),
        "{err}"
    );

    let loose = w.clients_dir().join("mallory.toml");
    std::fs::copy(w.clients_dir().join("alice.toml"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, out, err) = w.server_cmd(&["reload"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "knock-server: error: reload refused, the server runs its previous configuration: "
        ) && err.contains(loose.to_str().unwrap()),
        "{err}"
    );
    assert!(server.alive());

    // A datagram that is not a knock, for the refusal counters.
    send_udp(&w.hosts.client, ip(SERVER_V4), 62201, &[0u8; 200]);
    let status = || w.server_cmd(&["status"]).1;
    assert!(
        eventually(Duration::from_secs(5), || status()
            .contains("refused        1 since start")),
        "{}",
        status()
    );
    let text = status();
    assert!(text.contains("clients        1 loaded"), "{text}");
    assert!(text.contains("last reload    REFUSED"), "{text}");
    assert!(text.contains("mallory.toml"), "{text}");
    let (code, json, _) = w.server_cmd(&["status", "--json"]);
    assert_eq!(code, 0);
    assert!(json.contains("\"outcome\":\"refused\""), "{json}");
    let (code, metrics, err) = w.server_cmd(&["status", "--format", "prometheus"]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "knock_up 1",
        "knock_rules_installed 1",
        "knock_capture_live 1",
        "knock_clients 1",
        "knock_last_reload_success 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("knock_refused_total{reason=") && l.ends_with(" 1")),
        "{metrics}"
    );

    std::fs::remove_file(&loose).unwrap();
    let (code, out, err) = w.server_cmd(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.server_cmd(&["status", "--format", "prometheus"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l == "knock_last_reload_success 1"),
        "{out}"
    );

    drop(server);
    let (code, out, err) = w.server_cmd(&["reload"]);
    assert_eq!(code, 1, "reload with no server: {out}{err}");
    assert!(err.contains("is not running"), "{err}");
}
