//! Every client's pair keys, and the cache that makes a warm start cheap.
//!
//! A knock names its client only through its hint, so every client's hint
//! key must exist before the first knock arrives: pair keys cannot be made
//! lazily. A shared-key client's pair key costs a few HMACs. A public-key
//! client's costs an X25519 and an Ed25519 point check (some 50-70 µs), so
//! 100,000 of them would take seconds on every start. Hence the cache,
//! `<state_dir>/pair-keys` (mode 0600, replaced atomically):
//!
//! ```text
//! knock-pair-keys v1
//! server <hex SHA-256("knock/v2 pair cache server" || s_pk || server_id)[..16]>
//! <hex client fingerprint: SHA-256("knock/v2 pair cache client" || ed_pk || x_pk)[..16]> <hex pair_prk>
//! ...
//! ```
//!
//! * A file whose `server` line is not this server's (another `server.key`
//!   or `server.id`), or that is not a cache at all, is ignored as a whole
//!   and rewritten. A line that cannot be read is ignored (and said once).
//! * A cached pair key was validated when it was computed: the client's
//!   keys are checked when they are missing from the cache, not again.
//! * Tampering with the cache can only break a client's knocks: a knock is
//!   honoured only with a signature by the key in `clients.d`.
//! * Pair keys missing from the cache are computed in parallel
//!   (`available_parallelism()` threads); on reload, the keys already in
//!   memory are used. Clients no longer configured are pruned.
//! * The file is rewritten (in a thread of its own, off the packet loop)
//!   whenever something was computed or pruned.
//! * Losing the cache costs time (a cold start), never a lockout.
//!
//! The cache holds secrets: with it, anyone can recognise, open and make
//! AEAD-valid knocks of the cached clients to this server (not sign them).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use knock_keys::entry::ClientEntry;
use knock_proto::{
    KeyError, PairKeys, PairPrk, ServerId, ServerPublicKey, ServerSecretKey, PAIR_PRK_LEN,
};
use thiserror::Error;

use crate::parallel::{parallel_map, Cores};
use tracing::warn;
use zeroize::Zeroizing;

use crate::clients::{credential, Credential};
use crate::state::{replace_file, Sync as Durability};

/// The cache's name in the state directory.
pub const FILE_NAME: &str = "pair-keys";
const HEADER: &str = "knock-pair-keys v1";
const FINGERPRINT_LEN: usize = 16;
/// Below this many clients per thread, one thread does it all.
const PER_THREAD_AT_LEAST: usize = 256;

/// Where the cache of this state directory is.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// A client whose pair key cannot be made: the configuration is at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PairKeyError {
    /// Public-key clients are configured, and the server has no key.
    #[error("{key_file}: missing: the server key, which {} need{}; restore it from your backup of the configuration directory, or run knock-keygen (which creates it)", needers(client, *others), if *others == 0 { "s" } else { "" })]
    NoServerKey {
        key_file: PathBuf,
        /// The first public-key client.
        client: String,
        /// How many more there are.
        others: usize,
    },
    /// The public key of a client's entry is not usable.
    #[error("{path}: field `public_key`: {error}; enrol the client's line again (knock-keygen NAME --host HOST --public-key LINE --force)")]
    BadKey { path: PathBuf, error: KeyError },
}

/// `the public-key client "alice"`, `3 public-key clients ("alice" and 2 more)`.
fn needers(client: &str, others: usize) -> String {
    match others {
        0 => format!("the public-key client {client:?}"),
        n => format!("{} public-key clients ({client:?} and {n} more)", n + 1),
    }
}

/// The server's keys: its identity (both modes) and its X25519 key
/// (public-key clients), with the cache of public-key clients' pair keys.
pub struct Keyring {
    id: ServerId,
    key_file: PathBuf,
    secret: Option<ServerSecretKey>,
    cache: PairCache,
    writer: CacheWriter,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("id", &self.id)
            .field("server_public", &self.server_public())
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// A derivation in parts ([`Keyring::derive_more`]), until [`Keyring::end`].
#[derive(Default)]
pub struct Derivation {
    configured: HashSet<[u8; FINGERPRINT_LEN]>,
    fresh: Vec<([u8; FINGERPRINT_LEN], PairPrk)>,
    cached: usize,
}

impl std::fmt::Debug for Derivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Derivation")
            .field("configured", &self.configured.len())
            .field("computed", &self.fresh.len())
            .field("cached", &self.cached)
            .finish()
    }
}

