//! The authorised clients: one file each in `clients_dir`, shared-key and
//! public-key clients mixed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use knock_keys::entry::ClientEntry;
use knock_keys::FileError;
use knock_proto::{Mode, PairPrk, ServerId};
use zeroize::Zeroizing;

use crate::parallel::{parallel_map, Cores};

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
    read_clients(dir, |_, entry, text| {
        clients.push((entry, text));
        Ok::<(), FileError>(())
    })?;
    Ok(clients)
}

/// Client files read and parsed together, across the cores.
const READ_TOGETHER: usize = 2048;

/// Reads the clients of `dir` one at a time, in name order, as
/// [`load_clients_with_text`] does, handing each to `each` without keeping
/// any: how the server loads 100,000 clients without holding every file's
/// text at once. The first error, from a file or from `each`, ends it.
pub fn read_clients<E: From<FileError>>(
    dir: &Path,
    each: impl FnMut(&Path, ClientEntry, Zeroizing<String>) -> Result<(), E>,
) -> Result<usize, E> {
    read_client_files(&ClientFiles::list(dir)?, Cores::All, each)
}

/// [`read_clients`] of the files listed.
pub fn read_client_files<E: From<FileError>>(
    files: &ClientFiles,
    cores: Cores,
    mut each: impl FnMut(&Path, ClientEntry, Zeroizing<String>) -> Result<(), E>,
) -> Result<usize, E> {
    let mut twins = Twins::with_capacity(files.len());
    let indices: Vec<usize> = (0..files.len()).collect();
    for block in indices.chunks(READ_TOGETHER) {
        // Reading and parsing on every core; the rest in order.
        let read = parallel_map(block, cores, READ_TOGETHER / 4, |&index| {
            let path = files.path(index);
            ClientEntry::load_unvalidated(&path).map(|(entry, text)| (path, entry, text))
        });
        for (&index, result) in block.iter().zip(read) {
            let (path, entry, text) = result?;
            twins.check(files, index, &path, &entry)?;
            each(&path, entry, text)?;
        }
    }
    Ok(files.len())
}

/// Finds two clients with the same key, in O(1) per client: every client
/// needs its own key, or the replay memory and the limits of one would be
/// the other's, and revoking one would not revoke the other. Each map
/// gives the index of the file that has the key.
#[derive(Default)]
struct Twins {
    /// Shared secrets by a one-way name of them (half the pair key of the
    /// secret with a made-up server: one HMAC), so that no copy of a secret
    /// is kept as a hash key.
    shared: HashMap<[u8; 16], u32>,
    /// Public identities by their Ed25519 and by their X25519 key.
    ed25519: HashMap<[u8; 32], u32>,
    x25519: HashMap<[u8; 32], u32>,
}

/// The made-up server identity that names shared secrets in [`Twins`].
const TWIN_SERVER: ServerId = ServerId(*b"knock twin check");

impl Twins {
    fn with_capacity(clients: usize) -> Self {
        Self {
            shared: HashMap::with_capacity(clients),
            ..Self::default()
        }
    }

    /// Checks the entry read from the `index`th file, `path`; a twin is
    /// named by its file (a client's name is its file's).
    fn check(
        &mut self,
        files: &ClientFiles,
        index: usize,
        path: &Path,
        entry: &ClientEntry,
    ) -> Result<(), FileError> {
        let twin = |field: &'static str, other: u32, what: &str| {
            let other = files.client_name(other as usize);
            FileError::Field {
                path: path.to_path_buf(),
                field,
                message: format!(
                    "same {what} as client {other:?}; every client needs its own (knock-keygen --force)"
                ),
            }
        };
        let name = u32::try_from(index).unwrap_or(u32::MAX);
        match credential(entry) {
            Credential::Shared(secret) => {
                let prk = PairPrk::shared(secret, &TWIN_SERVER);
                let mut id = [0u8; 16];
                for (o, b) in id.iter_mut().zip(prk.expose()) {
                    *o = *b;
                }
                if let Some(other) = self.shared.insert(id, name) {
                    return Err(twin("key", other, "key"));
                }
            }
            Credential::Public(key) => {
                if let Some(other) = self.ed25519.insert(*key.ed25519_bytes(), name) {
                    return Err(twin("public_key", other, "public key (its Ed25519 part)"));
                }
                if let Some(other) = self.x25519.insert(*key.x25519_bytes(), name) {
                    return Err(twin("public_key", other, "public key (its X25519 part)"));
                }
            }
        }
        Ok(())
    }
}

/// The client files of a directory, sorted: the names the server loads.
/// Kept as one string of names (100,000 paths would be 100,000
/// allocations and ten megabytes).
#[derive(Debug)]
pub struct ClientFiles {
    dir: PathBuf,
    names: String,
    /// Where each name is in `names`, in sorted order.
    spans: Vec<(u32, u32)>,
}

