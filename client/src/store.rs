//! The installed profiles: `$KNOCK_HOME` (default `~/.config/knock`), one
//! `NAME@HOST.knock` file per profile, mode 0600, in a 0700 directory.
//!
//! A shared-key profile holds a secret and is imported only from a 0600
//! file; a public-key profile holds none and is imported at any mode. Both
//! are installed 0600, so that the directory is uniform.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use knock_keys::cli::Failure;
use knock_keys::profile::ClientProfile;
use knock_keys::secret_file::{ensure_private_dir, write_private};
use knock_keys::FileError;

use crate::PROGRAM;

/// The extension of installed profiles; other files in the directory are
/// left alone.
const EXTENSION: &str = "knock";

/// Where profiles are installed: `$KNOCK_HOME`, else `$HOME/.config/knock`.
pub fn knock_home() -> Result<PathBuf, Failure> {
    if let Some(dir) = std::env::var_os("KNOCK_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("knock")),
        None => Err(Failure::usage(
            "neither KNOCK_HOME nor HOME is set: set KNOCK_HOME to the profile directory, \
             or pass --profile FILE",
        )),
    }
}

/// One installed profile file, read or not.
#[derive(Debug)]
pub struct Installed {
    pub path: PathBuf,
    pub profile: Result<ClientProfile, FileError>,
}

/// Every `*.knock` file under `dir`, sorted by name. A missing directory
/// holds no profiles.
pub fn installed(dir: &Path) -> Result<Vec<Installed>, Failure> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Failure::usage(format!(
                "{}: cannot read the profile directory: {e}; fix its permissions or set \
                 KNOCK_HOME",
                dir.display()
            )))
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == EXTENSION)
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && path.is_file()
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let profile = ClientProfile::load(&path);
            Installed { path, profile }
        })
        .collect())
}

/// The file name a profile is installed under: `NAME@HOST.knock`, with any
/// character that does not belong in a file name replaced by `_`.
pub fn file_name(profile: &ClientProfile) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '%') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{}@{}.{EXTENSION}",
        clean(&profile.name),
        clean(&profile.host)
    )
}

/// Is `alias` something a HOST argument could be?
fn valid_alias(alias: &str) -> bool {
    !alias.is_empty()
        && alias.len() <= 253
        && alias
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '/' | ','))
}

/// `knock-client import FILE [--alias NAME,...] [--force]`.
pub fn import(file: &Path, aliases: &[String], force: bool) -> Result<ExitCode, Failure> {
    let mut profile = ClientProfile::load(file)?;
    for alias in aliases {
        let alias = alias.trim();
        if !valid_alias(alias) {
            return Err(Failure::usage(format!(
                "--alias {alias:?} is not a host name or address"
            )));
        }
        if !profile.answers_to(alias) {
            profile.aliases.push(alias.to_owned());
        }
    }
    let home = knock_home()?;
    let target = home.join(file_name(&profile));
    if target.exists() && !force {
        return Err(Failure::usage(format!(
            "{}: a profile for {}@{} is already installed; pass --force to replace it",
            target.display(),
            profile.name,
            profile.host
        )));
    }
    ensure_private_dir(&home)?;
    // Others that answer to the same names make lookup by HOST ambiguous.
    let mut clashes = Vec::new();
    for other in installed(&home)? {
        if other.path == target {
            continue;
        }
        if let Ok(existing) = &other.profile {
            let shared: Vec<&String> = std::iter::once(&profile.host)
                .chain(&profile.aliases)
                .filter(|name| existing.answers_to(name))
                .collect();
            if let Some(name) = shared.first() {
                clashes.push(format!("{} also answers to {name}", other.path.display()));
            }
        }
    }
    write_private(&target, profile.to_toml().as_bytes(), true)?;
    let names = std::iter::once(profile.host.as_str())
        .chain(profile.aliases.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "installed {} (client {:?} of {}, {}; found as {names})",
        target.display(),
        profile.name,
        profile.host,
        profile.mode()
    );
    for clash in clashes {
        eprintln!("{PROGRAM}: note: {clash}; use --profile to choose between them");
    }
    Ok(ExitCode::SUCCESS)
}

/// `knock-client list`: one line per profile, keys never shown.
pub fn list() -> Result<ExitCode, Failure> {
    let home = knock_home()?;
    let profiles = installed(&home)?;
    if profiles.is_empty() {
        eprintln!(
            "{PROGRAM}: no profiles in {}; install one with `knock-client import FILE`",
            home.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "FILE".to_owned(),
        "NAME".to_owned(),
        "HOST".to_owned(),
        "ALIASES".to_owned(),
        "KNOCK PORT".to_owned(),
        "MODE".to_owned(),
        "PORTS".to_owned(),
    ]];
    let mut broken = Vec::new();
    for item in profiles {
        match item.profile {
            Ok(p) => rows.push([
                item.path.display().to_string(),
                p.name.clone(),
                p.host.clone(),
                dash_if_empty(p.aliases.join(",")),
                format!("udp/{}", p.knock_port),
                p.mode().to_string(),
                dash_if_empty(
                    p.ports
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]),
            Err(err) => broken.push(err),
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::runtime(format!("writing the list to stdout: {e}")))?;
    for err in broken {
        eprintln!("{PROGRAM}: warning: skipped {err}");
    }
    Ok(ExitCode::SUCCESS)
}

fn dash_if_empty(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}
