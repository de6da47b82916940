//! knock-keygen: creates a client secret, writes the server's entry for it to
//! `clients.d/NAME.toml` and the client's profile to `--out`.

#[path = "knock-keygen/cli.rs"]
mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cli::Args;

use knock_keys::cli::{parse_args, Failure};
use knock_keys::config::ServerConfig;
use knock_keys::entry::{ClientEntry, Credential};
use knock_keys::profile::{ClientProfile, ProfileKey};
use knock_keys::secret_file::{ensure_private_dir, write_private};
use knock_keys::{identity, FileError};
use knock_proto::{port_list, valid_client_name, ClientSecret, PortSpec, CLIENT_SECRET_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PROGRAM: &str = "knock-keygen";

fn main() -> ExitCode {
    let args = match parse_args::<Args>(PROGRAM) {
        Ok(args) => args,
        Err(code) => return code,
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(PROGRAM),
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_' | b'%' | b'[' | b']')
        })
}

fn run(args: Args) -> Result<(), Failure> {
    if !valid_client_name(&args.name) {
        return Err(Failure::usage(format!(
            "NAME {:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'",
            args.name
        )));
    }
    for host in std::iter::once(&args.host).chain(&args.alias) {
        if !valid_host(host) {
            return Err(Failure::usage(format!(
                "--host/--alias {host:?} is not a host name or address"
            )));
        }
    }
    let config = ServerConfig::load(&args.config)?;
    let ports = match &args.ports {
        None => config.protected.clone(),
        Some(items) => {
            let mut ports: Vec<PortSpec> = Vec::new();
            for item in items {
                let spec: PortSpec = item
                    .parse()
                    .map_err(|err| Failure::usage(format!("--ports: {err}")))?;
                if !config.protected.contains(&spec) {
                    return Err(Failure::usage(format!(
                        "--ports: {spec} is not protected by {}; protected are {}",
                        config.path.display(),
                        port_list(&config.protected)
                    )));
                }
                if !ports.contains(&spec) {
                    ports.push(spec);
                }
            }
            if ports.is_empty() {
                return Err(Failure::usage("--ports: empty"));
            }
            ports
        }
    };

    let entry_path = config.clients_dir.join(format!("{}.toml", args.name));
    if entry_path.exists() && !args.force {
        return Err(Failure::usage(format!(
            "{}: client {:?} already exists; pass --force to replace it (its old profile stops working)",
            entry_path.display(),
            args.name
        )));
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}@{}.knock", args.name, args.host)));
    let to_stdout = out == Path::new("-");
    if !to_stdout && out.exists() && !args.force {
        return Err(FileError::Exists { path: out }.into());
    }

    let (server_id, created) = identity::load_or_create(&config.identity_file)?;
    if created {
        eprintln!(
            "{PROGRAM}: created server identity {}",
            config.identity_file.display()
        );
        if let Err(err) = initial_replay_state(&config) {
            eprintln!(
                "{PROGRAM}: warning: {}; knock-server's first start will refuse knocks for max_clock_skew ({}s), as after a lost state",
                err.message,
                config.max_clock_skew.as_secs()
            );
        }
    }

    let mut bytes = zeroize::Zeroizing::new([0u8; CLIENT_SECRET_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| Failure::runtime("the system random generator failed"))?;
    let secret = ClientSecret::from_bytes(*bytes);

    // A new key for an existing client keeps its policy.
    let kept = ClientEntry::load(&entry_path).ok();
    let entry = ClientEntry {
        name: args.name.clone(),
        credential: Credential::Shared(secret.clone()),
        ports: ports.clone(),
        max_open_for: kept.as_ref().and_then(|e| e.max_open_for),
        allow_from: kept
            .as_ref()
            .map(|e| e.allow_from.clone())
            .unwrap_or_default(),
        expires: kept.as_ref().and_then(|e| e.expires.clone()),
        require_bound_addr: kept.as_ref().is_some_and(|e| e.require_bound_addr),
    };
    let profile = ClientProfile {
        name: args.name.clone(),
        host: args.host.clone(),
        aliases: args.alias.clone(),
        knock_port: config.knock_port,
        server_id,
        key: ProfileKey::Shared(secret),
        ports: ports.clone(),
        stun: Vec::new(),
    };

    // The profile first: if it cannot be written, the server never learns a
    // secret that nobody holds.
    if to_stdout {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(profile.to_toml().as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::runtime(format!("writing the profile to stdout: {e}")))?;
    } else {
        write_private(&out, profile.to_toml().as_bytes(), args.force)?;
    }
    ensure_private_dir(&config.clients_dir)?;
    write_private(&entry_path, entry.to_toml().as_bytes(), args.force)?;

    eprintln!(
        "{PROGRAM}: client {:?} may open {} on {}; server entry {}, profile {}",
        args.name,
        port_list(&ports),
        args.host,
        entry_path.display(),
        if to_stdout {
            "on stdout".to_owned()
        } else {
            out.display().to_string()
        },
    );
    eprintln!(
        "{PROGRAM}: load it with `knock-server apply` (kept only if you confirm), or `knock-server reload`"
    );
    Ok(())
}

/// A new server has accepted no knock: its replay state says so, and its
/// first start refuses nothing. (Without a state, the server cannot tell a
/// first start from a lost state directory, and refuses knocks for one
/// window after it starts.)
fn initial_replay_state(config: &ServerConfig) -> Result<(), Failure> {
    let path = config.state_dir.join("replay.state");
    if path.exists() {
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let window_ms = u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
    ensure_private_dir(&config.state_dir)?;
    write_private(
        &path,
        &knock_proto::ReplayGuard::first_start(window_ms, now_ms).encode(),
        false,
    )?;
    Ok(())
}