/// What [`Keyring::derive`] made.
#[cfg(test)]
#[derive(Debug)]
pub struct Derived {
    /// One per entry, in order.
    pub keys: Vec<PairKeys>,
    /// Public-key pair keys computed (missing from the cache).
    pub computed: usize,
    /// Public-key pair keys taken from the cache.
    pub cached: usize,
}

impl Keyring {
    /// `key_file` is where the server key is (or would be), for messages.
    pub fn new(id: ServerId, secret: Option<ServerSecretKey>, key_file: PathBuf) -> Self {
        let tag = secret.as_ref().map(|s| s.public().pair_cache_tag(&id));
        Self {
            id,
            key_file,
            secret,
            cache: PairCache::new(tag.unwrap_or([0; FINGERPRINT_LEN])),
            writer: CacheWriter::default(),
        }
    }

    pub fn server_id(&self) -> ServerId {
        self.id
    }

    /// The server's public key, if it has a key.
    pub fn server_public(&self) -> Option<ServerPublicKey> {
        self.secret.as_ref().map(ServerSecretKey::public)
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Gives a server that started without a key (it had no public-key
    /// client) its key. A key it has already is not replaced: changing it
    /// needs a restart.
    pub fn adopt_secret(&mut self, secret: ServerSecretKey) {
        if self.secret.is_none() {
            self.cache = PairCache::new(secret.public().pair_cache_tag(&self.id));
            self.secret = Some(secret);
        }
    }

    /// Reads the cache in `state_dir` (which must be this server's).
    pub fn load_cache(&mut self, state_dir: &Path) -> CacheLoad {
        if self.secret.is_none() {
            return CacheLoad::NotNeeded;
        }
        let text = match std::fs::read(path(state_dir)) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return CacheLoad::Missing,
            Err(err) => {
                self.cache.changed = true;
                return CacheLoad::Unreadable(err.to_string());
            }
        };
        self.cache.parse(&text)
    }

    /// The pair keys of `entries`, in order: from memory, from the cache, or
    /// computed (in parallel). Afterwards the cache holds exactly the
    /// public-key clients of `entries`. The server reads its clients a part
    /// at a time instead (`loader`); this whole-list form serves the tests.
    #[cfg(test)]
    pub fn derive(
        &mut self,
        entries: &[ClientEntry],
        clients_dir: &Path,
    ) -> Result<Derived, PairKeyError> {
        let publics: Vec<&str> = entries
            .iter()
            .filter(|e| matches!(credential(e), Credential::Public(_)))
            .map(|e| e.name.as_str())
            .collect();
        if let (None, Some(first)) = (&self.secret, publics.first()) {
            return Err(PairKeyError::NoServerKey {
                key_file: self.key_file.clone(),
                client: (*first).to_owned(),
                others: publics.len() - 1,
            });
        }
        let mut derivation = Derivation::default();
        let keys = self.derive_more(&mut derivation, entries, clients_dir, Cores::All)?;
        let (computed, cached) = self.end(derivation);
        Ok(Derived {
            keys,
            computed,
            cached,
        })
    }

    /// The pair keys of `entries`, one part of a client list, in order:
    /// from memory, from the cache, or computed (in parallel on `cores`);
    /// [`Self::end`] ends the list. The caller has made sure the server has
    /// a key if a part holds a public-key client.
    pub fn derive_more(
        &mut self,
        derivation: &mut Derivation,
        entries: &[ClientEntry],
        clients_dir: &Path,
        cores: Cores,
    ) -> Result<Vec<PairKeys>, PairKeyError> {
        let (id, secret, cache) = (&self.id, self.secret.as_ref(), &self.cache.prks);
        let results = parallel_map(entries, cores, PER_THREAD_AT_LEAST, |entry| {
            derive_one(credential(entry), id, secret, cache)
        });
        let mut keys = Vec::with_capacity(entries.len());
        for (entry, result) in entries.iter().zip(results) {
            let one = result.map_err(|error| PairKeyError::BadKey {
                path: clients_dir.join(format!("{}.toml", entry.name)),
                error,
            })?;
            if let Some(fingerprint) = one.fingerprint {
                derivation.configured.insert(fingerprint);
                match one.computed {
                    Some(prk) => derivation.fresh.push((fingerprint, prk)),
                    None => derivation.cached += 1,
                }
            }
            keys.push(one.keys);
        }
        Ok(keys)
    }

    /// Ends a derivation whose every part succeeded: the cache keeps the
    /// pair keys of the configured clients, no others. Returns how many
    /// were computed and how many came from the cache.
    pub fn end(&mut self, derivation: Derivation) -> (usize, usize) {
        let Derivation {
            configured,
            fresh,
            cached,
        } = derivation;
        let computed = fresh.len();
        if computed > 0 {
            self.cache.changed = true;
        }
        self.cache.prks.extend(fresh);
        let before = self.cache.prks.len();
        self.cache.prks.retain(|f, _| configured.contains(f));
        if self.cache.prks.len() != before {
            self.cache.changed = true;
        }
        (computed, cached)
    }

    /// Rewrites the cache in `state_dir` if it changed since it was read or
    /// written, in a thread of its own. A failure is logged, never fatal:
    /// the next start is slower, nothing else.
    pub fn save_cache_in_background(&mut self, state_dir: &Path) {
        if !self.cache.changed || self.secret.is_none() {
            return;
        }
        self.cache.changed = false;
        let text = self.cache.render();
        self.writer.spawn(state_dir.to_path_buf(), text);
    }

    /// Rewrites the cache now if it changed; waits for a write under way.
    pub fn save_cache(&mut self, state_dir: &Path) -> io::Result<()> {
        self.writer.finish();
        if !self.cache.changed || self.secret.is_none() {
            return Ok(());
        }
        write_cache(state_dir, &self.cache.render())?;
        self.cache.changed = false;
        Ok(())
    }

    /// Waits for a cache write under way (at shutdown).
    pub fn finish_writing(&mut self) {
        self.writer.finish();
    }

    /// Pair keys in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// What [`Keyring::load_cache`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLoad {
    /// No public-key clients can exist (no server key): no cache is used.
    NotNeeded,
    /// No cache yet (or it was lost): a cold start.
    Missing,
    /// Could not be read; it is rewritten.
    Unreadable(String),
    /// Not a cache of this format; it is rewritten.
    NotACache,
    /// Made for another server key or identity; ignored and rewritten.
    OtherServer,
    /// Read: this many pair keys, and this many lines that were not (the
    /// first of them is `first_bad`, 1-based).
    Loaded {
        entries: usize,
        bad_lines: usize,
        first_bad: usize,
    },
}

impl CacheLoad {
    /// Worth a warning: something was there and could not be used. (No
    /// cache at all is a first start, or a lost state directory, which the
    /// replay state says already.)
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            Self::NotNeeded | Self::Missing | Self::Loaded { bad_lines: 0, .. }
        )
    }

    /// A line for the log, if there is something to say.
    pub fn describe(&self, file: &Path) -> Option<String> {
        let file = file.display();
        match self {
            Self::NotNeeded | Self::Loaded { bad_lines: 0, .. } => None,
            Self::Missing => Some(format!(
                "no pair-key cache at {file}: computing every public-key client's pair key (a cold start)"
            )),
            Self::Unreadable(err) => Some(format!(
                "pair-key cache {file} cannot be read ({err}): ignored, computing every public-key client's pair key, and rewriting it"
            )),
            Self::NotACache => Some(format!(
                "{file} is not a pair-key cache: ignored, computing every public-key client's pair key, and rewriting it"
            )),
            Self::OtherServer => Some(format!(
                "pair-key cache {file} was made for another server key or identity: ignored, computing every public-key client's pair key, and rewriting it"
            )),
            Self::Loaded {
                bad_lines,
                first_bad,
                ..
            } => Some(format!(
                "pair-key cache {file}: {bad_lines} damaged lines ignored (the first is line {first_bad}); their clients' pair keys are computed again"
            )),
        }
    }
}