impl ClientFiles {
    /// Lists `dir`. Hidden files and other names are ignored (editors and
    /// `knock-keygen` write temporary files there).
    pub fn list(dir: &Path) -> Result<Self, FileError> {
        let read_err = |source| FileError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut names = String::new();
        let mut spans = Vec::new();
        for item in std::fs::read_dir(dir).map_err(read_err)? {
            let item = item.map_err(read_err)?;
            let file_name = item.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            // The directory entry's type needs no stat; a link is followed.
            let is_file = match item.file_type() {
                Ok(kind) if kind.is_file() => true,
                Ok(kind) if kind.is_symlink() => item.path().is_file(),
                _ => false,
            };
            if !is_file {
                continue;
            }
            let start = u32::try_from(names.len()).unwrap_or(u32::MAX);
            names.push_str(name);
            let end = u32::try_from(names.len()).unwrap_or(u32::MAX);
            spans.push((start, end));
        }
        let name_of = |&(start, end): &(u32, u32)| names.get(start as usize..end as usize);
        spans.sort_unstable_by(|a, b| name_of(a).cmp(&name_of(b)));
        Ok(Self {
            dir: dir.to_path_buf(),
            names,
            spans,
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The file name of the `index`th file (`NAME.toml`).
    pub fn file_name(&self, index: usize) -> &str {
        self.spans
            .get(index)
            .and_then(|&(start, end)| self.names.get(start as usize..end as usize))
            .unwrap_or_default()
    }

    /// The client name of the `index`th file.
    pub fn client_name(&self, index: usize) -> &str {
        let name = self.file_name(index);
        name.strip_suffix(".toml").unwrap_or(name)
    }

    pub fn path(&self, index: usize) -> PathBuf {
        self.dir.join(self.file_name(index))
    }

    /// Every path, in order.
    pub fn paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (0..self.len()).map(|i| self.path(i))
    }
}

/// The client files in `dir`, sorted: the names the server loads.
pub fn client_files(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    Ok(ClientFiles::list(dir)?.paths().collect())
}

#[cfg(test)]
mod tests {
    use knock_keys::secret_file::write_with_mode;
    use knock_proto::ClientPublicKey;

    use super::*;
    use crate::verify::fixtures::{client, person, public_client};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-clients-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, entry: &ClientEntry, mode: u32) {
        let path = dir.join(format!("{}.toml", entry.name));
        write_with_mode(&path, entry.to_toml().as_bytes(), mode, true).unwrap();
    }

    fn error(dir: &Path) -> String {
        load_clients_with_text(dir).unwrap_err().to_string()
    }

    #[test]
    fn shared_and_public_entries_load_side_by_side() {
        let dir = scratch("mixed");
        write(&dir, &client("alice", 1, &[22]), 0o600);
        // A public entry holds no secret: readable by anyone is fine.
        write(&dir, &public_client("bob", 2, &[22]), 0o644);
        let loaded = load_clients(&dir).unwrap();
        let modes: Vec<(&str, Mode)> = loaded.iter().map(|c| (c.name.as_str(), mode(c))).collect();
        assert_eq!(modes, [("alice", Mode::Shared), ("bob", Mode::Public)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn duplicate_keys_are_refused_naming_the_other_client() {
        let dir = scratch("twins");
        write(&dir, &client("alice", 1, &[22]), 0o600);
        write(&dir, &client("bob", 1, &[22]), 0o600);
        let err = error(&dir);
        assert!(
            err.contains("bob.toml: field `key`: same key as client \"alice\""),
            "{err}"
        );
        std::fs::remove_file(dir.join("bob.toml")).unwrap();

        write(&dir, &public_client("carol", 3, &[22]), 0o600);
        write(&dir, &public_client("dave", 3, &[22]), 0o600);
        let err = error(&dir);
        assert!(
            err.contains("dave.toml: field `public_key`: same public key (its Ed25519 part) as client \"carol\""),
            "{err}"
        );
        // Either half alone is a twin too.
        let (carol, other) = (person(3).public(), person(4).public());
        for (key, part) in [
            (
                ClientPublicKey::from_bytes(*carol.ed25519_bytes(), *other.x25519_bytes()),
                "Ed25519",
            ),
            (
                ClientPublicKey::from_bytes(*other.ed25519_bytes(), *carol.x25519_bytes()),
                "X25519",
            ),
        ] {
            let mut dave = public_client("dave", 4, &[22]);
            dave.credential = Credential::Public(key);
            write(&dir, &dave, 0o600);
            let err = error(&dir);
            assert!(
                err.contains(&format!("(its {part} part) as client \"carol\"")),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_clients_checks_the_curve_points_the_server_checks_later() {
        let dir = scratch("points");
        let mut bad = public_client("mallory", 5, &[22]);
        bad.credential = Credential::Public(ClientPublicKey::from_bytes(
            *person(5).public().ed25519_bytes(),
            [0; 32],
        ));
        write(&dir, &bad, 0o600);
        // Loading for the daemon defers the check to the pair key.
        assert_eq!(load_clients_with_text(&dir).unwrap().len(), 1);
        let err = load_clients(&dir).unwrap_err().to_string();
        assert!(err.contains("mallory.toml: field `public_key`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
