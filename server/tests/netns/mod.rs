//! Tests that need a network namespace of their own (firewall backends,
//! capture): each creates a fresh one and re-runs its own test binary
//! inside it (`ip netns exec NS <self> <test> --exact`), so the host's own
//! firewall and interfaces are never touched. They need root, and fail
//! (never skip) when a namespace cannot be created; the namespace is
//! deleted afterwards, pass or fail.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Set (to the namespace's name) in the child that runs inside it.
const CHILD: &str = "KNOCK_TEST_NETNS";
/// The network namespace the parent ran in, which the child must not be in.
const PARENT_NS: &str = "KNOCK_TEST_PARENT_NS";

fn current_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .expect("read /proc/self/ns/net")
        .to_string_lossy()
        .into_owned()
}

/// Deletes the namespace, even when the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Runs `body` in a fresh network namespace named `PREFIX-PID-N`: here if
/// we are the child, else by re-running the test `test` inside a new one.
pub fn in_fresh_netns(prefix: &str, test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        let parent = std::env::var(PARENT_NS).unwrap_or_default();
        let ours = current_netns();
        assert!(
            !parent.is_empty() && parent != ours,
            "refusing to run {test} outside a fresh namespace ({ours}, parent {parent:?})"
        );
        body();
        return;
    }
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let created = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .expect("run ip(8)");
    assert!(
        created.status.success(),
        "cannot create network namespace {name} (these tests need root and ip(8)): {}",
        String::from_utf8_lossy(&created.stderr).trim()
    );
    let _guard = Netns(name.clone());
    let exe = std::env::current_exe().expect("path of the test binary");
    let child = Command::new("ip")
        .args(["netns", "exec", &name])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &name)
        .env(PARENT_NS, current_netns())
        .output()
        .expect("run the test inside the namespace");
    let stdout = String::from_utf8_lossy(&child.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&child.stderr));
    assert!(
        child.status.success(),
        "{test} failed inside namespace {name}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run inside namespace {name}"
    );
}
