//! End to end with a real OpenSSH server: `ssh` with the ProxyCommand line
//! from the README reaches `sshd` on a protected port only through a knock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use knock_tests::*;

fn sshd_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let host_key = dir.join("host_ed25519");
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key));
    let user_key = dir.join("user_ed25519");
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&user_key));
    std::fs::copy(dir.join("user_ed25519.pub"), dir.join("authorized_keys")).unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile none\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n",
            host_key.display(),
            dir.join("authorized_keys").display()
        ),
    )
    .unwrap();
    // sshd insists on its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    config
}

fn ssh_config(dir: &std::path::Path, port: u16, proxy: bool) -> std::path::PathBuf {
    let path = dir.join(if proxy {
        "ssh_config_knock"
    } else {
        "ssh_config_direct"
    });
    let proxy_line = if proxy {
        format!(
            "  ProxyCommand {} connect %h %p\n",
            bin("knock-client").display()
        )
    } else {
        String::new()
    };
    std::fs::write(
        &path,
        format!(
            "Host relay\n  HostName {SERVER_V4}\n  Port {port}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n\
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  ConnectTimeout 3\n  LogLevel ERROR\n{proxy_line}",
            dir.join("user_ed25519").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn ssh_proxycommand_reaches_sshd_only_after_the_knock() {
    ssh_end_to_end(Mode::Shared);
}

/// The same with a public-key client: its identity is the default one of
/// the client's `KNOCK_HOME`, its profile public.
#[test]
fn ssh_proxycommand_reaches_sshd_only_after_the_knock_public_key() {
    ssh_end_to_end(Mode::Public);
}

fn ssh_end_to_end(mode: Mode) {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    let home = lab.dir.join("client-home");
    let profile = match mode {
        Mode::Shared => setup.keygen("alice", SERVER_V4, None),
        Mode::Public => setup.keygen_public("alice", SERVER_V4, None, &identity_line(&home)),
    };
    let sshd = sshd_config(&lab.dir, 4992);
    let mut cmd = hosts.server.cmd("/usr/sbin/sshd");
    cmd.args(["-D", "-e", "-f"])
        .arg(&sshd)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(cmd);
    let server = Server::start(&hosts.server, &setup.config);

    // The client installs its profile as a user would.
    let out = hosts
        .client
        .cmd(bin("knock-client"))
        .args(["import"])
        .arg(&profile)
        .env("KNOCK_HOME", &home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ssh = |config: &std::path::Path| {
        hosts
            .client
            .cmd("ssh")
            .arg("-F")
            .arg(config)
            .args(["relay", "echo knocked-in from $(hostname) && cat /proc/sys/kernel/random/boot_id >/dev/null"])
            .env("KNOCK_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // Without the knock, sshd is unreachable.
    let direct = ssh(&ssh_config(&lab.dir, 4992, false));
    assert!(!direct.status.success(), "sshd reachable without a knock");

    // Through the ProxyCommand, ssh just works.
    let knocked = ssh(&ssh_config(&lab.dir, 4992, true));
    let stdout = String::from_utf8_lossy(&knocked.stdout);
    assert!(
        knocked.status.success() && stdout.contains("knocked-in"),
        "ssh through knock-client connect failed: {stdout}{}\n{}",
        String::from_utf8_lossy(&knocked.stderr),
        server.log()
    );
    server.wait_for_log("granted tcp/4992 to 198.18.0.2", Duration::from_secs(2));

    // The attacker, on another address, still sees nothing.
    assert!(!hosts
        .attacker
        .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992));
}
