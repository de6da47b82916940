//! The state directory on a real host: one server per state directory, the
//! rules saved there after every install and restored at boot by
//! `knock-server restore-rules`, and an identity that `run` never invents.
//! (The boot itself, with the packaged units, is in package.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use knock_tests::*;

struct World {
    _lab: Lab,
    hosts: Hosts,
    setup: Setup,
    alice: PathBuf,
}

fn world() -> World {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    let alice = setup.keygen("alice", SERVER_V4, None);
    start_echo(&lab, &hosts.server, 4992);
    start_echo(&lab, &hosts.server, 4993);
    World {
        _lab: lab,
        hosts,
        setup,
        alice,
    }
}

impl World {
    /// `knock-client open` for tcp/4992: exit 0 once the port accepts.
    fn knock(&self) -> (i32, String) {
        let (code, out, err) = client(
            &self.hosts.client,
            &self.alice,
            &["open", SERVER_V4, "4992", "--timeout", "3s"],
        );
        (code, out + &err)
    }

    fn connects(&self, port: u16) -> bool {
        self.hosts.client.tcp_connects(ip(SERVER_V4), port)
    }

    fn state(&self) -> PathBuf {
        self.setup.dir.join("state")
    }

    fn saved(&self) -> String {
        std::fs::read_to_string(self.state().join("rules")).unwrap_or_default()
    }

    /// `knock-server ARGS` in the server's namespace, to its exit.
    fn server_cmd(&self, args: &[&str]) -> (i32, String, String) {
        run_server_to_exit(&self.hosts.server, args, Duration::from_secs(15))
    }

    fn config(&self) -> &str {
        self.setup.config.to_str().unwrap()
    }

    /// Rewrites `key` in server.toml (appending it if absent).
    fn set(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.setup.config).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} ")) && !l.starts_with(&format!("{key}=")))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{key} = {value}"));
        std::fs::write(&self.setup.config, lines.join("\n") + "\n").unwrap();
    }
}

/// The single line of `stderr` that says error, which must be its last.
fn one_error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    errors[0].to_owned()
}

/// A second `run` on the same state directory exits 1 at once, with one line
/// naming the running server's pid and the directory, and the first keeps
/// honouring knocks. Positive control: a second server on another state
/// directory, otherwise alike and started the same way beside the first,
/// is not refused.
#[test]
fn a_second_server_on_one_state_dir_is_refused_at_once() {
    let w = world();
    let first = Server::start(&w.hosts.server, &w.setup.config);
    assert_eq!(
        std::fs::read_to_string(w.state().join("lock")).unwrap(),
        format!("{}\n", first.pid()),
        "the lock file names its holder"
    );

    let started = Instant::now();
    let (code, _, err) = w.server_cmd(&["run", "--config", w.config()]);
    let took = started.elapsed();
    assert_eq!(code, 1, "second run on one state dir: {err}");
    assert!(
        took < Duration::from_secs(2),
        "refused only after {took:?}: {err}"
    );
    let line = one_error_line(&err);
    assert!(
        line.contains(&format!("pid {}", first.pid()))
            && line.contains(&*w.state().to_string_lossy()),
        "the refusal names the holder and the state dir: {line}"
    );
    assert_eq!(
        std::fs::read_to_string(w.state().join("lock")).unwrap(),
        format!("{}\n", first.pid()),
        "the refused server overwrote the lock file"
    );

    // Another state directory (and its own table and port, so the two
    // servers' rules stay apart) beside the first: not refused.
    let other = w.setup.dir.join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&w.setup.config)
            .unwrap()
            .replace("/state\"", "/state-other\"")
            .replace("tcp/4992", "tcp/4993")
            + "nft_table = \"knock_other\"\n",
    )
    .unwrap();
    let second = Server::start(&w.hosts.server, &other);
    assert_eq!(second.stop(), Some(0));

    // The first was running all along, and still honours a knock.
    let mut first = first;
    assert!(first.is_running(), "{}", first.log());
    assert!(!w.connects(4992), "tcp/4992 open before any knock");
    let (code, out) = w.knock();
    assert_eq!(code, 0, "the first server after the refusals: {out}");
    first.wait_for_log("granted tcp/4992", Duration::from_secs(2));
}