/// Pair keys by client fingerprint, for one server key and identity.
struct PairCache {
    /// The `server` line this server's cache has.
    tag: [u8; FINGERPRINT_LEN],
    prks: HashMap<[u8; FINGERPRINT_LEN], PairPrk>,
    /// What is on disk is not what is here.
    changed: bool,
}

impl PairCache {
    fn new(tag: [u8; FINGERPRINT_LEN]) -> Self {
        Self {
            tag,
            prks: HashMap::new(),
            changed: false,
        }
    }

    fn len(&self) -> usize {
        self.prks.len()
    }

    /// Replaces what is held with the file's `bytes`.
    fn parse(&mut self, bytes: &[u8]) -> CacheLoad {
        self.prks.clear();
        // Rewritten unless it reads back whole.
        self.changed = true;
        let mut lines = bytes.split(|&b| b == b'\n');
        if lines.next() != Some(HEADER.as_bytes()) {
            return CacheLoad::NotACache;
        }
        let server = lines
            .next()
            .and_then(|line| line.strip_prefix(b"server "))
            .and_then(from_hex::<FINGERPRINT_LEN>);
        if server != Some(self.tag) {
            return CacheLoad::OtherServer;
        }
        let (mut bad_lines, mut first_bad) = (0, 0);
        for (index, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            match parse_line(line) {
                Some((fingerprint, prk)) => {
                    self.prks.insert(fingerprint, prk);
                }
                None => {
                    if bad_lines == 0 {
                        first_bad = index + 3;
                    }
                    bad_lines += 1;
                }
            }
        }
        self.changed = bad_lines > 0;
        CacheLoad::Loaded {
            entries: self.prks.len(),
            bad_lines,
            first_bad,
        }
    }

