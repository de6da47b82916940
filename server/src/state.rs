//! The state directory: the lock that makes one `knock-server run` its only
//! user, and the durable replay state, the replay guard's memory, written
//! with fsync before any grant, so a crash can never make an honoured knock
//! acceptable again.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use knock_proto::{ReplayGuard, StateDecodeError};
use thiserror::Error;

/// The lock file in the state directory; it holds the holder's PID.
pub const LOCK_FILE: &str = "lock";

/// Why the state directory cannot be ours.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another process holds the lock: two servers on one replay state
    /// would each accept a knock the other has already honoured.
    #[error(
        "state_dir {dir} is in use by another knock-server (pid {holder}); stop that one first, \
         or give this one its own state_dir"
    )]
    Held { dir: PathBuf, holder: Holder },
    #[error("cannot use state_dir {dir}: {doing}: {source}")]
    Io {
        dir: PathBuf,
        doing: &'static str,
        source: io::Error,
    },
}

/// The process named in a held lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Pid(u32),
    /// The holder has not written its PID (yet), or wrote garbage.
    Unknown,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Pid(pid) => write!(f, "{pid}"),
            Holder::Unknown => f.write_str("unknown"),
        }
    }
}

/// An exclusive lock on `state_dir/lock`, held until dropped (the kernel
/// releases it when the process ends, however it ends, so a crash never
/// leaves a stale lock behind).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    dir: PathBuf,
}