/// `run` saves what it installs, and so does the rules keeper after a
/// reload and after a reinstall; `restore-rules` puts the saved rules back
/// after the firewall was emptied (as at boot): the ports are closed again,
/// which the same probe without our rules shows is their doing.
#[test]
fn saved_rules_follow_every_install_and_restore_closes_the_ports() {
    let w = world();
    let (code, _, err) = w.server_cmd(&["restore-rules", "--config", w.config()]);
    assert_eq!(code, 0, "nothing saved yet: {err}");
    assert!(err.contains("nothing to restore"), "{err}");
    let typo = w.setup.dir.join("no-such-dir");
    let (code, _, err) = w.server_cmd(&["restore-rules", "--state-dir", typo.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        one_error_line(&err).contains(&format!("--state-dir {}", typo.display())),
        "{err}"
    );
    assert_eq!(w.hosts.server.sh("nft list ruleset").trim(), "");

    let server = Server::start(&w.hosts.server, &w.setup.config);
    assert!(
        w.saved().contains("\nprotected = tcp/4992\n")
            && w.saved().contains("\nnft_table = knock\n"),
        "saved at start:\n{}",
        w.saved()
    );

    // A reload with another port list: saved by the keeper.
    w.set("protected", "[\"tcp/4992\", \"tcp/4993\"]");
    server.signal("HUP");
    server.wait_for_log("reloaded", Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(2), || w
            .saved()
            .contains("\nprotected = tcp/4992 tcp/4993\n")),
        "not saved after the reload:\n{}",
        w.saved()
    );

    // A reinstall after someone deleted our table: saved again.
    std::fs::remove_file(w.state().join("rules")).unwrap();
    w.hosts.server.sh("nft delete table inet knock");
    server.wait_for_log("firewall rules reinstalled", Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(2), || w
            .saved()
            .contains("\nprotected = tcp/4992 tcp/4993\n")),
        "not saved after the reinstall:\n{}",
        w.saved()
    );

    // As at boot: no server, an empty firewall.
    server.kill();
    w.hosts.server.sh("nft flush ruleset");
    assert!(
        w.connects(4992) && w.connects(4993),
        "without our rules both ports answer"
    );
    let (code, _, err) = w.server_cmd(&["restore-rules", "--config", w.config()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("restored the nftables rules saved in") && err.contains("tcp/4992,tcp/4993"),
        "{err}"
    );
    assert!(!w.connects(4992), "tcp/4992 open after restore-rules");
    assert!(!w.connects(4993), "tcp/4993 open after restore-rules");

    // A damaged file: exit 1, one line naming it, the firewall untouched.
    w.hosts.server.sh("nft flush ruleset");
    std::fs::write(w.state().join("rules"), "format = 1\nfirewall = pf\n").unwrap();
    let (code, _, err) = w.server_cmd(&["restore-rules", "--config", w.config()]);
    assert_eq!(code, 1, "{err}");
    let line = one_error_line(&err);
    assert!(
        line.contains(&*w.state().join("rules").to_string_lossy()) && line.contains("`firewall`"),
        "{line}"
    );
    assert_eq!(w.hosts.server.sh("nft list ruleset").trim(), "");
}

/// The rules restored at boot are where the last run put them. When the
/// configuration has moved them since (another table), the next start
/// removes them, or they would drop the protected ports in spite of every
/// grant. Positive control: they are there until that start.
#[test]
fn a_start_removes_saved_rules_the_configuration_has_moved() {
    let w = world();
    let first = Server::start(&w.hosts.server, &w.setup.config);
    assert_eq!(first.stop(), Some(0));
    let tables = w.hosts.server.sh("nft list tables");
    assert!(tables.contains("inet knock\n"), "stay-closed: {tables}");

    w.set("nft_table", "\"knock_moved\"");
    let second = Server::start(&w.hosts.server, &w.setup.config);
    second.wait_for_log(
        "removed the nftables rules saved last",
        Duration::from_secs(1),
    );
    let tables = w.hosts.server.sh("nft list tables");
    assert_eq!(tables.trim(), "table inet knock_moved", "{tables}");
    assert!(w.saved().contains("\nnft_table = knock_moved\n"));
    let (code, out) = w.knock();
    assert_eq!(code, 0, "a knock after the move: {out}");
}

/// `run` never creates the server identity (every profile depends on it):
/// without it, exit 2 with one line naming the file and the command that
/// creates it, and nothing changed. Positive control: with it, ready.
#[test]
fn a_missing_identity_is_a_configuration_error() {
    let mut lab = Lab::new();
    let server_ns = lab.netns("srv");
    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    let identity = setup.dir.join("server.id");
    let (code, _, err) = run_server_to_exit(
        &server_ns,
        &["run", "--config", setup.config.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(
        line.contains(&*identity.to_string_lossy())
            && line.contains("knock-keygen NAME --host THIS-HOST --config")
            && line.contains(&*setup.config.to_string_lossy()),
        "{line}"
    );
    assert!(!identity.exists(), "run created an identity");
    assert!(!setup.dir.join("state").exists(), "run created its state");
    assert_eq!(server_ns.sh("nft list ruleset").trim(), "");

    setup.keygen("alice", "198.18.0.1", None);
    assert!(identity.exists());
    let server = Server::start(&server_ns, &setup.config);
    assert!(
        server.log().contains("ready: 1 clients"),
        "{}",
        server.log()
    );
}
