//! knock-client's command line, driven as a user drives it: every error path
//! (exit status and the one line on stderr), the knocks it sends (caught on a
//! loopback UDP socket and opened with the profile's key), the success lines,
//! profile import and lookup, and the `connect` relay with half-close in both
//! directions. Loopback only; no root.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use knock_proto::{
    open, ClientIdentity, ClientPublicKey, ClientSecret, IdentitySeed, KnockBytes, Mode,
    OpenedKnock, PairKeys, PortSpec, ServerId, ServerSecretKey,
};

/// The profile's secrets: 16 × 0x11 and 32 × 0x42, as base64.
const SERVER_ID_B64: &str = "EREREREREREREREREREREQ==";
const KEY_B64: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

/// The knock-client binary (scripts/test.sh builds it before the tests).
fn client_bin() -> PathBuf {
    knock_tests::bin("knock-client")
}

/// knock-client with an empty, private KNOCK_HOME unless the test sets one.
fn client(home: &Path) -> Command {
    let mut cmd = Command::new(client_bin());
    cmd.env("KNOCK_HOME", home)
        .env_remove("HOME")
        .timeout(Duration::from_secs(20));
    cmd
}

struct ProfileSpec<'a> {
    name: &'a str,
    host: &'a str,
    aliases: &'a [&'a str],
    knock_port: u16,
    ports: &'a [&'a str],
}

impl Default for ProfileSpec<'_> {
    fn default() -> Self {
        Self {
            name: "alice",
            host: "127.0.0.1",
            aliases: &[],
            knock_port: 9,
            ports: &[],
        }
    }
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes a profile as knock-keygen would, with the given mode.
fn write_profile(path: &Path, spec: &ProfileSpec<'_>, mode: u32) {
    let text = format!(
        "name = {:?}\nhost = {:?}\naliases = [{}]\nknock_port = {}\nserver_id = \"{SERVER_ID_B64}\"\n\
         key = \"{KEY_B64}\"\nports = [{}]\n",
        spec.name,
        spec.host,
        quoted(spec.aliases),
        spec.knock_port,
        quoted(spec.ports),
    );
    fs::write(path, text).expect("writing the profile");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// stderr must be exactly one line: the program's error line.
fn one_error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8(stderr.to_vec()).expect("stderr is UTF-8");
    assert!(
        text.ends_with('\n'),
        "stderr does not end with a newline: {text:?}"
    );
    assert_eq!(text.lines().count(), 1, "stderr is not one line: {text:?}");
    assert!(
        text.starts_with("knock-client: error: "),
        "not an error line: {text:?}"
    );
    text.trim_end().to_owned()
}

/// stdout must be exactly one line.
fn one_line(stdout: &[u8]) -> String {
    let text = String::from_utf8(stdout.to_vec()).expect("stdout is UTF-8");
    assert_eq!(text.lines().count(), 1, "stdout is not one line: {text:?}");
    assert!(
        text.ends_with('\n'),
        "stdout does not end with a newline: {text:?}"
    );
    text.trim_end().to_owned()
}

/// A UDP socket standing in for the server's knock port: it catches knocks.
struct KnockCatcher(UdpSocket);

impl KnockCatcher {
    fn new() -> Self {
        Self(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a UDP socket"))
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("local address").port()
    }

    /// Every datagram that arrived, waiting briefly for stragglers.
    fn caught(&self) -> Vec<Vec<u8>> {
        self.0
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.0.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }
}

/// Opens a caught knock with the test profile's key.
fn open_knock(bytes: &[u8]) -> OpenedKnock {
    let keys = PairKeys::shared(&ClientSecret::from_bytes([0x42; 32]), &ServerId([0x11; 16]));
    let parsed = KnockBytes::parse(bytes).expect("a knock-shaped datagram");
    open(&keys, Mode::Shared, &parsed).expect("a knock sealed with the profile's key")
}

/// A TCP port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a TCP port");
    listener.local_addr().expect("local address").port()
}

