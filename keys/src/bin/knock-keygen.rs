//! knock-keygen: enrols a client. Without `--public-key` it creates a client
//! secret, writes the server's entry for it to `clients.d/NAME.toml` (0600)
//! and the client's profile to `--out` (0600). With `--public-key LINE` it
//! enrols that client identity: the entry holds the public key and policy,
//! and the profile (0644) the server's public key; neither holds a secret.
//! Every run creates `server.id` and `server.key` if they are missing.

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
use knock_keys::secret_file::{ensure_private_dir, read_with_mode, write_private, write_with_mode};
use knock_keys::{identity, FileError};
use knock_proto::{
    port_list, valid_client_name, ClientPublicKey, ClientSecret, PortSpec, CLIENT_SECRET_LEN,
};
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
    // The line is checked before anything else is read or written.
    let public_key = args
        .public_key
        .as_deref()
        .map(|line| {
            let key = ClientPublicKey::parse_line(line)
                .map_err(|err| Failure::usage(format!("--public-key: {err}")))?;
            key.validate()
                .map_err(|err| Failure::usage(format!("--public-key: {err}")))?;
            Ok::<_, Failure>(key)
        })
        .transpose()?;
    let config = ServerConfig::load(&args.config)?;
    let ports = requested_ports(&args, &config)?;
    let entry_path = config.clients_dir.join(format!("{}.toml", args.name));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}@{}.knock", args.name, args.host)));
    let to_stdout = out == Path::new("-");
    match public_key {
        None => enrol_shared(&args, &config, ports, &entry_path, &out, to_stdout),
        Some(key) => enrol_public(&args, &config, ports, key, &entry_path, &out, to_stdout),
    }
}

/// `--ports`, checked against `protected`; `None` when not given.
fn requested_ports(args: &Args, config: &ServerConfig) -> Result<Option<Vec<PortSpec>>, Failure> {
    let Some(items) = &args.ports else {
        return Ok(None);
    };
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
    Ok(Some(ports))
}

fn enrol_shared(
    args: &Args,
    config: &ServerConfig,
    ports: Option<Vec<PortSpec>>,
    entry_path: &Path,
    out: &Path,
    to_stdout: bool,
) -> Result<(), Failure> {
    let ports = ports.unwrap_or_else(|| config.protected.clone());
    if entry_path.exists() && !args.force {
        return Err(Failure::usage(format!(
            "{}: client {:?} already exists; pass --force to replace it (its old profile stops working)",
            entry_path.display(),
            args.name
        )));
    }
    if !to_stdout && out.exists() && !args.force {
        return Err(FileError::Exists { path: out.into() }.into());
    }
    let (server_id, _) = server_files(config)?;

    let mut bytes = zeroize::Zeroizing::new([0u8; CLIENT_SECRET_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| Failure::runtime("the system random generator failed"))?;
    let secret = ClientSecret::from_bytes(*bytes);

    let entry = new_entry(args, Credential::Shared(secret.clone()), &ports, entry_path);
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
    write_profile(&profile, out, to_stdout, 0o600, args.force)?;
    ensure_private_dir(&config.clients_dir)?;
    write_private(entry_path, entry.to_toml().as_bytes(), args.force)?;
    report(args, &ports, entry_path, out, to_stdout, "enrolled");
    Ok(())
}

fn enrol_public(
    args: &Args,
    config: &ServerConfig,
    ports: Option<Vec<PortSpec>>,
    key: ClientPublicKey,
    entry_path: &Path,
    out: &Path,
    to_stdout: bool,
) -> Result<(), Failure> {
    // One identity is one client on a server: the server refuses two entries
    // with the same key, so keygen does too, before writing anything.
    if let Some(other) = enrolled_elsewhere(&config.clients_dir, &args.name, &key) {
        return Err(Failure::usage(format!(
            "--public-key: this identity is already enrolled here as client {:?} ({}); \
             change that entry, or delete it first",
            other
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            other.display()
        )));
    }
    // The same key for the same name again: nothing changes on the server,
    // and the profile is written again (configuration management may run
    // this on every pass).
    let existing = if entry_path.exists() {
        Some(ClientEntry::load(entry_path)?)
    } else {
        None
    };
    let same = existing
        .as_ref()
        .filter(|e| e.credential == Credential::Public(key));
    if existing.is_some() && same.is_none() && !args.force {
        return Err(Failure::usage(format!(
            "{}: client {:?} already exists with another key; pass --force to replace it \
             (the old key stops working)",
            entry_path.display(),
            args.name
        )));
    }
    if let (Some(entry), Some(wanted)) = (same, &ports) {
        if !args.force && !same_ports(&entry.ports, wanted) {
            return Err(Failure::usage(format!(
                "{}: client {:?} is enrolled with this key for {}; pass --force to change its \
                 ports to {}",
                entry_path.display(),
                args.name,
                port_list(&entry.ports),
                port_list(wanted)
            )));
        }
    }
    let unchanged = same.is_some() && (!args.force || ports.is_none());
    if !to_stdout && out.exists() && !args.force && !unchanged {
        return Err(FileError::Exists { path: out.into() }.into());
    }
    let ports = match (&ports, same) {
        (Some(wanted), _) => wanted.clone(),
        (None, Some(entry)) => entry.ports.clone(),
        (None, None) => config.protected.clone(),
    };
    let (server_id, server_key) = server_files(config)?;
    let profile = ClientProfile {
        name: args.name.clone(),
        host: args.host.clone(),
        aliases: args.alias.clone(),
        knock_port: config.knock_port,
        server_id,
        key: ProfileKey::Public {
            server: server_key.public(),
            client: Some(key),
        },
        ports: ports.clone(),
        stun: Vec::new(),
    };
    // It holds no secret: readable by all, so it can be handed over or
    // published as it is.
    write_profile(&profile, out, to_stdout, 0o644, args.force || unchanged)?;
    if unchanged {
        report(
            args,
            &ports,
            entry_path,
            out,
            to_stdout,
            "already enrolled (unchanged)",
        );
        return Ok(());
    }
    let entry = new_entry(args, Credential::Public(key), &ports, entry_path);
    ensure_private_dir(&config.clients_dir)?;
    write_private(entry_path, entry.to_toml().as_bytes(), true)?;
    report(args, &ports, entry_path, out, to_stdout, "enrolled");
    Ok(())
}

fn same_ports(a: &[PortSpec], b: &[PortSpec]) -> bool {
    a.len() == b.len() && a.iter().all(|p| b.contains(p))
}

/// The entry in `dir`, other than NAME's, that holds `key` (or either half of
/// it), if any. Files that cannot be read or parsed are skipped: the server
/// reports them.
fn enrolled_elsewhere(dir: &Path, name: &str, key: &ClientPublicKey) -> Option<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| p.file_stem().is_none_or(|s| s != name))
        .collect();
    paths.sort();
    paths.into_iter().find(|path| {
        read_with_mode(path)
            .ok()
            .and_then(|(text, _)| ClientEntry::parse(path, &text).ok())
            .and_then(|entry| entry.credential.public_key().copied())
            .is_some_and(|other| {
                other.ed25519_bytes() == key.ed25519_bytes()
                    || other.x25519_bytes() == key.x25519_bytes()
            })
    })
}

