//! Build helpers for packaging and for the documentation.
//!
//! `cargo run -p xtask -- dist OUT_DIR` writes, from the binaries' own clap
//! definitions (included here by path, so they cannot drift), one directory
//! per program, so that each Debian package takes its programs' directories
//! whole (knock-server and knock-keygen in knock-server, knock-client in
//! knock-client):
//!
//! - `OUT_DIR/PROGRAM/man/*.1`: the program's page and one per subcommand;
//! - `OUT_DIR/PROGRAM/completions/{bash,zsh,fish}/...`: shell completions.
//!
//! `cargo run -p xtask -- vectors` prints the `test-vectors` block of
//! docs/PROTOCOL.md with every output recomputed from its inputs. The
//! generator needs the protocol crate and its test helpers (an independent
//! implementation of the specification), so it is the example
//! `proto/examples/vectors.rs`, which this runs.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "../../server/src/cli.rs"]
mod server_cli;

#[allow(dead_code)]
#[path = "../../client/src/cli.rs"]
mod client_cli;

#[allow(dead_code)]
#[path = "../../keys/src/bin/knock-keygen/cli.rs"]
mod keygen_cli;

const USAGE: &str = "usage: cargo run -p xtask -- dist OUT_DIR | vectors";

/// What every page ends with: exit status, files, see also.
const EXIT_STATUS: &str =
    "0 on success, 1 on a runtime failure, 2 on a usage or configuration error. \
Every error is one line on standard error that names the file, field or argument at fault.";

struct Program {
    command: clap::Command,
    /// Extra man page sections: (heading, paragraphs).
    sections: Vec<(&'static str, Vec<&'static str>)>,
}

fn programs() -> Vec<Program> {
    vec![
        Program {
            command: server_cli::Args::command(),
            sections: vec![
                (
                    "FILES",
                    vec![
                        "/etc/knock/server.toml: the configuration (see the commented default installed with the package).",
                        "/etc/knock/server.id: the server identity that client profiles are bound to; kept with the configuration, not with the state.",
                        "/etc/knock/server.key: the server's X25519 key (server_key_file), mode 0600, kept and backed up with server.id; needed when some client is public-key. Replacing it invalidates this server's public profiles, not the clients' identities.",
                        "/etc/knock/clients.d/NAME.toml: one entry per authorised client, written by knock-keygen(1): a shared-key entry holds the client's secret (mode 0600); a public-key entry holds only its public line and policy.",
                        "/var/lib/knock/ (state_dir): replay.state, the replay state; rules, the firewall rules installed last, which restore-rules installs at boot (knock-server-restore.service); lock, held by the one running server, with its PID; status, what the running server says of itself (knock-server status); control, the socket on which reload and apply ask it to reload; running-config, the configuration and clients it loaded last (mode 0600), which apply restores when a change is not confirmed; pair-keys, the cache of public-key clients' pair keys (mode 0600), which spares a restart the key agreements.",
                    ],
                ),
                (
                    "SIGNALS",
                    vec![
                        "SIGHUP reloads the configuration and the clients without dropping live grants, and says nothing back; knock-server reload (what systemctl reload knock-server runs) does the same and exits 2 with the reason when the server refuses the new configuration.",
                        "SIGTERM exits 0. With on_exit = \"stay-closed\" (the default) the firewall rules stay and protected ports stay closed; with on_exit = \"remove-rules\" they are removed.",
                    ],
                ),
                ("EXIT STATUS", vec![EXIT_STATUS]),
                (
                    "SEE ALSO",
                    vec!["knock-keygen(1), knock-client(1), systemctl(1), nft(8), iptables(8); docs/OPERATIONS.md, the operator's guide."],
                ),
            ],
        },
        Program {
            command: keygen_cli::Args::command(),
            sections: vec![
                (
                    "FILES",
                    vec![
                        "/etc/knock/server.toml: the server configuration read for clients_dir, protected and knock_port.",
                        "/etc/knock/clients.d/NAME.toml: the server's entry for the new client, mode 0600.",
                        "/etc/knock/server.key: the server's key for public-key clients, created if missing, mode 0600.",
                        "./NAME@HOST.knock: the client profile (--out), mode 0600; install it on the client with knock-client import. With --public-key LINE the profile holds no secret (mode 0644) and may be published.",
                    ],
                ),
                ("EXIT STATUS", vec![EXIT_STATUS]),
                ("SEE ALSO", vec!["knock-server(1), knock-client(1)."]),
            ],
        },
        Program {
            command: client_cli::Cli::command(),
            sections: vec![
                (
                    "ENVIRONMENT",
                    vec!["KNOCK_HOME: where profiles are installed and looked up, and where the identity is (default ~/.config/knock)."],
                ),
                (
                    "EXAMPLES",
                    vec![
                        "knock-client identity   (prints the public line to enrol with knock-keygen --public-key)",
                        "knock-client import alice@vpn.example.knock",
                        "knock-client open vpn.example 22",
                        "In ~/.ssh/config: Host vpn.example / ProxyCommand knock-client connect %h %p",
                    ],
                ),
                ("EXIT STATUS", vec![EXIT_STATUS]),
                ("SEE ALSO", vec!["knock-keygen(1), knock-server(1), ssh_config(5)."]),
            ],
        },
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [task, out] if task == "dist" => PathBuf::from(out),
        [task] if task == "vectors" => return vectors(),
        _ => {
            eprintln!("xtask: {USAGE}");
            return ExitCode::from(2);
        }
    };
    match dist(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {}: {err}", out.display());
            ExitCode::from(1)
        }
    }
}

