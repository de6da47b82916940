//! The state directory: the lock that makes one `knock-server run` its only
//! user, and the durable replay state, the replay guard's memory, written
//! with fsync before any grant, so a crash can never make an honoured knock
//! acceptable again.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
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

/// The replay journal's file name in the state directory.
pub const REPLAY_JOURNAL: &str = "replay.journal";
/// The largest state a journal slot holds (about 1,300 keys accepted within
/// one window); a larger one is written as a snapshot.
const JOURNAL_SLOT: usize = 64 * 1024;
/// A slot's header: magic, generation, length, digest.
const SLOT_HEADER: usize = 8 + 8 + 4 + 16;
const SLOT_MAGIC: &[u8; 8] = b"knockRJ1";
const JOURNAL_LEN: usize = 2 * (SLOT_HEADER + JOURNAL_SLOT);

/// The fast way to make the replay state durable: a file of two fixed
/// slots, its blocks allocated and written once, so that a write is one
/// `pwrite` and one `fdatasync` of blocks the file already has (no rename,
/// no directory to sync: about 0.1 ms instead of 0.5 to 2 ms). The slots
/// alternate, so a write torn by a crash leaves the previous state whole in
/// the other; a slot counts only if its digest matches.
///
/// `replay.state` stays the state of record: the server rewrites it
/// (durably, by rename) about every half second while the journal is ahead
/// of it, and at start reads it first and the journal's newest slot after it
/// (each value the most restrictive of the two). Without `replay.state` the
/// state is lost, whatever the journal holds.
#[derive(Debug)]
struct Journal {
    file: File,
    generation: u64,
}

/// The digest that makes a slot valid.
fn slot_digest(generation: u64, body: &[u8]) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"knock replay journal");
    ctx.update(&generation.to_le_bytes());
    ctx.update(&(body.len() as u64).to_le_bytes());
    ctx.update(body);
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(ctx.finish().as_ref()) {
        *o = *b;
    }
    out
}

/// The newest valid slot of a journal's bytes: (generation, state).
fn newest_slot(bytes: &[u8]) -> Option<(u64, &[u8])> {
    bytes
        .chunks(SLOT_HEADER + JOURNAL_SLOT)
        .filter_map(|slot| {
            let (header, rest) = slot.split_at_checked(SLOT_HEADER)?;
            let (magic, header) = header.split_at_checked(8)?;
            let (generation, header) = header.split_at_checked(8)?;
            let (length, digest) = header.split_at_checked(4)?;
            if magic != SLOT_MAGIC {
                return None;
            }
            let generation = u64::from_le_bytes(generation.try_into().ok()?);
            let length = u32::from_le_bytes(length.try_into().ok()?) as usize;
            let body = rest.get(..length)?;
            (slot_digest(generation, body) == digest).then_some((generation, body))
        })
        .max_by_key(|(generation, _)| *generation)
}

impl Journal {
    /// The journal of `dir`, created (and its blocks written) if needed.
    fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(REPLAY_JOURNAL);
        let result = (|| {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            if bytes.len() != JOURNAL_LEN {
                file.set_len(0)?;
                file.write_all_at(&vec![0u8; JOURNAL_LEN], 0)?;
                file.sync_all()?;
                File::open(dir)?.sync_all()?;
                bytes.clear();
            }
            let generation = newest_slot(&bytes).map_or(0, |(g, _)| g);
            Ok(Self { file, generation })
        })();
        if result.is_err() {
            // A journal that could not be made whole is not left behind.
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Writes `encoded` into the older slot and makes it durable; `false`
    /// (nothing written) if it does not fit.
    fn write(&mut self, encoded: &[u8]) -> io::Result<bool> {
        if encoded.len() > JOURNAL_SLOT {
            return Ok(false);
        }
        let generation = self.generation + 1;
        let mut slot = Vec::with_capacity(SLOT_HEADER + encoded.len());
        slot.extend_from_slice(SLOT_MAGIC);
        slot.extend_from_slice(&generation.to_le_bytes());
        slot.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        slot.extend_from_slice(&slot_digest(generation, encoded));
        slot.extend_from_slice(encoded);
        let offset = (generation % 2) * (SLOT_HEADER + JOURNAL_SLOT) as u64;
        self.file.write_all_at(&slot, offset)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(true)
    }
}

/// `state_dir/replay.state` and its journal, used under the state
/// directory's lock.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    lock: StateLock,
    journal: Option<Journal>,
    /// The journal holds a newer state than `replay.state`.
    snapshot_behind: bool,
    /// Every snapshot gets the next number; one is written only if no
    /// later one was (the writer beside the loop and the loop's own writes
    /// share this, the number last written).
    snapshots: u64,
    written: Arc<Mutex<u64>>,
    beside: Option<SnapshotWriter>,
}

/// The thread that rewrites `replay.state` beside the loop.
#[derive(Debug)]
struct SnapshotWriter {
    queue: mpsc::Sender<(u64, Vec<u8>)>,
    thread: std::thread::JoinHandle<()>,
}

