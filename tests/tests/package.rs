//! The Debian package: its contents and modes, then a real `dpkg -i`,
//! `knock-server check`, a start under the packaged unit, `dpkg -r` and
//! `dpkg -P`, all inside a throwaway container booted with systemd-nspawn:
//!
//! - `--volatile=yes`: the container's root is a tmpfs; the host's `/usr` is
//!   bind-mounted read-only (in a private mount namespace) and overlaid with a
//!   tmpfs inside, so dpkg can write there while the host's files never change;
//! - `--private-network`: the server, and the package's prerm that removes our
//!   rules, only ever touch the container's own network namespace;
//! - systemd runs as the container's PID 1, so the maintainer scripts' systemd
//!   calls and the unit's sandbox are the real thing.
//!
//! The package is `$KNOCK_DEB` if set (scripts/test.sh builds it once), else
//! it is built here with scripts/build-deb.sh. Missing tools fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use knock_tests::{require_root, sh};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn require_tool(name: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(found, "{name} is missing: apt-get install {package}");
}

/// The package under test: `$KNOCK_DEB`, or a fresh build (once for all tests here).
fn deb() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(find_or_build_deb).clone()
}

fn find_or_build_deb() -> PathBuf {
    if let Some(path) = std::env::var_os("KNOCK_DEB").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "KNOCK_DEB={} is not a file", path.display());
        return path;
    }
    let out =
        sh(Command::new(workspace_root().join("scripts/build-deb.sh"))
            .current_dir(workspace_root()));
    let path = PathBuf::from(
        text(&out.stdout)
            .lines()
            .last()
            .expect("build-deb.sh printed the .deb")
            .trim(),
    );
    assert!(
        path.is_file(),
        "build-deb.sh printed {}, which is not a file",
        path.display()
    );
    path
}

/// `dpkg-deb -c`: (mode string, owner, path without the leading '.').
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    let out = sh(Command::new("dpkg-deb").arg("-c").arg(deb));
    text(&out.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "dpkg-deb -c line: {line}");
            let path = fields[5]
                .trim_start_matches('.')
                .trim_end_matches('/')
                .to_owned();
            (
                fields[0].to_owned(),
                fields[1].to_owned(),
                if path.is_empty() { "/".into() } else { path },
            )
        })
        .collect()
}

const MAN_PAGES: &[&str] = &[
    "knock-server",
    "knock-server-run",
    "knock-server-check",
    "knock-server-status",
    "knock-server-remove-rules",
    "knock-client",
    "knock-client-open",
    "knock-client-connect",
    "knock-client-import",
    "knock-client-list",
    "knock-keygen",
];
const PROGRAMS: &[&str] = &["knock-server", "knock-client", "knock-keygen"];

#[test]
fn package_contents_modes_and_control() {
    require_tool("dpkg-deb", "dpkg");
    let deb = deb();
    let entries = contents(&deb);
    let listing = entries
        .iter()
        .map(|(m, o, p)| format!("{m} {o} {p}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mode_of = |path: &str| {
        entries
            .iter()
            .find(|(_, _, p)| p == path)
            .map(|(m, _, _)| m.as_str())
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
    };

    let mut expected: Vec<(String, &str)> = Vec::new();
    for program in PROGRAMS {
        expected.push((format!("/usr/bin/{program}"), "-rwxr-xr-x"));
        expected.push((
            format!("/usr/share/bash-completion/completions/{program}"),
            "-rw-r--r--",
        ));
        expected.push((
            format!("/usr/share/zsh/vendor-completions/_{program}"),
            "-rw-r--r--",
        ));
        expected.push((
            format!("/usr/share/fish/vendor_completions.d/{program}.fish"),
            "-rw-r--r--",
        ));
    }
    for page in MAN_PAGES {
        expected.push((format!("/usr/share/man/man1/{page}.1.gz"), "-rw-r--r--"));
    }
    expected.push((
        "/lib/systemd/system/knock-server.service".into(),
        "-rw-r--r--",
    ));
    // The configuration holds no secret; the secrets (clients.d, server.id)
    // are created by the postinst (0700) and knock-keygen (0600).
    expected.push(("/etc/knock/server.toml".into(), "-rw-r--r--"));
    expected.push(("/usr/share/doc/knock/OPERATIONS.md".into(), "-rw-r--r--"));
    expected.push(("/usr/share/doc/knock/copyright".into(), "-rw-r--r--"));
    for (path, mode) in &expected {
        assert_eq!(mode_of(path), *mode, "mode of {path}:\n{listing}");
    }
    for (mode, owner, path) in &entries {
        assert!(
            owner == "0/0" || owner == "root/root",
            "{path} is owned by {owner}, not root"
        );
        assert!(
            !mode.contains('s') && !mode.contains('S'),
            "{path} is setuid/setgid: {mode}"
        );
        assert_ne!(&mode[8..9], "w", "{path} is world-writable: {mode}");
    }

    let info = text(&sh(Command::new("dpkg-deb").arg("-I").arg(&deb)).stdout);
    assert!(info.contains("Package: knock"), "{info}");
    assert!(info.contains("nftables | iptables"), "Depends: {info}");
    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .args(["-I"])
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} missing from the control archive: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    assert_eq!(field("conffiles").trim(), "/etc/knock/server.toml");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(field(script).starts_with("#!/bin/sh"), "{script}");
    }
    // Nothing in the maintainer scripts enables or starts the service.
    let postinst = field("postinst");
    for line in postinst.lines().map(str::trim) {
        for forbidden in [
            "systemctl enable",
            "systemctl start",
            "systemctl restart",
            "deb-systemd-helper enable",
            "deb-systemd-invoke start",
        ] {
            assert!(
                !line.starts_with(forbidden),
                "postinst must not {forbidden}: {line}"
            );
        }
    }
}

