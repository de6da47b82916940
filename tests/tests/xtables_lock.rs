//! A knock must never wait on the firewall health check, whoever holds the
//! xtables lock.
//!
//! On the iptables backend the periodic health check (`verify_every`) runs
//! `iptables -S`, which takes the xtables lock. Any other process holding
//! that lock (a configuration tool, a container runtime, an administrator's
//! script) must not stop knocks from being honoured meanwhile. When the
//! check ran inline on the packet loop with `iptables -w` (wait forever), a
//! knock sent under a 20 s hold waited until the lock was released: 17.8 s,
//! 14.8 s and 11.8 s for knocks sent 2, 5 and 8 s into it.
//!
//! iptables-legacy is used because iptables-nft takes no xtables lock. The
//! machine-wide lock (`/run/xtables.lock`) is never touched: the server runs
//! with `XTABLES_LOCKFILE` pointing at a file of this test's own, which its
//! iptables children inherit, and this test holds that file's lock from a
//! bounded process (`flock`, then `sleep`) in the server namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knock_tests::*;

/// The health check period configured for this test.
const VERIFY_EVERY: Duration = Duration::from_secs(1);
/// How long the holder keeps the lock unless released earlier: far longer
/// than every knock made under it takes, even on a server that waits.
const HOLD_SECS: u32 = 20;

/// A process holding the xtables lock file: a shell opens the file, takes
/// the lock on it with `flock FD`, then becomes `sleep`, so one process holds
/// the lock, for at most [`HOLD_SECS`] even if this test dies without
/// unwinding. Dropping it kills that process, which releases the lock, so
/// the lock is released even when the test fails (and the lab kills
/// whatever is left in the namespace).
#[derive(Debug)]
struct LockHolder {
    child: Child,
}

impl LockHolder {
    fn take(ns: &Ns, lockfile: &Path) -> Self {
        let mut cmd = ns.cmd("sh");
        cmd.args([
            "-c",
            &format!("exec 9>>\"$1\" && flock 9 && exec sleep {HOLD_SECS}"),
            "sh",
        ])
        .arg(lockfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn the lock holder");
        Self { child }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is the lock on `lockfile` taken by someone (a non-blocking try fails)?
fn lock_is_held(lockfile: &Path) -> bool {
    !Command::new("flock")
        .args(["-n", "-E", "99"])
        .arg(lockfile)
        .arg("true")
        .status()
        .expect("flock -n")
        .success()
}

/// The command lines of the server's child processes.
fn server_children(server: &Server) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-o", "args=", "--ppid", &server.pid().to_string()])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `knock-client open` for `port`, timed from its start to its exit.
fn timed_knock(hosts: &Hosts, profile: &Path, port: &str) -> (i32, String, Duration) {
    let started = Instant::now();
    let (code, out, err) = client(
        &hosts.client,
        profile,
        &["open", SERVER_V4, port, "--timeout", "5s"],
    );
    (code, format!("{out}{err}"), started.elapsed())
}

#[test]
fn knocks_are_honoured_while_another_process_holds_the_xtables_lock() {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    // A grant is per (source, port): each knock below asks for a port that
    // no earlier knock opened, so none can pass on an earlier grant.
    let ports = ["4991", "4992", "4993", "4994", "4995"];
    let protected: Vec<String> = ports.iter().map(|p| format!("tcp/{p}")).collect();
    let protected: Vec<&str> = protected.iter().map(String::as_str).collect();
    let setup = Setup::new(
        &lab,
        "server",
        "iptables",
        &protected,
        &format!(
            "iptables_cmd = \"iptables-legacy\"\nip6tables_cmd = \"ip6tables-legacy\"\nverify_every = \"{}s\"\n",
            VERIFY_EVERY.as_secs()
        ),
    );
    let alice = setup.keygen("alice", SERVER_V4, None);
    for port in ports {
        start_echo(&lab, &hosts.server, port.parse().unwrap());
    }

    let lockfile = lab.dir.join("xtables.lock");
    std::fs::write(&lockfile, "").unwrap();
    let mut cmd = hosts.server.cmd(bin("knock-server"));
    cmd.args(["run", "--config"])
        .arg(&setup.config)
        .env("XTABLES_LOCKFILE", &lockfile);
    let mut server = Server::start_command(&hosts.server, &setup.config, cmd);

    // Reference: a knock with nobody holding the lock.
    let (code, out, took) = timed_knock(&hosts, &alice, "4991");
    assert_eq!(
        code,
        0,
        "knock without a lock held failed: {out}\n{}",
        server.log()
    );
    eprintln!("knock with the lock free: {took:?}");

    // The ports knocked below are closed now (checked before the lock is
    // taken, so these slow checks do not eat into the hold).
    let srv = ip(SERVER_V4);
    for port in &ports[1..] {
        assert!(
            !hosts.client.tcp_connects(srv, port.parse().unwrap()),
            "tcp/{port} open before its knock"
        );
    }

    // Another process takes the xtables lock, and keeps it.
    let mut holder = LockHolder::take(&hosts.server, &lockfile);
    let locked_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || lock_is_held(&lockfile)),
        "the lock holder never took the lock"
    );
    // Positive control: iptables-legacy, pointed at that lock file, really
    // cannot take the lock now.
    let (ok, text) = hosts.server.try_sh(&format!(
        "XTABLES_LOCKFILE='{}' iptables-legacy -w 1 -t filter -S",
        lockfile.display()
    ));
    assert!(
        !ok && text.contains("xtables lock"),
        "iptables-legacy was not kept out by the held lock: {text}"
    );
    // Let at least two health checks fall due inside the hold before
    // knocking; note any firewall command the server runs meanwhile.
    let mut seen = Vec::new();
    while locked_at.elapsed() < 2 * VERIFY_EVERY + Duration::from_millis(200) {
        for line in server_children(&server) {
            if !seen.contains(&line) {
                seen.push(line);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "lock held for {:?}; server children seen meanwhile: {seen:?}",
        locked_at.elapsed()
    );
    assert!(holder.alive(), "the lock holder exited early");

    for port in &ports[1..4] {
        let (code, out, took) = timed_knock(&hosts, &alice, port);
        eprintln!(
            "knock tcp/{port} with the lock held ({:?} into the hold): exit {code} after {took:?}",
            locked_at.elapsed()
        );
        assert!(
            holder.alive() && lock_is_held(&lockfile),
            "the lock was released during the knock: the test proves nothing"
        );
        assert_eq!(
            code,
            0,
            "knock for tcp/{port} not honoured within 5 s while another process held the xtables lock ({took:?}): {out}\nserver children: {:?}\n{}",
            server_children(&server),
            server.log()
        );
    }
    assert!(
        server.is_running(),
        "the server stopped while the lock was held:\n{}",
        server.log()
    );

    // Release: the server keeps working afterwards.
    drop(holder);
    eprintln!("lock released after {:?}", locked_at.elapsed());
    // The server's own health check, waiting for the lock, may take it for
    // a moment once the holder is gone.
    assert!(
        eventually(Duration::from_secs(5), || !lock_is_held(&lockfile)),
        "the lock is still held 5 s after its holder was killed"
    );
    let (code, out, took) = timed_knock(&hosts, &alice, "4995");
    assert_eq!(
        code,
        0,
        "knock after the lock was released failed: {out}\n{}",
        server.log()
    );
    eprintln!("knock after the release: {took:?}");
    // A few more health checks, now with the lock free.
    std::thread::sleep(2 * VERIFY_EVERY);
    assert!(
        server.is_running(),
        "the server stopped after the lock was released:\n{}",
        server.log()
    );
}
