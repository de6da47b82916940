//! Loading the configuration and every client into a [`Roster`], at start
//! and for each reload, in a thread of its own: the packet loop keeps
//! reading knocks while 100,000 client files are read, checked and turned
//! into pair keys and hints, and only swaps the result in.
//!
//! Files are read one at a time and kept as little as possible: each
//! client's text goes straight into the record of what the server runs
//! ([`RecordWriter`]), and its entry becomes a compact roster client, its
//! pair key derived, a few thousand entries at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use knock_keys::config::ServerConfig;
use knock_keys::entry::ClientEntry;
use knock_keys::secret_file::read_config;
use tracing::{info, warn};

use crate::clients::{mode, read_client_files, ClientFiles};
use crate::daemon::{window_ms, ReloadError};
use crate::pair_keys::{Derivation, Keyring, PairKeyError};
use crate::parallel::Cores;
use crate::running_config::{PendingRecord, RecordWriter};
use crate::sanity;
use crate::timers::unix_ms;
use crate::verify::{Roster, RosterBuilder};
use knock_proto::Mode;

/// Entries whose pair keys are derived together (public-key ones on every
/// core).
const PART: usize = 4096;

/// A configuration and its clients, read and checked, ready to run.
#[derive(Debug)]
pub struct Prepared {
    pub config: ServerConfig,
    pub roster: Roster,
    pub warnings: Vec<String>,
    /// The record of these files, to commit once they run; `None` if it
    /// could not be written (said in `record_error`).
    pub record: Option<PendingRecord>,
    pub record_error: Option<String>,
    /// How long reading and building took.
    pub took: Duration,
}

/// Says how the pair keys were made, when public-key clients are involved;
/// `took` is the load so far, pair keys included.
fn log_pair_keys(computed: usize, cached: usize, took: Duration) {
    if computed + cached == 0 {
        return;
    }
    info!(
        "pair keys of {} public-key clients: {} from the cache, {} computed (loading took {:.2}s)",
        computed + cached,
        cached,
        computed,
        took.as_secs_f64()
    );
}

/// Reads `config_path` and its clients. `running` is the configuration the
/// server runs now (on a reload): what cannot change without a restart is
/// refused here, before anything changes.
pub fn load(
    config_path: &Path,
    keyring: &mut Keyring,
    running: Option<&ServerConfig>,
    cores: Cores,
) -> Result<Prepared, ReloadError> {
    let started = Instant::now();
    let text = read_config(config_path)?;
    let config = ServerConfig::parse(config_path, &text)?;
    if let Some(old) = running {
        if old.state_dir != config.state_dir {
            return Err(ReloadError::NeedsRestart("state_dir"));
        }
        if old.identity_file != config.identity_file {
            return Err(ReloadError::NeedsRestart("identity_file"));
        }
        if old.server_key_file != config.server_key_file {
            return Err(ReloadError::NeedsRestart("server_key_file"));
        }
        if keyring.has_secret() {
            check_server_key(keyring, &config)?;
        }
    }
    let (mut record, mut record_error) = match RecordWriter::create(
        &config.state_dir,
        unix_ms() / 1000,
        config_path,
        &text,
        &config.clients_dir,
    ) {
        Ok(writer) => (Some(writer), None),
        Err(err) => (None, Some(err.to_string())),
    };
    let now_ms = unix_ms();
    let mut scan = sanity::Scan::new(&config, now_ms);
    let files = ClientFiles::list(&config.clients_dir)?;
    let mut builder = RosterBuilder::with_capacity(files.len());
    let mut derivation = Derivation::default();
    let mut part: Vec<ClientEntry> = Vec::with_capacity(PART);
    // Public-key clients while the server has no key: an error once all
    // are counted.
    let mut keyless: Option<(String, usize)> = None;
    let dir = config.clients_dir.clone();
    let mut flush = |part: &mut Vec<ClientEntry>,
                     builder: &mut RosterBuilder,
                     keyring: &mut Keyring,
                     keyless: &mut Option<(String, usize)>|
     -> Result<(), ReloadError> {
        if let Some(first) = part.iter().find(|e| mode(e) == Mode::Public) {
            if !keyring.has_secret() {
                adopt_server_key(keyring, &config)?;
            }
            if !keyring.has_secret() || keyless.is_some() {
                let publics = part.iter().filter(|e| mode(e) == Mode::Public).count();
                let (_, count) = keyless.get_or_insert_with(|| (first.name.clone(), 0));
                *count += publics;
                part.clear();
                return Ok(());
            }
        }
        if keyless.is_none() {
            let keys = keyring.derive_more(&mut derivation, part, &dir, cores)?;
            for (entry, keys) in part.iter().zip(keys) {
                builder.push(entry, keys);
            }
        }
        part.clear();
        Ok(())
    };
    read_client_files(&files, cores, |_, entry, text| {
        if let Some(writer) = record.as_mut() {
            if let Err(err) = writer.client(&entry.name, &text) {
                record_error = Some(err.to_string());
                record = None;
            }
        }
        drop(text);
        scan.client(&entry);
        part.push(entry);
        if part.len() >= PART {
            flush(&mut part, &mut builder, keyring, &mut keyless)?;
        }
        Ok::<(), ReloadError>(())
    })?;
    flush(&mut part, &mut builder, keyring, &mut keyless)?;
    drop(files);
    if let Some((client, publics)) = keyless {
        return Err(PairKeyError::NoServerKey {
            key_file: keyring.key_file().to_path_buf(),
            client,
            others: publics - 1,
        }
        .into());
    }
    let (computed, cached) = keyring.end(derivation);
    log_pair_keys(computed, cached, started.elapsed());
    // Rendered here, written beside: 100,000 lines are not the loop's work.
    keyring.save_cache_in_background(&config.state_dir);
    let record = match record.map(RecordWriter::finish) {
        Some(Ok(pending)) => Some(pending),
        Some(Err(err)) => {
            record_error = Some(err.to_string());
            None
        }
        None => None,
    };
    let warnings = scan.finish();
    let roster = builder.finish(window_ms(&config), unix_ms());
    Ok(Prepared {
        config,
        roster,
        warnings,
        record,
        record_error,
        took: started.elapsed(),
    })
}

/// The server key, read when the first public-key client comes to a
/// server that started without one.
fn adopt_server_key(keyring: &mut Keyring, config: &ServerConfig) -> Result<(), ReloadError> {
    let file = &config.server_key_file;
    if !file.exists() {
        // The caller says what is missing, with every client that needs it.
        return Ok(());
    }
    let key = knock_keys::identity::load_server_key(file)?;
    keyring.adopt_secret(key);
    let cache = keyring.load_cache(&config.state_dir);
    if let Some(line) = cache.describe(&crate::pair_keys::path(&config.state_dir)) {
        if cache.is_warning() {
            warn!("{line}");
        } else {
            info!("{line}");
        }
    }
    Ok(())
}

/// The key a running server holds cannot change without a restart.
fn check_server_key(keyring: &Keyring, config: &ServerConfig) -> Result<(), ReloadError> {
    let file = &config.server_key_file;
    if !file.exists() {
        return Ok(());
    }
    let key = knock_keys::identity::load_server_key(file)?;
    match keyring.server_public() {
        Some(public) if public != key.public() => {
            Err(ReloadError::NeedsRestart("server.key (it was replaced)"))
        }
        _ => Ok(()),
    }
}
