//! The Debian packages, knock-server and knock-client: their contents and
//! modes, then real `dpkg -i`, `knock-server check`, a start under the
//! packaged unit, upgrades (one the new version's `check` refuses), `dpkg -r`
//! and `dpkg -P`, and the migration from the single `knock` package of 0.1.0,
//! all inside a throwaway container booted with systemd-nspawn:
//!
//! - `--volatile=yes`: the container's root is a tmpfs; the host's `/usr` is
//!   bind-mounted read-only (in a private mount namespace) and overlaid with a
//!   tmpfs inside, so dpkg can write there while the host's files never change;
//! - `--private-network`: the server, and the package's prerm that removes our
//!   rules, only ever touch the container's own network namespace;
//! - systemd runs as the container's PID 1, so the maintainer scripts' systemd
//!   calls and the unit's sandbox are the real thing.
//!
//! The packages are `$KNOCK_DEB_SERVER` and `$KNOCK_DEB_CLIENT` if set
//! (scripts/test.sh builds them once), else they are built here with
//! scripts/build-deb.sh. The tests derive the other packages they install
//! from these two (see [`Pool`]). Missing tools fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use knock_tests::{ip, require_root, sh, Lab, Ns};

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

/// Every package the tests install, side by side in one directory, which
/// containers see as `/run/pkg`; the fields are file names in it.
struct Pool {
    dir: PathBuf,
    /// The packages under test.
    server: String,
    client: String,
    /// The server package again, same files, with a higher version each:
    /// the upgrades.
    server_upgrades: [String; 2],
    /// The single package of 0.1.0 that both replace: named `knock`, with
    /// exactly the files it had (taken from the two), the server's
    /// maintainer scripts and the configuration as its conffile.
    old_knock: String,
}

/// The pool, built once for all tests here.
fn pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        require_tool("dpkg-deb", "dpkg");
        let (server, client) = find_or_build_debs();
        Pool::new(&server, &client)
    })
}

/// `$KNOCK_DEB_SERVER` and `$KNOCK_DEB_CLIENT` (both or neither), or a
/// fresh build: build-deb.sh's last two lines are the server's .deb, then
/// the client's.
fn find_or_build_debs() -> (PathBuf, PathBuf) {
    let var = |name: &str| std::env::var_os(name).filter(|p| !p.is_empty());
    let (server, client) = match (var("KNOCK_DEB_SERVER"), var("KNOCK_DEB_CLIENT")) {
        (Some(server), Some(client)) => (PathBuf::from(server), PathBuf::from(client)),
        (None, None) => {
            let out = sh(Command::new(workspace_root().join("scripts/build-deb.sh"))
                .current_dir(workspace_root()));
            let stdout = text(&out.stdout);
            let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
            let [.., server, client] = lines.as_slice() else {
                panic!("build-deb.sh printed fewer than two lines:\n{stdout}");
            };
            (PathBuf::from(server), PathBuf::from(client))
        }
        _ => panic!("set both KNOCK_DEB_SERVER and KNOCK_DEB_CLIENT, or neither"),
    };
    for path in [&server, &client] {
        assert!(path.is_file(), "{} is not a file", path.display());
    }
    (server, client)
}

/// `dpkg-deb -f DEB FIELD`: the field's value, empty if it has none.
fn control_field(deb: &Path, field: &str) -> String {
    text(&sh(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field)).stdout)
        .trim()
        .to_owned()
}

/// A file of the control archive (`conffiles`, `postinst`, ...), if there.
fn control_file(deb: &Path, name: &str) -> Option<String> {
    let out = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg(name)
        .output()
        .unwrap();
    out.status.success().then(|| text(&out.stdout))
}

impl Pool {
    fn new(server: &Path, client: &Path) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("knock-pkg-pool");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let name = |path: &Path| path.file_name().unwrap().to_str().unwrap().to_owned();
        for deb in [server, client] {
            std::fs::copy(deb, dir.join(name(deb))).unwrap();
        }
        let version = control_field(server, "Version");
        let upgrade = |n: u32| {
            let file = format!("knock-server_{version}+up{n}_amd64.deb");
            repack(server, None, &dir.join(&file), |control| {
                control.replace(
                    &format!("\nVersion: {version}\n"),
                    &format!("\nVersion: {version}+up{n}\n"),
                )
            });
            file
        };
        let server_upgrades = [upgrade(1), upgrade(2)];
        let old_knock = format!("knock_{version}_amd64.deb");
        repack(server, Some(client), &dir.join(&old_knock), |control| {
            control
                .lines()
                .filter(|l| !l.starts_with("Replaces:") && !l.starts_with("Suggests:"))
                .map(|l| match l {
                    "Package: knock-server" => "Package: knock",
                    l if l.starts_with("Description:") => {
                        "Description: single-packet authorization: server, client and key tool"
                    }
                    l => l,
                })
                .fold(String::new(), |all, l| all + l + "\n")
        });
        Self {
            dir,
            server: name(server),
            client: name(client),
            server_upgrades,
            old_knock,
        }
    }
}

