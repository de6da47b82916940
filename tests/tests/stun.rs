//! `knock-client open --allow-ip auto`: the client learns its public address
//! from a real STUN server (coturn's `turnserver --stun-only`, from Debian)
//! and binds the knock to it, behind a real NAT (nftables masquerade, IPv4
//! and IPv6), in network namespaces:
//!
//! ```text
//!  cli ──── 198.18.10.0/24, fd00:18:10::/64 (private) ──── nat
//!  nat ──── 198.18.20.0/24, fd00:18:20::/64 (public)  ──── srv
//!  nat: masquerades the private net behind 198.18.20.1 / fd00:18:20::1
//!  srv: knock-server at .2 / ::2, turnserver (STUN) at .3 / ::3
//! ```
//!
//! The server has no route to the private net: only the NAT's public
//! address can reach it, and only that address can be granted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use knock_tests::*;

const CLIENT_PRIVATE_V4: &str = "198.18.10.2";
const CLIENT_PRIVATE_V6: &str = "fd00:18:10::2";
const NAT_PRIVATE_V4: &str = "198.18.10.1";
const NAT_PRIVATE_V6: &str = "fd00:18:10::1";
const NAT_PUBLIC_V4: &str = "198.18.20.1";
const NAT_PUBLIC_V6: &str = "fd00:18:20::1";
const SERVER_PUBLIC_V4: &str = "198.18.20.2";
const SERVER_PUBLIC_V6: &str = "fd00:18:20::2";
const STUN_V4: &str = "198.18.20.3";
const STUN_V6: &str = "fd00:18:20::3";
const STUN_PORT: u16 = 3478;
/// Nothing listens there (turnserver also takes 3479, its RFC 5780
/// alternate port): the server's host answers ICMP port unreachable.
const CLOSED_PORT: u16 = 3490;
/// Dropped without an answer by the server's host.
const SILENT_PORT: u16 = 3491;
const KNOCK_PORT: u16 = 62201;

/// One address family's view of the lab.
#[derive(Debug, Clone, Copy)]
struct Family {
    client_private: &'static str,
    nat_public: &'static str,
    server: &'static str,
    stun: &'static str,
}

const V4: Family = Family {
    client_private: CLIENT_PRIVATE_V4,
    nat_public: NAT_PUBLIC_V4,
    server: SERVER_PUBLIC_V4,
    stun: STUN_V4,
};

const V6: Family = Family {
    client_private: CLIENT_PRIVATE_V6,
    nat_public: NAT_PUBLIC_V6,
    server: SERVER_PUBLIC_V6,
    stun: STUN_V6,
};

impl Family {
    /// `addr:port`, bracketed for IPv6.
    fn stun_at(self, port: u16) -> String {
        match ip(self.stun) {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        }
    }
}

struct World {
    lab: Lab,
    client: Ns,
    nat: Ns,
    server_ns: Ns,
    setup: Setup,
    profile: PathBuf,
}

