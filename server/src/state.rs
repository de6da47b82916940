//! The state directory: the lock that makes one `knock-server run` its only
//! user, and the durable replay state, the replay guard's memory, written
//! with fsync before any grant, so a crash can never make an honoured knock
//! acceptable again.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use knock_proto::{Consumed, ReplayGuard, StateDecodeError};
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
    /// Makes durable what `guard` now remembers, `batch` being what it
    /// consumed since the last call, or fails.
    fn persist(&mut self, guard: &ReplayGuard, batch: &[Consumed]) -> io::Result<()>;
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
/// Each of the journal's two halves: about 3,500 grants made durable one
/// at a time, or 160 batches of 64.
const JOURNAL_HALF: usize = 512 * 1024;
const JOURNAL_LEN: usize = 2 * JOURNAL_HALF;
/// `replay.state` is rewritten once grants have paused this long...
pub const SNAPSHOT_QUIET: Duration = Duration::from_millis(500);
/// ...or this often while they go on.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// A record's header: magic, generation, length, digest.
const RECORD_HEADER: usize = 8 + 8 + 4 + 16;
const RECORD_MAGIC: &[u8; 8] = b"knockRJ2";

/// The fast way to make the replay state durable: a log of what each batch
/// of grants added ([`ReplayGuard::encode_delta`]: the guard's values and
/// the keys consumed), appended to a file whose blocks are allocated and
/// written once. Making a batch durable is one `pwrite` and one `fdatasync`
/// of blocks the file already has (no rename, no directory to sync), and
/// costs the same whatever the guard remembers: writing the whole state
/// would cost a millisecond per thousand keys, for every grant.
///
/// `replay.state` stays the state of record. At start the server reads it
/// and then every valid record of the journal (restoring takes the most
/// restrictive of every value, so old records change nothing). Without
/// `replay.state` the state is lost, whatever the journal holds.
///
/// Records go to one half of the file until a snapshot is taken; then to
/// the other, which may be reused only once a snapshot taken after its last
/// record is durable. The loop takes a snapshot (written beside it) soon
/// after grants ([`StateFile::snapshot_due`]), so a half fills only if
/// snapshots cannot be written; a batch that does not fit then waits for a
/// snapshot of its own. A record counts only if its digest matches and its
/// generation is above the one before it in its half, so a torn write ends
/// the half, and so do the older records after the newest in a reused one.
#[derive(Debug)]
struct Journal {
    file: File,
    /// The next record's generation: above every one in the file.
    generation: u64,
    /// The half records are appended to, and where.
    half: u64,
    offset: usize,
    /// The snapshot whose durability frees the other half (`None`: free).
    other_freed_by: Option<u64>,
}

