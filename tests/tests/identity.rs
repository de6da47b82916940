//! One client identity, several servers (issue 13, public-key mode): the
//! identity made by `knock-client identity` is enrolled on two servers, each
//! with its own configuration directory, `server.id` and `server.key`
//! (`knock-keygen NAME --host HOST --public-key LINE`), and published as two
//! world-readable public profiles.
//!
//! - each server opens for it (`knock-client open --profile P --identity I`);
//! - a knock made for one server opens nothing at the other (its hint is no
//!   client's there: `unknown-client`), while it does open where it was
//!   meant to go;
//! - knocks to the two servers in the same 30-s hint slot share no bytes
//!   (different hints, no common 4-byte run);
//! - revoking it at one server leaves the other unaffected;
//! - a `clients.d` mixing a shared-key and a public-key client opens for both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use knock_proto::{HINT_LEN, SLOT_MS};
use knock_tests::*;

const KNOCK_PORT: u16 = 62201;
/// The second server, on a link of its own to the client.
const SERVER2_V4: &str = "198.18.5.1";
const CLIENT_FOR_SERVER2_V4: &str = "198.18.5.2";

struct TwoServers {
    lab: Lab,
    hosts: Hosts,
    srv2: Ns,
    a: Setup,
    b: Setup,
    identity: PathBuf,
    profile_a: PathBuf,
    profile_b: PathBuf,
}

fn publish(profile: &Path) {
    std::fs::set_permissions(profile, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn two_servers() -> TwoServers {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let srv2 = lab.netns("srv2");
    lab.link(
        &srv2,
        &[SERVER2_V4],
        &hosts.client,
        &[CLIENT_FOR_SERVER2_V4],
    );
    let a = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    let b = Setup::new(&lab, "server2", "nftables", &["tcp/4992"], "");
    for setup in [&a, &b] {
        set_config_key(&setup.config, "open_for", "\"3s\"");
    }
    // The client's one identity, in its own home.
    let home = lab.dir.join("home");
    let line = identity_line(&home);
    let identity = home.join("identity");
    assert!(identity.exists(), "no identity at the default path");
    let profile_a = a.keygen_public("alice", SERVER_V4, Some("tcp/4992"), &line);
    let profile_b = b.keygen_public("alice", SERVER2_V4, Some("tcp/4992"), &line);
    // Public profiles hold only public data: world-readable is fine.
    publish(&profile_a);
    publish(&profile_b);
    start_echo(&lab, &hosts.server, 4992);
    start_echo(&lab, &srv2, 4992);
    TwoServers {
        lab,
        hosts,
        srv2,
        a,
        b,
        identity,
        profile_a,
        profile_b,
    }
}

impl TwoServers {
    fn open(&self, profile: &Path, host: &str, timeout: &str) -> (i32, String, String) {
        client(
            &self.hosts.client,
            profile,
            &[
                "open",
                host,
                "4992",
                "--timeout",
                timeout,
                "--identity",
                self.identity.to_str().unwrap(),
            ],
        )
    }

    fn intercept(&self, profile: &Path) -> Vec<u8> {
        intercept_knock(
            &self.hosts.client,
            profile,
            KNOCK_PORT,
            &["4992"],
            &["--identity", self.identity.to_str().unwrap()],
        )
    }
}

fn now_slot() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ms / SLOT_MS
}

/// The longest run of bytes the two have in common, anywhere.
fn longest_common_run(a: &[u8], b: &[u8]) -> usize {
    let mut best = 0;
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            if x == y {
                cur[j + 1] = prev[j] + 1;
                best = best.max(cur[j + 1]);
            }
        }
        prev = cur;
    }
    best
}