impl StateLock {
    /// Creates `state_dir` (0700) if needed and locks it, or says who holds
    /// it. Never waits.
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let io = |doing| {
            let dir = state_dir.to_path_buf();
            move |source| LockError::Io { dir, doing, source }
        };
        if !state_dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(io("creating it"))?;
        }
        // Not truncated on open: until we hold the lock, the PID in it is
        // the holder's, which a refused process reads.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(state_dir.join(LOCK_FILE))
            .map_err(io("opening the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: state_dir.to_path_buf(),
                    holder: read_holder(&mut file),
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(io("locking the lock file")(source));
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io("writing our PID to the lock file"))?;
        Ok(Self {
            _file: file,
            dir: state_dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The PID in a lock file someone else holds. The holder writes it right
/// after locking, so an empty file is given a few moments before we give up.
fn read_holder(file: &mut File) -> Holder {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(pid) = text.trim().parse() {
                return Holder::Pid(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Holder::Unknown
}

/// Whether a replaced file must survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync of the file and of its directory before returning: for what
    /// a grant or the next boot relies on.
    Durable,
    /// No fsync: a file that is rewritten every few seconds and only
    /// informs (a crash may leave it stale, never partial).
    Advisory,
}

/// Replaces `dir/name` with `contents` atomically (a reader sees the old
/// file or the new one, never a part): a private (0600) temporary file of
/// this process alone, renamed over the old one; with [`Sync::Durable`],
/// fsynced before and after the rename. On failure no temporary file is
/// left behind.
pub fn replace_file(dir: &Path, name: &str, contents: &[u8], sync: Sync) -> io::Result<()> {
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let durable = sync == Sync::Durable;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&temp, dir.join(name))?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Where replay state is made durable. A trait so the pipeline's unit tests
/// can inject a full disk.
pub trait ReplayStore {
    /// Replaces the stored state with `encoded`, durably, or fails.
    fn persist(&mut self, encoded: &[u8]) -> io::Result<()>;
}

/// What was found on disk at start.
#[derive(Debug)]
pub enum Restored {
    /// The state of the previous run (or the initial state knock-keygen
    /// wrote), with this many keys remembered.
    Previous(usize),
    /// No state file: the state directory was lost (a first start finds
    /// the state knock-keygen wrote).
    Missing,
    /// Unreadable state: set aside as `*.corrupt`, started without it.
    Corrupt(StateDecodeError),
}

/// The replay state's file name in the state directory.
pub const REPLAY_STATE: &str = "replay.state";
/// The floor (the highest time the guard has seen), rewritten often and
/// without fsync beside the durable state: it survives the loss of
/// `replay.state` alone, and is newer than the floor in it.
const FLOOR: &str = "floor";

/// `state_dir/replay.state`, used under the state directory's lock.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    lock: StateLock,
}

impl StateFile {
    /// The replay state of the locked state directory; holding `lock` for
    /// as long as the state is used.
    pub fn open(lock: StateLock) -> Self {
        Self {
            path: lock.dir().join(REPLAY_STATE),
            lock,
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.lock.dir()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The replay guard at `now_ms`: restored from disk where possible.
    /// Without a readable state, the guard refuses for one window every
    /// knock that an earlier process could have honoured.
    pub fn load_guard(&self, window_ms: u64, now_ms: u64) -> io::Result<(ReplayGuard, Restored)> {
        let floor = self.recorded_floor();
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok((
                    ReplayGuard::after_state_loss(window_ms, now_ms, floor),
                    Restored::Missing,
                ))
            }
            Err(err) => return Err(err),
        };
        match ReplayGuard::restore(window_ms, now_ms, &bytes, floor) {
            Ok(guard) => {
                let count = guard.len();
                Ok((guard, Restored::Previous(count)))
            }
            Err(err) => {
                let _ = fs::rename(&self.path, self.path.with_extension("corrupt"));
                Ok((
                    ReplayGuard::after_state_loss(window_ms, now_ms, floor),
                    Restored::Corrupt(err),
                ))
            }
        }
    }

    /// The floor file's value, if it holds one.
    fn recorded_floor(&self) -> Option<u64> {
        fs::read_to_string(self.lock.dir().join(FLOOR))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records the guard's floor, cheaply (no fsync): called often.
    pub fn record_floor(&self, floor_ms: u64) -> io::Result<()> {
        replace_file(
            self.lock.dir(),
            FLOOR,
            format!("{floor_ms}\n").as_bytes(),
            Sync::Advisory,
        )
    }
}

impl ReplayStore for StateFile {
    fn persist(&mut self, encoded: &[u8]) -> io::Result<()> {
        replace_file(self.lock.dir(), REPLAY_STATE, encoded, Sync::Durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn persists_and_restores() {
        let dir = scratch("state");
        let mut store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let key = knock_proto::ReplayId([1; 16]);
        let (guard, restored) = store.load_guard(30_000, 1_000).unwrap();
        assert!(matches!(restored, Restored::Missing));
        assert!(
            guard.check(key, 5_000, 5_000).is_err(),
            "one window refused"
        );
        let mut guard = ReplayGuard::first_start(30_000, 1_000);
        let fresh = guard.check(key, 5_000, 5_000).unwrap();
        guard.commit(fresh, 5_000);
        store.persist(&guard.encode()).unwrap();
        let (again, restored) = store.load_guard(30_000, 1_000).unwrap();
        assert!(matches!(restored, Restored::Previous(1)));
        assert!(again.check(key, 5_000, 5_000).is_err());
        assert!(again.check(key, 5_001, 5_001).is_ok());
        // A newer floor beside the state counts.
        store.record_floor(100_000).unwrap();
        let (again, _) = store.load_guard(30_000, 1_000).unwrap();
        assert_eq!(again.floor_ms(), 100_000);
        fs::write(store.path(), b"garbage").unwrap();
        let (lost, restored) = store.load_guard(30_000, 1_000).unwrap();
        assert!(matches!(restored, Restored::Corrupt(_)));
        assert!(dir.join("replay.corrupt").exists());
        assert_eq!(lost.refused_through_ms(), 130_000, "from the kept floor");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn one_holder_at_a_time_named_by_pid() {
        let dir = scratch("lock").join("nested");
        let first = StateLock::acquire(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // flock locks belong to an open file, so a second open in this very
        // process is refused like another process would be.
        match StateLock::acquire(&dir) {
            Err(LockError::Held { dir: held, holder }) => {
                assert_eq!(held, dir);
                assert_eq!(holder, Holder::Pid(std::process::id()));
            }
            other => panic!("a second lock on one directory: {other:?}"),
        }
        let message = StateLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id()))
                && message.contains(&dir.display().to_string())
                && !message.contains('\n'),
            "{message}"
        );
        // Another directory is not refused while the first is held.
        let other = StateLock::acquire(&dir.with_file_name("other")).unwrap();
        drop(first);
        let again = StateLock::acquire(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop((again, other));
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn replaced_files_are_whole_private_and_leave_no_temporary() {
        let dir = scratch("replace");
        fs::create_dir_all(&dir).unwrap();
        replace_file(&dir, "x", b"one", Sync::Durable).unwrap();
        replace_file(&dir, "x", b"two", Sync::Advisory).unwrap();
        assert_eq!(fs::read(dir.join("x")).unwrap(), b"two");
        assert_eq!(
            fs::metadata(dir.join("x")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
        // A write that cannot finish (the name is taken by a directory)
        // leaves the temporary file of this process behind neither.
        fs::create_dir(dir.join("d")).unwrap();
        fs::write(dir.join("d/inside"), b"").unwrap();
        assert!(replace_file(&dir, "d", b"three", Sync::Durable).is_err());
        assert!(!dir.join(format!(".d.{}.tmp", std::process::id())).exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