fn world(family: Family) -> World {
    let mut lab = Lab::new();
    let server_ns = lab.netns("srv");
    let nat = lab.netns("nat");
    let client = lab.netns("cli");
    lab.link(
        &client,
        &[CLIENT_PRIVATE_V4, CLIENT_PRIVATE_V6],
        &nat,
        &[NAT_PRIVATE_V4, NAT_PRIVATE_V6],
    );
    lab.link(
        &nat,
        &[NAT_PUBLIC_V4, NAT_PUBLIC_V6],
        &server_ns,
        &[SERVER_PUBLIC_V4, SERVER_PUBLIC_V6, STUN_V4, STUN_V6],
    );
    client.sh(&format!(
        "ip route add default via {NAT_PRIVATE_V4} && ip -6 route add default via {NAT_PRIVATE_V6}"
    ));
    nat.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
    let ruleset = lab.dir.join("nat.nft");
    std::fs::write(
        &ruleset,
        "table inet lab_nat {\n\
         \x20 chain postrouting {\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr 198.18.10.0/24 ip daddr != 198.18.10.0/24 masquerade\n\
         \x20   ip6 saddr fd00:18:10::/64 ip6 daddr != fd00:18:10::/64 masquerade\n\
         \x20 }\n\
         }\n",
    )
    .unwrap();
    nat.sh(&format!("nft -f {}", ruleset.display()));
    // The server's host drops one port silently (a STUN server that never
    // answers); the others that nobody listens on answer port unreachable.
    server_ns.sh(&format!(
        "nft add table inet lab_drop && nft add chain inet lab_drop input \
         '{{ type filter hook input priority 0; policy accept; }}' && \
         nft add rule inet lab_drop input udp dport {SILENT_PORT} drop"
    ));
    // The server has no route to the private net: the NAT is the only way.
    for private in [CLIENT_PRIVATE_V4, CLIENT_PRIVATE_V6] {
        let (reaches, route) = server_ns.try_sh(&format!("ip route get {private}"));
        assert!(
            !reaches,
            "the server must not reach {private} directly: {route}"
        );
    }

    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    let v4_profile = setup.keygen("alice", SERVER_PUBLIC_V4, Some("tcp/4992"));
    let profile = if family.server == SERVER_PUBLIC_V4 {
        v4_profile
    } else {
        // The same client secret, reaching the server over IPv6.
        let v6_profile = setup.dir.join("alice6.knock");
        let text = std::fs::read_to_string(&v4_profile).unwrap().replace(
            &format!("host = \"{SERVER_PUBLIC_V4}\""),
            &format!("host = \"{SERVER_PUBLIC_V6}\""),
        );
        std::fs::write(&v6_profile, text).unwrap();
        std::fs::set_permissions(
            &v6_profile,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        v6_profile
    };
    start_echo(&lab, &server_ns, 4992);
    start_stun(&lab, &server_ns);
    World {
        lab,
        client,
        nat,
        server_ns,
        setup,
        profile,
    }
}

/// Runs coturn's turnserver as a plain STUN server on both STUN addresses,
/// and waits until it listens on both. A missing turnserver fails the test:
/// scripts/install-deps.sh installs the coturn package.
fn start_stun(lab: &Lab, ns: &Ns) {
    let turnserver = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("turnserver is missing: apt-get install coturn (scripts/install-deps.sh does)");
    let log = std::fs::File::create(lab.dir.join("turnserver.log")).unwrap();
    let mut cmd = ns.cmd(turnserver);
    cmd.args([
        "-c",
        "/dev/null",
        "--stun-only",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
    ])
    .args(["-L", STUN_V4, "-L", STUN_V6, "-p", &STUN_PORT.to_string()])
    .args([
        "--log-file",
        "stdout",
        "--simple-log",
        "--no-software-attribute",
    ])
    .arg("--pidfile")
    .arg(lab.dir.join("turnserver.pid"))
    .arg("--db")
    .arg(lab.dir.join("turndb"))
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    lab.spawn(cmd);
    let listening = eventually(Duration::from_secs(10), || {
        let (_, out) = ns.try_sh(&format!("ss -Hlun 'sport = :{STUN_PORT}'"));
        out.contains(&format!("{STUN_V4}:{STUN_PORT}"))
            && out.contains(&format!("[{STUN_V6}]:{STUN_PORT}"))
    });
    assert!(
        listening,
        "turnserver never listened on udp/{STUN_PORT}:\n{}",
        std::fs::read_to_string(lab.dir.join("turnserver.log")).unwrap_or_default()
    );
}

/// knock-client in the client namespace, with `KNOCK_HOME` set to `home`.
fn client_in(w: &World, home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = w
        .client
        .cmd(bin("knock-client"))
        .args(args)
        .arg("--profile")
        .arg(&w.profile)
        .env("KNOCK_HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("knock-client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The datagrams to the knock port that a capture saw.
fn knocks_seen(capture: Tcpdump, ns: &Ns) -> Vec<CapturedDatagram> {
    let file = capture.file.clone();
    let text = capture.stop(ns);
    read_pcap_udp(&file)
        .into_iter()
        .filter(|d| d.dest_port == KNOCK_PORT)
        .inspect(|d| assert!(!d.payload.is_empty(), "an empty knock?\n{text:?}"))
        .collect()
}

fn behind_nat(family: Family) {
    let started = Instant::now();
    let w = world(family);
    let home = w.lab.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let server = Server::start(&w.server_ns, &w.setup.config);
    let srv = ip(family.server);
    assert!(
        !w.client.tcp_connects(srv, 4992),
        "tcp/4992 open before any knock"
    );

    // 1. STUN servers that do not answer: one port unreachable, one silent.
    //    The client says so, exits 1 and sends nothing: the server's side of
    //    the NAT sees no datagram to the knock port, and the server grants
    //    nothing.
    let capture = Tcpdump::start(
        &w.server_ns,
        &format!("udp port {KNOCK_PORT}"),
        w.lab.dir.join("failed.pcap"),
    );
    let closed = family.stun_at(CLOSED_PORT);
    let silent = family.stun_at(SILENT_PORT);
    let timer = Instant::now();
    let (code, out, err) = client_in(
        &w,
        &home,
        &[
            "open",
            family.server,
            "4992",
            "--allow-ip",
            "auto",
            "--stun",
            &format!("{closed},{silent}"),
        ],
    );
    let took = timer.elapsed();
    assert_eq!(code, 1, "STUN failed, yet: {out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for needle in [
        "--allow-ip auto",
        "nothing was sent",
        &format!("{closed}: refused"),
        &format!("{silent}: timed out after 3s"),
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "the silent server should be given 3 s, and no more: {took:?}"
    );
    // None configured anywhere: a usage error, nothing sent either.
    let (code, _, err) = client_in(
        &w,
        &home,
        &["open", family.server, "4992", "--allow-ip", "auto"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--stun HOST:PORT") && err.contains("client.toml"),
        "{err}"
    );
    let unsent = knocks_seen(capture, &w.server_ns);
    assert!(
        unsent.is_empty(),
        "a knock left although STUN failed: {unsent:?}"
    );
    assert!(!server.log().contains("granted"), "{}", server.log());

    // 2. Bound to the client's private address: the server sees the NAT's
    //    address instead, and refuses the knock (the positive control that
    //    the binding is enforced behind this NAT).
    let (code, out, err) = client_in(
        &w,
        &home,
        &[
            "open",
            family.server,
            "4992",
            "--allow-ip",
            family.client_private,
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(
        code, 1,
        "a knock bound to the private address opened: {out}{err}"
    );
    server.wait_for_log("knock refused (source-mismatch)", Duration::from_secs(3));
    assert!(
        !w.client.tcp_connects(srv, 4992),
        "opened after a refused knock"
    );

    // 3. --allow-ip auto with a real STUN server, given in client.toml this
    //    time: the STUN server reports the NAT's public address, the knock
    //    is bound to it, and the server opens for it. The capture that saw
    //    nothing above sees this knock, from the NAT's public address.
    std::fs::write(
        home.join("client.toml"),
        format!(
            "# client-wide settings\nstun = [\"{}\"]\n",
            family.stun_at(STUN_PORT)
        ),
    )
    .unwrap();
    let capture = Tcpdump::start(
        &w.server_ns,
        &format!("udp port {KNOCK_PORT}"),
        w.lab.dir.join("auto.pcap"),
    );
    let (code, out, err) = client_in(
        &w,
        &home,
        &["open", family.server, "4992", "--allow-ip", "auto", "-v"],
    );
    assert_eq!(code, 0, "{out}{err}\n{}", server.log());
    assert_eq!(out.lines().count(), 1, "one line on success: {out}");
    assert!(
        out.contains(&format!("for {} (--allow-ip auto", family.nat_public)),
        "{out}"
    );
    // The STUN server really answered, with the NAT's public address.
    let said = format!(
        "STUN server {} ({}) says this host is {}",
        family.stun_at(STUN_PORT),
        family.stun,
        match ip(family.nat_public) {
            IpAddr::V4(a) => format!("{a}:"),
            IpAddr::V6(a) => format!("[{a}]:"),
        }
    );
    assert!(err.contains(&said), "{said:?} missing from:\n{err}");
    let seen = knocks_seen(capture, &w.server_ns);
    assert!(
        !seen.is_empty() && seen.iter().all(|d| d.source == ip(family.nat_public)),
        "the knock should arrive from the NAT's public address {}: {seen:?}",
        family.nat_public
    );
    server.wait_for_log(
        &format!("granted tcp/4992 to {}", family.nat_public),
        Duration::from_secs(2),
    );
    let status = w.setup.status(&w.server_ns);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&format!("{} ", family.nat_public)) && l.contains("tcp/4992")),
        "no grant for the NAT's address:\n{status}"
    );
    assert!(
        !status.contains(family.client_private),
        "the private address cannot be granted:\n{status}"
    );
    assert!(w.client.tcp_connects(srv, 4992), "not open through the NAT");
    assert_eq!(
        server.count_log("granted"),
        1,
        "only the bound knock was granted:\n{}",
        server.log()
    );
    // The NAT really translated: its connection tracking holds the flows.
    let tracked = w.nat.conntrack_list();
    assert!(tracked.contains(family.client_private), "{tracked}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "too slow: {:?}",
        started.elapsed()
    );
}

#[test]
fn allow_ip_auto_behind_nat_ipv4() {
    behind_nat(V4);
}

#[test]
fn allow_ip_auto_behind_nat_ipv6() {
    behind_nat(V6);
}

/// A profile for 127.0.0.1 written by hand: these checks send nothing, so
/// no server is needed (and no root).
fn loopback_profile(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("lo.knock");
    std::fs::write(
        &path,
        format!(
            "name = \"lo\"\nhost = \"127.0.0.1\"\nknock_port = 62201\n\
             server_id = \"AAAAAAAAAAAAAAAAAAAAAA==\"\n\
             key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n{extra}"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn run_client(home: &Path, profile: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("knock-client"))
        .args(args)
        .arg("--profile")
        .arg(profile)
        .env("KNOCK_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn configuration_mistakes_are_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    let profile = loopback_profile(home.path(), "");
    let open = |extra: &[&str]| {
        let mut args = vec!["open", "127.0.0.1", "4992"];
        args.extend_from_slice(extra);
        run_client(home.path(), &profile, &args)
    };
    // No STUN server anywhere: say where to configure one.
    let (code, err) = open(&["--allow-ip", "auto"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--stun HOST:PORT"), "{err}");
    assert!(err.contains(&profile.display().to_string()), "{err}");
    assert!(
        err.contains(&home.path().join("client.toml").display().to_string()),
        "{err}"
    );
    // --stun without --allow-ip auto, and malformed servers.
    let (code, err) = open(&["--stun", "127.0.0.1:3478"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--allow-ip auto"), "{err}");
    for bad in ["host:0", "[nope]:1", "a b", "h:99999"] {
        let (code, err) = open(&["--allow-ip", "auto", "--stun", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--stun"), "{err}");
    }
    // client.toml: unknown keys and bad values name the file.
    let config = home.path().join("client.toml");
    for (text, needle) in [
        ("stun = []\nsturn = [\"x\"]\n", "sturn"),
        ("stun = [\"a:b:c:d\"]\n", "stun"),
        ("stun = \"x\"\n", "stun"),
    ] {
        std::fs::write(&config, text).unwrap();
        let (code, err) = open(&["--allow-ip", "auto"]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(&config.display().to_string()), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // A bad list in the profile names the profile.
    std::fs::remove_file(&config).unwrap();
    let bad_profile = loopback_profile(home.path(), "stun = [\"x:0\"]\n");
    let (code, err) = run_client(
        home.path(),
        &bad_profile,
        &["open", "127.0.0.1", "4992", "--allow-ip", "auto"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&bad_profile.display().to_string()) && err.contains("stun"),
        "{err}"
    );
}

#[test]
fn no_answer_on_loopback_sends_nothing() {
    // The profile's list is used, and a STUN server that refuses (nothing
    // listens) makes the client stop before knocking: the knock port on
    // loopback receives nothing.
    let home = tempfile::tempdir().unwrap();
    let knock_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    knock_port
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let profile = loopback_profile(home.path(), &format!("stun = [\"{closed}\"]\n"));
    let text = std::fs::read_to_string(&profile).unwrap().replace(
        "knock_port = 62201",
        &format!("knock_port = {}", knock_port.local_addr().unwrap().port()),
    );
    std::fs::write(&profile, text).unwrap();
    let (code, err) = run_client(
        home.path(),
        &profile,
        &["connect", "127.0.0.1", "4992", "--allow-ip", "auto"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{closed}: refused")) && err.contains("nothing was sent"),
        "{err}"
    );
    let mut buf = [0u8; 2048];
    assert!(
        knock_port.recv_from(&mut buf).is_err(),
        "a knock was sent although STUN failed"
    );
    // Positive control: an ordinary knock reaches that socket.
    let out = Command::new(bin("knock-client"))
        .args(["open", "127.0.0.1", "4992", "--no-wait", "--profile"])
        .arg(&profile)
        .env("KNOCK_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (len, _) = knock_port
        .recv_from(&mut buf)
        .expect("the ordinary knock never arrived");
    assert!(len > 0);
}
