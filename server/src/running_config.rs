//! What the running server loaded: its configuration and clients, checked,
//! with the exact text of every file.
//!
//! The daemon records that text in `<state_dir>/running-config` each time it
//! loads (at start and at every reload that succeeds). `knock-server apply`
//! reads the record before it asks the server to load what is on disk, so
//! that an unconfirmed change can be undone file by file, even though the
//! operator edited the files in place. The record holds client keys: it is
//! written 0600 in the state directory, like the replay state.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use knock_keys::config::ServerConfig;
use knock_keys::entry::ClientEntry;
use knock_keys::secret_file::{read_config, write_private, write_with_mode};
use knock_keys::FileError;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::clients::{client_files, load_clients_with_text};
use crate::state::{replace_file, Sync};

/// The record's name in the state directory.
pub const FILE_NAME: &str = "running-config";
/// The version of the record's layout.
const FORMAT: i64 = 1;
/// What an unconfirmed version of a file is renamed to, beside it.
const SET_ASIDE: &str = "unconfirmed";

/// A configuration and its clients, checked, as read from disk.
#[derive(Debug)]
pub struct Loaded {
    pub config: ServerConfig,
    pub clients: Vec<ClientEntry>,
    pub files: ConfigFiles,
}

impl Loaded {
    /// Reads and checks `config_path` and every client in its `clients_dir`.
    pub fn from_disk(config_path: &Path) -> Result<Self, FileError> {
        let text = read_config(config_path)?;
        let config = ServerConfig::parse(config_path, &text)?;
        let mut clients = Vec::new();
        let mut texts = BTreeMap::new();
        for (entry, client_text) in load_clients_with_text(&config.clients_dir)? {
            texts.insert(format!("{}.toml", entry.name), client_text);
            clients.push(entry);
        }
        let files = ConfigFiles {
            config_path: config_path.to_path_buf(),
            config: text,
            clients_dir: config.clients_dir.clone(),
            clients: texts,
        };
        Ok(Self {
            config,
            clients,
            files,
        })
    }
}

/// The record of what the server runs, written while the files are read
/// (one client's text at a time, never all of them in memory) into a
/// temporary file that [`PendingRecord::commit`] puts in place once the
/// server runs it. The layout is the one [`ConfigFiles::save`] writes.
#[derive(Debug)]
pub struct RecordWriter {
    file: fs::File,
    /// Written out in 64 KiB pieces; it holds client keys, so it is wiped
    /// (a `BufWriter` would not be).
    buffer: Zeroizing<Vec<u8>>,
    pending: PendingRecord,
}

const RECORD_BUFFER: usize = 64 * 1024;

/// A record written whole and made durable, not yet the record: dropped
/// without [`Self::commit`], it is deleted.
#[derive(Debug)]
pub struct PendingRecord {
    temp: PathBuf,
    dir: PathBuf,
    committed: bool,
}

/// A string as a TOML value (quoted and escaped).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn toml_path(path: &Path) -> io::Result<String> {
    path.to_str().map(toml_string).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8", path.display()),
        )
    })
}

