//! The state directory on a real host: one server per state directory.
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

    /// `knock-server ARGS` in the server's namespace, to its exit.
    fn server_cmd(&self, args: &[&str]) -> (i32, String, String) {
        run_server_to_exit(&self.hosts.server, args, Duration::from_secs(15))
    }

    fn config(&self) -> &str {
        self.setup.config.to_str().unwrap()
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