/// Writes snapshot `number` unless a later one was written first.
fn write_numbered(dir: &Path, written: &Mutex<u64>, number: u64, encoded: &[u8]) -> io::Result<()> {
    let mut last = written.lock().unwrap_or_else(|p| p.into_inner());
    if *last >= number {
        return Ok(());
    }
    replace_file(dir, REPLAY_STATE, encoded, Sync::Durable)?;
    *last = number;
    Ok(())
}

impl StateFile {
    /// The replay state of the locked state directory; holding `lock` for
    /// as long as the state is used.
    pub fn open(lock: StateLock) -> Self {
        Self {
            path: lock.dir().join(REPLAY_STATE),
            lock,
            journal: None,
            snapshot_behind: false,
            snapshots: 0,
            written: Arc::new(Mutex::new(0)),
            beside: None,
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
        let mut bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok((
                    ReplayGuard::after_state_loss(window_ms, now_ms, floor),
                    Restored::Missing,
                ))
            }
            Err(err) => return Err(err),
        };
        // The journal's newest state, if any, after the snapshot's lines.
        if let Ok(journal) = fs::read(self.dir().join(REPLAY_JOURNAL)) {
            if let Some((_, state)) = newest_slot(&journal) {
                bytes.push(b'\n');
                bytes.extend(
                    state
                        .split(|&b| b == b'\n')
                        .skip(1)
                        .flat_map(|line| line.iter().copied().chain(std::iter::once(b'\n'))),
                );
            }
        }
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

    /// Opens (or creates) the journal, so that later writes take the fast
    /// path. Without it every write is a snapshot: correct, slower.
    pub fn open_journal(&mut self) -> io::Result<()> {
        self.journal = Some(Journal::open(self.lock.dir())?);
        Ok(())
    }

    /// Rewrites `replay.state` with `encoded`, durably, now.
    pub fn write_snapshot(&mut self, encoded: &[u8]) -> io::Result<()> {
        self.snapshots += 1;
        write_numbered(self.lock.dir(), &self.written, self.snapshots, encoded)?;
        self.snapshot_behind = false;
        Ok(())
    }

    /// Has `replay.state` rewritten with `encoded` by a thread beside the
    /// loop (a rename and two fsyncs can take 10 ms on a slow disk): what the
    /// loop does after the journal has made grants durable. A failure is
    /// logged there, once until a write succeeds again; the journal holds
    /// the state meanwhile.
    pub fn snapshot_beside(&mut self, encoded: Vec<u8>) {
        self.snapshots += 1;
        let number = self.snapshots;
        if self.beside.is_none() {
            self.beside = self.spawn_writer();
        }
        let unsent = match &self.beside {
            Some(writer) => writer.queue.send((number, encoded)).err().map(|e| e.0 .1),
            None => Some(encoded),
        };
        // Without a thread: on the loop, slower, as correct.
        if let Some(encoded) = unsent {
            if let Err(err) = write_numbered(self.lock.dir(), &self.written, number, &encoded) {
                tracing::warn!("cannot rewrite {}: {err}", self.path.display());
            }
        }
        self.snapshot_behind = false;
    }

    fn spawn_writer(&self) -> Option<SnapshotWriter> {
        let (queue, jobs) = mpsc::channel::<(u64, Vec<u8>)>();
        let dir = self.lock.dir().to_path_buf();
        let written = Arc::clone(&self.written);
        let thread = std::thread::Builder::new()
            .name("replay-snapshot".into())
            .spawn(move || {
                let mut failing = false;
                while let Ok((mut number, mut encoded)) = jobs.recv() {
                    // Only the newest of those queued is worth writing.
                    while let Ok((n, e)) = jobs.try_recv() {
                        (number, encoded) = (n, e);
                    }
                    match write_numbered(&dir, &written, number, &encoded) {
                        Ok(()) => failing = false,
                        Err(err) if !failing => {
                            tracing::warn!(
                                "cannot rewrite {}: {err}; grants stay durable in the replay journal",
                                dir.join(REPLAY_STATE).display()
                            );
                            failing = true;
                        }
                        Err(_) => {}
                    }
                }
            })
            .ok()?;
        Some(SnapshotWriter { queue, thread })
    }