/// Rebuilds `deb` (plus the files of `merge`, if given) as `out`, with its
/// control file edited by `edit`. With `merge`, the result is the old single
/// package: exactly [`OLD_KNOCK_FILES`], each of which must be in one of the
/// two.
fn repack(deb: &Path, merge: Option<&Path>, out: &Path, edit: impl Fn(&str) -> String) {
    let tree = out.with_extension("d");
    sh(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    if let Some(merge) = merge {
        sh(Command::new("dpkg-deb").arg("-x").arg(merge).arg(&tree));
        // The server's checksums alone (if any) would now be incomplete.
        let md5sums = tree.join("DEBIAN/md5sums");
        if md5sums.exists() {
            std::fs::remove_file(md5sums).unwrap();
        }
        let wanted: BTreeSet<&str> = OLD_KNOCK_FILES.iter().copied().collect();
        let files = text(
            &sh(Command::new("find")
                .arg(".")
                .args(["-path", "./DEBIAN", "-prune", "-o", "-type", "f", "-print"])
                .current_dir(&tree))
            .stdout,
        );
        let files: BTreeSet<&str> = files.lines().map(|l| &l[1..]).collect();
        let missing: Vec<&&str> = wanted.difference(&files).collect();
        assert!(
            missing.is_empty(),
            "files of the old knock package in neither package: {missing:?}"
        );
        for extra in files.difference(&wanted) {
            std::fs::remove_file(tree.join(&extra[1..])).unwrap();
        }
        sh(Command::new("find").arg(&tree).args([
            "-mindepth",
            "1",
            "-type",
            "d",
            "-empty",
            "-delete",
        ]));
    }
    let control = tree.join("DEBIAN/control");
    let edited = edit(&std::fs::read_to_string(&control).unwrap());
    std::fs::write(&control, edited).unwrap();
    // gzip: quick, and dpkg reads it as well as cargo-deb's xz.
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-b"])
        .arg(&tree)
        .arg(out));
    std::fs::remove_dir_all(&tree).unwrap();
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

const SERVER_MAN_PAGES: &[&str] = &[
    "knock-server",
    "knock-server-run",
    "knock-server-check",
    "knock-server-status",
    "knock-server-reload",
    "knock-server-apply",
    "knock-server-confirm",
    "knock-server-remove-rules",
    "knock-server-restore-rules",
    "knock-keygen",
];
const CLIENT_MAN_PAGES: &[&str] = &[
    "knock-client",
    "knock-client-open",
    "knock-client-connect",
    "knock-client-import",
    "knock-client-list",
    "knock-client-identity",
];
const UNITS: &[&str] = &["knock-server.service", "knock-server-restore.service"];

/// Every file of the single package of 0.1.0, `knock`, which the two
/// replace: for it to disappear on the upgrade (rather than be removed by
/// its own prerm, which stops the server), each must be in one of them.
const OLD_KNOCK_FILES: &[&str] = &[
    "/etc/knock/server.toml",
    "/usr/bin/knock-client",
    "/usr/bin/knock-keygen",
    "/usr/bin/knock-server",
    "/usr/lib/systemd/system/knock-server-restore.service",
    "/usr/lib/systemd/system/knock-server.service",
    "/usr/lib/tmpfiles.d/knock.conf",
    "/usr/share/bash-completion/completions/knock-client",
    "/usr/share/bash-completion/completions/knock-keygen",
    "/usr/share/bash-completion/completions/knock-server",
    "/usr/share/doc/knock/OPERATIONS.md",
    "/usr/share/doc/knock/copyright",
    "/usr/share/fish/vendor_completions.d/knock-client.fish",
    "/usr/share/fish/vendor_completions.d/knock-keygen.fish",
    "/usr/share/fish/vendor_completions.d/knock-server.fish",
    "/usr/share/man/man1/knock-client-connect.1.gz",
    "/usr/share/man/man1/knock-client-import.1.gz",
    "/usr/share/man/man1/knock-client-list.1.gz",
    "/usr/share/man/man1/knock-client-open.1.gz",
    "/usr/share/man/man1/knock-client.1.gz",
    "/usr/share/man/man1/knock-keygen.1.gz",
    "/usr/share/man/man1/knock-server-check.1.gz",
    "/usr/share/man/man1/knock-server-remove-rules.1.gz",
    "/usr/share/man/man1/knock-server-restore-rules.1.gz",
    "/usr/share/man/man1/knock-server-run.1.gz",
    "/usr/share/man/man1/knock-server-status.1.gz",
    "/usr/share/man/man1/knock-server.1.gz",
    "/usr/share/zsh/vendor-completions/_knock-client",
    "/usr/share/zsh/vendor-completions/_knock-keygen",
    "/usr/share/zsh/vendor-completions/_knock-server",
];

/// A program's files: the binary and its completions, with their modes.
fn program_files(program: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("/usr/bin/{program}"), "-rwxr-xr-x"),
        (
            format!("/usr/share/bash-completion/completions/{program}"),
            "-rw-r--r--",
        ),
        (
            format!("/usr/share/zsh/vendor-completions/_{program}"),
            "-rw-r--r--",
        ),
        (
            format!("/usr/share/fish/vendor_completions.d/{program}.fish"),
            "-rw-r--r--",
        ),
    ]
}

