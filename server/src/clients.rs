//! The authorised clients: one file each in `clients_dir`.

use std::path::Path;

use knock_keys::entry::ClientEntry;
use knock_keys::FileError;

/// Loads every `*.toml` in `dir`. Hidden files and other names are ignored
/// (editors and `knock-keygen` write temporary files there). Any bad file is
/// an error: a half-loaded client list is worse than keeping the old one.
pub fn load_clients(dir: &Path) -> Result<Vec<ClientEntry>, FileError> {
    let read_err = |source| FileError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for item in std::fs::read_dir(dir).map_err(read_err)? {
        let path = item.map_err(read_err)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".toml") || !path.is_file() {
            continue;
        }
        paths.push(path);
    }
    paths.sort();
    let mut clients: Vec<ClientEntry> = Vec::with_capacity(paths.len());
    for path in paths {
        let entry = ClientEntry::load(&path)?;
        if let Some(twin) = clients.iter().find(|c| c.secret == entry.secret) {
            return Err(FileError::Field {
                path,
                field: "key",
                message: format!(
                    "same key as client {:?}; every client needs its own (knock-keygen --force)",
                    twin.name
                ),
            });
        }
        clients.push(entry);
    }
    Ok(clients)
}
