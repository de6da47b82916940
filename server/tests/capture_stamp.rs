//! The kernel's receive time on captured datagrams (`Datagram::arrived`).
//!
//! The test creates a fresh network namespace (`knockstamp-PID-N`), re-runs
//! itself inside it (`ip netns exec NS <self> <test> --exact`) and deletes
//! it afterwards, pass or fail, as `backends.rs` does. It needs root, and
//! fails (never skips) when a namespace cannot be created.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use knock_proto::MIN_KNOCK_LEN;
use knock_server::capture::{Capture, Next};

/// Set (to the namespace's name) in the child that runs inside it.
const CHILD: &str = "KNOCK_STAMP_TEST_NETNS";
/// The network namespace the parent ran in, which the child must not be in.
const PARENT_NS: &str = "KNOCK_STAMP_TEST_PARENT_NS";

const PORT: u16 = 62201;
/// How long each datagram waits in the socket's queue before it is read.
const QUEUED: Duration = Duration::from_millis(50);

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

/// Runs `body` in a fresh network namespace: here if we are the child,
/// else by re-running this very test inside a new namespace.
fn in_fresh_netns(test: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        let parent = std::env::var(PARENT_NS).unwrap_or_default();
        let ours = current_netns();
        assert!(
            !parent.is_empty() && parent != ours,
            "refusing to capture outside a fresh namespace ({ours}, parent {parent:?})"
        );
        body();
        return;
    }
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "knockstamp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let created = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .expect("run ip(8)");
    assert!(
        created.status.success(),
        "cannot create network namespace {name} (this test needs root and ip(8)): {}",
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

/// Reads until the datagram carrying `payload`; returns its arrival time
/// and the moment it was read.
fn read_one(capture: &mut Capture, payload: &[u8]) -> (Option<SystemTime>, SystemTime) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Next::Datagram(datagram) = capture.wait_next().expect("read the capture") {
            if datagram.payload == payload {
                return (datagram.arrived, SystemTime::now());
            }
        }
    }
    unreachable!("the datagram sent was not captured within 5 s");
}

#[test]
fn datagrams_carry_the_kernels_arrival_time() {
    in_fresh_netns("datagrams_carry_the_kernels_arrival_time", || {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip(8)");
        assert!(up.success(), "cannot bring lo up");
        let mut capture =
            Capture::start("lo", PORT, Duration::from_millis(20)).expect("capture on lo");
        // The kernel turns receive timestamps on for the whole host from a
        // work queue: frames received before that are stamped when read.
        sleep(Duration::from_millis(100));
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
        for round in 0..3u8 {
            let payload = vec![round; MIN_KNOCK_LEN];
            let sent = SystemTime::now();
            sender.send_to(&payload, ("127.0.0.1", PORT)).expect("send");
            sleep(QUEUED);
            let (arrived, read) = read_one(&mut capture, &payload);
            let arrived = arrived.expect("the datagram carries its arrival time");
            assert!(
                arrived >= sent - Duration::from_secs(1),
                "stamped {arrived:?}, sent {sent:?}"
            );
            assert!(arrived <= read, "stamped {arrived:?}, read {read:?}");
            // It is the time the kernel received it, not the time we read
            // it: it waited QUEUED in between.
            let waited = read.duration_since(arrived).expect("stamped before read");
            assert!(
                waited >= QUEUED - Duration::from_millis(10),
                "stamped only {waited:?} before it was read"
            );
            println!("round {round}: stamped {waited:?} before it was read");
        }
    });
}