/// Runs the generator of the test vectors; its output goes to our stdout.
fn vectors() -> ExitCode {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is a directory of the workspace root");
    let mut command = Command::new(cargo);
    command.current_dir(root).args([
        "run",
        "--quiet",
        "-p",
        "knock-proto",
        "--example",
        "vectors",
    ]);
    match command.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("xtask: vectors: {command:?} failed ({status})");
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("xtask: vectors: cannot run {command:?}: {err}");
            ExitCode::from(1)
        }
    }
}

fn dist(out: &Path) -> std::io::Result<()> {
    for program in programs() {
        let name = program.command.get_name().to_owned();
        let out = out.join(&name);
        let man_dir = out.join("man");
        fs::create_dir_all(&man_dir)?;
        man_pages(program.command.clone(), &program.sections, &man_dir)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let dir = out.join("completions").join(dir);
            fs::create_dir_all(&dir)?;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut program.command.clone(), name.clone(), &mut buf);
            fs::write(dir.join(file), buf)?;
        }
    }
    Ok(())
}

/// One page for the program, with `sections` appended, and one per subcommand.
fn man_pages(
    command: clap::Command,
    sections: &[(&'static str, Vec<&'static str>)],
    dir: &Path,
) -> std::io::Result<()> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let version = command.get_version().unwrap_or_default().to_owned();
    let page = |cmd: clap::Command| {
        clap_mangen::Man::new(cmd)
            .source(format!("knock {version}"))
            .manual("knock manual")
    };
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone()).generate_to(dir)?;
    }
    let man = page(command.clone());
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    for (heading, paragraphs) in sections {
        writeln!(roff, ".SH \"{heading}\"")?;
        for paragraph in paragraphs {
            writeln!(roff, ".PP")?;
            writeln!(roff, "{}", escape(paragraph))?;
        }
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| format!("{}(1)", s.get_display_name().unwrap_or(s.get_name())))
        .collect();
    if !subcommands.is_empty() {
        writeln!(roff, ".PP")?;
        writeln!(
            roff,
            "{}",
            escape(&format!(
                "Each subcommand has its own page: {}.",
                subcommands.join(", ")
            ))
        )?;
    }
    fs::write(dir.join(man.get_filename()), roff)
}

/// Escapes text for roff: backslashes, and a leading dot or quote.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}