    /// The file's text, sorted so that equal caches give equal files.
    fn render(&self) -> Zeroizing<String> {
        let mut entries: Vec<_> = self.prks.iter().collect();
        entries.sort_unstable_by_key(|(f, _)| **f);
        let mut text = Zeroizing::new(String::with_capacity(
            64 + entries.len() * (2 * (FINGERPRINT_LEN + PAIR_PRK_LEN) + 2),
        ));
        let _ = writeln!(text, "{HEADER}\nserver {}", to_hex(&self.tag));
        for (fingerprint, prk) in entries {
            let _ = writeln!(text, "{} {}", to_hex(fingerprint), to_hex(prk.expose()));
        }
        text
    }
}

fn parse_line(line: &[u8]) -> Option<([u8; FINGERPRINT_LEN], PairPrk)> {
    let space = line.iter().position(|&b| b == b' ')?;
    let (fingerprint, prk) = (line.get(..space)?, line.get(space + 1..)?);
    let prk = Zeroizing::new(from_hex::<PAIR_PRK_LEN>(prk)?);
    Some((from_hex(fingerprint)?, PairPrk::from_bytes(*prk)))
}

/// One entry's pair keys, and what the cache learns from it.
struct One {
    keys: PairKeys,
    /// A public-key client's fingerprint.
    fingerprint: Option<[u8; FINGERPRINT_LEN]>,
    /// Its pair key, if it was computed rather than found.
    computed: Option<PairPrk>,
}

fn derive_one(
    credential: &Credential,
    id: &ServerId,
    secret: Option<&ServerSecretKey>,
    cache: &HashMap<[u8; FINGERPRINT_LEN], PairPrk>,
) -> Result<One, KeyError> {
    match credential {
        Credential::Shared(secret) => Ok(One {
            keys: PairKeys::shared(secret, id),
            fingerprint: None,
            computed: None,
        }),
        Credential::Public(client) => {
            let fingerprint = client.fingerprint();
            if let Some(prk) = cache.get(&fingerprint) {
                return Ok(One {
                    keys: PairKeys::from_prk(prk),
                    fingerprint: Some(fingerprint),
                    computed: None,
                });
            }
            // derive() refuses public-key clients without a server key
            // before it gets here; a missing key is no valid key either.
            let secret = secret.ok_or(KeyError::LowOrderX25519)?;
            let prk = secret.pair_prk(client, id)?;
            Ok(One {
                keys: PairKeys::from_prk(&prk),
                fingerprint: Some(fingerprint),
                computed: Some(prk),
            })
        }
    }
}

/// Cache writes, one at a time (they share a temporary file name).
#[derive(Debug, Default)]
struct CacheWriter {
    under_way: Option<JoinHandle<()>>,
}

/// Serialises the writes of every keyring in this process.
static WRITING: Mutex<()> = Mutex::new(());

