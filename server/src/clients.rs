//! The authorised clients: one file each in `clients_dir`.

use std::path::{Path, PathBuf};

use knock_keys::entry::ClientEntry;
use knock_keys::FileError;
use zeroize::Zeroizing;

/// Loads every `*.toml` in `dir`. Hidden files and other names are ignored
/// (editors and `knock-keygen` write temporary files there). Any bad file is
/// an error: a half-loaded client list is worse than keeping the old one.
pub fn load_clients(dir: &Path) -> Result<Vec<ClientEntry>, FileError> {
    Ok(load_clients_with_text(dir)?
        .into_iter()
        .map(|(entry, _)| entry)
        .collect())
}

/// Like [`load_clients`], with the text of each file as it was read.
pub fn load_clients_with_text(
    dir: &Path,
) -> Result<Vec<(ClientEntry, Zeroizing<String>)>, FileError> {
    let mut clients: Vec<(ClientEntry, Zeroizing<String>)> = Vec::new();
    for path in client_files(dir)? {
        let (entry, text) = ClientEntry::load_with_text(&path)?;
        if let Some((twin, _)) = clients.iter().find(|(c, _)| c.secret == entry.secret) {
            return Err(FileError::Field {
                path,
                field: "key",
                message: format!(
                    "same key as client {:?}; every client needs its own (knock-keygen --force)",
                    twin.name
                ),
            });
        }
        clients.push((entry, text));
    }
    Ok(clients)
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