impl RecordWriter {
    /// Starts the record of `config_text` (read from `config_path`),
    /// loaded at `loaded_at` (Unix seconds), in `state_dir`.
    pub fn create(
        state_dir: &Path,
        loaded_at: u64,
        config_path: &Path,
        config_text: &str,
        clients_dir: &Path,
    ) -> io::Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let temp = state_dir.join(format!(".{FILE_NAME}.{}.new", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        let pending = PendingRecord {
            temp,
            dir: state_dir.to_path_buf(),
            committed: false,
        };
        let mut writer = Self {
            file,
            buffer: Zeroizing::new(Vec::with_capacity(RECORD_BUFFER * 2)),
            pending,
        };
        write!(
            writer.buffer,
            "# What knock-server runs, file by file; `knock-server apply` restores it if a change is not confirmed.\n\
             format = {FORMAT}\nloaded_at = {loaded_at}\n\n[files]\nconfig_path = {}\nconfig = {}\nclients_dir = {}\n\n[files.clients]\n",
            toml_path(config_path)?,
            Zeroizing::new(toml_string(config_text)).as_str(),
            toml_path(clients_dir)?,
        )?;
        Ok(writer)
    }

    /// Adds the client `name` (its file `name.toml`), whose file holds
    /// `text`.
    pub fn client(&mut self, name: &str, text: &str) -> io::Result<()> {
        use std::io::Write as _;
        let value = Zeroizing::new(toml_string(text));
        writeln!(
            self.buffer,
            "{} = {}",
            toml_string(&format!("{name}.toml")),
            value.as_str()
        )?;
        if self.buffer.len() >= RECORD_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        use std::io::Write as _;
        self.file.write_all(&self.buffer)?;
        // Wipes what was written; the capacity stays.
        self.buffer.iter_mut().for_each(|b| *b = 0);
        self.buffer.clear();
        Ok(())
    }

    /// Writes out and makes durable the whole record.
    pub fn finish(mut self) -> io::Result<PendingRecord> {
        self.flush()?;
        self.file.sync_all()?;
        Ok(self.pending)
    }
}

impl PendingRecord {
    /// Makes this the record of what the server runs.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.temp, path(&self.dir))?;
        self.committed = true;
        fs::File::open(&self.dir)?.sync_all()
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// The text of a configuration file and of each client file in its
/// `clients_dir`, by file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFiles {
    pub config_path: PathBuf,
    pub config: Zeroizing<String>,
    pub clients_dir: PathBuf,
    pub clients: BTreeMap<String, Zeroizing<String>>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    format: i64,
    /// Unix seconds.
    loaded_at: u64,
    files: ConfigFiles,
}

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("{path}: cannot read it: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a record of the running configuration: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("{path}: cannot write it: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Where the daemon records what it runs.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

impl ConfigFiles {
    /// Records these files as what the server runs since `loaded_at`.
    pub fn save(&self, state_dir: &Path, loaded_at: u64) -> Result<(), RecordError> {
        let record = Record {
            format: FORMAT,
            loaded_at,
            files: self.clone(),
        };
        let text = toml::to_string(&record).map_err(|e| RecordError::Write {
            path: path(state_dir),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        let text = Zeroizing::new(format!(
            "# What knock-server runs, file by file; `knock-server apply` restores it if a change is not confirmed.\n{text}"
        ));
        replace_file(state_dir, FILE_NAME, text.as_bytes(), Sync::Durable).map_err(|source| {
            RecordError::Write {
                path: path(state_dir),
                source,
            }
        })
    }

    /// What the server recorded last, with when it loaded it; `None` if it
    /// recorded nothing.
    pub fn recorded(state_dir: &Path) -> Result<Option<(Self, u64)>, RecordError> {
        let path = path(state_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => Zeroizing::new(text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        let record: Record = toml::from_str(&text).map_err(|e| RecordError::Unreadable {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
        if record.format != FORMAT {
            return Err(RecordError::Unreadable {
                path,
                message: format!("format {} is not {FORMAT}", record.format),
            });
        }
        Ok(Some((record.files, record.loaded_at)))
    }

    /// Forgets the record: nothing is known to be running (a record that
    /// could not be rewritten must not be taken for the present one).
    pub fn forget(state_dir: &Path) -> io::Result<()> {
        match fs::remove_file(path(state_dir)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// What changes from `self` to `after`, one phrase each.
    pub fn changes_to(&self, after: &Self) -> Vec<String> {
        let mut changes = Vec::new();
        if self.config_path != after.config_path {
            changes.push(format!(
                "configuration file {} instead of {}",
                after.config_path.display(),
                self.config_path.display()
            ));
        } else if self.config != after.config {
            changes.push(format!("{} changed", self.config_path.display()));
        }
        if self.clients_dir != after.clients_dir {
            changes.push(format!(
                "clients from {} instead of {}",
                after.clients_dir.display(),
                self.clients_dir.display()
            ));
        }
        for (file, text) in &after.clients {
            match self.clients.get(file) {
                None => changes.push(format!("client {} added", client_name(file))),
                Some(before) if before != text => {
                    changes.push(format!("client {} changed", client_name(file)))
                }
                Some(_) => {}
            }
        }
        for file in self.clients.keys() {
            if !after.clients.contains_key(file) {
                changes.push(format!("client {} removed", client_name(file)));
            }
        }
        changes
    }

    /// Puts the configuration file and the client files back as they are
    /// recorded here. What is on disk in their place is not lost: a file that
    /// differs is set aside beside it (`server.toml.unconfirmed`,
    /// `clients.d/.NAME.toml.unconfirmed`, which the server ignores). Returns
    /// what it did.
    pub fn restore(&self) -> Result<Vec<Undone>, FileError> {
        let mut done = Vec::new();
        let config_mode = mode_of(&self.config_path).unwrap_or(0o644);
        if let Some(now) = read_if_present(&self.config_path)? {
            if now != self.config {
                let aside = set_aside_path(&self.config_path, false);
                write_with_mode(&aside, now.as_bytes(), config_mode, true)?;
                write_with_mode(&self.config_path, self.config.as_bytes(), config_mode, true)?;
                done.push(Undone::new(
                    format!("{} restored", self.config_path.display()),
                    Some(aside),
                ));
            }
        } else {
            write_with_mode(&self.config_path, self.config.as_bytes(), config_mode, true)?;
            done.push(Undone::new(
                format!("{} restored", self.config_path.display()),
                None,
            ));
        }

        knock_keys::secret_file::ensure_private_dir(&self.clients_dir)?;
        for path in client_files(&self.clients_dir)? {
            let file = file_name(&path);
            if !self.clients.contains_key(&file) {
                let aside = set_aside_path(&path, true);
                fs::rename(&path, &aside).map_err(|source| FileError::Write {
                    path: path.clone(),
                    source,
                })?;
                done.push(Undone::new(
                    format!("client {} removed", client_name(&file)),
                    Some(aside),
                ));
            }
        }
        for (file, text) in &self.clients {
            let path = self.clients_dir.join(file);
            match read_if_present(&path)? {
                Some(now) if now == *text => continue,
                Some(now) => {
                    let aside = set_aside_path(&path, true);
                    write_private(&aside, now.as_bytes(), true)?;
                    write_private(&path, text.as_bytes(), true)?;
                    done.push(Undone::new(
                        format!("client {} restored", client_name(file)),
                        Some(aside),
                    ));
                }
                None => {
                    write_private(&path, text.as_bytes(), true)?;
                    done.push(Undone::new(
                        format!("client {} restored", client_name(file)),
                        None,
                    ));
                }
            }
        }
        Ok(done)
    }
}

/// One file put back by [`ConfigFiles::restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undone {
    /// `client alice restored`, `/etc/knock/server.toml restored`, ...
    pub what: String,
    /// Where the version it replaced was kept, if there was one.
    pub kept_as: Option<PathBuf>,
}

impl Undone {
    fn new(what: String, kept_as: Option<PathBuf>) -> Self {
        Self { what, kept_as }
    }
}

impl std::fmt::Display for Undone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kept_as {
            Some(aside) => write!(
                f,
                "{} (the unconfirmed version is kept as {})",
                self.what,
                aside.display()
            ),
            None => f.write_str(&self.what),
        }
    }
}

fn client_name(file: &str) -> &str {
    file.strip_suffix(".toml").unwrap_or(file)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `server.toml.unconfirmed`, or `.NAME.toml.unconfirmed` for a client file
/// (hidden, so the server never loads it).
fn set_aside_path(path: &Path, hidden: bool) -> PathBuf {
    let name = file_name(path);
    let aside = if hidden {
        format!(".{name}.{SET_ASIDE}")
    } else {
        format!("{name}.{SET_ASIDE}")
    };
    path.with_file_name(aside)
}

fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

fn read_if_present(path: &Path) -> Result<Option<Zeroizing<String>>, FileError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(Zeroizing::new(text))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-running-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("clients.d")).unwrap();
        dir
    }

    fn files(dir: &Path, config: &str, clients: &[(&str, &str)]) -> ConfigFiles {
        ConfigFiles {
            config_path: dir.join("server.toml"),
            config: Zeroizing::new(config.to_owned()),
            clients_dir: dir.join("clients.d"),
            clients: clients
                .iter()
                .map(|(f, t)| ((*f).to_owned(), Zeroizing::new((*t).to_owned())))
                .collect(),
        }
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_record_reads_back_exactly() {
        let dir = scratch("record");
        assert!(ConfigFiles::recorded(&dir).unwrap().is_none());
        let before = files(
            &dir,
            "knock_port = 1\n# \"quoted\" and '''tripled'''\n",
            &[("alice.toml", "key = \"x\"\nports = [\"tcp/22\"]\n")],
        );
        before.save(&dir, 1_700_000_000).unwrap();
        let mode = fs::metadata(path(&dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the record holds keys");
        let (read, at) = ConfigFiles::recorded(&dir).unwrap().unwrap();
        assert_eq!(read, before);
        assert_eq!(at, 1_700_000_000);
        fs::write(path(&dir), "format = 7\n").unwrap();
        assert!(ConfigFiles::recorded(&dir).is_err());
        ConfigFiles::forget(&dir).unwrap();
        ConfigFiles::forget(&dir).unwrap();
        assert!(ConfigFiles::recorded(&dir).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_are_named_file_by_file() {
        let dir = scratch("changes");
        let before = files(&dir, "a", &[("alice.toml", "1"), ("carol.toml", "3")]);
        let after = files(&dir, "b", &[("alice.toml", "1b"), ("bob.toml", "2")]);
        assert_eq!(
            before.changes_to(&after),
            [
                format!("{} changed", dir.join("server.toml").display()),
                "client alice changed".to_owned(),
                "client bob added".to_owned(),
                "client carol removed".to_owned(),
            ]
        );
        assert!(before.changes_to(&before).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn restore_puts_every_file_back_and_keeps_what_it_replaces() {
        let dir = scratch("restore");
        let clients = dir.join("clients.d");
        let before = files(
            &dir,
            "old config\n",
            &[
                ("alice.toml", "alice old\n"),
                ("carol.toml", "carol\n"),
                ("dave.toml", "dave\n"),
            ],
        );
        // The unconfirmed change: server.toml and alice edited, bob added,
        // carol deleted, dave untouched.
        write(&dir.join("server.toml"), "new config\n", 0o640);
        write(&clients.join("alice.toml"), "alice new\n", 0o600);
        write(&clients.join("bob.toml"), "bob\n", 0o600);
        write(&clients.join("dave.toml"), "dave\n", 0o600);
        write(&clients.join(".editor.swp"), "x", 0o600);

        let done = before.restore().unwrap();
        let said: Vec<String> = done.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                format!(
                    "{} restored (the unconfirmed version is kept as {})",
                    dir.join("server.toml").display(),
                    dir.join("server.toml.unconfirmed").display()
                ),
                format!(
                    "client bob removed (the unconfirmed version is kept as {})",
                    clients.join(".bob.toml.unconfirmed").display()
                ),
                format!(
                    "client alice restored (the unconfirmed version is kept as {})",
                    clients.join(".alice.toml.unconfirmed").display()
                ),
                "client carol restored".to_owned(),
            ]
        );

        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&dir.join("server.toml")), "old config\n");
        assert_eq!(read(&dir.join("server.toml.unconfirmed")), "new config\n");
        assert_eq!(mode_of(&dir.join("server.toml")), Some(0o640), "mode kept");
        assert_eq!(read(&clients.join("alice.toml")), "alice old\n");
        assert_eq!(
            read(&clients.join(".alice.toml.unconfirmed")),
            "alice new\n"
        );
        assert_eq!(read(&clients.join(".bob.toml.unconfirmed")), "bob\n");
        assert_eq!(read(&clients.join("carol.toml")), "carol\n");
        for file in ["alice.toml", "carol.toml", ".alice.toml.unconfirmed"] {
            assert_eq!(mode_of(&clients.join(file)), Some(0o600), "{file}");
        }
        assert_eq!(
            listing(&clients),
            [
                ".alice.toml.unconfirmed",
                ".bob.toml.unconfirmed",
                ".editor.swp",
                "alice.toml",
                "carol.toml",
                "dave.toml"
            ]
        );
        // What the server loads is exactly the record again.
        let names: Vec<String> = client_files(&clients)
            .unwrap()
            .iter()
            .map(|p| file_name(p))
            .collect();
        assert_eq!(names, ["alice.toml", "carol.toml", "dave.toml"]);
        assert!(
            before.restore().unwrap().is_empty(),
            "a second restore has nothing to do"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