#[test]
fn bad_ports_are_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    for (port, expected) in [
        ("0", "invalid port \"0\""),
        ("tcp/abc", "\"tcp/abc\""),
        ("sctp/5", "sctp"),
    ] {
        let out = client(home.path())
            .args(["open", "relay", port])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "open relay {port}");
        let line = one_error_line(&out.stderr);
        assert!(line.contains("PORT"), "{line}");
        assert!(line.contains(expected), "{line}");
        assert!(out.stdout.is_empty());
    }
    let out = client(home.path())
        .args(["connect", "relay", "udp/53"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out.stderr).contains("TCP"));
}

#[test]
fn unknown_flags_and_bad_options_are_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 5] = [
        &["open", "relay", "22", "--bogus"],
        &["open", "relay", "22", "--timeout", "soon"],
        &["open", "relay", "22", "--allow-ip", "relay.example"],
        &["open", "relay"],
        &["frobnicate"],
    ];
    for args in cases {
        let out = client(home.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        one_error_line(&out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn missing_profile_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = client(home.path())
        .args(["open", "relay.example", "22"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out.stderr);
    assert!(line.contains("no profile for \"relay.example\""), "{line}");
    assert!(line.contains("knock-client import"), "{line}");

    let missing = home.path().join("nope.knock");
    let out = client(home.path())
        .args(["open", "relay.example", "22", "--profile"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out.stderr).contains(&missing.display().to_string()));
}

#[test]
fn world_readable_profile_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("alice@relay.knock");
    write_profile(
        &path,
        &ProfileSpec {
            host: "relay",
            ..Default::default()
        },
        0o644,
    );
    // Named explicitly...
    let out = client(home.path())
        .args(["open", "relay", "22", "--no-wait", "--profile"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out.stderr);
    assert!(line.contains("chmod 600"), "{line}");
    assert!(line.contains(&path.display().to_string()), "{line}");
    // ...and found under KNOCK_HOME.
    let out = client(home.path())
        .args(["open", "relay", "22", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out.stderr).contains("chmod 600"));
}

#[test]
fn unknown_host_is_a_runtime_failure() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            host: "no-such-host.invalid",
            ..Default::default()
        },
        0o600,
    );
    for explicit in [true, false] {
        let mut cmd = client(home.path());
        cmd.args(["open", "no-such-host.invalid", "22"]);
        if explicit {
            cmd.arg("--profile").arg(&path);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "explicit profile: {explicit}");
        let line = one_error_line(&out.stderr);
        assert!(line.contains("name resolution failed"), "{line}");
        assert!(line.contains("no-such-host.invalid"), "{line}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn port_not_in_profile_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            ports: &["tcp/22"],
            ..Default::default()
        },
        0o600,
    );
    let out = client(home.path())
        .args(["open", "127.0.0.1", "tcp/4992", "--no-wait", "--profile"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out.stderr);
    assert!(
        line.contains("tcp/4992") && line.contains("tcp/22"),
        "{line}"
    );
}

#[test]
fn timeout_names_the_failed_step_and_sends_one_new_knock_per_attempt() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            knock_port: catcher.port(),
            ..Default::default()
        },
        0o600,
    );
    let port = closed_port();

    // 1 s: no time for a second knock.
    let started = Instant::now();
    let out = client(home.path())
        .args([
            "open",
            "127.0.0.1",
            &port.to_string(),
            "--timeout",
            "1s",
            "--profile",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "gave up early: {took:?}"
    );
    let line = one_error_line(&out.stderr);
    assert!(line.contains("no answer in time"), "{line}");
    assert!(line.contains(&format!("tcp/{port}")), "{line}");
    for cause in [
        "clock skew",
        "wrong or outdated profile",
        "not permitted",
        "firewall",
    ] {
        assert!(line.contains(cause), "{cause:?} missing: {line}");
    }
    assert!(out.stdout.is_empty());
    assert_eq!(catcher.caught().len(), 1, "one knock within 1s");

    // 3 s: one re-knock, a new one, never a copy.
    let out = client(home.path())
        .args([
            "open",
            "127.0.0.1",
            &port.to_string(),
            "--timeout",
            "3s",
            "--profile",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out.stderr).contains("2 knocks"));
    let knocks = catcher.caught();
    assert_eq!(knocks.len(), 2, "exactly one re-knock");
    assert_ne!(knocks[0], knocks[1], "the re-knock must not be a copy");
    let (first, second) = (open_knock(&knocks[0]), open_knock(&knocks[1]));
    assert!(
        second.timestamp_ms > first.timestamp_ms,
        "{first:?} then {second:?}"
    );
    assert_eq!(first.request, second.request);
    assert_eq!(first.request.ports, vec![PortSpec::tcp(port)]);
}

