//! Bad input to every command: malformed server configurations, client
//! entries and profiles, malformed arguments to all three binaries, and a few
//! hundred seeded random and mutated files through the config and profile
//! parsers, via the real binaries.
//!
//! The only allowed outcome for bad input is exit status 2 with one line on
//! stderr that names the file or argument at fault: no panic, no backtrace
//! (the binaries run with RUST_BACKTRACE=1, so a panic would show), and for
//! `knock-server run` no firewall change (it runs in a fresh network
//! namespace whose `nft list ruleset` and `iptables-save` are compared before
//! and after).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use knock_tests::*;

/// A deterministic xorshift64* generator: the same files on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What a failed command printed.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

impl From<Output> for Outcome {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }
}

fn no_panic(what: &str, o: &Outcome) {
    for text in [&o.stderr, &o.stdout] {
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !text.contains(bad),
                "{what}: {bad:?} in the output:\n{text}"
            );
        }
    }
    assert!(
        o.code.is_some(),
        "{what}: killed by a signal (a crash):\n{}",
        o.stderr
    );
}

/// Exit 2, exactly one line on stderr, starting with the program's name and
/// naming `culprit` (a file or an argument) when given.
fn assert_usage_error(what: &str, program: &str, o: &Outcome, culprit: Option<&str>) {
    no_panic(what, o);
    assert_eq!(
        o.code,
        Some(2),
        "{what}: exit {:?}, stderr:\n{}{}",
        o.code,
        o.stderr,
        o.stdout
    );
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: not one line on stderr:\n{}",
        o.stderr
    );
    assert!(
        lines[0].starts_with(&format!("{program}: error: ")),
        "{what}: {}",
        lines[0]
    );
    if let Some(culprit) = culprit {
        assert!(
            lines[0].contains(culprit),
            "{what}: the error does not name {culprit:?}: {}",
            lines[0]
        );
    }
}

/// `knock-server run` may log before it fails; the failure itself is one
/// line, the last, and nothing else is an error.
fn assert_run_refused(what: &str, o: &Outcome, culprit: &str) {
    no_panic(what, o);
    assert_eq!(
        o.code,
        Some(2),
        "{what}: exit {:?}, stderr:\n{}",
        o.code,
        o.stderr
    );
    let errors: Vec<&str> = o.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{what}: not one error line:\n{}", o.stderr);
    assert_eq!(
        o.stderr.lines().last(),
        Some(errors[0]),
        "{what}: the error is not the last line"
    );
    assert!(
        errors[0].starts_with("knock-server: error: "),
        "{what}: {}",
        errors[0]
    );
    assert!(
        errors[0].contains(culprit),
        "{what}: the error does not name {culprit:?}: {}",
        errors[0]
    );
    assert!(
        !o.stderr.contains("ready"),
        "{what}: it said ready:\n{}",
        o.stderr
    );
}