/// Asserts that the package's files (directories aside) are exactly
/// `expected`, with those modes, all owned by root, none setuid, setgid or
/// world-writable.
fn assert_files(deb: &Path, expected: &[(String, &str)]) {
    let entries = contents(deb);
    let listing = entries
        .iter()
        .map(|(m, o, p)| format!("{m} {o} {p}"))
        .collect::<Vec<_>>()
        .join("\n");
    let files: BTreeSet<&str> = entries
        .iter()
        .filter(|(m, _, _)| !m.starts_with('d'))
        .map(|(_, _, p)| p.as_str())
        .collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(files, wanted, "files of {}:\n{listing}", deb.display());
    for (path, mode) in expected {
        let (got, _, _) = entries.iter().find(|(_, _, p)| p == path).unwrap();
        assert_eq!(got, mode, "mode of {path}:\n{listing}");
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
}

/// The firewall packages named in the package's relationship fields.
fn firewall_relations(deb: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for field in [
        "Pre-Depends",
        "Depends",
        "Recommends",
        "Suggests",
        "Enhances",
    ] {
        let value = control_field(deb, field);
        for firewall in ["nftables", "iptables", "ipset"] {
            if value.contains(firewall) {
                found.push(format!("{field}: {firewall}"));
            }
        }
    }
    found
}

#[test]
fn packages_contents_modes_and_control() {
    require_tool("dpkg-deb", "dpkg");
    let pool = pool();
    let server = pool.dir.join(&pool.server);
    let client = pool.dir.join(&pool.client);

    // knock-server: the server and the key tool, their pages and
    // completions, the units and the configuration; nothing of the client.
    let mut expected: Vec<(String, &str)> = Vec::new();
    for program in ["knock-server", "knock-keygen"] {
        expected.extend(program_files(program));
    }
    for page in SERVER_MAN_PAGES {
        expected.push((format!("/usr/share/man/man1/{page}.1.gz"), "-rw-r--r--"));
    }
    for unit in UNITS {
        expected.push((format!("/usr/lib/systemd/system/{unit}"), "-rw-r--r--"));
    }
    expected.push(("/usr/lib/tmpfiles.d/knock.conf".into(), "-rw-r--r--"));
    // The configuration holds no secret; the secrets (clients.d, server.id,
    // server.key) are created by the postinst (0700) and knock-keygen (0600).
    expected.push(("/etc/knock/server.toml".into(), "-rw-r--r--"));
    expected.push(("/usr/share/doc/knock/OPERATIONS.md".into(), "-rw-r--r--"));
    expected.push(("/usr/share/doc/knock/copyright".into(), "-rw-r--r--"));
    expected.push(("/usr/share/doc/knock-server/copyright".into(), "-rw-r--r--"));
    assert_files(&server, &expected);
    let server_files = expected;

    // knock-client: the client alone.
    let mut expected = program_files("knock-client");
    for page in CLIENT_MAN_PAGES {
        expected.push((format!("/usr/share/man/man1/{page}.1.gz"), "-rw-r--r--"));
    }
    expected.push(("/usr/share/doc/knock-client/copyright".into(), "-rw-r--r--"));
    assert_files(&client, &expected);
    let client_files = expected;
    let of_client = |files: &[(String, &str)]| {
        files
            .iter()
            .filter(|(p, _)| p.contains("knock-client"))
            .count()
    };
    assert_eq!(
        of_client(&server_files),
        0,
        "knock-client files in knock-server"
    );
    assert!(
        of_client(&client_files) >= 4,
        "positive control: {client_files:?}"
    );

    // Together they have every file of the package they replace, so that it
    // disappears on the upgrade.
    for old in OLD_KNOCK_FILES {
        assert!(
            server_files
                .iter()
                .chain(&client_files)
                .any(|(p, _)| p == old),
            "{old}, a file of the old knock package, is in neither package"
        );
    }

    // Control: the server depends on a firewall, the client on libc alone.
    assert_eq!(control_field(&server, "Package"), "knock-server");
    assert_eq!(control_field(&client, "Package"), "knock-client");
    assert!(
        control_field(&server, "Depends").contains("nftables | iptables"),
        "{}",
        control_field(&server, "Depends")
    );
    assert_eq!(control_field(&server, "Recommends"), "ipset");
    assert!(
        !firewall_relations(&server).is_empty(),
        "positive control: the server's relations name its firewalls"
    );
    assert_eq!(firewall_relations(&client), Vec::<String>::new());
    let depends = control_field(&client, "Depends");
    for dependency in depends.split(',').map(str::trim) {
        assert!(
            dependency.starts_with("libc6 ") || dependency == "libc6",
            "knock-client depends on more than libc: {depends}"
        );
    }
    assert!(depends.contains("libc6"), "Depends: {depends}");
    // Both take over the old package's files, and neither Breaks or
    // Conflicts with it: apt would then remove it first, and its prerm
    // would stop the server and delete its rules.
    for deb in [&server, &client] {
        assert_eq!(control_field(deb, "Replaces"), "knock");
        assert_eq!(control_field(deb, "Breaks"), "");
        assert_eq!(control_field(deb, "Conflicts"), "");
    }

    let field = |deb: &Path, name: &str| {
        control_file(deb, name).unwrap_or_else(|| panic!("{name} missing from {}", deb.display()))
    };
    assert_eq!(field(&server, "conffiles").trim(), "/etc/knock/server.toml");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(field(&server, script).starts_with("#!/bin/sh"), "{script}");
        assert_eq!(
            control_file(&client, script),
            None,
            "knock-client has a {script}"
        );
    }
    assert_eq!(control_file(&client, "conffiles"), None);
    // Nothing in the maintainer scripts enables or starts the service.
    let postinst = field(&server, "postinst");
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
    _root: Option<tempfile::TempDir>,
    log: PathBuf,
}

/// A container's file system that outlives one boot: an empty root whose
/// `/usr` is the host's under an overlay (mounted in the container's private
/// mount namespace), whose upper layer is kept here. dpkg installs into it,
/// and the next boot finds everything where the last one left it, as a disk
/// would after a power cycle. The host's `/usr` never changes.
struct Disk {
    dir: tempfile::TempDir,
}

impl Disk {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("knock-pkg-disk.")
            .tempdir()
            .unwrap();
        for sub in ["root/usr", "usr-upper", "usr-work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A file that was installed into the container's `/usr`, as the host
    /// sees it (the overlay's upper layer).
    fn usr(&self, path: &str) -> PathBuf {
        self.dir.path().join("usr-upper").join(path)
    }
}

/// How a container boots.
struct Boot<'a> {
    /// `None`: a volatile root (a tmpfs) over the host's `/usr`, read-only.
    disk: Option<&'a Disk>,
    /// `None`: a private network namespace with loopback alone; else the
    /// container joins this one (from the harness, linked to others).
    netns: Option<&'a Ns>,
    /// The unit systemd boots into.
    target: &'a str,
}

