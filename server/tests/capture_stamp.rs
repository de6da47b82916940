//! The kernel's receive time on captured datagrams (`Datagram::arrived`).
//!
//! The test creates a fresh network namespace (`knockstamp-PID-N`), re-runs
//! itself inside it (`ip netns exec NS <self> <test> --exact`) and deletes
//! it afterwards, pass or fail, as `backends.rs` does. It needs root, and
//! fails (never skips) when a namespace cannot be created.

mod netns;

use std::net::UdpSocket;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use knock_proto::MIN_KNOCK_LEN;
use knock_server::capture::{Capture, Next};
use netns::in_fresh_netns;

const PORT: u16 = 62201;
/// How long each datagram waits in the socket's queue before it is read.
const QUEUED: Duration = Duration::from_millis(50);

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
    in_fresh_netns(
        "knockstamp",
        "datagrams_carry_the_kernels_arrival_time",
        || {
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
        },
    );
}