fn run_bin(program: &str, args: &[OsString]) -> Outcome {
    let out = Command::new(bin(program))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("KNOCK_HOME", "/nonexistent/knock-home")
        .env_remove("HOME")
        .output()
        .unwrap();
    out.into()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A scratch directory with a valid server.toml, a clients.d holding alice
/// (made by knock-keygen), and alice's profile.
struct Scratch {
    _lab: Lab,
    ns: Ns,
    dir: PathBuf,
    config: PathBuf,
    valid_config: String,
    alice_entry: String,
    alice_profile: String,
    firewall_before: String,
}

fn scratch() -> Scratch {
    let mut lab = Lab::new();
    // Only `knock-server run` needs it: a fresh namespace whose firewall must
    // stay exactly as it is.
    let ns = lab.netns("bad");
    let dir = lab.dir.join("bad");
    fs::create_dir_all(dir.join("clients.d")).unwrap();
    let valid_config = format!(
        "interface = \"any\"\nknock_port = 62201\nfirewall = \"nftables\"\nprotected = [\"tcp/4992\"]\n\
         open_for = \"30s\"\nstate_dir = \"{0}/state\"\nclients_dir = \"{0}/clients.d\"\n",
        dir.display()
    );
    let config = dir.join("server.toml");
    fs::write(&config, &valid_config).unwrap();
    let profile = dir.join("alice.knock");
    sh(Command::new(bin("knock-keygen"))
        .args(["alice", "--host", "127.0.0.1", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&profile));
    let alice_entry = fs::read_to_string(dir.join("clients.d/alice.toml")).unwrap();
    let alice_profile = fs::read_to_string(&profile).unwrap();
    let firewall_before = firewall(&ns);
    Scratch {
        _lab: lab,
        ns,
        dir,
        config,
        valid_config,
        alice_entry,
        alice_profile,
        firewall_before,
    }
}

fn firewall(ns: &Ns) -> String {
    ns.sh("nft list ruleset; iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; ipset list -n")
}

impl Scratch {
    /// `knock-server check` and `knock-server run` with `config`: both must
    /// refuse it, naming `culprit`.
    fn server_refuses(&self, what: &str, config: &Path, culprit: &str) {
        let args = [OsString::from("check"), "--config".into(), config.into()];
        assert_usage_error(
            &format!("check: {what}"),
            "knock-server",
            &run_bin("knock-server", &args),
            Some(culprit),
        );
        let config = config.to_str().unwrap();
        let (code, stdout, stderr) = run_server_to_exit(
            &self.ns,
            &["run", "--config", config],
            Duration::from_secs(10),
        );
        assert_run_refused(
            &format!("run: {what}"),
            &Outcome {
                code: Some(code),
                stdout,
                stderr,
            },
            culprit,
        );
    }

    fn assert_firewall_untouched(&self) {
        assert_eq!(
            firewall(&self.ns),
            self.firewall_before,
            "knock-server run changed the firewall"
        );
    }

    fn write(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

/// `NOT-UTF-8` in `bytes` replaced by bytes that are not UTF-8.
fn non_utf8(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let (before, after) = text.split_once("NOT-UTF-8").unwrap();
    [before.as_bytes(), b"\xff\xfe\xc0", after.as_bytes()].concat()
}

fn replace_line(text: &str, key: &str, line: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(&format!("{key} ")) {
                line.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Malformed server.toml files through `check` and `run`.
#[test]
fn malformed_server_configs_are_refused() {
    let s = scratch();
    let v = &s.valid_config;
    let with = |key: &str, line: &str| replace_line(v, key, line).into_bytes();
    let plus = |line: &str| format!("{v}{line}\n").into_bytes();
    let mut corpus: Vec<(&str, Vec<u8>)> = vec![
        // wrong types
        (
            "knock_port as a string",
            with("knock_port", "knock_port = \"62201\""),
        ),
        (
            "protected as a string",
            with("protected", "protected = \"tcp/4992\""),
        ),
        (
            "protected as numbers",
            with("protected", "protected = [4992]"),
        ),
        ("open_for as a number", with("open_for", "open_for = 30")),
        ("interface as a number", with("interface", "interface = 5")),
        ("firewall as a boolean", with("firewall", "firewall = true")),
        (
            "state_dir as a table",
            with("state_dir", "state_dir = { path = \"/x\" }"),
        ),
        ("a date", plus("verify_every = 1979-05-27T07:32:00Z")),
        ("a float priority", plus("nft_priority = 1.5")),
        // huge values
        (
            "knock_port beyond u64",
            with("knock_port", "knock_port = 99999999999999999999"),
        ),
        (
            "knock_port beyond u16",
            with("knock_port", "knock_port = 70000"),
        ),
        (
            "knock_port i64::MAX",
            with("knock_port", "knock_port = 9223372036854775807"),
        ),
        (
            "open_for overflowing",
            with("open_for", "open_for = \"99999999999999999999s\""),
        ),
        (
            "open_for hours overflowing",
            with("open_for", "open_for = \"9999999999999999h\""),
        ),
        (
            "open_for over a day",
            with("open_for", "open_for = \"25h\""),
        ),
        ("max_clock_skew too wide", plus("max_clock_skew = \"11m\"")),
        ("nft_priority huge", plus("nft_priority = 100000")),
        ("refuse unknown", plus("refuse = \"ignore\"")),
        ("refuse as a boolean", plus("refuse = true")),
        ("iptables_mark two bits", plus("iptables_mark = \"0x3\"")),
        ("iptables_mark decimal", plus("iptables_mark = \"2097152\"")),
        (
            "interface too long",
            with("interface", "interface = \"abcdefghijklmnopq\""),
        ),
        (
            "port 65536",
            with("protected", "protected = [\"tcp/65536\"]"),
        ),
        (
            "nft_table too long",
            plus(&format!("nft_table = \"{}\"", "t".repeat(33))),
        ),
        (
            "a file over 64 KiB",
            format!("{v}# {}\n", "x".repeat(70_000)).into_bytes(),
        ),
        (
            "arrays nested 30000 deep",
            plus(&format!("x = {}{}", "[".repeat(30_000), "]".repeat(30_000))),
        ),
        (
            "tables nested 10000 deep",
            plus(&format!(
                "x = {}1{}",
                "{a=".repeat(10_000),
                "}".repeat(10_000)
            )),
        ),
        // negative and zero durations and ports
        ("negative open_for", with("open_for", "open_for = \"-5s\"")),
        ("negative max_clock_skew", plus("max_clock_skew = \"-1s\"")),
        ("negative verify_every", plus("verify_every = \"-2s\"")),
        ("zero open_for", with("open_for", "open_for = \"0s\"")),
        (
            "fractional open_for",
            with("open_for", "open_for = \"1.5s\""),
        ),
        ("negative knock_port", with("knock_port", "knock_port = -1")),
        ("zero knock_port", with("knock_port", "knock_port = 0")),
        // unknown keys and sections
        ("an unknown key", plus("bogus = 1")),
        ("a misspelt key", plus("open_fro = \"30s\"")),
        ("a key in the wrong case", plus("Interface = \"eth0\"")),
        ("an unknown section", plus("[server]\nport = 1")),
        // unknown backends and enumerations
        ("backend pf", with("firewall", "firewall = \"pf\"")),
        (
            "backend in capitals",
            with("firewall", "firewall = \"NFTABLES\""),
        ),
        (
            "backend with a space",
            with("firewall", "firewall = \"nftables \""),
        ),
        ("empty backend", with("firewall", "firewall = \"\"")),
        ("unknown on_exit", plus("on_exit = \"open\"")),
        // other bad values
        ("nothing protected", with("protected", "protected = []")),
        (
            "port 0 protected",
            with("protected", "protected = [\"tcp/0\"]"),
        ),
        (
            "unknown transport",
            with("protected", "protected = [\"sctp/22\"]"),
        ),
        (
            "the knock port protected",
            with("protected", "protected = [\"udp/62201\"]"),
        ),
        ("empty interface", with("interface", "interface = \"\"")),
        (
            "interface with a slash",
            with("interface", "interface = \"eth0/1\""),
        ),
        ("command with a space", plus("iptables_cmd = \"ip tables\"")),
        ("empty state_dir", with("state_dir", "state_dir = \"\"")),
        ("bad nft_table", plus("nft_table = \"knock-table\"")),
        // duplicate keys
        ("duplicate knock_port", plus("knock_port = 62202")),
        ("duplicate protected", plus("protected = [\"tcp/22\"]")),
        // not TOML, not UTF-8, nothing
        ("an empty file", Vec::new()),
        ("only whitespace", b"  \n\t\n".to_vec()),
        ("only comments", b"# protected = [\"tcp/22\"]\n".to_vec()),
        (
            "non-UTF-8 in a string",
            non_utf8(&with("interface", "interface = \"NOT-UTF-8\"")),
        ),
        (
            "a UTF-16 file",
            "protected = [\"tcp/22\"]\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
        ),
        ("a NUL byte", plus("\0")),
        (
            "an unterminated string",
            with("interface", "interface = \"eth0"),
        ),
        (
            "an unterminated array",
            with("protected", "protected = [\"tcp/4992\""),
        ),
        ("a bare key without value", plus("interface")),
    ];
    let mut rng = Rng(0x6b6e_6f63_6b21);
    for i in 0..5 {
        corpus.push((
            [
                "binary junk 1",
                "binary junk 2",
                "binary junk 3",
                "binary junk 4",
                "binary junk 5",
            ][i],
            rng.bytes(64 + 97 * i),
        ));
    }
    for (i, (what, bytes)) in corpus.iter().enumerate() {
        let path = s.write(&format!("bad{i}.toml"), bytes, 0o644);
        s.server_refuses(what, &path, &path.display().to_string());
    }
    // A missing file and a directory.
    let missing = s.dir.join("missing.toml");
    s.server_refuses("a missing file", &missing, &missing.display().to_string());
    s.server_refuses("a directory", &s.dir, &s.dir.display().to_string());
    s.assert_firewall_untouched();
    // knock-keygen wrote the initial replay state; nothing else appeared.
    let listing: Vec<String> = std::fs::read_dir(s.dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listing,
        ["replay.state"],
        "a refused configuration wrote to the state directory"
    );
}

/// Malformed client entries in clients.d: `check` and `run` refuse them,
/// naming the client file.
#[test]
fn malformed_client_entries_are_refused() {
    let s = scratch();
    let clients = s.dir.join("clients.d");
    let key_line = s
        .alice_entry
        .lines()
        .find(|l| l.starts_with("key = "))
        .unwrap()
        .to_owned();
    let entry = |key: &str| s.alice_entry.replace(&key_line, &format!("key = {key}"));
    let corpus: Vec<(&str, &str, Vec<u8>, u32)> = vec![
        // A second client with alice's key: two names, one secret.
        ("a duplicate client (same key)", "zed.toml", s.alice_entry.clone().into_bytes(), 0o600),
        ("bad base64", "bob.toml", entry("\"!!!not base64!!!\"").into_bytes(), 0o600),
        ("a short key", "bob.toml", entry("\"AAAAAAAAAAAAAAAAAAAAAA==\"").into_bytes(), 0o600),
        ("a long key", "bob.toml", entry(&format!("\"{}\"", "A".repeat(64))).into_bytes(), 0o600),
        ("a key as a number", "bob.toml", entry("5").into_bytes(), 0o600),
        ("an empty key", "bob.toml", entry("\"\"").into_bytes(), 0o600),
        ("world-readable", "bob.toml", s.alice_entry.replace(&key_line, "key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"").into_bytes(), 0o644),
        ("group-readable", "bob.toml", s.alice_entry.replace(&key_line, "key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"").into_bytes(), 0o640),
        ("an unknown field", "bob.toml", format!("{}admin = true\n", entry("\"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"")).into_bytes(), 0o600),
        ("no ports", "bob.toml", b"key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\n".to_vec(), 0o600),
        ("empty ports", "bob.toml", b"key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\nports = []\n".to_vec(), 0o600),
        ("a bad port", "bob.toml", b"key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\nports = [\"tcp/0\"]\n".to_vec(), 0o600),
        ("a negative max_open_for", "bob.toml", b"key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\nports = [\"tcp/4992\"]\nmax_open_for = \"-5s\"\n".to_vec(), 0o600),
        ("a duplicate key line", "bob.toml", b"key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\nkey = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\nports = [\"tcp/4992\"]\n".to_vec(), 0o600),
        ("a bad file name", "bob smith.toml", b"key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"\nports = [\"tcp/4992\"]\n".to_vec(), 0o600),
        ("non-UTF-8", "bob.toml", b"key = \"\xff\xfe\"\nports = [\"tcp/4992\"]\n".to_vec(), 0o600),
        ("an empty file", "bob.toml", Vec::new(), 0o600),
        ("binary junk", "bob.toml", Rng(7).bytes(300), 0o600),
        // Public-key entries.
        ("both key and public_key", "bob.toml", format!("{}public_key = \"{}\"\n", s.alice_entry, public_line(1)).into_bytes(), 0o600),
        ("a public_key that is not a line", "bob.toml", b"public_key = \"ssh-ed25519 AAAA\"\nports = [\"tcp/4992\"]\n".to_vec(), 0o644),
        ("a public_key with a bad check", "bob.toml", format!("public_key = \"{}\"\nports = [\"tcp/4992\"]\n", flip_last(&public_line(1))).into_bytes(), 0o644),
        ("a public_key of small order", "bob.toml", format!("public_key = \"{}\"\nports = [\"tcp/4992\"]\n", small_order_line()).into_bytes(), 0o644),
        ("a public_key with a weak Ed25519 key", "bob.toml", format!("public_key = \"{}\"\nports = [\"tcp/4992\"]\n", weak_ed25519_line()).into_bytes(), 0o644),
        ("a group-writable public entry", "bob.toml", format!("public_key = \"{}\"\nports = [\"tcp/4992\"]\n", public_line(1)).into_bytes(), 0o664),
        ("a public_key as a number", "bob.toml", b"public_key = 5\nports = [\"tcp/4992\"]\n".to_vec(), 0o644),
    ];
    for (what, name, bytes, mode) in &corpus {
        let path = clients.join(name);
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        s.server_refuses(what, &s.config, &path.display().to_string());
        fs::remove_file(&path).unwrap();
    }
    // Two public-key clients with one identity: the second is named.
    let entry = format!(
        "public_key = \"{}\"\nports = [\"tcp/4992\"]\n",
        public_line(2)
    );
    let (first, second) = (clients.join("carol.toml"), clients.join("dave.toml"));
    for path in [&first, &second] {
        fs::write(path, &entry).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }
    s.server_refuses("a duplicate public key", &s.config, "dave.toml");
    fs::remove_file(&first).unwrap();
    fs::remove_file(&second).unwrap();
    // A clients_dir that does not exist.
    let config = s.write(
        "nodir.toml",
        replace_line(
            &s.valid_config,
            "clients_dir",
            "clients_dir = \"/nonexistent/clients.d\"",
        )
        .as_bytes(),
        0o644,
    );
    s.server_refuses("a missing clients_dir", &config, "/nonexistent/clients.d");
    s.assert_firewall_untouched();
    // And with nothing wrong, check passes: the corpus failed for its faults.
    let ok = run_bin(
        "knock-server",
        &[
            OsString::from("check"),
            "--config".into(),
            s.config.clone().into(),
        ],
    );
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}

/// The public line of the identity whose seed is 32 × `seed`.
fn public_line(seed: u8) -> String {
    knock_proto::ClientIdentity::from_seed(&knock_proto::IdentitySeed::from_bytes([seed; 32]))
        .public()
        .to_line()
}

/// A well-formed line (its check bytes right) whose X25519 key has small
/// order: every agreement with it is all zero.
fn small_order_line() -> String {
    let good = knock_proto::ClientPublicKey::parse_line(&public_line(1)).unwrap();
    knock_proto::ClientPublicKey::from_bytes(*good.ed25519_bytes(), [0; 32]).to_line()
}

/// A well-formed line whose Ed25519 key is the identity point (weak: it
/// verifies signatures on many messages).
fn weak_ed25519_line() -> String {
    let good = knock_proto::ClientPublicKey::parse_line(&public_line(1)).unwrap();
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    knock_proto::ClientPublicKey::from_bytes(identity_point, *good.x25519_bytes()).to_line()
}

/// `line` with its last character changed (the check bytes then disagree).
fn flip_last(line: &str) -> String {
    let mut text = line.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == 'A' { 'B' } else { 'A' });
    text
}

/// `knock-keygen --public-key` with a line that is not a usable public key:
/// exit 2, one line naming --public-key, and nothing written (not even the
/// server's identity or key). An identity enrolled under another name, or
/// another key for an enrolled name without --force, is refused the same way.
#[test]
fn keygen_refuses_bad_public_keys() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let config = dir.join("server.toml");
    fs::write(
        &config,
        format!(
            "protected = [\"tcp/4992\"]\nstate_dir = \"{0}/state\"\nclients_dir = \"{0}/clients.d\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let listing = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let keygen = |name: &str, line: &str| -> Outcome {
        let out = dir.join("out.knock");
        run_bin(
            "knock-keygen",
            &[
                OsString::from(name),
                "--host".into(),
                "127.0.0.1".into(),
                "--public-key".into(),
                line.into(),
                "--config".into(),
                config.clone().into(),
                "--out".into(),
                out.into(),
            ],
        )
    };
    let good = public_line(1);
    let cases: Vec<(&str, String)> = vec![
        ("an empty line", String::new()),
        ("junk", "hello".to_owned()),
        (
            "an ssh key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@laptop".to_owned(),
        ),
        ("another version", good.replace("knock-id1:", "knock-id2:")),
        ("a truncated line", good[..good.len() - 1].to_owned()),
        ("a line too long", format!("{good}A")),
        ("a mistyped character", flip_last(&good)),
        ("padding", format!("{good}=")),
        ("not base64url", good.replace(['-', '_'], "+")),
        ("an X25519 key of small order", small_order_line()),
        ("a weak Ed25519 key", weak_ed25519_line()),
    ];
    for (what, line) in &cases {
        if line == &good {
            continue;
        }
        let o = keygen("bob", line);
        assert_usage_error(what, "knock-keygen", &o, Some("--public-key"));
        assert_eq!(listing(), before, "{what}: a file was written");
    }

    // Enrolled once...
    let o = keygen("alice", &format!("{good} alice@laptop"));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let entry = fs::read(dir.join("clients.d/alice.toml")).unwrap();
    // ...the same identity under another name is refused, naming the entry.
    let o = keygen("bob", &good);
    assert_usage_error(
        "a duplicate identity",
        "knock-keygen",
        &o,
        Some("alice.toml"),
    );
    assert!(!dir.join("clients.d/bob.toml").exists());
    // ...and another identity for alice needs --force.
    let o = keygen("alice", &public_line(2));
    assert_usage_error("another key for alice", "knock-keygen", &o, Some("--force"));
    assert_eq!(fs::read(dir.join("clients.d/alice.toml")).unwrap(), entry);
}

/// Malformed public-key profiles through `knock-client open --profile`
/// (exit 2, naming the profile), whatever their mode.
#[test]
fn malformed_public_profiles_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let server_pk = "Za8+yMSzUUaSWg5+X7kjwATUB+CnZoroBPPug4YYA0s=";
    let valid = format!(
        "name = \"alice\"\nhost = \"127.0.0.1\"\nknock_port = 62201\n\
         server_id = \"AAAAAAAAAAAAAAAAAAAAAA==\"\nserver_public_key = \"{server_pk}\"\n\
         client_public_key = \"{}\"\nports = [\"tcp/4992\"]\n",
        public_line(1)
    );
    let with = |key: &str, line: &str| replace_line(&valid, key, line).into_bytes();
    let plus = |line: &str| format!("{valid}{line}\n").into_bytes();
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        (
            "both key and server_public_key",
            plus("key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\""),
        ),
        ("neither key", with("server_public_key", "")),
        (
            "a short server_public_key",
            with("server_public_key", "server_public_key = \"AAAA\""),
        ),
        (
            "a server_public_key of small order",
            with(
                "server_public_key",
                "server_public_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"",
            ),
        ),
        (
            "server_public_key as a number",
            with("server_public_key", "server_public_key = 7"),
        ),
        (
            "a damaged client_public_key",
            with(
                "client_public_key",
                &format!("client_public_key = \"{}\"", flip_last(&public_line(1))),
            ),
        ),
        (
            "client_public_key in a shared-key profile",
            with(
                "server_public_key",
                "key = \"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"",
            ),
        ),
    ];
    for (i, (what, bytes)) in corpus.iter().enumerate() {
        let path = scratch.path().join(format!("bad{i}.knock"));
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let args = [
            OsString::from("open"),
            "127.0.0.1".into(),
            "4992".into(),
            "--no-wait".into(),
            "--profile".into(),
            path.clone().into(),
        ];
        assert_usage_error(
            what,
            "knock-client",
            &run_bin("knock-client", &args),
            Some(&path.display().to_string()),
        );
    }
}

/// Malformed profiles through `knock-client open --profile` (exit 2, naming
/// the profile).
#[test]
fn malformed_profiles_are_refused() {
    let s = scratch();
    let p = &s.alice_profile;
    let with = |key: &str, line: &str| replace_line(p, key, line).into_bytes();
    let plus = |line: &str| format!("{p}{line}\n").into_bytes();
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        (
            "knock_port as a string",
            with("knock_port", "knock_port = \"62201\""),
        ),
        ("knock_port 0", with("knock_port", "knock_port = 0")),
        ("knock_port 70000", with("knock_port", "knock_port = 70000")),
        ("knock_port -1", with("knock_port", "knock_port = -1")),
        (
            "knock_port beyond u64",
            with("knock_port", "knock_port = 99999999999999999999"),
        ),
        ("bad base64 key", with("key", "key = \"%%%\"")),
        (
            "a short key",
            with("key", "key = \"AAAAAAAAAAAAAAAAAAAAAA==\""),
        ),
        ("a key as an array", with("key", "key = [1, 2]")),
        ("no key", with("key", "")),
        (
            "a short server_id",
            with("server_id", "server_id = \"AAAA\""),
        ),
        ("no server_id", with("server_id", "")),
        ("a bad name", with("name", "name = \"../alice\"")),
        ("an empty host", with("host", "host = \"\"")),
        ("ports as a string", with("ports", "ports = \"tcp/4992\"")),
        ("a bad port", with("ports", "ports = [\"foo/1\"]")),
        ("an unknown key", plus("proxy = \"socks5://x\"")),
        ("a duplicate key", plus("knock_port = 1")),
        ("an empty file", Vec::new()),
        ("non-UTF-8", non_utf8(&with("host", "host = \"NOT-UTF-8\""))),
        (
            "a file over 64 KiB",
            format!("{p}# {}\n", "x".repeat(70_000)).into_bytes(),
        ),
        ("binary junk", Rng(11).bytes(500)),
        (
            "nested 30000 deep",
            plus(&format!("x = {}", "[".repeat(30_000))),
        ),
    ];
    for (i, (what, bytes)) in corpus.iter().enumerate() {
        let path = s.write(&format!("bad{i}.knock"), bytes, 0o600);
        let args = [
            OsString::from("open"),
            "127.0.0.1".into(),
            "4992".into(),
            "--no-wait".into(),
            "--profile".into(),
            path.clone().into(),
        ];
        assert_usage_error(
            what,
            "knock-client",
            &run_bin("knock-client", &args),
            Some(&path.display().to_string()),
        );
    }
}

/// Seeded random files, and random byte mutations of valid ones, through the
/// config parser (`knock-server check`, and `run` for the junk) and the
/// profile parser (`knock-client open --no-wait`). Junk is refused with exit
/// 2; a mutation may happen to stay valid (exit 0), but nothing panics and
/// every refusal is one line naming the file.
#[test]
fn random_files_never_crash_the_parsers() {
    let s = scratch();
    let mut rng = Rng(0x005e_ed0f_6b6e_6f63);
    let alphabet: Vec<&[u8]> = vec![
        b"protected",
        b"knock_port",
        b"open_for",
        b"interface",
        b"firewall",
        b"=",
        b" = ",
        b"\"",
        b"[",
        b"]",
        b"{",
        b"}",
        b",",
        b"\n",
        b"#",
        b"tcp/",
        b"udp/",
        b"22",
        b"-",
        b"1e999",
        b"0x",
        b"'''",
        b"\"\"\"",
        b"\\u",
        b"\xff",
        b"\0",
        b".",
        b"nftables",
        b"30s",
        b"any",
        b"true",
        b"inf",
        b"nan",
    ];
    let mut junk = Vec::new();
    for i in 0..100 {
        let bytes = if i % 2 == 0 {
            let len = rng.below(600);
            rng.bytes(len)
        } else {
            let n = rng.below(60);
            (0..n)
                .flat_map(|_| alphabet[rng.below(alphabet.len())].to_vec())
                .collect()
        };
        junk.push(bytes);
    }
    let mutate = |rng: &mut Rng, text: &str| -> Vec<u8> {
        let mut bytes = text.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = rng.next() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[rng.below(alphabet.len())][0]),
            }
        }
        bytes
    };

    // Config parser: junk through check and run, mutations through check.
    for (i, bytes) in junk.iter().enumerate() {
        let path = s.write(&format!("junk{i}.toml"), bytes, 0o644);
        s.server_refuses(
            &format!("random config {i}"),
            &path,
            &path.display().to_string(),
        );
    }
    let mut valid_mutations = 0;
    for i in 0..100 {
        let bytes = mutate(&mut rng, &s.valid_config);
        let path = s.write(&format!("mutant{i}.toml"), &bytes, 0o644);
        let o = run_bin(
            "knock-server",
            &[
                OsString::from("check"),
                "--config".into(),
                path.clone().into(),
            ],
        );
        if o.code == Some(0) {
            valid_mutations += 1;
            no_panic(&format!("mutated config {i}"), &o);
        } else {
            assert_usage_error(&format!("mutated config {i}"), "knock-server", &o, None);
        }
    }
    assert!(
        valid_mutations < 50,
        "{valid_mutations} of 100 mutated configs were valid: the mutator does nothing"
    );

    // Profile parser: junk and mutations through knock-client.
    let mut valid_profiles = 0;
    let mutants: Vec<Vec<u8>> = (0..100)
        .map(|_| mutate(&mut rng, &s.alice_profile))
        .collect();
    for (i, bytes) in junk.iter().chain(&mutants).enumerate() {
        let path = s.write(&format!("random{i}.knock"), bytes, 0o600);
        let args = [
            OsString::from("open"),
            "127.0.0.1".into(),
            "4992".into(),
            "--no-wait".into(),
            "--profile".into(),
            path.clone().into(),
        ];
        let o = run_bin("knock-client", &args);
        if i >= 100 && o.code == Some(0) {
            valid_profiles += 1;
            no_panic(&format!("mutated profile {i}"), &o);
        } else {
            assert_usage_error(
                &format!("random profile {i}"),
                "knock-client",
                &o,
                Some(&path.display().to_string()),
            );
        }
    }
    assert!(
        valid_profiles < 50,
        "{valid_profiles} of 100 mutated profiles were valid"
    );
    s.assert_firewall_untouched();
}

/// Malformed arguments to all three binaries.
#[test]
fn malformed_arguments_are_usage_errors() {
    let s = scratch();
    let config = s.config.to_str().unwrap();
    let profile = s.dir.join("alice.knock");
    let profile = profile.to_str().unwrap();
    let not_utf8 = OsString::from_vec(b"\xff\xfe".to_vec());

    // No arguments at all: exit 2, nothing on stdout; knock-server and
    // knock-client print clap's help on stderr (several lines: help rather
    // than an error message), knock-keygen one error line.
    for program in ["knock-server", "knock-client", "knock-keygen"] {
        let o = run_bin(program, &[]);
        no_panic(&format!("{program} without arguments"), &o);
        assert_eq!(o.code, Some(2), "{program} without arguments: {}", o.stderr);
        assert!(o.stdout.is_empty(), "{program}: {}", o.stdout);
        assert!(
            o.stderr.contains("Usage:") || o.stderr.lines().count() == 1,
            "{program}: {}",
            o.stderr
        );
    }

    let server: Vec<(Vec<OsString>, Option<&str>)> = vec![
        (os(&["bogus"]), Some("bogus")),
        (os(&["run", "--bogus"]), Some("--bogus")),
        (os(&["check", "--config"]), Some("--config")),
        (
            os(&["check", "--config", "/nonexistent/server.toml"]),
            Some("/nonexistent/server.toml"),
        ),
        (
            os(&["status", "--config", "/nonexistent/server.toml"]),
            Some("/nonexistent/server.toml"),
        ),
        (
            os(&["remove-rules", "--config", "/nonexistent/server.toml"]),
            Some("/nonexistent/server.toml"),
        ),
        // (Not restore-rules with a missing --config: at boot it falls back
        // to /var/lib/knock by design, and this runs in the host's namespace.)
        (
            os(&["restore-rules", "--state-dir", "/nonexistent/state"]),
            Some("--state-dir /nonexistent/state"),
        ),
        (os(&["restore-rules", "--bogus"]), Some("--bogus")),
        (os(&["check", "extra"]), Some("extra")),
        (os(&["check", "--json=maybe", "--config", config]), None),
        (
            vec!["check".into(), "--config".into(), not_utf8.clone()],
            None,
        ),
    ];
    for (args, culprit) in &server {
        assert_usage_error(
            &format!("knock-server {args:?}"),
            "knock-server",
            &run_bin("knock-server", args),
            *culprit,
        );
    }
    // `run` with bad arguments, in the namespace: nothing installed.
    for args in [
        &["run", "--config", "/nonexistent/server.toml"][..],
        &["run", "--config"],
        &["run", "now"],
    ] {
        let (code, stdout, stderr) = run_server_to_exit(&s.ns, args, Duration::from_secs(10));
        let o = Outcome {
            code: Some(code),
            stdout,
            stderr,
        };
        assert_usage_error(&format!("knock-server {args:?}"), "knock-server", &o, None);
    }
    s.assert_firewall_untouched();

    let seventeen: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
    let mut too_many = vec!["open".to_owned(), "127.0.0.1".to_owned()];
    too_many.extend(seventeen);
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let open = |extra: &[&str]| -> Vec<OsString> {
        let mut args = os(&["open", "127.0.0.1"]);
        args.extend(os(extra));
        args.extend(os(&["--no-wait", "--profile", profile]));
        args
    };
    let client: Vec<(Vec<OsString>, Option<&str>)> = vec![
        (os(&["bogus"]), Some("bogus")),
        (os(&["open"]), None),
        (os(&["open", "127.0.0.1", "--profile", profile]), None),
        (open(&["tcp/0"]), Some("tcp/0")),
        (open(&["udp/70000"]), Some("udp/70000")),
        (open(&["foo/22"]), Some("foo/22")),
        (open(&["-5"]), None),
        (open(&["4992", "--timeout", "abc"]), Some("--timeout")),
        (open(&["4992", "--timeout", "-5s"]), None),
        (
            open(&["4992", "--allow-ip", "not-an-ip"]),
            Some("--allow-ip"),
        ),
        (open(&["4992", "--allow-ip", "0.0.0.0"]), Some("--allow-ip")),
        (
            open(&["4992", "--allow-ip", "224.0.0.1"]),
            Some("--allow-ip"),
        ),
        (open(&["4992", "--open-for", "0s"]), Some("--open-for")),
        (open(&["4992", "--open-for", "500ms"]), Some("--open-for")),
        (
            {
                let mut a = os(&too_many);
                a.extend(os(&["--no-wait", "--profile", profile]));
                a
            },
            None,
        ),
        (os(&["connect", "127.0.0.1"]), None),
        (os(&["connect", "127.0.0.1", "22", "23"]), None),
        (
            os(&["connect", "127.0.0.1", "udp/53", "--profile", profile]),
            Some("udp/53"),
        ),
        (os(&["import"]), None),
        (
            os(&["import", "/nonexistent/alice.knock"]),
            Some("/nonexistent/alice.knock"),
        ),
        (os(&["list", "extra"]), Some("extra")),
        (os(&["identity", "extra"]), Some("extra")),
        (os(&["identity", "--identity"]), Some("--identity")),
        (open(&["4992", "--identity"]), None),
        (
            vec![
                "open".into(),
                "127.0.0.1".into(),
                not_utf8.clone(),
                "--profile".into(),
                profile.into(),
            ],
            None,
        ),
    ];
    for (args, culprit) in &client {
        assert_usage_error(
            &format!("knock-client {args:?}"),
            "knock-client",
            &run_bin("knock-client", args),
            *culprit,
        );
    }

    let keygen: Vec<(Vec<OsString>, Option<&str>)> = vec![
        (os(&["bob"]), None),
        (os(&["bob", "--host"]), Some("--host")),
        (
            os(&["bob", "--host", "h", "--config", "/nonexistent/server.toml"]),
            Some("/nonexistent/server.toml"),
        ),
        (os(&["bob", "--host", "h", "--bogus"]), Some("--bogus")),
        (
            os(&["bob", "--host", "h", "--public-key"]),
            Some("--public-key"),
        ),
        (
            os(&[
                "bob",
                "--host",
                "h",
                "--public-key",
                "nope",
                "--config",
                config,
            ]),
            Some("--public-key"),
        ),
        (
            vec![
                "bob".into(),
                "--host".into(),
                not_utf8,
                "--config".into(),
                config.into(),
            ],
            None,
        ),
    ];
    for (args, culprit) in &keygen {
        assert_usage_error(
            &format!("knock-keygen {args:?}"),
            "knock-keygen",
            &run_bin("knock-keygen", args),
            *culprit,
        );
    }
}

/// knock-keygen refuses bad names, ports that are not protected, bad hosts,
/// and an existing client without --force, and writes nothing when it does.
#[test]
fn keygen_refuses_and_writes_nothing() {
    let s = scratch();
    let config = s.config.to_str().unwrap();
    let clients = s.dir.join("clients.d");
    let listing = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (clients_before, dir_before) = (listing(&clients), listing(&s.dir));
    let entry_before = fs::read(clients.join("alice.toml")).unwrap();
    let out = s.dir.join("out.knock");
    let out = out.to_str().unwrap();
    let long = "n".repeat(65);
    let keygen = |name: &str, extra: &[&str]| -> Vec<OsString> {
        let mut args = os(&[
            name,
            "--host",
            "127.0.0.1",
            "--config",
            config,
            "--out",
            out,
        ]);
        args.extend(os(extra));
        args
    };
    let cases: Vec<(&str, Vec<OsString>, &str)> = vec![
        ("an empty name", keygen("", &[]), "NAME"),
        ("a name with a slash", keygen("a/b", &[]), "NAME"),
        ("a name going up", keygen("../alice", &[]), "NAME"),
        ("a hidden name", keygen(".hidden", &[]), "NAME"),
        ("a name with a space", keygen("a b", &[]), "NAME"),
        ("a name of 65 characters", keygen(&long, &[]), "NAME"),
        ("a non-ASCII name", keygen("zoë", &[]), "NAME"),
        (
            "a port that is not protected",
            keygen("bob", &["--ports", "tcp/22"]),
            "--ports",
        ),
        ("port 0", keygen("bob", &["--ports", "tcp/0"]), "--ports"),
        (
            "an unknown transport",
            keygen("bob", &["--ports", "sctp/4992"]),
            "--ports",
        ),
        ("empty --ports", keygen("bob", &["--ports", ""]), "--ports"),
        (
            "an empty host",
            os(&["bob", "--host", "", "--config", config, "--out", out]),
            "--host",
        ),
        (
            "a host with a space",
            os(&["bob", "--host", "a b", "--config", config, "--out", out]),
            "--host",
        ),
        ("a bad alias", keygen("bob", &["--alias", "x y"]), "--alias"),
        (
            "an existing client without --force",
            keygen("alice", &[]),
            "already exists",
        ),
    ];
    for (what, args, culprit) in &cases {
        assert_usage_error(
            what,
            "knock-keygen",
            &run_bin("knock-keygen", args),
            Some(culprit),
        );
        assert_eq!(
            listing(&clients),
            clients_before,
            "{what}: clients.d changed"
        );
        assert_eq!(listing(&s.dir), dir_before, "{what}: a file was written");
    }
    assert_eq!(
        fs::read(clients.join("alice.toml")).unwrap(),
        entry_before,
        "alice's entry changed"
    );
    // An existing profile file is not overwritten either.
    fs::write(out, b"mine\n").unwrap();
    assert_usage_error(
        "an existing --out",
        "knock-keygen",
        &run_bin("knock-keygen", &keygen("bob", &[])),
        Some(out),
    );
    assert_eq!(fs::read(out).unwrap(), b"mine\n");
    assert!(!clients.join("bob.toml").exists());
}

/// A missing required argument is named in the one line, as every error
/// must name the argument at fault.
#[test]
fn missing_required_arguments_are_named() {
    let cases: [(&str, &[&str], &str); 5] = [
        ("knock-keygen", &["bob"], "--host"),
        ("knock-client", &["open", "127.0.0.1"], "PORT"),
        ("knock-client", &["connect", "127.0.0.1"], "PORT"),
        ("knock-client", &["import"], "FILE"),
        ("knock-server", &["check", "--config"], "--config"),
    ];
    for (program, args, culprit) in cases {
        let o = run_bin(program, &os(args));
        assert_usage_error(&format!("{program} {args:?}"), program, &o, Some(culprit));
    }
}