/// A booted systemd container, torn down on drop.
struct Container {
    nspawn: Child,
    leader: u32,
    _root: tempfile::TempDir,
    log: PathBuf,
}

impl Container {
    fn boot(deb: &Path) -> Self {
        let root = tempfile::Builder::new()
            .prefix("knock-pkg-root.")
            .tempdir()
            .unwrap();
        std::fs::create_dir(root.path().join("usr")).unwrap();
        let log = std::env::temp_dir().join(format!("knock-pkg-{}.log", std::process::id()));
        let deb_dir = deb.parent().unwrap().canonicalize().unwrap();
        let root_usr = root.path().join("usr");
        // The bind mount lives only in this private mount namespace.
        let script = format!(
            "mount --bind /usr '{usr}' && mount -o remount,ro,bind '{usr}' && exec systemd-nspawn --quiet \
             --keep-unit --register=no --directory='{root}' --volatile=yes --private-network \
             --machine=knock-pkg-{pid} --console=passive --bind-ro='{debs}':/run/pkg \
             --bind-ro=/var/lib/dpkg:/run/host-dpkg --bind-ro=/etc/protocols --boot systemd.firstboot=off systemd.unit=basic.target \
             systemd.mask=systemd-networkd-wait-online.service",
            usr = root_usr.display(),
            root = root.path().display(),
            pid = std::process::id(),
            debs = deb_dir.display(),
        );
        let out = std::fs::File::create(&log).unwrap();
        let nspawn = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("unshare + systemd-nspawn");
        let mut container = Container {
            nspawn,
            leader: 0,
            _root: root,
            log,
        };
        container.leader = container.find_leader();
        // Until systemd listens on its socket, systemctl cannot even ask.
        let deadline = Instant::now() + Duration::from_secs(60);
        let out = loop {
            let out = container.sh_out("systemctl is-system-running --wait");
            if !text(&out.stderr).contains("Failed to connect to bus") || Instant::now() > deadline
            {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let state = text(&out.stdout);
        assert!(
            matches!(state.trim(), "running" | "degraded"),
            "the container did not boot: {state}{}\n{}",
            text(&out.stderr),
            container.boot_log()
        );
        container
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's PID 1, as the host sees it.
    fn find_leader(&mut self) -> u32 {
        let pid = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.boot_log());
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return child.parse().unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after 30 s:\n{}",
                self.boot_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `line` with sh inside the container, with a clean environment.
    fn sh_out(&self, line: &str) -> Output {
        eprintln!("container# {line}");
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--", "env", "-i"])
            .args([
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
                "sh",
                "-c",
                line,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Runs `line`, which must succeed; returns stdout and stderr together.
    fn ok(&self, line: &str) -> String {
        let out = self.sh_out(line);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "in the container, `{line}` failed ({}):\n{all}",
            out.status
        );
        all
    }

    /// Runs `line`; returns its trimmed stdout whatever its status.
    fn stdout(&self, line: &str) -> String {
        text(&self.sh_out(line).stdout).trim().to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes nspawn power the container off; the tmpfs root and
        // the namespaces go with it.
        let pid = self.nspawn.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// Knocks from inside the container on 127.0.0.1 and returns `status`
/// once it shows a grant (or after 5 s).
fn knock_and_wait_for_grant(c: &Container) -> String {
    c.ok("knock-client open 127.0.0.1 22 --no-wait --profile /root/alice.knock");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = c.ok("knock-server status");
        if status.contains("127.0.0.1") || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_tables() -> String {
    text(&sh(Command::new("nft").args(["list", "tables"])).stdout)
}

#[test]
fn package_installs_checks_runs_removes_and_purges_in_a_container() {
    require_root();
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("systemd-nspawn", "systemd-container"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("nft", "nftables"),
    ] {
        require_tool(tool, package);
    }
    let deb = deb();
    let deb_name = deb.file_name().unwrap().to_str().unwrap().to_owned();
    let host_before = host_tables();

    let c = Container::boot(&deb);
    // A private dpkg database, copied from the host's (whose /usr the
    // container shares), without the host's stat overrides.
    c.ok("cp -a /run/host-dpkg /var/lib/dpkg && : > /var/lib/dpkg/statoverride");
    // A writable /usr for dpkg: a tmpfs overlay over the host's, inside.
    c.ok(
        "mkdir -p /run/usr-rw/upper /run/usr-rw/work && mount -t overlay overlay \
          -o lowerdir=/usr,upperdir=/run/usr-rw/upper,workdir=/run/usr-rw/work /usr",
    );

    // Install: files in place with the right modes; nothing enabled, started
    // or written to the firewall.
    let install = c.ok(&format!("dpkg -i /run/pkg/{deb_name}"));
    assert!(install.contains("installed, not enabled"), "{install}");
    assert_eq!(
        c.stdout("systemctl is-enabled knock-server.service"),
        "disabled"
    );
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "inactive"
    );
    assert!(
        !c.ok("nft list tables").contains("knock"),
        "the install touched the firewall"
    );
    assert!(
        !c.sh_out("test -e /var/lib/knock").status.success(),
        "the server ran at install"
    );
    let modes = c.ok(
        "stat -c '%a %U %n' /etc/knock /etc/knock/clients.d /etc/knock/server.toml \
         /usr/bin/knock-server /usr/bin/knock-client /usr/bin/knock-keygen \
         /lib/systemd/system/knock-server.service",
    );
    for line in [
        "755 root /etc/knock",
        "700 root /etc/knock/clients.d",
        "644 root /etc/knock/server.toml",
        "755 root /usr/bin/knock-server",
        "755 root /usr/bin/knock-client",
        "755 root /usr/bin/knock-keygen",
        "644 root /lib/systemd/system/knock-server.service",
    ] {
        assert!(
            modes.lines().any(|l| l == line),
            "want {line:?}, got:\n{modes}"
        );
    }
    assert!(c
        .ok("zcat /usr/share/man/man1/knock-server.1.gz")
        .contains(".TH knock-server 1"));
    assert!(c
        .ok("cat /usr/share/bash-completion/completions/knock-client")
        .contains("knock-client"));

    // The default configuration passes `check` and says what it would do.
    let check = c.ok("knock-server check --config /etc/knock/server.toml");
    for needle in [
        "configuration  /etc/knock/server.toml: OK",
        "protected      tcp/22",
        "clients        0 in /etc/knock/clients.d",
        "/etc/knock/server.id (missing",
        "table inet knock",
    ] {
        assert!(check.contains(needle), "check lacks {needle:?}:\n{check}");
    }
    let json = c.ok("knock-server check --json");
    assert!(
        json.starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    assert!(
        json.contains("\"protected\":[\"tcp/22\"]") && json.contains("\"firewall\":\"nftables\""),
        "{json}"
    );

    // The operator's first steps, then the packaged unit, sandbox and all.
    c.ok("ip link set lo up");
    c.ok("knock-keygen alice --host 127.0.0.1 --out /root/alice.knock");
    let secrets = c.ok("stat -c '%a %n' /etc/knock/server.id /etc/knock/clients.d/alice.toml");
    assert!(
        secrets.contains("600 /etc/knock/server.id")
            && secrets.contains("600 /etc/knock/clients.d/alice.toml"),
        "{secrets}"
    );
    c.ok("systemctl start knock-server.service");
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    let journal = c.ok("journalctl -u knock-server -o cat");
    assert!(journal.contains("ready: 1 clients"), "{journal}");
    assert!(
        journal.contains("capabilities CAP_NET_ADMIN,CAP_NET_RAW"),
        "{journal}"
    );
    assert!(
        !journal.contains("could not drop capabilities"),
        "{journal}"
    );
    assert_eq!(c.stdout("stat -c %a /var/lib/knock"), "700");
    let exposure = c.ok("systemd-analyze security knock-server.service | tail -n 1");
    assert!(
        exposure.contains("exposure level for knock-server.service: 1."),
        "{exposure}"
    );

    let status = knock_and_wait_for_grant(&c);
    assert!(
        status.contains("SOURCE") && status.contains("SECONDS LEFT"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("127.0.0.1") && l.contains("tcp/22")),
        "{status}"
    );
    let status_json = c.ok("knock-server status --json");
    assert!(
        status_json.contains("\"source\":\"127.0.0.1\",\"port\":\"tcp/22\",\"seconds_left\":"),
        "{status_json}"
    );
    c.ok("systemctl reload knock-server.service");
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );

    // The iptables backend under the same sandbox: iptables-restore and
    // ipset run as children with only the two capabilities. (The container's
    // /etc has no alternatives, so the commands are named in full.)
    c.ok("systemctl stop knock-server.service && knock-server remove-rules");
    c.ok("cp /etc/knock/server.toml /root/server.toml.orig");
    for variant in ["nft", "legacy"] {
        c.ok(&format!(
            "cp /root/server.toml.orig /etc/knock/server.toml && printf '%s\\n' \
             'firewall = \"iptables\"' 'iptables_cmd = \"iptables-{variant}\"' \
             'ip6tables_cmd = \"ip6tables-{variant}\"' >> /etc/knock/server.toml"
        ));
        c.ok("systemctl start knock-server.service");
        let status = knock_and_wait_for_grant(&c);
        let journal = c.ok("journalctl -u knock-server -o cat -n 5");
        assert!(
            journal.contains("with iptables for 30s")
                && journal.contains("granted tcp/22 to 127.0.0.1"),
            "iptables-{variant}:\n{journal}\n{status}"
        );
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("127.0.0.1") && l.contains("tcp/22")),
            "iptables-{variant} status:\n{status}\n{}",
            c.ok(
                "ipset save 2>&1; knock-server status 2>&1; journalctl -u knock-server -o cat -n 5"
            )
        );
        c.ok("systemctl stop knock-server.service && knock-server remove-rules");
        let left = c.ok(&format!("iptables-{variant}-save; ipset list -n"));
        assert!(
            !left.contains("KNOCK") && !left.contains("knock"),
            "iptables-{variant}: {left}"
        );
    }
    c.ok("cp /root/server.toml.orig /etc/knock/server.toml");
    c.ok("systemctl start knock-server.service");
    let journal = c.ok("journalctl -u knock-server -o cat");
    for bad in ["WARN", "ERROR"] {
        assert!(!journal.contains(bad), "{bad} in the journal:\n{journal}");
    }

    // Remove: the server stops, our table goes, the configuration stays.
    c.ok("systemctl enable knock-server.service");
    c.ok("dpkg -r knock");
    assert_ne!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    let tables = c.ok("nft list tables");
    assert!(
        !tables.contains("knock"),
        "our table survived dpkg -r:\n{tables}"
    );
    assert!(
        !c.sh_out("test -e /usr/bin/knock-server").status.success(),
        "binary left after remove"
    );
    assert!(!c
        .sh_out("test -e /lib/systemd/system/knock-server.service")
        .status
        .success());
    assert!(
        !c.sh_out("test -e /etc/systemd/system/multi-user.target.wants/knock-server.service")
            .status
            .success(),
        "still enabled after remove"
    );
    c.ok("test -f /etc/knock/server.toml && test -f /etc/knock/server.id && test -f /etc/knock/clients.d/alice.toml");
    c.ok("test -d /var/lib/knock");

    // Purge: configuration, identity, clients and state are gone.
    c.ok("dpkg -P knock");
    assert!(
        !c.sh_out("test -e /etc/knock").status.success(),
        "{}",
        c.stdout("ls -laR /etc/knock")
    );
    assert!(
        !c.sh_out("test -e /var/lib/knock").status.success(),
        "state left after purge"
    );
    assert!(!c.sh_out("dpkg -s knock").status.success());
    drop(c);

    assert_eq!(host_tables(), host_before, "the host's firewall changed");
}
