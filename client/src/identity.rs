//! The client's identity (public-key mode): `knock-client identity`, and the
//! keys `open` and `connect` knock with.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use knock_keys::cli::Failure;
use knock_keys::client_identity;
use knock_keys::profile::{ClientProfile, ProfileKey};
use knock_proto::ClientIdentity;

use crate::knock::KnockKeys;
use crate::store::knock_home;
use crate::PROGRAM;

/// `--identity FILE`, else `$KNOCK_HOME/identity`.
pub fn identity_path(explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    match explicit {
        Some(path) => Ok(path.to_path_buf()),
        None => match knock_home() {
            Ok(home) => Ok(client_identity::default_path(&home)),
            Err(_) => Err(Failure::usage(
                "neither KNOCK_HOME nor HOME is set, so there is no default identity: set \
                 KNOCK_HOME, or pass --identity FILE",
            )),
        },
    }
}

/// `knock-client identity [--identity FILE]`: creates the identity if there
/// is none, and prints its public line, alone, on stdout.
pub fn run(explicit: Option<&Path>) -> Result<ExitCode, Failure> {
    let path = identity_path(explicit)?;
    let (identity, created) = client_identity::load_or_create(&path)?;
    if created {
        eprintln!(
            "{PROGRAM}: created a new identity in {} (a secret: keep it 0600 and back it up); \
             give the line below to each server's operator for `knock-keygen --public-key`",
            path.display()
        );
    }
    let line = identity.public().to_line();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::runtime(format!("writing to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// The keys to knock with the profile at `profile_path`: its secret, or for
/// a public-key profile the identity (`--identity`, else the default one),
/// which must exist and be the one the profile was made for.
pub fn knock_keys(
    profile: &ClientProfile,
    profile_path: &Path,
    explicit: Option<&Path>,
) -> Result<KnockKeys, Failure> {
    match &profile.key {
        ProfileKey::Shared(secret) => Ok(KnockKeys::shared(secret, profile.server_id)),
        ProfileKey::Public { server, client } => {
            let path = identity_path(explicit)?;
            if !path.exists() {
                return Err(Failure::usage(format!(
                    "no identity at {}: profile {} is a public-key profile and needs one; run \
                     `knock-client identity`, have the server's operator enrol its line, or pass \
                     --identity FILE",
                    path.display(),
                    profile_path.display()
                )));
            }
            let identity: ClientIdentity = client_identity::load(&path)?;
            if let Some(expected) = client {
                if *expected != identity.public() {
                    return Err(Failure::usage(format!(
                        "profile {} was made for the identity {}, but {} is {}: pass \
                         --identity FILE with the identity it was made for, or have the \
                         server's operator enrol this one",
                        profile_path.display(),
                        expected.to_line(),
                        path.display(),
                        identity.public().to_line()
                    )));
                }
            }
            KnockKeys::public(identity, *server, profile.server_id).map_err(|err| {
                Failure::usage(format!(
                    "{}: field `server_public_key`: {err}; ask the server's operator for a new \
                     profile",
                    profile_path.display()
                ))
            })
        }
    }
}