impl CacheWriter {
    fn spawn(&mut self, state_dir: PathBuf, text: Zeroizing<String>) {
        self.finish();
        let spawned = std::thread::Builder::new()
            .name("pair-cache".into())
            .spawn(move || {
                if let Err(err) = write_cache(&state_dir, &text) {
                    warn!(
                        "cannot write the pair-key cache {} ({err}): the next start computes public-key clients' pair keys again",
                        path(&state_dir).display()
                    );
                }
            });
        match spawned {
            Ok(handle) => self.under_way = Some(handle),
            Err(err) => warn!("cannot start writing the pair-key cache: {err}"),
        }
    }

    fn finish(&mut self) {
        if let Some(handle) = self.under_way.take() {
            let _ = handle.join();
        }
    }
}

fn write_cache(state_dir: &Path, text: &str) -> io::Result<()> {
    let _one_at_a_time = WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    replace_file(state_dir, FILE_NAME, text.as_bytes(), Durability::Durable)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (&hi, &lo) = (pair.first()?, pair.get(1)?);
        *o = digit(hi)? << 4 | digit(lo)?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use knock_keys::entry::{ClientEntry, Credential};
    use knock_proto::{ClientPublicKey, ClientSecret, PortSpec};

    use super::*;
    use crate::verify::fixtures::{client, person, public_client, server_key, SERVER};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-pairs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn keyring() -> Keyring {
        Keyring::new(SERVER, Some(server_key()), "/etc/knock/server.key".into())
    }

    fn clients() -> Vec<ClientEntry> {
        vec![
            public_client("alice", 1, &[22]),
            client("bob", 2, &[22]),
            public_client("carol", 3, &[22]),
        ]
    }

    fn ids(derived: &Derived) -> Vec<knock_proto::ReplayId> {
        derived.keys.iter().map(PairKeys::replay_id).collect()
    }

    fn dir() -> &'static Path {
        Path::new("/etc/knock/clients.d")
    }

    #[test]
    fn a_warm_start_computes_nothing_and_gives_the_same_keys() {
        let state = scratch("warm");
        let mut cold = keyring();
        assert_eq!(cold.load_cache(&state), CacheLoad::Missing);
        let first = cold.derive(&clients(), dir()).unwrap();
        assert_eq!((first.computed, first.cached), (2, 0));
        cold.save_cache(&state).unwrap();
        let mode = fs::metadata(path(&state)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the cache holds secrets");
        let text = fs::read_to_string(path(&state)).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(HEADER));
        assert_eq!(
            lines.next(),
            Some(
                format!(
                    "server {}",
                    to_hex(&server_key().public().pair_cache_tag(&SERVER))
                )
                .as_str()
            )
        );
        assert_eq!(lines.count(), 2, "one line per public-key client");

        let mut warm = keyring();
        assert_eq!(
            warm.load_cache(&state),
            CacheLoad::Loaded {
                entries: 2,
                bad_lines: 0,
                first_bad: 0
            }
        );
        let again = warm.derive(&clients(), dir()).unwrap();
        assert_eq!((again.computed, again.cached), (0, 2));
        assert_eq!(ids(&again), ids(&first));
        // Nothing changed: nothing to write.
        assert!(!warm.cache.changed);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn a_cache_for_another_server_is_ignored_and_rewritten() {
        let state = scratch("other");
        let mut other = Keyring::new(
            ServerId([8; 16]),
            Some(server_key()),
            "/k/server.key".into(),
        );
        other.derive(&clients(), dir()).unwrap();
        other.save_cache(&state).unwrap();
        let theirs = fs::read(path(&state)).unwrap();
        let mut other_key = Keyring::new(
            SERVER,
            Some(ServerSecretKey::from_bytes([10; 32])),
            "/k/server.key".into(),
        );
        other_key.derive(&clients(), dir()).unwrap();
        let file_of_other_key = scratch("other-key");
        other_key.save_cache(&file_of_other_key).unwrap();

        for made_by in [&state, &file_of_other_key] {
            let mut ours = keyring();
            assert_eq!(ours.load_cache(made_by), CacheLoad::OtherServer);
            let derived = ours.derive(&clients(), dir()).unwrap();
            assert_eq!((derived.computed, derived.cached), (2, 0));
            assert_eq!(
                ids(&derived),
                ids(&keyring().derive(&clients(), dir()).unwrap())
            );
            ours.save_cache(made_by).unwrap();
            assert_ne!(fs::read(path(made_by)).unwrap(), theirs);
            let mut again = keyring();
            assert!(matches!(
                again.load_cache(made_by),
                CacheLoad::Loaded { entries: 2, .. }
            ));
        }
        fs::remove_dir_all(&state).unwrap();
        fs::remove_dir_all(&file_of_other_key).unwrap();
    }

    #[test]
    fn a_damaged_cache_is_ignored_line_by_line_or_whole() {
        let state = scratch("damaged");
        let mut good = keyring();
        good.derive(&clients(), dir()).unwrap();
        good.save_cache(&state).unwrap();
        let text = fs::read_to_string(path(&state)).unwrap();

        // One line damaged: that client is computed again, and the file is
        // rewritten whole.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[2] = format!("{} zz", &lines[2][..32]);
        lines.push("not a line at all".into());
        fs::write(path(&state), lines.join("\n") + "\n").unwrap();
        let mut warm = keyring();
        let load = warm.load_cache(&state);
        assert_eq!(
            load,
            CacheLoad::Loaded {
                entries: 1,
                bad_lines: 2,
                first_bad: 3
            }
        );
        assert!(load
            .describe(&path(&state))
            .unwrap()
            .contains("2 damaged lines ignored (the first is line 3)"));
        let derived = warm.derive(&clients(), dir()).unwrap();
        assert_eq!((derived.computed, derived.cached), (1, 1));
        warm.save_cache(&state).unwrap();
        assert_eq!(fs::read_to_string(path(&state)).unwrap(), text);

        // Not a cache at all, or unreadable: ignored whole.
        for junk in [&b""[..], b"\xff\xfe garbage", b"knock-pair-keys v9\n"] {
            fs::write(path(&state), junk).unwrap();
            let mut k = keyring();
            assert_eq!(k.load_cache(&state), CacheLoad::NotACache);
            assert_eq!(k.derive(&clients(), dir()).unwrap().computed, 2);
        }
        fs::write(path(&state), format!("{HEADER}\nserver xyz\n")).unwrap();
        assert_eq!(keyring().load_cache(&state), CacheLoad::OtherServer);
        fs::remove_file(path(&state)).unwrap();
        fs::create_dir(path(&state)).unwrap();
        assert!(matches!(
            keyring().load_cache(&state),
            CacheLoad::Unreadable(_)
        ));
        fs::remove_dir_all(&state).unwrap();
    }

    /// A pair key changed in the cache breaks that client's knocks (a hint
    /// miss), nothing else: it cannot make a knock pass.
    #[test]
    fn a_tampered_cache_only_breaks_the_tampered_client() {
        let state = scratch("tampered");
        let mut good = keyring();
        let right = ids(&good.derive(&clients(), dir()).unwrap());
        good.save_cache(&state).unwrap();
        let text = fs::read_to_string(path(&state)).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[2] = format!("{} {}", &lines[2][..32], "ab".repeat(32));
        fs::write(path(&state), lines.join("\n") + "\n").unwrap();
        let mut k = keyring();
        k.load_cache(&state);
        let got = ids(&k.derive(&clients(), dir()).unwrap());
        assert_eq!(got.iter().zip(&right).filter(|(a, b)| a != b).count(), 1);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn clients_no_longer_configured_are_pruned_and_memory_is_reused() {
        let state = scratch("pruned");
        let mut k = keyring();
        k.derive(&clients(), dir()).unwrap();
        k.save_cache(&state).unwrap();
        // A reload without carol: alice comes from memory, carol is pruned.
        let fewer = &clients()[..2];
        let derived = k.derive(fewer, dir()).unwrap();
        assert_eq!((derived.computed, derived.cached), (0, 1));
        assert_eq!(k.cached(), 1);
        k.save_cache(&state).unwrap();
        let text = fs::read_to_string(path(&state)).unwrap();
        assert_eq!(text.lines().count(), 3);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn unusable_keys_and_a_missing_server_key_are_configuration_errors() {
        let mut no_key = Keyring::new(SERVER, None, "/etc/knock/server.key".into());
        // Shared-key clients need no server key.
        assert_eq!(
            no_key
                .derive(&[client("bob", 2, &[22])], dir())
                .unwrap()
                .keys
                .len(),
            1
        );
        assert_eq!(
            no_key.load_cache(Path::new("/nonexistent")),
            CacheLoad::NotNeeded
        );
        let err = no_key.derive(&clients(), dir()).unwrap_err();
        assert_eq!(
            err,
            PairKeyError::NoServerKey {
                key_file: "/etc/knock/server.key".into(),
                client: "alice".into(),
                others: 1
            }
        );
        assert!(err
            .to_string()
            .starts_with("/etc/knock/server.key: missing:"));

        let low_order = ClientEntry {
            credential: Credential::Public(ClientPublicKey::from_bytes(
                *person(4).public().ed25519_bytes(),
                [0; 32],
            )),
            ..public_client("mallory", 4, &[22])
        };
        let mut entries = clients();
        entries.push(low_order);
        let err = keyring().derive(&entries, dir()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/knock/clients.d/mallory.toml: field `public_key`: "),
            "{err}"
        );
    }

    #[test]
    fn many_clients_are_derived_in_order_on_several_threads() {
        let entries: Vec<ClientEntry> = (0..700u32)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[..4].copy_from_slice(&i.to_be_bytes());
                ClientEntry {
                    credential: Credential::Shared(ClientSecret::from_bytes(secret)),
                    ports: vec![PortSpec::tcp(22)],
                    ..client(&format!("c{i}"), 0, &[22])
                }
            })
            .collect();
        let derived = keyring().derive(&entries, dir()).unwrap();
        for (entry, keys) in entries.iter().zip(&derived.keys) {
            let Credential::Shared(secret) = &entry.credential else {
                unreachable!()
            };
            assert_eq!(
                keys.replay_id(),
                PairKeys::shared(secret, &SERVER).replay_id()
            );
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let bytes = [0x00, 0x7f, 0xa5, 0xff];
        assert_eq!(to_hex(&bytes), "007fa5ff");
        assert_eq!(from_hex::<4>(b"007fa5ff"), Some(bytes));
        for junk in [
            &b"007fa5f"[..],
            b"007fa5fff",
            b"007FA5FF",
            b"007fa5fg",
            b"+07fa5ff",
        ] {
            assert_eq!(from_hex::<4>(junk), None, "{junk:?}");
        }
    }
}

/// `cargo test -p knock-server --release --lib pair_keys::scale -- --ignored --nocapture`:
/// cold and warm derivation of many public-key clients.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod scale {
    use std::time::Instant;

    use knock_keys::entry::{ClientEntry, Credential};
    use knock_proto::{ClientIdentity, IdentitySeed};

    use super::*;
    use crate::verify::fixtures::{client, server_key, SERVER};

    #[test]
    #[ignore = "slow: a measurement, not a check"]
    fn cold_and_warm_derivation() {
        let n: u32 = std::env::var("KNOCK_SCALE_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let started = Instant::now();
        let entries: Vec<ClientEntry> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&i.to_be_bytes());
                let public = ClientIdentity::from_seed(&IdentitySeed::from_bytes(seed)).public();
                ClientEntry {
                    credential: Credential::Public(public),
                    ..client(&format!("c{i}"), 0, &[22])
                }
            })
            .collect();
        println!(
            "{n} identities made in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        let state = std::env::temp_dir().join(format!("knock-scale-{}", std::process::id()));
        std::fs::create_dir_all(&state).unwrap();
        let dir = Path::new("/etc/knock/clients.d");

        let mut cold = Keyring::new(SERVER, Some(server_key()), "/k".into());
        let t = Instant::now();
        let derived = cold.derive(&entries, dir).unwrap();
        println!(
            "cold: {} computed in {:.3}s",
            derived.computed,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        cold.save_cache(&state).unwrap();
        println!("cache written in {:.3}s", t.elapsed().as_secs_f64());

        let mut warm = Keyring::new(SERVER, Some(server_key()), "/k".into());
        let t = Instant::now();
        let load = warm.load_cache(&state);
        let loaded = t.elapsed();
        let derived = warm.derive(&entries, dir).unwrap();
        println!(
            "warm: cache read in {:.3}s ({load:?}), {} from the cache, {} computed, total {:.3}s",
            loaded.as_secs_f64(),
            derived.cached,
            derived.computed,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let again = warm.derive(&entries, dir).unwrap();
        println!(
            "reload from memory: {} in {:.3}s",
            again.cached,
            t.elapsed().as_secs_f64()
        );
        std::fs::remove_dir_all(&state).unwrap();
    }
}
