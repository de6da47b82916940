//! Which profile knocks for HOST: `--profile FILE`, else the one installed
//! profile that answers to HOST by name or alias, else the one whose host or
//! alias is (or resolves to) an address of HOST.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use knock_keys::cli::Failure;
use knock_keys::profile::ClientProfile;

use crate::resolve::{bare_host, resolve, Resolver};
use crate::store::{installed, knock_home, Installed};

/// How long lookup may spend resolving the hosts of installed profiles when
/// nothing matched by name. They are resolved in parallel.
const PROFILE_RESOLVE_BUDGET: Duration = Duration::from_millis(1500);

/// The profile to knock with, and where it came from.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub profile: ClientProfile,
}

pub fn find(resolver: &Resolver, explicit: Option<&Path>) -> Result<Found, Failure> {
    if let Some(path) = explicit {
        let profile = ClientProfile::load(path)?;
        return Ok(Found {
            path: path.to_path_buf(),
            profile,
        });
    }
    let host = resolver.host();
    let home = knock_home()?;
    let all = installed(&home)?;
    let no_profile = |extra: String| {
        Failure::usage(format!(
            "no profile for {host:?} in {}{extra}: install one with `knock-client import FILE \
             --alias {host}`, or pass --profile FILE",
            home.display()
        ))
    };

    // 1. By name or alias, as typed.
    let wanted = bare_host(host);
    let by_name = matching(&all, |p| p.answers_to(host) || p.answers_to(wanted));
    if let Some(found) = pick(host, by_name)? {
        return Ok(found);
    }

    // 2. By address: HOST's addresses against profiles written with addresses.
    let ips = resolver.ips();
    if !ips.is_empty() {
        let by_literal = matching(&all, |p| {
            names(p)
                .filter_map(|n| literal(n))
                .any(|ip| ips.contains(&ip))
        });
        if let Some(found) = pick(host, by_literal)? {
            return Ok(found);
        }
        // 3. By address: HOST's addresses against the addresses of profiles
        // written with names, resolved in parallel within a small budget.
        let resolved = resolve_hosts(&all);
        let by_resolution = matching(&all, |p| {
            resolved
                .iter()
                .any(|(host, addrs)| host == &p.host && addrs.iter().any(|a| ips.contains(&a.ip())))
        });
        if let Some(found) = pick(host, by_resolution)? {
            return Ok(found);
        }
    }

    // Nothing: a profile that could not be read may be the one.
    if let Some(err) = all.into_iter().find_map(|item| item.profile.err()) {
        return Err(no_profile(format!(
            " (and one profile could not be read: {err})"
        )));
    }
    Err(no_profile(String::new()))
}

fn names(profile: &ClientProfile) -> impl Iterator<Item = &String> {
    std::iter::once(&profile.host).chain(&profile.aliases)
}

fn literal(name: &str) -> Option<IpAddr> {
    bare_host(name).parse().ok()
}

fn matching(all: &[Installed], test: impl Fn(&ClientProfile) -> bool) -> Vec<&Installed> {
    all.iter()
        .filter(|item| item.profile.as_ref().is_ok_and(&test))
        .collect()
}

fn pick(host: &str, candidates: Vec<&Installed>) -> Result<Option<Found>, Failure> {
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => match &one.profile {
            Ok(profile) => Ok(Some(Found {
                path: one.path.clone(),
                profile: profile.clone(),
            })),
            Err(_) => Ok(None),
        },
        many => Err(Failure::usage(format!(
            "{} profiles answer to {host:?} ({}): pass --profile FILE to choose one",
            many.len(),
            many.iter()
                .map(|i| i.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Resolves the host of every readable profile whose host is a name; hosts
/// that do not resolve within the budget are left out.
fn resolve_hosts(all: &[Installed]) -> Vec<(String, Vec<SocketAddr>)> {
    let hosts: Vec<String> = all
        .iter()
        .filter_map(|item| item.profile.as_ref().ok())
        .map(|p| p.host.clone())
        .filter(|h| literal(h).is_none())
        .collect();
    if hosts.is_empty() {
        return Vec::new();
    }
    let (tx, rx) = mpsc::channel();
    for host in &hosts {
        let tx = tx.clone();
        let host = host.clone();
        // A thread that outlives the budget is abandoned; it ends with the
        // resolver's own timeout or with the process.
        std::thread::spawn(move || {
            if let Ok(addrs) = resolve(&host) {
                let _ = tx.send((host, addrs));
            }
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + PROFILE_RESOLVE_BUDGET;
    let mut out = Vec::new();
    while out.len() < hosts.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(pair) => out.push(pair),
            Err(_) => break,
        }
    }
    out
}