#[test]
fn no_wait_sends_one_knock_and_succeeds() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            knock_port: catcher.port(),
            ..Default::default()
        },
        0o600,
    );
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let out = client(home.path())
        .args([
            "open",
            "127.0.0.1",
            "4992",
            "udp/53",
            "--no-wait",
            "--allow-ip",
            "203.0.113.5",
        ])
        .arg("--profile")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_line(&out.stdout);
    assert!(line.starts_with("knock sent to 127.0.0.1"), "{line}");
    assert!(line.contains("tcp/4992,udp/53"), "{line}");
    assert!(line.contains("203.0.113.5"), "{line}");
    let knocks = catcher.caught();
    assert_eq!(knocks.len(), 1);
    let knock = open_knock(&knocks[0]);
    assert_eq!(
        knock.request.ports,
        vec![PortSpec::tcp(4992), "udp/53".parse().unwrap()]
    );
    assert_eq!(
        knock.request.bound_addr,
        Some("203.0.113.5".parse().unwrap())
    );
    assert_eq!(knock.request.duration_s, 0);
    assert!(
        knock.timestamp_ms >= before_ms,
        "stamped with the current time"
    );
}

#[test]
fn open_succeeds_when_the_port_accepts() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            knock_port: catcher.port(),
            ..Default::default()
        },
        0o600,
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = client(home.path())
        .args(["open", "127.0.0.1", &format!("tcp/{port}"), "--profile"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_line(&out.stdout);
    assert!(
        line.starts_with(&format!("opened tcp/{port} on 127.0.0.1 for ")),
        "{line}"
    );
    assert!(line.contains("open_for"), "{line}");
    // The proof was a real connection to the port, after the knock.
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_ok(),
        "no connection reached the listener"
    );
    assert_eq!(catcher.caught().len(), 1);
}

#[test]
fn import_and_list_round_trip() {
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("config").join("knock");
    let catcher = KnockCatcher::new();
    let source = scratch.path().join("alice@relay.example.knock");
    let spec = ProfileSpec {
        host: "relay.example.invalid",
        knock_port: catcher.port(),
        ports: &["tcp/22"],
        ..Default::default()
    };
    write_profile(&source, &spec, 0o600);

    let out = client(&home)
        .arg("import")
        .arg(&source)
        .args(["--alias", "relay,127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = home.join("alice@relay.example.invalid.knock");
    assert!(one_line(&out.stdout).contains(&installed.display().to_string()));
    assert_eq!(mode_of(&installed), 0o600);
    assert_eq!(mode_of(&home), 0o700);

    let out = client(&home).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        listing.lines().count(),
        2,
        "a header and one profile: {listing}"
    );
    let row = listing.lines().nth(1).unwrap();
    for expected in [
        installed.display().to_string(),
        "alice".into(),
        "relay.example.invalid".into(),
        "relay,127.0.0.1".into(),
        format!("udp/{}", catcher.port()),
        "tcp/22".into(),
    ] {
        assert!(row.contains(&expected), "{expected:?} missing from {row:?}");
    }
    assert!(!listing.contains(KEY_B64), "list shows the key: {listing}");
    assert!(
        !listing.contains("QkJC"),
        "list shows part of the key: {listing}"
    );

    // Found by alias, then by address, without --profile.
    for host in ["relay", "127.0.0.1", "RELAY."] {
        let out = client(&home)
            .args(["open", host, "22", "--no-wait"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(catcher.caught().len(), 1, "{host}");
    }

    // Importing again needs --force.
    let out = client(&home).arg("import").arg(&source).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out.stderr).contains("--force"));
    let out = client(&home)
        .arg("import")
        .arg(&source)
        .arg("--force")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(mode_of(&installed), 0o600);

    // A loose source file is refused, not installed.
    fs::set_permissions(&source, fs::Permissions::from_mode(0o644)).unwrap();
    let out = client(&home)
        .arg("import")
        .arg(&source)
        .arg("--force")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out.stderr).contains("chmod 600"));
}

