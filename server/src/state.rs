//! Durable replay state: the replay guard's memory, written with fsync before
//! any grant, so a crash can never make an honoured knock acceptable again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use knock_proto::{ReplayGuard, StateDecodeError};

/// Where replay state is made durable. A trait so the pipeline's unit tests
/// can inject a full disk.
pub trait ReplayStore {
    /// Replaces the stored state with `encoded`, durably, or fails.
    fn persist(&mut self, encoded: &[u8]) -> io::Result<()>;
}

/// What was found on disk at start.
#[derive(Debug)]
pub enum Restored {
    /// The state of the previous run, with this many clients.
    Previous(usize),
    /// No state file: first start, or the state directory was lost.
    Missing,
    /// Unreadable state: set aside as `*.corrupt`, started without it.
    Corrupt(StateDecodeError),
}

/// `state_dir/replay.state`.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    temp: PathBuf,
    dir: PathBuf,
}

impl StateFile {
    /// Uses `state_dir`, creating it (0700) if needed.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        if !state_dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)?;
        }
        Ok(Self {
            path: state_dir.join("replay.state"),
            temp: state_dir.join(".replay.state.tmp"),
            dir: state_dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The replay guard for a process that started at `started_at_ms`:
    /// restored from disk where possible. Without state, the start-time rule
    /// of the guard still refuses every knock an earlier process honoured.
    pub fn load_guard(
        &self,
        window_ms: u64,
        started_at_ms: u64,
    ) -> io::Result<(ReplayGuard, Restored)> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok((
                    ReplayGuard::new(window_ms, started_at_ms),
                    Restored::Missing,
                ))
            }
            Err(err) => return Err(err),
        };
        match ReplayGuard::restore(window_ms, started_at_ms, &bytes) {
            Ok(guard) => {
                let count = guard.len();
                Ok((guard, Restored::Previous(count)))
            }
            Err(err) => {
                let _ = fs::rename(&self.path, self.path.with_extension("corrupt"));
                Ok((
                    ReplayGuard::new(window_ms, started_at_ms),
                    Restored::Corrupt(err),
                ))
            }
        }
    }
}

impl ReplayStore for StateFile {
    fn persist(&mut self, encoded: &[u8]) -> io::Result<()> {
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.temp)?;
            file.write_all(encoded)?;
            file.sync_all()?;
            fs::rename(&self.temp, &self.path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.temp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_restores() {
        let dir = std::env::temp_dir().join(format!("knock-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut store = StateFile::open(&dir).unwrap();
        let (mut guard, restored) = store.load_guard(30_000, 1_000).unwrap();
        assert!(matches!(restored, Restored::Missing));
        let fresh = guard.check("alice", 5_000, 5_000).unwrap();
        guard.commit(fresh);
        store.persist(&guard.encode()).unwrap();
        let (again, restored) = store.load_guard(30_000, 1_000).unwrap();
        assert!(matches!(restored, Restored::Previous(1)));
        assert!(again.check("alice", 5_000, 5_000).is_err());
        fs::write(store.path(), b"garbage").unwrap();
        let (_, restored) = store.load_guard(30_000, 1_000).unwrap();
        assert!(matches!(restored, Restored::Corrupt(_)));
        assert!(dir.join("replay.corrupt").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