#[test]
fn one_identity_opens_two_servers_and_knocks_do_not_cross() {
    let w = two_servers();
    // Two servers, two identities, two key pairs.
    for file in ["server.id", "server.key"] {
        let (x, y) = (
            std::fs::read(w.a.dir.join(file)).unwrap(),
            std::fs::read(w.b.dir.join(file)).unwrap(),
        );
        assert_ne!(x, y, "the two servers share {file}");
    }
    let server_a = Server::start(&w.hosts.server, &w.a.config);
    let server_b = Server::start(&w.srv2, &w.b.config);

    // Each opens for the one identity.
    let (code, out, err) = w.open(&w.profile_a, SERVER_V4, "4s");
    assert_eq!(code, 0, "server A: {out}{err}\n{}", server_a.log());
    let (code, out, err) = w.open(&w.profile_b, SERVER2_V4, "4s");
    assert_eq!(code, 0, "server B: {out}{err}\n{}", server_b.log());
    w.a.wait_no_grants(&w.hosts.server);
    w.b.wait_no_grants(&w.srv2);

    // A knock made for A, sent to B (from the client's own address there):
    // opens nothing at B.
    let knock = w.intercept(&w.profile_a);
    let before =
        w.b.refused(&w.srv2)
            .get("unknown-client")
            .copied()
            .unwrap_or(0);
    send_udp(&w.hosts.client, ip(SERVER2_V4), KNOCK_PORT, &knock);
    w.b.wait_refused(
        &w.srv2,
        "unknown-client",
        before + 1,
        Duration::from_secs(12),
    );
    assert!(
        w.b.status(&w.srv2).contains("no live grants"),
        "{}",
        w.b.status(&w.srv2)
    );
    assert!(
        !w.hosts.client.tcp_connects(ip(SERVER2_V4), 4992),
        "B opened for a knock made for A"
    );
    assert_eq!(server_b.count_log("granted"), 1, "{}", server_b.log());
    // Positive control: the same bytes open A.
    send_udp(&w.hosts.client, ip(SERVER_V4), KNOCK_PORT, &knock);
    server_a.wait_for_count(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        2,
        Duration::from_secs(3),
    );

    // And the other way round: made for B, sent to A.
    let knock = w.intercept(&w.profile_b);
    let before =
        w.a.refused(&w.hosts.server)
            .get("unknown-client")
            .copied()
            .unwrap_or(0);
    send_udp(&w.hosts.client, ip(SERVER_V4), KNOCK_PORT, &knock);
    w.a.wait_refused(
        &w.hosts.server,
        "unknown-client",
        before + 1,
        Duration::from_secs(12),
    );
    assert_eq!(server_a.count_log("granted"), 2, "{}", server_a.log());
    send_udp(&w.hosts.client, ip(SERVER2_V4), KNOCK_PORT, &knock);
    server_b.wait_for_count(
        &format!("granted tcp/4992 to {CLIENT_FOR_SERVER2_V4}"),
        2,
        Duration::from_secs(3),
    );

    // Knocks to A and B in the same hint slot share no bytes. Several
    // pairs, each made within one slot (retried if a slot boundary fell
    // between the two).
    let mut pairs = 0;
    let mut attempts = 0;
    while pairs < 4 {
        attempts += 1;
        assert!(attempts < 12, "could not make knocks within one slot");
        let slot = now_slot();
        let to_a = w.intercept(&w.profile_a);
        let to_b = w.intercept(&w.profile_b);
        if now_slot() != slot {
            continue;
        }
        pairs += 1;
        assert_ne!(
            to_a[..HINT_LEN],
            to_b[..HINT_LEN],
            "the same hint for two servers in one slot"
        );
        let run = longest_common_run(&to_a, &to_b);
        assert!(
            run < 4,
            "knocks to two servers in one slot share a {run}-byte run:\n{}\n{}",
            hex(&to_a),
            hex(&to_b)
        );
        let agree = to_a.iter().zip(&to_b).filter(|(x, y)| x == y).count();
        assert!(agree <= 8, "{agree} positions agree (about 0.75 expected)");
    }

    // Revoked at A (its entry deleted, SIGHUP): A refuses, B still opens.
    w.a.wait_no_grants(&w.hosts.server);
    w.b.wait_no_grants(&w.srv2);
    std::fs::remove_file(w.a.dir.join("clients.d/alice.toml")).unwrap();
    server_a.signal("HUP");
    server_a.wait_for_log("reloaded: 0 clients", Duration::from_secs(3));
    let (code, _, err) = w.open(&w.profile_a, SERVER_V4, "2s");
    assert_eq!(code, 1, "a revoked identity opened A: {err}");
    assert_eq!(server_a.count_log("granted"), 2, "{}", server_a.log());
    let (code, out, err) = w.open(&w.profile_b, SERVER2_V4, "4s");
    assert_eq!(
        code,
        0,
        "B after revoking at A: {out}{err}\n{}",
        server_b.log()
    );
    assert!(server_a.alive() && server_b.alive());
    drop(w.lab);
}

/// One `clients.d` holding a shared-key client (alice) and a public-key
/// client (bob, his profile world-readable): both open, and status counts
/// one of each.
#[test]
fn mixed_clients_dir_opens_for_both() {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    let alice = setup.enrol("alice", SERVER_V4, Some("tcp/4992"), Mode::Shared);
    let bob = setup.enrol(
        "bob",
        SERVER_FOR_ATTACKER_V4,
        Some("tcp/4992"),
        Mode::Public,
    );
    publish(&bob);
    start_echo(&lab, &hosts.server, 4992);
    let server = Server::start(&hosts.server, &setup.config);
    server.wait_for_log("ready: 2 clients", Duration::from_secs(2));
    let (code, out, err) = client(
        &hosts.client,
        &alice,
        &["open", SERVER_V4, "4992", "--timeout", "4s"],
    );
    assert_eq!(code, 0, "shared-key alice: {out}{err}\n{}", server.log());
    let (code, out, err) = client(
        &hosts.attacker,
        &bob,
        &["open", SERVER_FOR_ATTACKER_V4, "4992", "--timeout", "4s"],
    );
    assert_eq!(code, 0, "public-key bob: {out}{err}\n{}", server.log());
    let status = setup.status(&hosts.server);
    assert!(status.contains("1 shared-key, 1 public-key"), "{status}");
    assert!(
        eventually(Duration::from_secs(12), || setup
            .status(&hosts.server)
            .contains("checked since start, none failed")),
        "{}",
        setup.status(&hosts.server)
    );
}