    /// Is the journal ahead of `replay.state`?
    pub fn snapshot_behind(&self) -> bool {
        self.snapshot_behind
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

impl Drop for StateFile {
    /// Lets the snapshot writer finish what it was given.
    fn drop(&mut self) {
        if let Some(SnapshotWriter { queue, thread }) = self.beside.take() {
            drop(queue);
            let _ = thread.join();
        }
    }
}

impl ReplayStore for StateFile {
    /// The journal when it is there and the state fits, else a snapshot.
    /// A journal that fails is given up for this run: a snapshot is tried
    /// at once, and a grant waits for one of them.
    fn persist(&mut self, encoded: &[u8]) -> io::Result<()> {
        if let Some(journal) = self.journal.as_mut() {
            match journal.write(encoded) {
                Ok(true) => {
                    self.snapshot_behind = true;
                    return Ok(());
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(
                        "replay journal {}: {err}; from now on each grant waits for a rewrite of {} instead (slower, as safe)",
                        self.lock.dir().join(REPLAY_JOURNAL).display(),
                        self.path.display()
                    );
                    self.journal = None;
                }
            }
        }
        self.write_snapshot(encoded)
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

    /// The journal makes each state durable without touching
    /// `replay.state`; at start the newest of the two counts, a torn slot
    /// falls back to the other, and without `replay.state` the state is
    /// lost whatever the journal holds.
    #[test]
    fn the_journal_is_read_back_after_its_snapshot() {
        let dir = scratch("journal");
        let (a, b) = (
            knock_proto::ReplayId([1; 16]),
            knock_proto::ReplayId([2; 16]),
        );
        let mut store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let mut guard = ReplayGuard::first_start(30_000, 1_000);
        store.write_snapshot(&guard.encode()).unwrap();
        let snapshot = fs::read(store.path()).unwrap();
        store.open_journal().unwrap();
        assert_eq!(
            fs::metadata(dir.join(REPLAY_JOURNAL))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        for (key, at) in [(a, 5_000), (b, 6_000), (a, 7_000)] {
            let fresh = guard.check(key, at, at).unwrap();
            guard.commit(fresh, at);
            store.persist(&guard.encode()).unwrap();
        }
        assert!(store.snapshot_behind());
        assert_eq!(
            fs::read(store.path()).unwrap(),
            snapshot,
            "snapshot untouched"
        );
        drop(store);

        let store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let (restored, _) = store.load_guard(30_000, 8_000).unwrap();
        assert!(restored.check(a, 7_000, 8_000).is_err(), "replay");
        assert!(restored.check(b, 6_000, 8_000).is_err(), "replay");
        assert!(restored.check(a, 7_001, 8_000).is_ok());
        // Tear the newest slot (generation 3, slot 1): the previous state
        // (a at 5 s, b at 6 s) is read instead.
        let journal = dir.join(REPLAY_JOURNAL);
        let mut bytes = fs::read(&journal).unwrap();
        let newest = SLOT_HEADER + JOURNAL_SLOT + SLOT_HEADER + 3;
        bytes[newest] ^= 0xff;
        fs::write(&journal, &bytes).unwrap();
        let (restored, _) = store.load_guard(30_000, 8_000).unwrap();
        assert!(restored.check(a, 5_000, 8_000).is_err());
        assert!(
            restored.check(a, 6_000, 8_000).is_ok(),
            "the torn slot is ignored"
        );
        assert!(restored.check(b, 6_000, 8_000).is_err());
        // Without the snapshot, the state is lost.
        fs::remove_file(store.path()).unwrap();
        let (_, restored) = store.load_guard(30_000, 8_000).unwrap();
        assert!(matches!(restored, Restored::Missing));
        fs::remove_dir_all(dir).unwrap();
    }

    /// Snapshots written beside the loop never overwrite a later one
    /// written on it.
    #[test]
    fn a_later_snapshot_always_wins() {
        let dir = scratch("snapshots");
        let mut store = StateFile::open(StateLock::acquire(&dir).unwrap());
        store.snapshot_beside(b"knock-replay-state v2\nfloor 1\n".to_vec());
        store
            .write_snapshot(b"knock-replay-state v2\nfloor 2\n")
            .unwrap();
        // An older one arriving late is skipped.
        write_numbered(&dir, &store.written, 1, b"knock-replay-state v2\nfloor 1\n").unwrap();
        assert_eq!(
            fs::read(store.path()).unwrap(),
            b"knock-replay-state v2\nfloor 2\n"
        );
        store.snapshot_beside(b"knock-replay-state v2\nfloor 3\n".to_vec());
        drop(store);
        assert_eq!(
            fs::read(dir.join(REPLAY_STATE)).unwrap(),
            b"knock-replay-state v2\nfloor 3\n"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_state_too_big_for_the_journal_is_a_snapshot() {
        let dir = scratch("journal-big");
        let mut store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let mut guard = ReplayGuard::first_start(30_000, 1_000);
        store.write_snapshot(&guard.encode()).unwrap();
        store.open_journal().unwrap();
        for n in 0..2_000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_le_bytes());
            let fresh = guard
                .check(knock_proto::ReplayId(id), 5_000, 5_000)
                .unwrap();
            guard.commit(fresh, 5_000);
        }
        let encoded = guard.encode();
        assert!(encoded.len() > JOURNAL_SLOT);
        store.persist(&encoded).unwrap();
        assert!(!store.snapshot_behind());
        assert_eq!(fs::read(store.path()).unwrap(), encoded);
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
