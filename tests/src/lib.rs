//! A small network-namespace lab for the integration tests: create
//! namespaces and links, run the real binaries inside them, tear everything
//! down even when a test fails.
//!
//! Every namespace name starts with a prefix unique to this process and test,
//! and addresses come from 198.18.0.0/24 and fd00:18::/64 (documentation and
//! benchmarking ranges), so nothing leaves the lab and the root namespace is
//! never changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics (fails the test) unless we can create namespaces: these tests are
/// never skipped.
pub fn require_root() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(
        uid.as_deref().unwrap_or("?"),
        "0",
        "namespace tests need root (they create network namespaces); run scripts/test.sh as root"
    );
}

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KNOCK_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test> → target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One network namespace.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// A command run inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a shell line inside this namespace and returns its output, failing
    /// the test if it fails.
    pub fn sh(&self, line: &str) -> String {
        let out = sh(self.cmd("sh").args(["-c", line]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell line, returning (success, stdout+stderr).
    pub fn try_sh(&self, line: &str) -> (bool, String) {
        let out = self
            .cmd("sh")
            .args(["-c", line])
            .output()
            .expect("ip netns exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Can a TCP connection to addr:port be opened from here within ~1 s?
    pub fn tcp_connects(&self, addr: IpAddr, port: u16) -> bool {
        let target = match addr {
            IpAddr::V4(a) => format!("TCP4:{a}:{port},connect-timeout=1"),
            IpAddr::V6(a) => format!("TCP6:[{a}]:{port},connect-timeout=1"),
        };
        self.cmd("socat")
            .args(["-T1", "-u", "/dev/null", &target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// A set of namespaces and the processes started in them, all removed on drop.
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    namespaces: Vec<Ns>,
    children: Arc<Mutex<Vec<Child>>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Lab {
    pub fn new() -> Self {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("knt{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab dir");
        Self {
            prefix,
            dir,
            namespaces: Vec::new(),
            children: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A new namespace with loopback up.
    pub fn netns(&mut self, role: &str) -> Ns {
        let ns = Ns {
            name: format!("{}{role}", self.prefix),
        };
        sh(Command::new("ip").args(["netns", "add", &ns.name]));
        self.namespaces.push(ns.clone());
        ns.sh("ip link set lo up");
        ns
    }

    /// Links `a` and `b` with a veth pair, giving each the addresses listed
    /// (v4 /24 and v6 /64, without duplicate address detection).
    pub fn link(&self, a: &Ns, a_addrs: &[&str], b: &Ns, b_addrs: &[&str]) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let (va, vb) = (
            format!("kv{n}a{}", std::process::id() % 10000),
            format!("kv{n}b{}", std::process::id() % 10000),
        );
        self.link_named(a, &va, a_addrs, b, &vb, b_addrs);
    }

    /// [`Self::link`] with the veth ends named `va` (in `a`) and `vb` (in
    /// `b`): to create a link again after a test deleted it, or under a name
    /// a server waits for.
    pub fn link_named(
        &self,
        a: &Ns,
        va: &str,
        a_addrs: &[&str],
        b: &Ns,
        vb: &str,
        b_addrs: &[&str],
    ) {
        sh(Command::new("ip").args([
            "link", "add", va, "netns", &a.name, "type", "veth", "peer", "name", vb, "netns",
            &b.name,
        ]));
        for (ns, dev, addrs) in [(a, va, a_addrs), (b, vb, b_addrs)] {
            for addr in addrs {
                let prefix = if addr.contains(':') {
                    "/64 nodad"
                } else {
                    "/24"
                };
                ns.sh(&format!("ip addr add {addr}{prefix} dev {dev}"));
            }
            ns.sh(&format!("ip link set {dev} up"));
        }
    }

    /// Starts a process in the lab; it is killed when the lab drops.
    pub fn spawn(&self, mut cmd: Command) -> usize {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut children = self.children.lock().expect("children");
        children.push(child);
        children.len() - 1
    }

    /// The standard two-host lab: a server and a client namespace on one link,
    /// plus an eavesdropper/attacker on the same segment (a bridge in the
    /// server namespace would be overkill: the attacker gets its own link).
    pub fn standard(&mut self) -> Hosts {
        let server = self.netns("srv");
        let client = self.netns("cli");
        let attacker = self.netns("att");
        self.link(
            &server,
            &["198.18.0.1", "fd00:18::1"],
            &client,
            &["198.18.0.2", "fd00:18::2"],
        );
        self.link(
            &server,
            &["198.18.1.1", "fd00:18:1::1"],
            &attacker,
            &["198.18.1.66", "fd00:18:1::66"],
        );
        client.sh("ip route add default via 198.18.0.1 && ip -6 route add default via fd00:18::1");
        attacker
            .sh("ip route add default via 198.18.1.1 && ip -6 route add default via fd00:18:1::1");
        Hosts {
            server,
            client,
            attacker,
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in &self.namespaces {
            // Kill anything still running in the namespace, then remove it.
            let _ = Command::new("ip")
                .args(["netns", "pids", &ns.name])
                .output()
                .map(|out| {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        }
        if std::env::var_os("KNOCK_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The three hosts of [`Lab::standard`].
#[derive(Debug, Clone)]
pub struct Hosts {
    pub server: Ns,
    pub client: Ns,
    pub attacker: Ns,
}

pub const SERVER_V4: &str = "198.18.0.1";
pub const SERVER_V6: &str = "fd00:18::1";
pub const CLIENT_V4: &str = "198.18.0.2";
pub const CLIENT_V6: &str = "fd00:18::2";
pub const ATTACKER_V4: &str = "198.18.1.66";
pub const SERVER_FOR_ATTACKER_V4: &str = "198.18.1.1";

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// A knock-server running in a namespace, its log collected.
pub struct Server {
    pub ns: Ns,
    pub config: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// The thread copying the server's stderr into `log`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("ns", &self.ns.name)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts `knock-server run` and waits for its `ready` line.
    pub fn start(ns: &Ns, config: &Path) -> Self {
        let mut cmd = ns.cmd(bin("knock-server"));
        cmd.args(["run", "--config"]).arg(config);
        Self::start_command(ns, config, cmd)
    }

    /// Starts `cmd` (which runs the server in `ns` with `config`), collects
    /// its log and waits for its `ready` line.
    pub fn start_command(ns: &Ns, config: &Path, cmd: Command) -> Self {
        let server = Self::spawn_command(ns, config, cmd);
        server.wait_for_log("ready", Duration::from_secs(15));
        server
    }

    /// Starts `knock-server run` without waiting for its `ready` line.
    pub fn spawn(ns: &Ns, config: &Path) -> Self {
        let mut cmd = ns.cmd(bin("knock-server"));
        cmd.args(["run", "--config"]).arg(config);
        Self::spawn_command(ns, config, cmd)
    }

    /// Starts `cmd` and collects its log, without waiting for anything.
    pub fn spawn_command(ns: &Ns, config: &Path, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn knock-server");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("KNOCK_TEST_VERBOSE").is_some() {
                    eprintln!("[server] {line}");
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        Self {
            ns: ns.clone(),
            config: config.to_path_buf(),
            child: Some(child),
            log,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, failing the test otherwise.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server log never said {needle:?}:\n{}", self.log());
    }

    /// Counts the lines of the log containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal to the server process (the child is `ip netns exec`,
    /// which execs the server, so the pid is the server's).
    pub fn signal(&self, signal: &str) {
        sh(Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]));
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait()
    }

    /// SIGTERM and wait; returns the exit code and the whole log, down to the
    /// lines the server wrote while it stopped.
    pub fn stop_with_log(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let code = self.wait();
        if let Some(reader) = self.reader.take() {
            // The server is gone: its stderr reaches end of file as soon as
            // the reader has copied the last line.
            assert!(
                eventually(Duration::from_secs(5), || reader.is_finished()),
                "the server's stderr stayed open after it exited"
            );
            let _ = reader.join();
        }
        (code, self.log())
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server configuration in the lab directory, with `knock-keygen` clients.
#[derive(Debug, Clone)]
pub struct Setup {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Setup {
    /// Writes server.toml (with `extra` appended) and an empty clients.d.
    pub fn new(lab: &Lab, name: &str, firewall: &str, protected: &[&str], extra: &str) -> Self {
        let dir = lab.dir.join(name);
        std::fs::create_dir_all(dir.join("clients.d")).expect("mkdir");
        let protected: Vec<String> = protected.iter().map(|p| format!("\"{p}\"")).collect();
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "interface = \"any\"\nknock_port = 62201\nfirewall = \"{firewall}\"\nprotected = [{}]\nopen_for = \"5s\"\nstate_dir = \"{}\"\nclients_dir = \"{}\"\n{extra}",
                protected.join(", "),
                dir.join("state").display(),
                dir.join("clients.d").display()
            ),
        )
        .expect("write config");
        Self { dir, config }
    }

    /// Runs knock-keygen and returns the profile path.
    pub fn keygen(&self, name: &str, host: &str, ports: Option<&str>) -> PathBuf {
        self.run_keygen(name, host, ports, &[])
    }

    /// `knock-keygen NAME --host HOST [EXTRA] --config .. --out NAME.knock
    /// [--ports PORTS]`; returns the profile path.
    fn run_keygen(&self, name: &str, host: &str, ports: Option<&str>, extra: &[&str]) -> PathBuf {
        let profile = self.dir.join(format!("{name}.knock"));
        let mut cmd = Command::new(bin("knock-keygen"));
        cmd.args([name, "--host", host])
            .args(extra)
            .arg("--config")
            .arg(&self.config)
            .arg("--out")
            .arg(&profile);
        if let Some(ports) = ports {
            cmd.args(["--ports", ports]);
        }
        sh(&mut cmd);
        profile
    }
}

/// The two ways a client can hold its key (issue 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `knock-keygen NAME`: a secret shared with the server.
    Shared,
    /// `knock-client identity` + `knock-keygen NAME --public-key LINE`.
    Public,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Public => "public",
        }
    }
}

/// Runs `knock-client identity` with `KNOCK_HOME=home` (creating the
/// identity at its default path if there is none) and returns its public line.
pub fn identity_line(home: &Path) -> String {
    std::fs::create_dir_all(home).expect("mkdir");
    let out = sh(Command::new(bin("knock-client"))
        .arg("identity")
        .env("KNOCK_HOME", home));
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("knock-id"))
        .unwrap_or_else(|| panic!("no public line: {:?}", out))
        .to_owned();
    line
}

impl Setup {
    /// Enrols `name` in `mode` and returns the profile path. Shared: as
    /// [`keygen`](Self::keygen). Public: the client's identity is made with
    /// `knock-client identity` (`KNOCK_HOME` = this setup's directory, so the
    /// *default* identity path is the one [`client`] uses), then enrolled
    /// with `knock-keygen --public-key`.
    pub fn enrol(&self, name: &str, host: &str, ports: Option<&str>, mode: Mode) -> PathBuf {
        match mode {
            Mode::Shared => self.keygen(name, host, ports),
            Mode::Public => {
                let line = identity_line(&self.dir);
                self.keygen_public(name, host, ports, &line)
            }
        }
    }

    /// `knock-keygen NAME --host HOST --public-key LINE`; returns the profile.
    pub fn keygen_public(
        &self,
        name: &str,
        host: &str,
        ports: Option<&str>,
        line: &str,
    ) -> PathBuf {
        self.run_keygen(name, host, ports, &["--public-key", line])
    }

    /// Refusals since start, by reason, from `knock-server status`
    /// (`refused  N since start: reason=n ...`).
    pub fn refused(&self, ns: &Ns) -> BTreeMap<String, u64> {
        let status = self.status(ns);
        let mut out = BTreeMap::new();
        for line in status.lines() {
            let line = line.trim_start();
            if let Some(rest) = line.strip_prefix("refused") {
                if let Some((_, detail)) = rest.split_once("since start:") {
                    for pair in detail.split_whitespace() {
                        if let Some((k, v)) = pair.split_once('=') {
                            if let Ok(v) = v.parse() {
                                out.insert(k.to_owned(), v);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Waits (at most `timeout`) until `reason` has been counted `n` times.
    pub fn wait_refused(&self, ns: &Ns, reason: &str, n: u64, timeout: Duration) {
        assert!(
            eventually(timeout, || self
                .refused(ns)
                .get(reason)
                .copied()
                .unwrap_or(0)
                >= n),
            "never refused {n} as {reason}:\n{}",
            self.status(ns)
        );
    }
}

impl Setup {
    /// `knock-server status` for this configuration, run in `ns`: what the
    /// kernel holds (stdout, then stderr if it failed).
    pub fn status(&self, ns: &Ns) -> String {
        let out = ns
            .cmd(bin("knock-server"))
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .expect("knock-server status");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Waits (at most 15 s) until every grant has run out in the kernel.
    pub fn wait_no_grants(&self, ns: &Ns) {
        assert!(
            eventually(Duration::from_secs(15), || self
                .status(ns)
                .contains("no live grants")),
            "grants never expired:\n{}",
            self.status(ns)
        );
    }
}

/// Runs knock-client in `ns` with `args`, returning (exit code, stdout, stderr).
pub fn client(ns: &Ns, profile: &Path, args: &[&str]) -> (i32, String, String) {
    let out = ns
        .cmd(bin("knock-client"))
        .args(args)
        .arg("--profile")
        .arg(profile)
        .env("KNOCK_HOME", profile.parent().unwrap_or(Path::new("/tmp")))
        .output()
        .expect("knock-client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts a TCP echo service on `port` (v4 and v6) in `ns`.
pub fn start_echo(lab: &Lab, ns: &Ns, port: u16) {
    let mut cmd = ns.cmd("socat");
    cmd.args([
        &format!("TCP6-LISTEN:{port},ipv6only=0,reuseaddr,fork"),
        "EXEC:/bin/cat",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    lab.spawn(cmd);
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (_, out) = ns.try_sh(&format!("ss -Hltn 'sport = :{port}'"));
        if out.contains(&format!(":{port}")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("echo service on {port} never listened");
}

/// An open TCP connection from a namespace (socat stdio), to prove that
/// established connections survive the end of a grant.
pub struct Session {
    child: Child,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

impl Session {
    pub fn open(ns: &Ns, addr: IpAddr, port: u16) -> Self {
        let target = match addr {
            IpAddr::V4(a) => format!("TCP4:{a}:{port},connect-timeout=2"),
            IpAddr::V6(a) => format!("TCP6:[{a}]:{port},connect-timeout=2"),
        };
        let child = ns
            .cmd("socat")
            .args(["-T60", "STDIO", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        Self { child }
    }

    /// Sends a line and expects it echoed back within a few seconds.
    pub fn echoes(&mut self, line: &str) -> bool {
        let Some(stdin) = self.child.stdin.as_mut() else {
            return false;
        };
        if writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return false;
        }
        let Some(stdout) = self.child.stdout.take() else {
            return false;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let expected = line.to_owned();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut got = String::new();
            let ok = reader.read_line(&mut got).is_ok() && got.trim_end() == expected;
            let _ = tx.send((ok, reader.into_inner()));
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((ok, stdout)) => {
                self.child.stdout = Some(stdout);
                ok
            }
            Err(_) => false,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts tcpdump in `ns` writing to `file`; stop it with [`Capture::stop`].
pub struct Tcpdump {
    child: Child,
    pub file: PathBuf,
}

impl std::fmt::Debug for Tcpdump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tcpdump").field("file", &self.file).finish()
    }
}

impl Tcpdump {
    /// A capture on every interface of `ns`, returning once tcpdump says it
    /// is listening.
    pub fn start(ns: &Ns, filter: &str, file: PathBuf) -> Self {
        Self::start_on(ns, "any", filter, file)
    }

    /// Stops the capture and returns the packets as text lines.
    pub fn stop(mut self, ns: &Ns) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = ns
            .cmd("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server's rejection summaries (`refused 12 datagrams in the last 10s:
/// bad-mac=3 unknown-client=9`), in order: each line's total and its counts by
/// reason. A summary line that does not parse, or whose counts do not add up
/// to its total, fails the test: a summary must never be skipped silently.
pub fn refusal_summaries(log: &str) -> Vec<(u64, BTreeMap<String, u64>)> {
    log.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" datagrams in the last ")?;
            let total = head
                .rsplit_once("refused ")
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a refusal summary without its total: {line:?}"));
            let (_, counts) = tail
                .split_once(": ")
                .unwrap_or_else(|| panic!("a refusal summary without its reasons: {line:?}"));
            let by_reason: BTreeMap<String, u64> = counts
                .split_whitespace()
                .map(|item| {
                    item.split_once('=')
                        .and_then(|(reason, n)| Some((reason.to_owned(), n.parse().ok()?)))
                        .unwrap_or_else(|| panic!("{item:?} is not REASON=COUNT in {line:?}"))
                })
                .collect();
            assert_eq!(
                by_reason.values().sum::<u64>(),
                total,
                "a refusal summary whose reasons do not add up: {line:?}"
            );
            Some((total, by_reason))
        })
        .collect()
}

/// Every refusal the server's summaries count, summed by reason.
pub fn refused_by_reason(log: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for (_, by_reason) in refusal_summaries(log) {
        for (reason, n) in by_reason {
            *sums.entry(reason).or_default() += n;
        }
    }
    sums
}

/// Every refusal the server's summaries count.
pub fn refused_total(log: &str) -> u64 {
    refusal_summaries(log).iter().map(|(total, _)| total).sum()
}

/// A UDP datagram read back from a pcap file.
#[derive(Debug, Clone)]
pub struct CapturedDatagram {
    pub source: IpAddr,
    pub dest_port: u16,
    pub payload: Vec<u8>,
}

/// Reads the UDP datagrams out of a pcap written by `tcpdump -i any -w`
/// (Linux cooked capture v1 or v2, or raw IP).
pub fn read_pcap_udp(path: &Path) -> Vec<CapturedDatagram> {
    let bytes = std::fs::read(path).expect("pcap");
    let le = bytes.get(..4) == Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]);
    let word = |at: usize| -> usize {
        let b: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        (if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }) as usize
    };
    let linktype = word(20);
    let link_header = match linktype {
        113 => 16, // LINUX_SLL
        276 => 20, // LINUX_SLL2
        101 | 12 => 0,
        1 => 14,
        other => panic!("unexpected pcap link type {other}"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = word(at + 8);
        let frame = &bytes[at + 16..(at + 16 + caplen).min(bytes.len())];
        at += 16 + caplen;
        let Some(ip) = frame.get(link_header..) else {
            continue;
        };
        let (source, udp) = match ip.first().map(|b| b >> 4) {
            Some(4) if ip.len() >= 20 && ip[9] == 17 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let src: [u8; 4] = ip[12..16].try_into().expect("v4");
                (IpAddr::from(src), &ip[ihl..])
            }
            Some(6) if ip.len() >= 40 && ip[6] == 17 => {
                let src: [u8; 16] = ip[8..24].try_into().expect("v6");
                (IpAddr::from(src), &ip[40..])
            }
            _ => continue,
        };
        if udp.len() < 8 {
            continue;
        }
        let dest_port = u16::from_be_bytes([udp[2], udp[3]]);
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).min(udp.len());
        out.push(CapturedDatagram {
            source,
            dest_port,
            payload: udp[8..len.max(8)].to_vec(),
        });
    }
    out
}

/// Sends `payload` as one UDP datagram from `ns` to addr:port.
pub fn send_udp(ns: &Ns, addr: IpAddr, port: u16, payload: &[u8]) {
    let target = match addr {
        IpAddr::V4(a) => format!("UDP4-SENDTO:{a}:{port}"),
        IpAddr::V6(a) => format!("UDP6-SENDTO:[{a}]:{port}"),
    };
    let mut child = ns
        .cmd("socat")
        .args(["-u", "STDIN", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(payload);
    }
    let _ = child.wait();
}

pub mod adversary;
pub use adversary::*;

impl Ns {
    /// How many flows the kernel tracks in this namespace, over every family
    /// (`conntrack -C`). A kernel where nf_conntrack was never loaded has no
    /// table to count, which is 0; any other failure of the probe fails the
    /// test. Pair every "0" with a positive control that sees entries.
    pub fn conntrack_count(&self) -> usize {
        let (ok, out) = self.try_sh("conntrack -C");
        if !ok {
            let (loaded, _) = self.try_sh("test -e /proc/sys/net/netfilter/nf_conntrack_count");
            assert!(!loaded, "conntrack -C failed in {}: {out}", self.name);
            return 0;
        }
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("conntrack -C in {} printed {out:?}", self.name))
    }

    /// The flows the kernel tracks in this namespace, IPv4 then IPv6, for
    /// failure messages.
    pub fn conntrack_list(&self) -> String {
        self.try_sh("conntrack -L -f ipv4 2>&1; conntrack -L -f ipv6 2>&1")
            .1
    }
}

/// What one `nmap` scan saw: the state it gave each port of one protocol,
/// and its whole output, which every failure message about it should print.
#[derive(Debug, Clone)]
pub struct NmapScan {
    pub command: String,
    pub output: String,
    pub states: BTreeMap<u16, String>,
}

impl NmapScan {
    /// The state nmap gave `port` (`nmap_scan` made sure every port asked
    /// for has one).
    pub fn state(&self, port: u16) -> &str {
        self.states
            .get(&port)
            .map_or("(not scanned)", String::as_str)
    }

    /// Fails the test, printing the whole scan, unless every port of `ports`
    /// is in state `expected`.
    pub fn assert_all(&self, ports: impl IntoIterator<Item = u16>, expected: &str, what: &str) {
        let odd: Vec<String> = ports
            .into_iter()
            .filter(|&p| self.state(p) != expected)
            .map(|p| format!("{p} is {}", self.state(p)))
            .collect();
        assert!(
            odd.is_empty(),
            "{what}: every port should be {expected}, but {}\n$ {}\n{}",
            odd.join(", "),
            self.command,
            self.output
        );
    }
}

/// Runs `nmap` in `ns` against `target` and returns the state of each port.
/// `scan` is the scan type (`-sS`, `-sA`, `-sU`, `-sF`, ...): UDP for `-sU`,
/// TCP otherwise, one protocol per scan. `-6` is added for an IPv6 target.
/// Bounded: no host discovery or DNS, `--max-retries 2`, `--host-timeout`,
/// and the process is killed after 120 s.
///
/// Fails the test, printing nmap's whole output, unless nmap exits 0, reports
/// the host up, and gives exactly the ports asked for a state each: a scan
/// that saw nothing never passes for one that saw every port alike.
pub fn nmap_scan(ns: &Ns, scan: &str, target: IpAddr, ports: &[u16], extra: &[&str]) -> NmapScan {
    assert!(!ports.is_empty(), "nmap_scan: no ports");
    let protocol = if scan == "-sU" { "udp" } else { "tcp" };
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args: Vec<String> = ["-k", "5", "120", "nmap"].map(str::to_owned).to_vec();
    if target.is_ipv6() {
        args.push("-6".to_owned());
    }
    args.extend(
        [
            scan,
            "-n",
            "-Pn",
            "--max-retries",
            "2",
            "--host-timeout",
            "90s",
            "-oG",
            "-",
            "-p",
        ]
        .map(str::to_owned),
    );
    args.push(list.join(","));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(target.to_string());
    let command = format!("ip netns exec {} {}", ns.name, args[3..].join(" "));
    let out = ns.cmd("timeout").args(&args).output().expect("run nmap");
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let fail = |why: &str| -> ! { panic!("{why}\n$ {command}\n{output}") };
    if !out.status.success() {
        fail(&format!("nmap failed ({})", out.status));
    }
    let host = format!("Host: {target} ");
    let mut up = false;
    let mut states = BTreeMap::new();
    for line in output.lines().filter(|l| l.starts_with(&host)) {
        for field in line.split('\t') {
            if let Some(status) = field.strip_prefix("Status: ") {
                up |= status.trim() == "Up";
            }
            let Some(entries) = field.strip_prefix("Ports: ") else {
                continue;
            };
            // port/state/protocol/owner/service/rpc/version/
            for entry in entries.split(", ") {
                let parts: Vec<&str> = entry.trim().split('/').collect();
                let (Some(port), Some(state), Some(proto)) = (
                    parts.first().and_then(|p| p.parse::<u16>().ok()),
                    parts.get(1),
                    parts.get(2),
                ) else {
                    fail(&format!("cannot parse the port entry {entry:?}"));
                };
                if *proto != protocol {
                    fail(&format!("{port}/{proto} in a {protocol} scan"));
                }
                if states.insert(port, (*state).to_owned()).is_some() {
                    fail(&format!("port {port} reported twice"));
                }
            }
        }
    }
    if !up {
        fail(&format!("nmap did not report {target} up"));
    }
    let asked: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    let seen: std::collections::BTreeSet<u16> = states.keys().copied().collect();
    if asked != seen {
        fail(&format!(
            "nmap reported ports {seen:?}, not the ports asked for {asked:?} \
             (ports in an `Ignored State` are not listed: scan fewer)"
        ));
    }
    NmapScan {
        command,
        output,
        states,
    }
}

/// Runs each named behaviour once per firewall backend and client mode, as
/// `nftables::shared::NAME`, `nftables::public::NAME`, `iptables::...`:
/// each `NAME` is a function of the test file that takes the backend's name
/// and the [`Mode`] of its client.
#[macro_export]
macro_rules! on_both_backends_and_modes {
    ($($test:ident),* $(,)?) => {
        $crate::on_both_backends_and_modes!(@backend nftables, "nftables", $($test),*);
        $crate::on_both_backends_and_modes!(@backend iptables, "iptables", $($test),*);
    };
    (@backend $backend:ident, $name:literal, $($test:ident),*) => {
        mod $backend {
            mod shared {
                $(
                    #[test]
                    fn $test() {
                        super::super::$test($name, $crate::Mode::Shared);
                    }
                )*
            }
            mod public {
                $(
                    #[test]
                    fn $test() {
                        super::super::$test($name, $crate::Mode::Public);
                    }
                )*
            }
        }
    };
}

/// Runs each named behaviour once per firewall backend, as
/// `nftables::NAME` and `iptables::NAME`: each `NAME` is a function of the
/// test file that takes the backend's name.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod nftables {
            $(
                #[test]
                fn $test() {
                    super::$test("nftables");
                }
            )*
        }
        mod iptables {
            $(
                #[test]
                fn $test() {
                    super::$test("iptables");
                }
            )*
        }
    };
}

impl Tcpdump {
    /// A capture on one interface (`-i any` captures have no link-layer
    /// destination, and may miss frames), returning once tcpdump says it is
    /// listening.
    pub fn start_on(ns: &Ns, interface: &str, filter: &str, file: PathBuf) -> Self {
        let mut child = ns
            .cmd("tcpdump")
            .args([
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-c",
                "10000",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        if let Some(stderr) = child.stderr.take() {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.contains("listening on")
            {
                line.clear();
            }
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink);
            });
        }
        Self { child, file }
    }

    /// Stops the capture and returns the frames as text lines, with their
    /// link-layer header (`tcpdump -e`).
    pub fn stop_link_layer(mut self, ns: &Ns) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = ns
            .cmd("tcpdump")
            .args(["-n", "-e", "-r"])
            .arg(&self.file)
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