/// The digest that makes a record valid.
fn record_digest(generation: u64, body: &[u8]) -> [u8; 16] {
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

/// The record at the start of `bytes`, if valid: (generation, body, length
/// with its header).
fn record_at(bytes: &[u8]) -> Option<(u64, &[u8], usize)> {
    let (magic, rest) = bytes.split_at_checked(8)?;
    let (generation, rest) = rest.split_at_checked(8)?;
    let (length, rest) = rest.split_at_checked(4)?;
    let (digest, rest) = rest.split_at_checked(16)?;
    if magic != RECORD_MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(generation.try_into().ok()?);
    let length = u32::from_le_bytes(length.try_into().ok()?) as usize;
    let body = rest.get(..length)?;
    (record_digest(generation, body) == digest).then_some((
        generation,
        body,
        RECORD_HEADER + length,
    ))
}

/// The valid records of one half of a journal, in order: (offset,
/// generation, body).
fn half_records(half: &[u8]) -> Vec<(usize, u64, &[u8])> {
    let (mut at, mut last, mut records) = (0, 0, Vec::new());
    while let Some((generation, body, length)) = half.get(at..).and_then(record_at) {
        if generation <= last {
            break;
        }
        records.push((at, generation, body));
        (at, last) = (at + length, generation);
    }
    records
}

/// Every valid record of a journal's bytes, half by half: (generation,
/// body).
fn journal_records(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    bytes
        .chunks(JOURNAL_HALF)
        .flat_map(half_records)
        .map(|(_, generation, body)| (generation, body))
        .collect()
}

impl Journal {
    /// The journal of `dir`, created (and its blocks written) if needed.
    /// Call it right after a snapshot: whatever the file holds is then
    /// covered, and both halves are free.
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
            let newest = journal_records(&bytes)
                .into_iter()
                .map(|(generation, _)| generation)
                .max()
                .unwrap_or(0);
            Ok(Self {
                file,
                generation: newest + 1,
                half: 0,
                offset: 0,
                other_freed_by: None,
            })
        })();
        if result.is_err() {
            // A journal that could not be made whole is not left behind.
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Appends `body` as a record and makes it durable; `false` (nothing
    /// written) if it does not fit in the current half.
    fn append(&mut self, body: &[u8]) -> io::Result<bool> {
        if self.offset + RECORD_HEADER + body.len() > JOURNAL_HALF {
            return Ok(false);
        }
        let mut record = Vec::with_capacity(RECORD_HEADER + body.len());
        record.extend_from_slice(RECORD_MAGIC);
        record.extend_from_slice(&self.generation.to_le_bytes());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&record_digest(self.generation, body));
        record.extend_from_slice(body);
        let at = self.half * JOURNAL_HALF as u64 + self.offset as u64;
        self.file.write_all_at(&record, at)?;
        self.file.sync_data()?;
        self.generation += 1;
        self.offset += record.len();
        Ok(true)
    }

    /// Snapshot `number`, taken now, covers every record so far: once
    /// durable it frees the current half. Moves to the other half if that
    /// is free (a snapshot durable by `written` covers it).
    fn snapshot_taken(&mut self, number: u64, written: u64) {
        if self.offset > 0 && self.other_free(written) {
            self.half = 1 - self.half;
            self.offset = 0;
            self.other_freed_by = Some(number);
        }
    }

    /// Is the other half free, with snapshots up to `written` durable?
    fn other_free(&self, written: u64) -> bool {
        self.other_freed_by.is_none_or(|n| written >= n)
    }

    /// A snapshot covering every record is durable: both halves are free.
    fn all_covered(&mut self) {
        self.offset = 0;
        self.other_freed_by = None;
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
    /// When the last snapshot was taken, and the last grant made durable.
    snapshot_taken_at: Instant,
    persisted_at: Instant,
    /// Every snapshot gets the next number; one is written only if no
    /// later one was (the writer beside the loop and the loop's own writes
    /// share `written`).
    snapshots: u64,
    written: Arc<Written>,
    beside: Option<SnapshotWriter>,
}

/// The number of the latest snapshot written. The lock serialises the
/// writers, so that a later snapshot always wins; the loop reads the number
/// without waiting for a write in progress.
#[derive(Debug, Default)]
struct Written {
    writing: Mutex<()>,
    through: AtomicU64,
}

impl Written {
    fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }
}

/// The thread that rewrites `replay.state` beside the loop.
#[derive(Debug)]
struct SnapshotWriter {
    queue: mpsc::Sender<(u64, ReplayGuard)>,
    thread: std::thread::JoinHandle<()>,
}