/// The entry for `credential`; a new key for an existing client keeps its
/// policy.
fn new_entry(
    args: &Args,
    credential: Credential,
    ports: &[PortSpec],
    entry_path: &Path,
) -> ClientEntry {
    let kept = read_with_mode(entry_path)
        .ok()
        .and_then(|(text, _)| ClientEntry::parse(entry_path, &text).ok());
    ClientEntry {
        name: args.name.clone(),
        credential,
        ports: ports.to_vec(),
        max_open_for: kept.as_ref().and_then(|e| e.max_open_for),
        allow_from: kept
            .as_ref()
            .map(|e| e.allow_from.clone())
            .unwrap_or_default(),
        expires: kept.as_ref().and_then(|e| e.expires.clone()),
        require_bound_addr: kept.as_ref().is_some_and(|e| e.require_bound_addr),
    }
}

/// `server.id` (and the first replay state) and `server.key`, created when
/// missing, as every run of knock-keygen does, in either mode.
fn server_files(
    config: &ServerConfig,
) -> Result<(knock_proto::ServerId, knock_proto::ServerSecretKey), Failure> {
    let (server_id, created) = identity::load_or_create(&config.identity_file)?;
    if created {
        eprintln!(
            "{PROGRAM}: created server identity {}",
            config.identity_file.display()
        );
        if let Err(err) = initial_replay_state(config) {
            eprintln!(
                "{PROGRAM}: warning: {}; knock-server's first start will refuse knocks for max_clock_skew ({}s), as after a lost state",
                err.message,
                config.max_clock_skew.as_secs()
            );
        }
    }
    let (server_key, created) = identity::load_or_create_server_key(&config.server_key_file)?;
    if created {
        eprintln!(
            "{PROGRAM}: created server key {}",
            config.server_key_file.display()
        );
    }
    Ok((server_id, server_key))
}

fn write_profile(
    profile: &ClientProfile,
    out: &Path,
    to_stdout: bool,
    mode: u32,
    replace: bool,
) -> Result<(), Failure> {
    if to_stdout {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(profile.to_toml().as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::runtime(format!("writing the profile to stdout: {e}")))?;
    } else {
        write_with_mode(out, profile.to_toml().as_bytes(), mode, replace)?;
    }
    Ok(())
}

fn report(
    args: &Args,
    ports: &[PortSpec],
    entry_path: &Path,
    out: &Path,
    to_stdout: bool,
    what: &str,
) {
    let mode = if args.public_key.is_some() {
        "public-key"
    } else {
        "shared-key"
    };
    eprintln!(
        "{PROGRAM}: client {:?} ({mode}) {what}: may open {} on {}; server entry {}, profile {}",
        args.name,
        port_list(ports),
        args.host,
        entry_path.display(),
        if to_stdout {
            "on stdout".to_owned()
        } else {
            out.display().to_string()
        },
    );
    if what == "enrolled" {
        eprintln!(
            "{PROGRAM}: load it with `knock-server apply` (kept only if you confirm), or `knock-server reload`"
        );
    }
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