static CONTAINERS: AtomicU32 = AtomicU32::new(0);
/// Booted containers take both cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Container {
    /// A volatile container in basic.target, booted until
    /// `is-system-running` says it is up. The pool is at `/run/pkg`.
    fn boot(pool: &Pool) -> Self {
        let container = Self::start(
            pool,
            &Boot {
                disk: None,
                netns: None,
                target: "basic.target",
            },
        );
        container.wait_booted();
        container
    }

    /// Starts the container and waits until its systemd answers on the
    /// bus; not until the boot has finished (see [`Container::wait_booted`]).
    fn start(pool: &Pool, boot: &Boot) -> Self {
        let n = CONTAINERS.fetch_add(1, Ordering::SeqCst);
        let volatile = match boot.disk {
            None => Some(
                tempfile::Builder::new()
                    .prefix("knock-pkg-root.")
                    .tempdir()
                    .unwrap(),
            ),
            Some(_) => None,
        };
        let (root, usr_mount, volatile_opt) = match (boot.disk, &volatile) {
            (Some(disk), _) => (
                disk.root(),
                format!(
                    "mount -t overlay overlay -o lowerdir=/usr,upperdir='{}',workdir='{}' '{}'",
                    disk.dir.path().join("usr-upper").display(),
                    disk.dir.path().join("usr-work").display(),
                    disk.root().join("usr").display()
                ),
                "",
            ),
            (None, Some(dir)) => {
                let usr = dir.path().join("usr");
                std::fs::create_dir(&usr).unwrap();
                (
                    dir.path().to_path_buf(),
                    format!(
                        "mount --bind /usr '{usr}' && mount -o remount,ro,bind '{usr}'",
                        usr = usr.display()
                    ),
                    "--volatile=yes",
                )
            }
            (None, None) => unreachable!("a volatile root was made above"),
        };
        // nspawn keeps CAP_NET_ADMIN for --private-network only; the joined
        // namespace is just as private (the harness's), so it is kept there too.
        let network = match boot.netns {
            Some(ns) => format!(
                "--network-namespace-path=/run/netns/{} --capability=CAP_NET_ADMIN",
                ns.name
            ),
            None => "--private-network".to_owned(),
        };
        let log = std::env::temp_dir().join(format!("knock-pkg-{}-{n}.log", std::process::id()));
        let deb_dir = pool.dir.canonicalize().unwrap();
        // The mounts of /usr live only in this private mount namespace.
        let script = format!(
            "{usr_mount} && exec systemd-nspawn --quiet \
             --keep-unit --register=no --directory='{root}' {volatile_opt} {network} \
             --machine=knock-pkg-{pid}-{n} --console=passive --bind-ro='{debs}':/run/pkg \
             --bind-ro=/var/lib/dpkg:/run/host-dpkg --bind-ro=/etc/protocols --boot systemd.firstboot=off \
             systemd.unit={target} systemd.mask=systemd-networkd-wait-online.service",
            root = root.display(),
            pid = std::process::id(),
            debs = deb_dir.display(),
            target = boot.target,
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
            _root: volatile,
            log,
        };
        container.leader = container.find_leader();
        // Until systemd listens on its socket, systemctl cannot even ask.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = container.sh_out("systemctl is-system-running");
            if !text(&out.stderr).contains("Failed to connect to bus") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no systemd bus in the container after 60 s:\n{}",
                container.boot_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        container
    }

    /// Waits until the boot has finished (running, or degraded).
    fn wait_booted(&self) {
        let out = self.sh_out("timeout 60 systemctl is-system-running --wait");
        let state = text(&out.stdout);
        assert!(
            matches!(state.trim(), "running" | "degraded"),
            "the container did not boot: {state}{}\n{}",
            text(&out.stderr),
            self.boot_log()
        );
    }

    /// Polls `line` until its trimmed stdout is one of `wanted` (at most
    /// `timeout`); returns what it printed last.
    fn wait_for(&self, line: &str, wanted: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.stdout(line);
            if wanted.contains(&got.as_str()) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
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

/// Both packages in one container: the client alone first (a machine
/// without the server), then the server: install, check, run, reload, the
/// iptables backend, upgrades (one the new version refuses), remove and
/// purge of each; then, in the same container, the migration from the
/// single package of 0.1.0.
#[test]
fn packages_install_check_run_upgrade_remove_and_purge_in_a_container() {
    require_root();
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("systemd-nspawn", "systemd-container"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("nft", "nftables"),
        ("apt-get", "apt"),
    ] {
        require_tool(tool, package);
    }
    let pool = pool();
    let _alone = one_at_a_time();
    let host_before = host_tables();

    let c = Container::boot(pool);
    // A private dpkg database, copied from the host's (whose /usr the
    // container shares), without the host's stat overrides.
    c.ok("cp -a /run/host-dpkg /var/lib/dpkg && : > /var/lib/dpkg/statoverride");
    // A writable /usr for dpkg: a tmpfs overlay over the host's, inside.
    c.ok(
        "mkdir -p /run/usr-rw/upper /run/usr-rw/work && mount -t overlay overlay \
          -o lowerdir=/usr,upperdir=/run/usr-rw/upper,workdir=/run/usr-rw/work /usr",
    );

    // The client alone: it works, with its pages, and brings nothing of the
    // server (the server's install below is the positive control).
    c.ok(&format!("dpkg -i /run/pkg/{}", pool.client));
    let version = c.ok("knock-client --version");
    assert!(version.starts_with("knock-client "), "{version}");
    for page in CLIENT_MAN_PAGES {
        assert!(
            c.ok(&format!("zcat /usr/share/man/man1/{page}.1.gz"))
                .contains(&format!(".TH {page} 1")),
            "{page}"
        );
    }
    assert!(c
        .ok("cat /usr/share/bash-completion/completions/knock-client")
        .contains("knock-client"));
    let server_paths = "/usr/bin/knock-server /usr/bin/knock-keygen /etc/knock \
         /usr/lib/systemd/system/knock-server.service /usr/share/man/man1/knock-server.1.gz";
    let present = |paths: &str| {
        c.stdout(&format!(
            "for p in {paths}; do test -e $p && echo $p; done; true"
        ))
    };
    assert_eq!(
        present(server_paths),
        "",
        "knock-client brought the server's files"
    );
    assert!(!c.sh_out("dpkg-query -W knock-server").status.success());

    // Install: files in place with the right modes; nothing enabled, started
    // or written to the firewall.
    let install = c.ok(&format!("dpkg -i /run/pkg/{}", pool.server));
    assert!(install.contains("installed, not enabled"), "{install}");
    assert!(
        !install.contains("is still installed"),
        "a note about the old package, which was never here:\n{install}"
    );
    assert_eq!(
        present(server_paths).lines().count(),
        5,
        "positive control: the server's files, with the server package"
    );
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
    // The boot unit is static: knock-server.service wants it, so it is
    // "enabled" exactly where the daemon is.
    assert_eq!(
        c.stdout("systemctl is-enabled knock-server-restore.service"),
        "static"
    );
    let modes = c.ok(
        "stat -c '%a %U %n' /etc/knock /etc/knock/clients.d /etc/knock/server.toml \
         /usr/bin/knock-server /usr/bin/knock-client /usr/bin/knock-keygen \
         /usr/lib/systemd/system/knock-server.service \
         /usr/lib/systemd/system/knock-server-restore.service /run/xtables.lock",
    );
    for line in [
        "755 root /etc/knock",
        "700 root /etc/knock/clients.d",
        "644 root /etc/knock/server.toml",
        "755 root /usr/bin/knock-server",
        "755 root /usr/bin/knock-client",
        "755 root /usr/bin/knock-keygen",
        "644 root /usr/lib/systemd/system/knock-server.service",
        "644 root /usr/lib/systemd/system/knock-server-restore.service",
        // The postinst's tmpfiles: iptables-legacy's lock, which the
        // sandboxed units cannot create themselves.
        "600 root /run/xtables.lock",
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
    // stdout alone: the warning that there are no clients goes to stderr.
    let json = c.stdout("knock-server check --json");
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
    let secrets = c.ok(
        "stat -c '%a %n' /etc/knock/server.id /etc/knock/server.key /etc/knock/clients.d/alice.toml",
    );
    assert!(
        secrets.contains("600 /etc/knock/server.id")
            && secrets.contains("600 /etc/knock/server.key")
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
    // The daemon's unit pulled in the boot unit, which had nothing to
    // restore yet; the daemon saved what it installed.
    let restore = c.ok("journalctl -u knock-server-restore -o cat");
    assert!(restore.contains("nothing to restore"), "{restore}");
    assert!(
        c.ok("cat /var/lib/knock/rules")
            .contains("\nprotected = tcp/22\n"),
        "saved rules"
    );
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
    let reloaded = c.ok("systemctl reload knock-server.service && journalctl -u knock-server.service -o cat | grep 'reloaded: '");
    assert!(reloaded.contains("reloaded: 1 clients"), "{reloaded}");
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    // A reload the server refuses fails loudly (ExecReload waits for the
    // outcome), and the server keeps running what it ran.
    c.ok("cp /etc/knock/clients.d/alice.toml /etc/knock/clients.d/loose.toml && chmod 644 /etc/knock/clients.d/loose.toml");
    let refused = c.sh_out("systemctl reload knock-server.service");
    assert!(!refused.status.success(), "a refused reload succeeded");
    let journal = c.ok("journalctl -u knock-server.service -o cat");
    assert!(
        journal.contains("reload refused, the server runs its previous configuration")
            && journal.contains("/etc/knock/clients.d/loose.toml"),
        "{journal}"
    );
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    c.ok("rm /etc/knock/clients.d/loose.toml && systemctl reload knock-server.service");

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
    // This run's lines (the refused reload above logged an ERROR on purpose).
    let journal = c.ok(
        "journalctl -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value knock-server.service)",
    );
    assert!(journal.contains("ready: "), "{journal}");
    for bad in ["WARN", "ERROR"] {
        assert!(!journal.contains(bad), "{bad} in the journal:\n{journal}");
    }

    upgrades_restart_only_with_a_configuration_the_new_version_accepts(&c, pool);

    // Remove the server: it stops, our table goes, the configuration stays;
    // the client stays and works.
    c.ok("systemctl enable knock-server.service");
    c.ok("dpkg -r knock-server");
    assert_ne!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    let tables = c.ok("nft list tables");
    assert!(
        !tables.contains("knock"),
        "our table survived dpkg -r:\n{tables}"
    );
    assert_eq!(present(server_paths), "/etc/knock", "left after remove");
    c.ok("knock-client --version && test -f /usr/share/man/man1/knock-client.1.gz");
    for unit in UNITS {
        assert!(!c
            .sh_out(&format!("test -e /usr/lib/systemd/system/{unit}"))
            .status
            .success());
    }
    assert!(
        !c.sh_out("test -e /etc/systemd/system/multi-user.target.wants/knock-server.service")
            .status
            .success(),
        "still enabled after remove"
    );
    c.ok("test -f /etc/knock/server.toml && test -f /etc/knock/server.id && test -f /etc/knock/clients.d/alice.toml");
    c.ok("test -d /var/lib/knock");

    // Purge: configuration, identity, clients and state are gone.
    c.ok("dpkg -P knock-server");
    assert!(
        !c.sh_out("test -e /etc/knock").status.success(),
        "{}",
        c.stdout("ls -laR /etc/knock")
    );
    assert!(
        !c.sh_out("test -e /var/lib/knock").status.success(),
        "state left after purge"
    );
    assert!(!c.sh_out("dpkg -s knock-server").status.success());

    // The client: remove, then purge.
    c.ok("dpkg -r knock-client");
    assert_eq!(
        present("/usr/bin/knock-client /usr/share/man/man1/knock-client.1.gz"),
        "",
        "left after removing knock-client"
    );
    c.ok("dpkg -P knock-client");
    assert!(!c.sh_out("dpkg -s knock-client").status.success());

    migration_from_the_single_package(&c, pool);
    drop(c);

    assert_eq!(host_tables(), host_before, "the host's firewall changed");
}

/// The server's main PID, as systemd has it ("0" when it runs none).
fn main_pid(c: &Container) -> String {
    c.stdout("systemctl show -P MainPID knock-server.service")
}

fn installed_version(c: &Container, package: &str) -> String {
    c.stdout(&format!("dpkg-query -W -f '${{Version}}' {package}"))
}

/// Grants for the client on 127.0.0.1 logged by the server process `pid`.
fn grants_logged_by(c: &Container, pid: &str) -> usize {
    c.stdout(&format!("journalctl -u knock-server _PID={pid} -o cat"))
        .matches("granted tcp/22 to 127.0.0.1")
        .count()
}

/// An upgrade restarts the running server on the new binary when that
/// accepts the configuration (the positive control); when it refuses it (as
/// a stricter version would), the upgrade succeeds, says why the server was
/// not restarted and what to do, and the old server keeps running, with its
/// rules, and keeps granting: it read its configuration at its start.
fn upgrades_restart_only_with_a_configuration_the_new_version_accepts(c: &Container, pool: &Pool) {
    let [accepted, refused] = &pool.server_upgrades;
    let journal = || c.ok("journalctl -u knock-server -o cat -n 20");

    let before = main_pid(c);
    assert_ne!(before, "0", "no server running before the upgrade");
    let out = c.ok(&format!("dpkg -i /run/pkg/{accepted}"));
    assert!(installed_version(c, "knock-server").ends_with("+up1"));
    assert!(!out.contains("NOT restarted"), "{out}");
    let restarted = main_pid(c);
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active",
        "{}",
        journal()
    );
    assert_ne!(
        restarted, before,
        "an upgrade the new version accepts did not restart the server:\n{out}"
    );

    c.ok("cp /etc/knock/server.toml /root/server.toml.valid && \
         echo 'stricter_key = 1' >> /etc/knock/server.toml");
    let check = c.sh_out("knock-server check");
    assert!(
        !check.status.success() && text(&check.stderr).contains("stricter_key"),
        "knock-server check accepts the edited configuration"
    );
    let out = c.ok(&format!("dpkg -i /run/pkg/{refused}"));
    assert!(installed_version(c, "knock-server").ends_with("+up2"));
    for needle in [
        "NOT restarted: the new version refuses /etc/knock/server.toml",
        "unknown field `stricter_key`",
        "keeps running",
        "2. knock-server check",
        "3. systemctl restart knock-server",
    ] {
        assert!(
            out.contains(needle),
            "dpkg's output lacks {needle:?}:\n{out}"
        );
    }
    assert_eq!(
        main_pid(c),
        restarted,
        "the refused upgrade stopped or restarted the server:\n{}",
        journal()
    );
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    let table = c.ok("nft list table inet knock");
    assert!(table.contains("22"), "{table}");
    // The old server still honours a knock.
    let grants = grants_logged_by(c, &restarted);
    c.ok("knock-client open 127.0.0.1 22 --no-wait --profile /root/alice.knock");
    let deadline = Instant::now() + Duration::from_secs(5);
    while grants_logged_by(c, &restarted) == grants {
        assert!(
            Instant::now() < deadline,
            "the old server granted nothing after the refused upgrade:\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Fixed as the message says: the new version runs.
    c.ok(
        "cp /root/server.toml.valid /etc/knock/server.toml && knock-server check >/dev/null \
         && systemctl restart knock-server.service",
    );
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "active"
    );
    assert_ne!(main_pid(c), restarted);

    // A server still waiting for its interface (activating, for as long as
    // that takes) is restarted too, without dpkg waiting for it to be ready.
    // (Reinstalling the same version is an upgrade to the postinst.)
    c.ok(
        "sed -i 's/^#interface = .*/interface = \"knock9\"/' /etc/knock/server.toml \
         && systemctl restart --no-block knock-server.service",
    );
    let state = c.wait_for(
        "systemctl is-active knock-server.service",
        &["activating"],
        Duration::from_secs(10),
    );
    assert_eq!(state, "activating", "{}", journal());
    let waiting = main_pid(c);
    let out = c.ok(&format!("timeout 60 dpkg -i /run/pkg/{refused}"));
    assert!(!out.contains("NOT restarted"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = main_pid(c);
    while now == waiting || now == "0" {
        assert!(
            Instant::now() < deadline,
            "the waiting server was not restarted:\n{out}\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(100));
        now = main_pid(c);
    }
    assert_eq!(
        c.stdout("systemctl is-active knock-server.service"),
        "activating"
    );
    c.ok("cp /root/server.toml.valid /etc/knock/server.toml && systemctl restart knock-server.service");
}

/// The upgrade from the single package of 0.1.0, `knock`, with apt, over a
/// running, enabled server: knock-server first (knock stays, with the
/// client's files, and the postinst says not to remove it), then
/// knock-client, which leaves knock no file: it disappears without its prerm
/// or postrm running (they would stop and disable the server and delete its
/// rules, and its purge its identity, clients and state). The server is
/// restarted on the new binary and stays enabled, with its identity, clients
/// and edited configuration.
fn migration_from_the_single_package(c: &Container, pool: &Pool) {
    c.ok(
        "mkdir -p /etc/apt/apt.conf.d /etc/apt/preferences.d /etc/apt/sources.list.d \
         /var/lib/apt/lists/partial /var/cache/apt/archives/partial /var/log/apt",
    );
    c.ok(&format!("dpkg -i /run/pkg/{}", pool.old_knock));
    c.ok("knock-keygen bob --host 127.0.0.1 --out /root/bob.knock");
    c.ok("echo '# kept through the upgrade' >> /etc/knock/server.toml");
    c.ok("systemctl enable --now knock-server.service");
    let old = main_pid(c);
    let status = |package: &str| {
        c.stdout(&format!(
            "dpkg-query -W -f '${{db:Status-Status}}' {package}"
        ))
    };
    assert_eq!(status("knock"), "installed");
    c.ok("test -f /var/lib/dpkg/info/knock.prerm && test -f /var/lib/dpkg/info/knock.postrm");
    let apt = |deb: &str| {
        c.ok(&format!(
            "cd /run/pkg && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends ./{deb}"
        ))
    };
    let running = || {
        (
            c.stdout("systemctl is-active knock-server.service"),
            c.stdout("systemctl is-enabled knock-server.service"),
        )
    };

    let out = apt(&pool.server);
    assert!(
        !out.contains("REMOVED") && !out.contains("Removing knock"),
        "{out}"
    );
    assert!(
        out.contains("the old package \"knock\" is still installed"),
        "{out}"
    );
    assert!(!out.contains("installed, not enabled"), "{out}");
    assert_eq!(status("knock"), "installed");
    assert_eq!(running(), ("active".into(), "enabled".into()), "{out}");
    let new = main_pid(c);
    assert_ne!(new, old, "not restarted on the new binary:\n{out}");

    let out = apt(&pool.client);
    assert!(out.contains("Noting disappearance of knock"), "{out}");
    assert!(!out.contains("Removing knock"), "{out}");
    // Not even in the config-files state, whose purge would run its postrm:
    // its scripts are gone.
    assert_eq!(status("knock"), "not-installed");
    assert_eq!(
        c.stdout("ls /var/lib/dpkg/info | grep '^knock\\.'"),
        "",
        "knock's maintainer scripts are still there"
    );
    assert_eq!(running(), ("active".into(), "enabled".into()), "{out}");
    assert_eq!(
        main_pid(c),
        new,
        "installing knock-client touched the server"
    );
    c.ok("test -f /etc/knock/server.id && test -f /etc/knock/clients.d/bob.toml && test -d /var/lib/knock");
    c.ok("nft list table inet knock");
    assert_eq!(
        c.stdout("tail -n 1 /etc/knock/server.toml"),
        "# kept through the upgrade"
    );
    assert!(c
        .stdout("dpkg-query -W -f '${Conffiles}' knock-server")
        .contains("/etc/knock/server.toml"));
    assert!(c
        .stdout("dpkg-query -S /usr/bin/knock-client /usr/bin/knock-keygen")
        .contains("knock-client: /usr/bin/knock-client\nknock-server: /usr/bin/knock-keygen"));
}

/// The container's address on the link that is there from boot (probes),
/// and on the link of `interface` once it appears (knocks).
const UPLINK_BOX: &str = "198.18.7.1";
const UPLINK_OUT: &str = "198.18.7.2";
const KNOCK_BOX: &str = "198.18.9.1";
const KNOCK_OUT: &str = "198.18.9.2";

/// The TCP service the protected port guards, started at every boot.
const ECHO_UNIT: &str = "[Unit]\nDescription=test echo service on tcp/4992\n\
    [Service]\nExecStart=/usr/bin/socat TCP6-LISTEN:4992,ipv6only=0,reuseaddr,fork EXEC:/usr/bin/cat\n\
    [Install]\nWantedBy=multi-user.target\n";

/// Gives the container (in `inside`) the interface `knock0`, a veth whose
/// other end (`kp0`) is in `outside`: the interface knock-server sniffs on.
fn add_knock_interface(inside: &Ns, outside: &Ns) {
    sh(Command::new("ip").args([
        "link",
        "add",
        "knock0",
        "netns",
        &inside.name,
        "type",
        "veth",
        "peer",
        "name",
        "kp0",
        "netns",
        &outside.name,
    ]));
    inside.sh(&format!(
        "ip addr add {KNOCK_BOX}/24 dev knock0 && ip link set knock0 up"
    ));
    outside.sh(&format!(
        "ip addr add {KNOCK_OUT}/24 dev kp0 && ip link set kp0 up"
    ));
}

/// From boot, with knock-server enabled and its interface absent, the
/// protected port is closed to another host; once the interface appears the
/// server becomes ready and honours a knock.
///
/// Two boots of one container disk, each in a fresh network namespace (an
/// empty firewall, as after a power cycle), linked to `outside`, the other
/// host. An echo service listens on the protected port from boot, so a
/// refused probe is our rules' doing: the same probe connects before the
/// first start and after `remove-rules`, in the same boots.
#[test]
fn enabled_server_closes_its_ports_from_boot_and_waits_for_its_interface() {
    require_root();
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("systemd-nspawn", "systemd-container"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("nft", "nftables"),
        ("socat", "socat"),
    ] {
        require_tool(tool, package);
    }
    let pool = pool();
    let _alone = one_at_a_time();
    let host_before = host_tables();
    let mut lab = Lab::new();
    let outside = lab.netns("out");
    let disk = Disk::new();
    let probe = |addr: &str| outside.tcp_connects(ip(addr), 4992);

    // Boot 1: the operator installs, configures (interface knock0) and
    // enables the server; a service listens on the protected port.
    let box1 = lab.netns("box1");
    lab.link(&box1, &[UPLINK_BOX], &outside, &[UPLINK_OUT]);
    let c = Container::start(
        pool,
        &Boot {
            disk: Some(&disk),
            netns: Some(&box1),
            target: "multi-user.target",
        },
    );
    c.wait_booted();
    c.ok("cp -a /run/host-dpkg /var/lib/dpkg && : > /var/lib/dpkg/statoverride");
    c.ok(&format!(
        "dpkg -i /run/pkg/{} /run/pkg/{}",
        pool.server, pool.client
    ));
    c.ok(
        "sed -i 's/^protected = .*/protected = [\"tcp\\/4992\"]/; s/^#interface = .*/interface = \"knock0\"/' \
         /etc/knock/server.toml",
    );
    let check = c.ok("knock-server check");
    assert!(
        check.contains("interface      knock0") && check.contains("protected      tcp/4992"),
        "{check}"
    );
    c.ok(&format!(
        "knock-keygen alice --host {KNOCK_BOX} --out /root/alice.knock"
    ));
    c.ok(&format!(
        "printf '{}' > /etc/systemd/system/knock-echo.service && systemctl enable --now knock-echo",
        ECHO_UNIT.replace('\n', "\\n")
    ));
    assert_eq!(
        c.wait_for(
            "ss -Hltn 'sport = :4992' | wc -l",
            &["1"],
            Duration::from_secs(5)
        ),
        "1",
        "the echo service does not listen"
    );
    assert!(
        probe(UPLINK_BOX),
        "positive control: without our rules the port answers the probe"
    );
    add_knock_interface(&box1, &outside);
    let started = c.sh_out("systemctl enable --now knock-server.service");
    let journal = c.ok("journalctl -b -u knock-server -o cat");
    assert!(
        started.status.success() && journal.contains("ready: 1 clients"),
        "the first start: {}\n{journal}",
        text(&started.stderr)
    );
    assert!(!probe(UPLINK_BOX), "the first start did not close the port");
    let saved = c.ok("cat /var/lib/knock/rules");
    assert!(saved.contains("\nprotected = tcp/4992\n"), "{saved}");
    // The interface goes away (a hot-plugged NIC, a VPN); then a power cycle.
    sh(Command::new("ip").args(["-n", &outside.name, "link", "del", "kp0"]));
    drop(c);

    // Boot 2: a fresh network namespace, no knock0.
    let box2 = lab.netns("box2");
    lab.link(&box2, &["198.18.8.1"], &outside, &["198.18.8.2"]);
    assert_eq!(
        box2.sh("nft list ruleset").trim(),
        "",
        "not a fresh firewall"
    );
    let c = Container::start(
        pool,
        &Boot {
            disk: Some(&disk),
            netns: Some(&box2),
            target: "multi-user.target",
        },
    );
    // The daemon is not ready (its interface is missing), so the boot does
    // not finish: wait for the boot unit and the service instead.
    let restored = c.wait_for(
        "systemctl is-active knock-server-restore.service",
        &["active", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(
        restored,
        "active",
        "{}",
        c.ok("journalctl -b -u knock-server-restore -o cat")
    );
    let restore_log = c.ok("journalctl -b -u knock-server-restore -o cat");
    assert!(
        restore_log
            .contains("restored the nftables rules saved in /var/lib/knock/rules: tcp/4992 closed"),
        "{restore_log}"
    );
    // Before the network: restored before network-pre.target was reached.
    let at = |unit: &str| -> u64 {
        c.stdout(&format!(
            "systemctl show -P ActiveEnterTimestampMonotonic {unit}"
        ))
        .parse()
        .unwrap()
    };
    let (restored_at, network_pre_at) =
        (at("knock-server-restore.service"), at("network-pre.target"));
    assert!(
        restored_at > 0 && restored_at <= network_pre_at,
        "restored at {restored_at}, network-pre.target at {network_pre_at}"
    );
    assert_eq!(
        c.wait_for(
            "ss -Hltn 'sport = :4992' | wc -l",
            &["1"],
            Duration::from_secs(30)
        ),
        "1",
        "the echo service does not listen after boot"
    );
    assert_ne!(
        c.stdout("systemctl is-active knock-server.service"),
        "active",
        "ready without its interface"
    );
    assert!(
        !probe("198.18.8.1"),
        "from boot, with knock-server not ready, the protected port answers"
    );

    // The interface appears: the server becomes ready and honours a knock.
    add_knock_interface(&box2, &outside);
    let state = c.wait_for(
        "systemctl is-active knock-server.service",
        &["active"],
        Duration::from_secs(30),
    );
    let journal = c.ok("journalctl -b -u knock-server -o cat");
    assert_eq!(
        state, "active",
        "not ready after its interface appeared:\n{journal}"
    );
    assert!(journal.contains("ready: 1 clients"), "{journal}");
    assert!(!probe(KNOCK_BOX), "open before any knock");
    let profile = disk.root().join("root/alice.knock");
    let out = outside
        .cmd(disk.usr("bin/knock-client"))
        .args(["open", KNOCK_BOX, "4992", "--timeout", "5s", "--profile"])
        .arg(&profile)
        .env("KNOCK_HOME", lab.dir.as_os_str())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "knock after the interface appeared: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.ok("journalctl -b -u knock-server -o cat")
    );

    // Positive control in this boot: without our rules, the same probe
    // connects. Then restore-rules closes the port again, even with a
    // broken server.toml (it falls back to /var/lib/knock).
    c.ok("systemctl stop knock-server.service && knock-server remove-rules");
    assert!(
        probe("198.18.8.1"),
        "positive control: without our rules the port answers the probe"
    );
    c.ok("cp /etc/knock/server.toml /root/server.toml.good && echo 'bogus = 1' >> /etc/knock/server.toml");
    let restore = c.ok("knock-server restore-rules");
    assert!(
        restore.contains("restoring from the default state directory /var/lib/knock")
            && restore.contains("tcp/4992 closed"),
        "{restore}"
    );
    assert!(
        !probe("198.18.8.1"),
        "restore-rules with a broken configuration left the port open"
    );
    c.ok("cp /root/server.toml.good /etc/knock/server.toml");
    drop(c);
    drop(lab);
    assert_eq!(host_tables(), host_before, "the host's firewall changed");
}