/// Writes snapshot `number` unless a later one was written first.
fn write_numbered(dir: &Path, written: &Written, number: u64, encoded: &[u8]) -> io::Result<()> {
    let _writing = written.writing.lock().unwrap_or_else(|p| p.into_inner());
    if written.through() >= number {
        return Ok(());
    }
    replace_file(dir, REPLAY_STATE, encoded, Sync::Durable)?;
    written.through.store(number, Ordering::Release);
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
            snapshot_taken_at: Instant::now(),
            persisted_at: Instant::now(),
            snapshots: 0,
            written: Arc::default(),
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
        // The journal's records after the snapshot's lines.
        if let Ok(journal) = fs::read(self.dir().join(REPLAY_JOURNAL)) {
            for (_, body) in journal_records(&journal) {
                bytes.push(b'\n');
                bytes.extend_from_slice(body);
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

    /// Rewrites `replay.state` with `encoded`, what the guard remembers
    /// now, durably, now.
    pub fn write_snapshot(&mut self, encoded: &[u8]) -> io::Result<()> {
        self.snapshots += 1;
        self.snapshot_taken_at = Instant::now();
        write_numbered(self.lock.dir(), &self.written, self.snapshots, encoded)?;
        self.snapshot_behind = false;
        if let Some(journal) = self.journal.as_mut() {
            journal.all_covered();
        }
        Ok(())
    }

    /// Has `replay.state` rewritten with what `guard` remembers by a thread
    /// beside the loop, which also encodes it (a rename and two fsyncs can
    /// take 10 ms on a slow disk, and encoding a large state a few more):
    /// what the loop does after the journal has made grants durable. A
    /// failure is logged there, once until a write succeeds again; the
    /// journal holds the state meanwhile.
    pub fn snapshot_beside(&mut self, guard: ReplayGuard) {
        self.snapshots += 1;
        self.snapshot_taken_at = Instant::now();
        let number = self.snapshots;
        if let Some(journal) = self.journal.as_mut() {
            journal.snapshot_taken(number, self.written.through());
        }
        if self.beside.is_none() {
            self.beside = self.spawn_writer();
        }
        let unsent = match &self.beside {
            Some(writer) => writer.queue.send((number, guard)).err().map(|e| e.0 .1),
            None => Some(guard),
        };
        // Without a thread: on the loop, slower, as correct.
        if let Some(guard) = unsent {
            if let Err(err) =
                write_numbered(self.lock.dir(), &self.written, number, &guard.encode())
            {
                tracing::warn!("cannot rewrite {}: {err}", self.path.display());
            }
        }
        self.snapshot_behind = false;
    }

    fn spawn_writer(&self) -> Option<SnapshotWriter> {
        let (queue, jobs) = mpsc::channel::<(u64, ReplayGuard)>();
        let dir = self.lock.dir().to_path_buf();
        let written = Arc::clone(&self.written);
        let thread = std::thread::Builder::new()
            .name("replay-snapshot".into())
            .spawn(move || {
                let mut failing = false;
                while let Ok((mut number, mut guard)) = jobs.recv() {
                    // Only the newest of those queued is worth writing.
                    while let Ok((n, g)) = jobs.try_recv() {
                        (number, guard) = (n, g);
                    }
                    match write_numbered(&dir, &written, number, &guard.encode()) {
                        Ok(()) => failing = false,
                        Err(err) if !failing => {
                            tracing::warn!(
                                "cannot rewrite {}: {err}; grants stay durable in the replay journal until it fills",
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

    /// Is it time for [`Self::snapshot_beside`]? When the journal is ahead
    /// and grants have paused for [`SNAPSHOT_QUIET`]; while they go on,
    /// every [`SNAPSHOT_EVERY`], or once a quarter of the journal's half is
    /// used. Not more often: a snapshot writes the whole state and syncs
    /// it, and a grant's `fdatasync` meanwhile waits behind those writes.
    pub fn snapshot_due(&self) -> bool {
        self.snapshot_behind
            && (self.persisted_at.elapsed() >= SNAPSHOT_QUIET
                || self.snapshot_taken_at.elapsed() >= SNAPSHOT_EVERY
                || self
                    .journal
                    .as_ref()
                    .is_none_or(|j| j.offset >= JOURNAL_HALF / 4))
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
    /// A journal record when the journal is there, else a snapshot. A full
    /// half of the journal is covered by a snapshot beside the loop if the
    /// other half is free, and by one on the loop if not. A journal that
    /// fails is given up for this run: a snapshot is tried at once, and a
    /// grant waits for one of them.
    fn persist(&mut self, guard: &ReplayGuard, batch: &[Consumed]) -> io::Result<()> {
        self.persisted_at = Instant::now();
        if self.journal.is_some() {
            let delta = guard.encode_delta(batch);
            let mut durable = matches!(self.append(&delta), Ok(true));
            let written = self.written.through();
            if !durable && self.journal.as_ref().is_some_and(|j| j.other_free(written)) {
                // Moves to the other half.
                self.snapshot_beside(guard.clone());
                durable = matches!(self.append(&delta), Ok(true));
            }
            if durable {
                return Ok(());
            }
        }
        self.write_snapshot(&guard.encode())
    }
}

impl StateFile {
    /// Appends a journal record; the journal is given up if it fails.
    /// `Ok(false)`: it does not fit (or there is no journal).
    fn append(&mut self, delta: &[u8]) -> io::Result<bool> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(false);
        };
        match journal.append(delta) {
            Ok(appended) => {
                self.snapshot_behind |= appended;
                Ok(appended)
            }
            Err(err) => {
                tracing::warn!(
                    "replay journal {}: {err}; from now on each grant waits for a rewrite of {} instead (slower, as safe)",
                    self.lock.dir().join(REPLAY_JOURNAL).display(),
                    self.path.display()
                );
                self.journal = None;
                Err(err)
            }
        }
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
        let consumed = guard.commit(fresh, 5_000);
        store.persist(&guard, &[consumed]).unwrap();
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

    /// A replay id for `n`.
    fn id(n: u32) -> knock_proto::ReplayId {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        knock_proto::ReplayId(id)
    }

    /// Consumes a knock of `key` stamped `at` and makes it durable.
    fn grant(store: &mut StateFile, guard: &mut ReplayGuard, key: knock_proto::ReplayId, at: u64) {
        let fresh = guard.check(key, at, at).unwrap();
        let consumed = guard.commit(fresh, at);
        store.persist(guard, &[consumed]).unwrap();
    }

    /// A store in a new scratch directory, its first snapshot written and
    /// its journal open, and the guard whose state it holds.
    fn journaled(name: &str) -> (PathBuf, StateFile, ReplayGuard) {
        let dir = scratch(name);
        let mut store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let guard = ReplayGuard::first_start(30_000, 1_000);
        store.write_snapshot(&guard.encode()).unwrap();
        store.open_journal().unwrap();
        (dir, store, guard)
    }

    /// The valid records of half `half` of the journal in `dir`.
    fn records_in(dir: &Path, half: usize) -> Vec<(usize, u64, Vec<u8>)> {
        let bytes = fs::read(dir.join(REPLAY_JOURNAL)).unwrap();
        half_records(&bytes[half * JOURNAL_HALF..][..JOURNAL_HALF])
            .into_iter()
            .map(|(at, generation, body)| (at, generation, body.to_vec()))
            .collect()
    }

    /// The journal makes each grant durable without touching
    /// `replay.state`; at start both count, a torn record ends its half,
    /// and without `replay.state` the state is lost whatever the journal
    /// holds.
    #[test]
    fn the_journal_is_read_back_after_its_snapshot() {
        let (dir, mut store, mut guard) = journaled("journal");
        let (a, b) = (id(1), id(2));
        let snapshot = fs::read(store.path()).unwrap();
        assert_eq!(
            fs::metadata(dir.join(REPLAY_JOURNAL))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        for (key, at) in [(a, 5_000), (b, 6_000), (a, 7_000)] {
            grant(&mut store, &mut guard, key, at);
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
        // Tear the newest record (a at 7 s): the ones before it count.
        let records = records_in(&dir, 0);
        assert_eq!(records.len(), 3);
        let journal = dir.join(REPLAY_JOURNAL);
        let mut bytes = fs::read(&journal).unwrap();
        bytes[records[2].0 + RECORD_HEADER + 3] ^= 0xff;
        fs::write(&journal, &bytes).unwrap();
        let (restored, _) = store.load_guard(30_000, 8_000).unwrap();
        assert!(restored.check(a, 5_000, 8_000).is_err());
        assert!(
            restored.check(a, 6_000, 8_000).is_ok(),
            "the torn record is ignored"
        );
        assert!(restored.check(b, 6_000, 8_000).is_err());
        // Without the snapshot, the state is lost.
        fs::remove_file(store.path()).unwrap();
        let (_, restored) = store.load_guard(30_000, 8_000).unwrap();
        assert!(matches!(restored, Restored::Missing));
        fs::remove_dir_all(dir).unwrap();
    }

    /// A grant's record is as small with 10,000 keys remembered as with
    /// one: the journal never rewrites the whole state for a grant.
    #[test]
    fn a_grant_costs_the_same_whatever_the_guard_remembers() {
        let (dir, mut store, mut guard) = journaled("journal-delta");
        for n in 0..10_000 {
            let fresh = guard.check(id(n), 5_000, 5_000).unwrap();
            let _ = guard.commit(fresh, 5_000);
        }
        store.write_snapshot(&guard.encode()).unwrap();
        assert!(guard.encode().len() > 300_000, "a large state");
        grant(&mut store, &mut guard, id(10_000), 5_001);
        let records = records_in(&dir, 0);
        assert_eq!(records.len(), 1);
        let size = RECORD_HEADER + records[0].2.len();
        assert!(size < 300, "a record of {size} bytes");
        drop(store);
        let store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let (restored, restored_as) = store.load_guard(30_000, 5_001).unwrap();
        assert!(matches!(restored_as, Restored::Previous(10_001)));
        for (n, at) in [(0, 5_000), (9_999, 5_000), (10_000, 5_001)] {
            assert!(restored.check(id(n), at, 5_001).is_err(), "key {n}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// A full half hands over to the other one once a snapshot covers it;
    /// with no snapshot durable, a batch waits for one of its own. Records
    /// in both halves count at start.
    #[test]
    fn a_full_half_waits_for_a_snapshot() {
        let (dir, mut store, mut guard) = journaled("journal-halves");
        let first_snapshot = fs::read(store.path()).unwrap();
        // Fill half 0 without a snapshot; the grant that does not fit
        // takes one (beside the loop) and moves to half 1.
        let mut n = 0;
        while store.journal.as_ref().unwrap().half == 0 {
            grant(&mut store, &mut guard, id(n), 5_000);
            n += 1;
            assert!(n < 10_000, "half 0 never filled");
        }
        assert!(n > 1_000, "{n} grants fit in a half");
        assert!(store.snapshot_behind());
        assert_eq!(records_in(&dir, 1).len(), 1, "the last grant is in half 1");
        let bytes = fs::read(dir.join(REPLAY_JOURNAL)).unwrap();
        // A crash before that snapshot is durable: the first snapshot and
        // the records of both halves bring back every key.
        let crashed = scratch("journal-halves-crashed");
        let crashed_lock = StateLock::acquire(&crashed).unwrap();
        fs::write(crashed.join(REPLAY_STATE), &first_snapshot).unwrap();
        fs::write(crashed.join(REPLAY_JOURNAL), &bytes).unwrap();
        let (restored, restored_as) = StateFile::open(crashed_lock)
            .load_guard(30_000, 5_000)
            .unwrap();
        assert!(
            matches!(restored_as, Restored::Previous(k) if k == n as usize),
            "{restored_as:?}"
        );
        for k in 0..n {
            assert!(restored.check(id(k), 5_000, 5_000).is_err(), "key {k}");
        }
        fs::remove_dir_all(crashed).unwrap();
        // Until that snapshot is durable half 0 is not reused: pretend it
        // never is, and fill half 1. The grant that does not fit waits for
        // a snapshot on the loop, which covers both halves.
        store.journal.as_mut().unwrap().other_freed_by = Some(u64::MAX);
        let before = n;
        while store.snapshot_behind() {
            grant(&mut store, &mut guard, id(n), 5_000);
            n += 1;
            assert!(n < 3 * before, "half 1 never filled");
        }
        assert_eq!(fs::read(store.path()).unwrap(), guard.encode());
        let journal = store.journal.as_ref().unwrap();
        assert_eq!((journal.offset, journal.other_freed_by), (0, None));
        // The journal starts again over records the snapshot covers.
        grant(&mut store, &mut guard, id(n), 5_000);
        drop(store);
        let store = StateFile::open(StateLock::acquire(&dir).unwrap());
        let (restored, restored_as) = store.load_guard(30_000, 5_000).unwrap();
        assert!(
            matches!(restored_as, Restored::Previous(k) if k == n as usize + 1),
            "{restored_as:?}"
        );
        for k in 0..=n {
            assert!(restored.check(id(k), 5_000, 5_000).is_err(), "key {k}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// Snapshots written beside the loop never overwrite a later one
    /// written on it.
    #[test]
    fn a_later_snapshot_always_wins() {
        let dir = scratch("snapshots");
        let state = |floor: u64| ReplayGuard::first_start(30_000, floor);
        let mut store = StateFile::open(StateLock::acquire(&dir).unwrap());
        store.snapshot_beside(state(1));
        store.write_snapshot(&state(2).encode()).unwrap();
        // An older one arriving late is skipped.
        write_numbered(&dir, &store.written, 1, &state(1).encode()).unwrap();
        assert_eq!(fs::read(store.path()).unwrap(), state(2).encode());
        store.snapshot_beside(state(3));
        drop(store);
        assert_eq!(fs::read(dir.join(REPLAY_STATE)).unwrap(), state(3).encode());
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
