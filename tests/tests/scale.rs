//! Issue 14, scale: 100,000 clients on one server. These tests check
//! behaviour, never times (`bench/scale.sh` measures): a knock sent while
//! 100,000 clients are being reloaded is honoured before the reload ends;
//! a client added by that reload is honoured after it; a duplicate key
//! among 100,000 is found (a quadratic check would not finish); a burst of
//! 1,000 knocks from 1,000 clients is honoured whole; and one client's
//! knocks in a loop are limited without slowing another's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use knock_keys::config::ServerConfig;
use knock_keys::entry::{ClientEntry, Credential};
use knock_proto::{
    seal, ClientSecret, PairKeys, PortSpec, Request, SealRandomness, Sealer, ServerId,
};
use knock_tests::*;

const FLEET: usize = 100_000;

/// The secret of fleet client `i`: unique per `i`.
fn fleet_secret(i: usize) -> ClientSecret {
    let mut bytes = [0x5au8; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    ClientSecret::from_bytes(bytes)
}

fn fleet_name(i: usize) -> String {
    format!("fleet-{i:06}")
}

/// Writes the entries of fleet clients `range` into `clients_dir`.
fn enrol_fleet(clients_dir: &Path, range: std::ops::Range<usize>) {
    for i in range {
        let entry = ClientEntry {
            name: fleet_name(i),
            credential: Credential::Shared(fleet_secret(i)),
            ports: vec![PortSpec::tcp(4992)],
            max_open_for: None,
            allow_from: Vec::new(),
            expires: None,
            require_bound_addr: false,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(clients_dir.join(format!("{}.toml", entry.name)))
            .expect("fleet file");
        file.write_all(entry.to_toml().as_bytes()).expect("write");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The identity of the server `setup` configures.
fn server_id(setup: &Setup) -> ServerId {
    let text = std::fs::read_to_string(&setup.config).expect("config");
    let config = ServerConfig::parse(&setup.config, &text).expect("config");
    knock_keys::identity::load(&config.identity_file).expect("server.id")
}

/// A knock of fleet client `i` to `server`, stamped `at`, for tcp/4992.
fn fleet_knock(server: &ServerId, i: usize, at: u64, nonce: u64) -> Vec<u8> {
    let mut randomness = SealRandomness {
        nonce: [0; 24],
        padding: (nonce % 7) as u8,
    };
    randomness.nonce[..8].copy_from_slice(&nonce.to_le_bytes());
    randomness.nonce[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    seal(
        &PairKeys::shared(&fleet_secret(i), server),
        &Sealer::Shared,
        &Request {
            ports: vec![PortSpec::tcp(4992)],
            duration_s: 0,
            bound_addr: None,
        },
        at,
        &randomness,
    )
    .expect("seal")
}

/// Sends `knocks` from the client host to the server's knock port, all at
/// once, with `knock-wire raw` (one raw socket, no process per knock).
fn send_all(hosts: &Hosts, knocks: &[Vec<u8>]) {
    let mut child = hosts
        .client
        .cmd(bin("knock-wire"))
        .arg("raw")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("knock-wire");
    let mut lines = String::new();
    for (n, knock) in knocks.iter().enumerate() {
        let hex: String = knock.iter().map(|b| format!("{b:02x}")).collect();
        lines.push_str(&format!(
            "{CLIENT_V4} {SERVER_V4} {} 62201 ok {hex}\n",
            40000 + n % 20000
        ));
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("knock-wire");
    assert!(
        out.status.success(),
        "knock-wire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fleet clients the server's log says it granted.
fn granted_fleet(server: &Server) -> BTreeSet<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains(" granted "))
        .filter_map(|l| l.split("(client ").nth(1))
        .filter_map(|rest| rest.split(';').next())
        .filter(|name| name.starts_with("fleet-"))
        .map(str::to_owned)
        .collect()
}

fn server_cmd(hosts: &Hosts, setup: &Setup, args: &[&str]) -> Command {
    let mut cmd = hosts.server.cmd(bin("knock-server"));
    cmd.args(args).arg("--config").arg(&setup.config);
    cmd
}

#[test]
fn a_hundred_thousand_clients_on_nftables() {
    a_hundred_thousand_clients("nftables");
}

#[test]
fn a_hundred_thousand_clients_on_iptables() {
    a_hundred_thousand_clients("iptables");
}

/// Reload, burst, limit and duplicate, on the backend `firewall`.
fn a_hundred_thousand_clients(firewall: &str) {
    require_root();
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", firewall, &["tcp/4992"], "");
    let alice = setup.keygen("alice", SERVER_V4, None);
    start_echo(&lab, &hosts.server, 4992);
    let clients_dir = setup.dir.join("clients.d");
    enrol_fleet(&clients_dir, 0..FLEET);
    let server = Server::start(&hosts.server, &setup.config);
    server.wait_for_log("ready: 100001 clients", Duration::from_secs(60));

    // A knock while the whole roster is read again.
    let carol = setup.keygen("carol", SERVER_V4, None);
    let reload = server_cmd(&hosts, &setup, &["reload"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("knock-server reload");
    server.wait_for_log("reloading:", Duration::from_secs(10));
    let (code, out, err) = client(
        &hosts.client,
        &alice,
        &["open", SERVER_V4, "4992", "--timeout", "5s"],
    );
    assert_eq!(code, 0, "alice's knock during the reload: {out}{err}");
    // The client gets in as soon as the grant is in the kernel, which can be
    // a moment before the server's log line about it reaches us. Both that
    // line and `reloaded:` are written by the packet loop, so their order in
    // the log is the order of the events.
    server.wait_for_log("(client alice;", Duration::from_secs(10));
    let reload_out = reload.wait_with_output().expect("reload");
    assert!(
        reload_out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&reload_out.stderr)
    );
    let during = server.log();
    // Granted before the reload ended: the loop did not wait for it.
    let reloading_at = during.find("reloading:").expect("reloading line");
    let granted = during[reloading_at..]
        .find("(client alice;")
        .unwrap_or_else(|| panic!("alice not granted during the reload:\n{during}"));
    assert!(
        !during[reloading_at..reloading_at + granted].contains("reloaded:"),
        "alice was granted only after the reload ended:\n{during}"
    );
    server.wait_for_log("reloaded: 100002 clients", Duration::from_secs(60));
    // The client that reload added is honoured now (positive control of
    // the reload itself).
    let (code, out, err) = client(
        &hosts.client,
        &carol,
        &["open", SERVER_V4, "4992", "--timeout", "5s"],
    );
    assert_eq!(code, 0, "carol after the reload: {out}{err}");

    // A burst: 1,000 knocks of 1,000 different clients, sent at once.
    let server_id = server_id(&setup);
    let t = now_ms();
    let burst: Vec<Vec<u8>> = (0..1000)
        .map(|n| fleet_knock(&server_id, n * 97 % FLEET, t, n as u64))
        .collect();
    let expected: BTreeSet<String> = (0..1000).map(|n| fleet_name(n * 97 % FLEET)).collect();
    let sent = Instant::now();
    send_all(&hosts, &burst);
    let all = eventually(Duration::from_secs(20), || {
        granted_fleet(&server).is_superset(&expected)
    });
    let took = sent.elapsed();
    let got = granted_fleet(&server);
    assert!(
        all,
        "{} of 1000 burst knocks granted; refusals: {:?}",
        got.intersection(&expected).count(),
        setup.refused(&hosts.server)
    );
    eprintln!("burst of 1000 granted within {took:?}");

    // One client in a loop: its burst, then refused (not consumed); the
    // others are not held up.
    let t = now_ms();
    let looping: Vec<Vec<u8>> = (0..20u64)
        .map(|n| fleet_knock(&server_id, 4242, t + n, 10_000 + n))
        .collect();
    send_all(&hosts, &looping);
    setup.wait_refused(&hosts.server, "rate-limited", 10, Duration::from_secs(10));
    send_all(&hosts, &[fleet_knock(&server_id, 4243, now_ms(), 99_999)]);
    assert!(
        eventually(Duration::from_secs(10), || granted_fleet(&server)
            .contains(&fleet_name(4243))),
        "another client was held up by one in a loop"
    );
    assert_eq!(setup.refused(&hosts.server).get("rate-limited"), Some(&10));

    // A duplicate key among 100,000, found by check and refused by reload;
    // the server runs on.
    let mut twin = ClientEntry {
        name: "zz-twin".into(),
        credential: Credential::Shared(fleet_secret(31_337)),
        ports: vec![PortSpec::tcp(4992)],
        max_open_for: None,
        allow_from: Vec::new(),
        expires: None,
        require_bound_addr: false,
    };
    let twin_path = clients_dir.join("zz-twin.toml");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&twin_path)
        .and_then(|mut f| f.write_all(twin.to_toml().as_bytes()))
        .expect("twin");
    let out = server_cmd(&hosts, &setup, &["reload"])
        .output()
        .expect("reload");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("zz-twin.toml") && said.contains(&format!("\"{}\"", fleet_name(31_337))),
        "{said}"
    );
    // Positive control: the same file with a key of its own loads.
    twin.credential = Credential::Shared(fleet_secret(FLEET + 1));
    std::fs::write(&twin_path, twin.to_toml().as_bytes()).expect("rewrite");
    let out = server_cmd(&hosts, &setup, &["reload"])
        .output()
        .expect("reload");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for_log("reloaded: 100003 clients", Duration::from_secs(60));
}
