//! Helpers for the adversarial, fault and bad-input suites: crafted packets
//! (through the `knock-wire` helper binary), intercepted knocks, servers
//! started under a wrapper (a private mount namespace), files made immutable
//! for the length of a test.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, eventually, sh, Ns, Server};

/// One crafted UDP datagram for `knock-wire raw`: any source address.
#[derive(Debug, Clone)]
pub struct RawPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// `ok`, `badsum`, `zerosum` or `frag:N`.
    pub mode: String,
    pub payload: Vec<u8>,
}

impl RawPacket {
    pub fn new(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8]) -> Self {
        Self {
            src,
            dst,
            sport: 40000,
            dport,
            mode: "ok".into(),
            payload: payload.to_vec(),
        }
    }

    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = mode.into();
        self
    }
}

/// Sends crafted packets from `ns` through a raw socket (IP header included),
/// in order, failing the test if any cannot be sent.
pub fn send_raw(ns: &Ns, packets: &[RawPacket]) {
    let mut input = String::new();
    for p in packets {
        input.push_str(&format!(
            "{} {} {} {} {} {}\n",
            p.src,
            p.dst,
            p.sport,
            p.dport,
            p.mode,
            hex(&p.payload)
        ));
    }
    let mut child = ns
        .cmd(bin("knock-wire"))
        .arg("raw")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("knock-wire raw");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("knock-wire stdin");
    }
    let out = child.wait_with_output().expect("knock-wire");
    assert!(
        out.status.success(),
        "knock-wire raw failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends one datagram of `len` bytes from an ordinary UDP socket in `ns`
/// (the kernel fragments it if it exceeds the MTU).
pub fn send_udp_len(ns: &Ns, addr: IpAddr, port: u16, len: usize) {
    sh(ns.cmd(bin("knock-wire")).args([
        "udp",
        &addr.to_string(),
        &port.to_string(),
        &len.to_string(),
    ]));
}

/// Makes a knock with the real `knock-client open HOST PORT... --no-wait`
/// (plus `extra` arguments) in `ns`, but delivers it to a socket on the
/// client's own loopback instead of the server: the knock exists, only
/// whoever holds the returned bytes has seen it, and the server has not.
pub fn intercept_knock(
    ns: &Ns,
    profile: &Path,
    knock_port: u16,
    ports: &[&str],
    extra: &[&str],
) -> Vec<u8> {
    intercept_knock_with_env(ns, profile, knock_port, ports, extra, &[])
}

/// [`intercept_knock`], with `env` set for knock-client (`LD_PRELOAD` of
/// libfaketime, say, for a client whose clock is off).
pub fn intercept_knock_with_env(
    ns: &Ns,
    profile: &Path,
    knock_port: u16,
    ports: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<u8> {
    let catcher = ns
        .cmd(bin("knock-wire"))
        .args(["recv", "127.0.0.1", &knock_port.to_string(), "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("knock-wire recv");
    let bound = eventually(Duration::from_secs(5), || {
        let (_, out) = ns.try_sh(&format!("ss -Hlun 'sport = :{knock_port}'"));
        out.contains("127.0.0.1")
    });
    assert!(bound, "the interception socket never bound");
    let mut cmd = ns.cmd(bin("knock-client"));
    cmd.args(["open", "127.0.0.1"])
        .args(ports)
        .arg("--no-wait")
        .args(extra)
        .arg("--profile")
        .arg(profile);
    cmd.env("KNOCK_HOME", profile.parent().unwrap_or(Path::new("/tmp")));
    for (key, value) in env {
        cmd.env(key, value);
    }
    let sent = cmd.output().expect("knock-client");
    assert!(
        sent.status.success(),
        "knock-client failed: {}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    let out = catcher.wait_with_output().expect("knock-wire recv");
    assert!(
        out.status.success(),
        "no knock intercepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    unhex(String::from_utf8_lossy(&out.stdout).trim()).expect("hex from knock-wire")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Replaces `key = ...` in a TOML file (or appends it).
pub fn set_config_key(config: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            let is_key = line.split('=').next().is_some_and(|k| k.trim() == key);
            if is_key {
                found = true;
                format!("{key} = {value}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    if !found {
        lines.push(format!("{key} = {value}"));
    }
    std::fs::write(config, lines.join("\n") + "\n").expect("write config");
}

/// The name of the interface in `ns` that holds `addr`.
pub fn interface_with(ns: &Ns, addr: &str) -> String {
    let out = ns.sh(&format!("ip -o addr show to {addr}"));
    out.split_whitespace()
        .nth(1)
        .map(|s| s.trim_end_matches(':').to_owned())
        .expect("interface")
}

/// `chattr +i` on a path for as long as the guard lives: even root cannot
/// create, rename or remove entries in an immutable directory.
#[derive(Debug)]
pub struct Immutable {
    path: PathBuf,
    set: bool,
}

impl Immutable {
    pub fn new(path: &Path) -> Self {
        let mut guard = Self {
            path: path.to_path_buf(),
            set: false,
        };
        guard.set();
        guard
    }

    pub fn set(&mut self) {
        sh(Command::new("chattr").arg("+i").arg(&self.path));
        self.set = true;
    }

    pub fn clear(&mut self) {
        sh(Command::new("chattr").arg("-i").arg(&self.path));
        self.set = false;
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        if self.set {
            let _ = Command::new("chattr").arg("-i").arg(&self.path).status();
        }
    }
}

/// Runs `knock-server ARGS` in `ns` to completion (at most `timeout`),
/// returning (exit code, stdout, stderr). A server that does not exit fails
/// the test.
pub fn run_server_to_exit(ns: &Ns, args: &[&str], timeout: Duration) -> (i32, String, String) {
    let mut child = ns
        .cmd(bin("knock-server"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("knock-server");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "knock-server {args:?} did not exit within {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Server {
    /// Like [`Server::start`], but runs `knock-server run --config CONFIG`
    /// through `sh -c WRAPPER`, where the wrapper ends with `exec "$@"` (so
    /// the pid stays the server's); `$@` is the server's command line.
    pub fn start_wrapped(ns: &Ns, config: &Path, wrapper: &str) -> Self {
        let mut cmd = ns.cmd("sh");
        cmd.args(["-c", wrapper, "knock-server-wrapper"])
            .arg(bin("knock-server"))
            .args(["run", "--config"])
            .arg(config);
        Self::start_command(ns, config, cmd)
    }

    /// Waits until at least `n` lines of the log contain `needle`.
    pub fn wait_for_count(&self, needle: &str, n: usize, timeout: Duration) {
        let ok = eventually(timeout, || self.count_log(needle) >= n);
        assert!(
            ok,
            "server log never had {n} lines with {needle:?}:\n{}",
            self.log()
        );
    }

    /// Is the server process still running (not exited, not a zombie)?
    /// A shared-reference variant of [`Server::is_running`].
    pub fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        // The state is the field after the parenthesised command name.
        stat.is_ok_and(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
    }
}