#[test]
fn profile_is_found_by_resolving_its_host() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let spec = ProfileSpec {
        host: "localhost",
        knock_port: catcher.port(),
        ..Default::default()
    };
    write_profile(&home.path().join("alice@localhost.knock"), &spec, 0o600);
    let out = client(home.path())
        .args(["open", "127.0.0.1", "22", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(catcher.caught().len(), 1);
}

#[test]
fn ambiguous_profiles_are_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    write_profile(
        &home.path().join("a@relay.knock"),
        &ProfileSpec {
            name: "a",
            host: "relay",
            ..Default::default()
        },
        0o600,
    );
    write_profile(
        &home.path().join("b@relay.knock"),
        &ProfileSpec {
            name: "b",
            host: "relay",
            ..Default::default()
        },
        0o600,
    );
    let out = client(home.path())
        .args(["open", "relay", "22", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out.stderr);
    assert!(
        line.contains("--profile") && line.contains("a@relay.knock"),
        "{line}"
    );
}

/// The client's stdin reaches the server; the client closing stdin reaches
/// the server as EOF, after which the server's reply still comes back.
#[test]
fn connect_relays_both_ways_with_half_close_from_the_client() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            knock_port: catcher.port(),
            ..Default::default()
        },
        0o600,
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap(); // returns only at the client's EOF
        let reply = format!(
            "got {} bytes: {}",
            got.len(),
            String::from_utf8_lossy(&got).to_uppercase()
        );
        conn.write_all(reply.as_bytes()).unwrap();
        got
    });
    let input = "hello over the knock\nsecond line\n";
    let out = client(home.path())
        .args(["connect", "127.0.0.1", &port.to_string(), "--profile"])
        .arg(&path)
        .write_stdin(input)
        .timeout(Duration::from_secs(10))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.join().unwrap(), input.as_bytes());
    let expected = format!("got {} bytes: {}", input.len(), input.to_uppercase());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    assert_eq!(catcher.caught().len(), 1);
}

