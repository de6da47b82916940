//! The authorised clients: one file each in `clients_dir`, shared-key and
//! public-key clients mixed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use knock_keys::entry::ClientEntry;
use knock_keys::FileError;
use knock_proto::{Mode, PairKeys, ServerId};
use zeroize::Zeroizing;

pub use knock_keys::entry::Credential;

/// The credential of an entry.
pub fn credential(entry: &ClientEntry) -> &Credential {
    &entry.credential
}

/// The mode of an entry: which kind of knock it must send.
pub fn mode(entry: &ClientEntry) -> Mode {
    entry.credential.mode()
}

/// Loads every `*.toml` in `dir`. Hidden files and other names are ignored
/// (editors and `knock-keygen` write temporary files there). Any bad file is
/// an error: a half-loaded client list is worse than keeping the old one.
/// Public keys are checked in full (their curve points too).
pub fn load_clients(dir: &Path) -> Result<Vec<ClientEntry>, FileError> {
    let clients = load_all(dir)?;
    for (entry, _) in &clients {
        entry.validate(&dir.join(format!("{}.toml", entry.name)))?;
    }
    Ok(clients.into_iter().map(|(entry, _)| entry).collect())
}

/// Like [`load_clients`], with the text of each file as it was read, and
/// without the curve-point checks of public keys: the server makes them
/// when it computes a public-key client's pair key, which it must do anyway
/// (or knows them made, from its pair-key cache), so that 100,000 entries
/// load without 100,000 point decompressions.
pub fn load_clients_with_text(
    dir: &Path,
) -> Result<Vec<(ClientEntry, Zeroizing<String>)>, FileError> {
    load_all(dir)
}

fn load_all(dir: &Path) -> Result<Vec<(ClientEntry, Zeroizing<String>)>, FileError> {
    let mut clients: Vec<(ClientEntry, Zeroizing<String>)> = Vec::new();
    let mut twins = Twins::default();
    for path in client_files(dir)? {
        let (entry, text) = ClientEntry::load_unvalidated(&path)?;
        twins.check(&path, &entry)?;
        clients.push((entry, text));
    }
    Ok(clients)
}

/// Finds two clients with the same key, in O(1) per client: every client
/// needs its own key, or the replay memory and the limits of one would be
/// the other's, and revoking one would not revoke the other.
#[derive(Default)]
struct Twins {
    /// Shared secrets by a one-way name of them (the replay id of the
    /// secret on a fixed, made-up server), so that no copy of a secret is
    /// kept as a hash key.
    shared: HashMap<[u8; 16], String>,
    /// Public identities by their Ed25519 and by their X25519 key.
    ed25519: HashMap<[u8; 32], String>,
    x25519: HashMap<[u8; 32], String>,
}

/// The made-up server identity that names shared secrets in [`Twins`].
const TWIN_SERVER: ServerId = ServerId(*b"knock twin check");

impl Twins {
    fn check(&mut self, path: &Path, entry: &ClientEntry) -> Result<(), FileError> {
        let twin = |field: &'static str, other: &str, what: &str| FileError::Field {
            path: path.to_path_buf(),
            field,
            message: format!(
                "same {what} as client {other:?}; every client needs its own (knock-keygen --force)"
            ),
        };
        let name = entry.name.clone();
        match credential(entry) {
            Credential::Shared(secret) => {
                let id = PairKeys::shared(secret, &TWIN_SERVER).replay_id().0;
                if let Some(other) = self.shared.insert(id, name) {
                    return Err(twin("key", &other, "key"));
                }
            }
            Credential::Public(key) => {
                if let Some(other) = self.ed25519.insert(*key.ed25519_bytes(), name.clone()) {
                    return Err(twin("public_key", &other, "public key (its Ed25519 part)"));
                }
                if let Some(other) = self.x25519.insert(*key.x25519_bytes(), name) {
                    return Err(twin("public_key", &other, "public key (its X25519 part)"));
                }
            }
        }
        Ok(())
    }
}

/// The client files in `dir`, sorted: the names the server loads.
pub fn client_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let read_err = |source| FileError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for item in std::fs::read_dir(dir).map_err(read_err)? {
        let path = item.map_err(read_err)?.path();
        if is_client_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn is_client_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && name.ends_with(".toml") && path.is_file()
}