/// A child process that a failing test does not leave behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server closing its side ends the client's stdout while the client can
/// still send, and what it sends then still arrives.
#[test]
fn connect_relays_both_ways_with_half_close_from_the_server() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let path = home.path().join("p.knock");
    write_profile(
        &path,
        &ProfileSpec {
            knock_port: catcher.port(),
            ..Default::default()
        },
        0o600,
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"banner\n").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    let mut child = KillOnDrop(
        StdCommand::new(client_bin())
            .env("KNOCK_HOME", home.path())
            .args(["connect", "127.0.0.1", &port.to_string(), "--profile"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    // stdout reaches EOF while we still hold stdin open.
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "stdout was not closed after the server's EOF"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(reader.join().unwrap().unwrap(), "banner\n");
    stdin.write_all(b"still talking\n").unwrap();
    drop(stdin);
    assert_eq!(server.join().unwrap(), b"still talking\n");
    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(catcher.caught().len(), 1);
}

// Public-key mode: the client's identity, public profiles, and the keygen
// that makes them.

/// The test server's key: 32 × 0x55.
fn server_key() -> ServerSecretKey {
    ServerSecretKey::from_bytes([0x55; 32])
}

/// base64 of `bytes`, as the files hold it (standard alphabet, padded).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes a public-key profile for the test server, made for `client` (when
/// given), with the given mode.
fn write_public_profile(
    path: &Path,
    spec: &ProfileSpec<'_>,
    client: Option<&ClientPublicKey>,
    mode: u32,
) {
    let client_line = client
        .map(|c| format!("client_public_key = \"{}\"\n", c.to_line()))
        .unwrap_or_default();
    let text = format!(
        "name = {:?}\nhost = {:?}\naliases = [{}]\nknock_port = {}\nserver_id = \"{SERVER_ID_B64}\"\n\
         server_public_key = \"{}\"\n{client_line}ports = [{}]\n",
        spec.name,
        spec.host,
        quoted(spec.aliases),
        spec.knock_port,
        base64(server_key().public().as_bytes()),
        quoted(spec.ports),
    );
    fs::write(path, text).expect("writing the profile");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `knock-client identity` with KNOCK_HOME `home` (and `extra` arguments):
/// its public line, checked to be one line on stdout.
fn identity_line(home: &Path, extra: &[&str]) -> (String, String) {
    let out = client(home)
        .arg("identity")
        .args(extra)
        .output()
        .expect("running knock-client identity");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        one_line(&out.stdout),
        String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    )
}

/// Opens a caught public-key knock as the test server does, and checks its
/// signature against `client`.
fn open_public_knock(bytes: &[u8], client: &ClientPublicKey) -> OpenedKnock {
    let server = server_key();
    let id = ServerId([0x11; 16]);
    let keys = PairKeys::from_prk(&server.pair_prk(client, &id).expect("a valid client key"));
    let parsed = KnockBytes::parse(bytes).expect("a knock-shaped datagram");
    assert!(
        open(&keys, Mode::Shared, &parsed).is_err(),
        "a public-key knock opened as a shared-key one"
    );
    let opened = open(&keys, Mode::Public, &parsed).expect("a knock sealed with the pair keys");
    opened
        .verify_signature(client, &server.public(), &id)
        .expect("signed by the client's identity");
    opened
}

#[test]
fn identity_is_created_once_and_its_line_printed() {
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("config").join("knock");
    let (line, stderr) = identity_line(&home, &[]);
    assert!(line.starts_with("knock-id1:"), "{line}");
    assert_eq!(line.len(), knock_proto::PUBLIC_LINE_LEN, "{line}");
    assert!(!line.contains(char::is_whitespace), "{line}");
    assert!(stderr.contains("created"), "{stderr}");
    let file = home.join("identity");
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(mode_of(&home), 0o700);
    let key = ClientPublicKey::parse_line(&line).unwrap();
    key.validate().unwrap();

    // Again: the same identity, nothing said on stderr, the file unchanged.
    let before = fs::read(&file).unwrap();
    let (again, stderr) = identity_line(&home, &[]);
    assert_eq!(again, line);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(fs::read(&file).unwrap(), before);

    // --identity FILE: another identity, elsewhere.
    let other = scratch.path().join("other").join("id");
    let (other_line, _) = identity_line(&home, &["--identity", other.to_str().unwrap()]);
    assert_ne!(other_line, line);
    assert_eq!(mode_of(&other), 0o600);
    let (same, _) = identity_line(&home, &["--identity", other.to_str().unwrap()]);
    assert_eq!(same, other_line);

    // A loose identity is refused, not replaced.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = client(&home).arg("identity").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(fs::read(&file).unwrap(), before);

    // A damaged one is named, not replaced.
    fs::write(&file, "seed = \"AAAA\"\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let out = client(&home).arg("identity").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains("seed"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn public_profiles_knock_with_the_identity() {
    let home = tempfile::tempdir().unwrap();
    let catcher = KnockCatcher::new();
    let (line, _) = identity_line(home.path(), &[]);
    let me = ClientPublicKey::parse_line(&line).unwrap();
    let path = home.path().join("p.knock");
    let spec = ProfileSpec {
        knock_port: catcher.port(),
        ..Default::default()
    };
    // World-readable: a public profile holds no secret.
    write_public_profile(&path, &spec, Some(&me), 0o644);
    let out = client(home.path())
        .args([
            "open",
            "127.0.0.1",
            "4992",
            "--no-wait",
            "--allow-ip",
            "203.0.113.5",
        ])
        .arg("--profile")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    one_line(&out.stdout);
    let knocks = catcher.caught();
    assert_eq!(knocks.len(), 1);
    let knock = open_public_knock(&knocks[0], &me);
    assert_eq!(knock.request.ports, vec![PortSpec::tcp(4992)]);
    assert_eq!(
        knock.request.bound_addr,
        Some("203.0.113.5".parse().unwrap())
    );

    // With --identity elsewhere, and a profile that does not name its
    // client: that identity knocks.
    let other_file = home.path().join("elsewhere").join("id");
    let (other_line, _) = identity_line(home.path(), &["--identity", other_file.to_str().unwrap()]);
    let other = ClientPublicKey::parse_line(&other_line).unwrap();
    write_public_profile(&path, &spec, None, 0o644);
    let out = client(home.path())
        .args(["open", "127.0.0.1", "4992", "--no-wait", "--profile"])
        .arg(&path)
        .arg("--identity")
        .arg(&other_file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let knocks = catcher.caught();
    assert_eq!(knocks.len(), 1);
    open_public_knock(&knocks[0], &other);

    // A profile made for another identity: refused before anything is sent,
    // naming both.
    write_public_profile(&path, &spec, Some(&me), 0o644);
    let out = client(home.path())
        .args(["open", "127.0.0.1", "4992", "--no-wait", "--profile"])
        .arg(&path)
        .arg("--identity")
        .arg(&other_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains(&line) && err.contains(&other_line), "{err}");
    assert!(catcher.caught().is_empty());

    // No identity at all: a clear usage error, nothing sent.
    let empty = tempfile::tempdir().unwrap();
    let out = client(empty.path())
        .args(["open", "127.0.0.1", "4992", "--no-wait", "--profile"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    let default = empty.path().join("identity");
    assert!(err.contains(&default.display().to_string()), "{err}");
    assert!(err.contains("knock-client identity"), "{err}");
    assert!(catcher.caught().is_empty());
    assert!(!default.exists(), "open created an identity");

    // --identity is ignored for a shared-key profile.
    write_profile(&path, &spec, 0o600);
    let out = client(empty.path())
        .args([
            "open",
            "127.0.0.1",
            "4992",
            "--no-wait",
            "--identity",
            "/nonexistent/id",
        ])
        .arg("--profile")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    open_knock(&catcher.caught()[0]);
}

#[test]
fn import_takes_public_profiles_at_any_mode_and_list_shows_modes() {
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("knock");
    let public = scratch.path().join("alice@relay.knock");
    let shared = scratch.path().join("bob@relay2.knock");
    let me = ClientIdentity::from_seed(&IdentitySeed::from_bytes([7; 32])).public();
    write_public_profile(
        &public,
        &ProfileSpec {
            host: "relay.example.invalid",
            ports: &["tcp/22"],
            ..Default::default()
        },
        Some(&me),
        0o644,
    );
    write_profile(
        &shared,
        &ProfileSpec {
            name: "bob",
            host: "relay2.example.invalid",
            ..Default::default()
        },
        0o644,
    );
    // The shared-key profile, world-readable: refused, nothing installed.
    let out = client(&home).arg("import").arg(&shared).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains(&shared.display().to_string()), "{err}");
    assert!(!home.exists() || fs::read_dir(&home).unwrap().next().is_none());
    // The public-key profile, world-readable: installed 0600.
    let out = client(&home).arg("import").arg(&public).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_line(&out.stdout);
    assert!(line.contains("public-key"), "{line}");
    let installed = home.join("alice@relay.example.invalid.knock");
    assert_eq!(mode_of(&installed), 0o600);
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o600)).unwrap();
    let out = client(&home).arg("import").arg(&shared).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(one_line(&out.stdout).contains("shared-key"));

    let out = client(&home).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let listing = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(lines[0].contains("MODE"), "{listing}");
    assert!(
        lines[1].contains("alice") && lines[1].contains("public-key"),
        "{listing}"
    );
    assert!(
        lines[2].contains("bob") && lines[2].contains("shared-key"),
        "{listing}"
    );
    assert!(
        !listing.contains("QkJC"),
        "list shows part of a key: {listing}"
    );
}

/// knock-keygen --public-key, end to end: the line `knock-client identity`
/// prints is enrolled, the entry holds no secret, the profile is 0644 and
/// knocks that the server's key opens.
#[test]
fn keygen_enrols_an_identity() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let config = dir.join("server.toml");
    fs::write(
        &config,
        format!(
            "protected = [\"tcp/22\", \"tcp/4992\"]\nstate_dir = \"{0}/state\"\n\
             clients_dir = \"{0}/clients.d\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let home = dir.join("home");
    let (line, _) = identity_line(&home, &[]);
    let me = ClientPublicKey::parse_line(&line).unwrap();
    let profile = dir.join("alice.knock");
    let keygen = |name: &str, key: &str, extra: &[&str]| {
        let mut cmd = Command::new(knock_tests::bin("knock-keygen"));
        cmd.args([name, "--host", "127.0.0.1", "--public-key", key, "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&profile)
            .args(extra)
            .timeout(Duration::from_secs(20));
        cmd.output().unwrap()
    };
    // A comment after the line is ignored.
    let out = keygen(
        "alice",
        &format!("{line}  alice@laptop"),
        &["--ports", "tcp/22"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(mode_of(&profile), 0o644);
    assert_eq!(mode_of(&dir.join("server.key")), 0o600);
    assert_eq!(mode_of(&dir.join("server.id")), 0o600);
    assert!(dir.join("state/replay.state").exists());
    let entry = fs::read_to_string(dir.join("clients.d/alice.toml")).unwrap();
    assert!(
        entry.contains(&format!("public_key = \"{line}\"")),
        "{entry}"
    );
    assert!(!entry.contains("\nkey ="), "{entry}");
    let text = fs::read_to_string(&profile).unwrap();
    assert!(!text.contains("\nkey ="), "{text}");
    assert!(text.contains("server_public_key"), "{text}");
    let server = knock_keys::identity::load_server_key(&dir.join("server.key")).unwrap();
    let server_id = knock_keys::identity::load(&dir.join("server.id")).unwrap();
    assert!(text.contains(&base64(server.public().as_bytes())), "{text}");
    let entry = knock_keys::entry::ClientEntry::load(&dir.join("clients.d/alice.toml")).unwrap();
    assert_eq!(entry.credential.public_key(), Some(&me));
    assert_eq!(entry.ports, vec![PortSpec::tcp(22)]);

    // Again, same name and key: unchanged, and the profile written again.
    let before = fs::read(dir.join("clients.d/alice.toml")).unwrap();
    fs::remove_file(&profile).unwrap();
    let out = keygen("alice", &line, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(dir.join("clients.d/alice.toml")).unwrap(), before);
    assert_eq!(fs::read_to_string(&profile).unwrap(), text);

    // The same key under another name: refused, naming alice's entry.
    let out = keygen("alice2", &line, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("alice.toml"), "{err}");
    assert!(!dir.join("clients.d/alice2.toml").exists());

    // Another key for alice needs --force.
    let (other_line, _) = identity_line(
        &home,
        &["--identity", dir.join("other-id").to_str().unwrap()],
    );
    let out = keygen("alice", &other_line, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--force"));
    assert_eq!(fs::read(dir.join("clients.d/alice.toml")).unwrap(), before);

    // The profile, imported from 0644, knocks as the server expects.
    let catcher = KnockCatcher::new();
    let text = text.replace(
        "knock_port = 62201",
        &format!("knock_port = {}", catcher.port()),
    );
    fs::write(&profile, text).unwrap();
    let out = client(&home).arg("import").arg(&profile).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client(&home)
        .args(["open", "127.0.0.1", "22", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let knocks = catcher.caught();
    assert_eq!(knocks.len(), 1);
    let keys = PairKeys::from_prk(&server.pair_prk(&me, &server_id).unwrap());
    let opened = open(&keys, Mode::Public, &KnockBytes::parse(&knocks[0]).unwrap()).unwrap();
    opened
        .verify_signature(&me, &server.public(), &server_id)
        .unwrap();
}
