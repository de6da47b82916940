//! The running server: one loop that reads datagrams and honours them
//! ([`pipeline`](crate::pipeline)), and between packets looks at signals,
//! timers and the watchdog. Our firewall rules are checked beside the loop
//! ([`health`](crate::health)), never on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use knock_keys::config::{OnExit, ServerConfig};
use knock_keys::FileError;
use knock_proto::{port_list, Mode, Progress, Tick};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::capture::{Capture, CaptureError, Link, Next};
use crate::control::{ControlSocket, ReloadReport, Request};
use crate::firewall::{
    iptables, nftables, Firewall, FirewallError, Policy, Settings, SettingsChange,
};
use crate::health::RulesKeeper;
use crate::loader::{self, Prepared};
use crate::pair_keys::{Keyring, PairKeyError};
use crate::parallel::Cores;
use crate::pipeline::{Admitted, Outcome};
use crate::privileges;
use crate::rejections::RejectionLog;
use crate::running_config::{ConfigFiles, PendingRecord};
use crate::state::StateFile;
use crate::status::{LastReload, Published, StatusFile, PUBLISH_EVERY};
use crate::timers::{unix_ms, watchdog_interval, Every};
use crate::tuning;
use crate::verify::{Grant, Roster, ServerPolicy, Verifier};

/// How long one wait for a packet may last before we look at signals and
/// timers.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// ...while a reload is being read: its result is swapped in this soon.
const POLL_WHILE_LOADING: Duration = Duration::from_millis(5);
/// How often the hint index and the replay guard learn the time.
const TICK_EVERY: Duration = Duration::from_millis(500);
/// The replay floor is recorded (without fsync) when it has risen this much.
const FLOOR_EVERY_MS: u64 = 1_000;
/// How often the hint index is given work while a slot is being added (the
/// loop then wakes at least this often)...
const INDEX_EVERY: Duration = Duration::from_millis(5);
/// ...and how much: about 1 ms of HMACs and table inserts at 100,000
/// clients, so that a knock waits no longer; 400,000 a second, so a slot of
/// 100,000 clients is added within a second of being wanted.
const INDEX_WORK: usize = 2_048;
/// Knocks granted together at most (one fsync for all of them).
const GRANT_BATCH: usize = 64;

/// The firewall backend the configuration asks for, with its own settings.
pub fn firewall_settings(config: &ServerConfig) -> Settings {
    match config.firewall {
        knock_keys::config::Backend::Nftables => Settings::Nftables(nftables::Settings {
            table: config.nft_table.clone(),
            priority: config.nft_priority,
        }),
        knock_keys::config::Backend::Iptables => Settings::Iptables(iptables::Settings {
            iptables: config.iptables_cmd.clone(),
            ip6tables: config.ip6tables_cmd.clone(),
            mark: config.iptables_mark,
        }),
    }
}

/// What the configuration asks the verifier to enforce besides each
/// client's own policy.
pub fn server_policy(config: &ServerConfig) -> ServerPolicy {
    ServerPolicy {
        protected: config.protected.clone(),
        open_for: config.open_for,
        require_bound_addr: config.require_bound_addr,
    }
}

/// What the configuration asks the firewall to enforce.
pub fn policy(config: &ServerConfig) -> Policy {
    Policy::new(config.knock_port, &config.protected).refusing(config.refuse)
}

pub fn window_ms(config: &ServerConfig) -> u64 {
    u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX)
}

/// Signals, turned into flags the loop looks at.
#[derive(Debug, Clone)]
pub struct Signals {
    pub terminate: Arc<AtomicBool>,
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        let terminate = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&terminate))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))?;
        Ok(Self { terminate, reload })
    }
}

/// Everything the loop owns.
pub struct Daemon {
    pub config: ServerConfig,
    pub settings: Settings,
    pub policy: Policy,
    pub verifier: Verifier,
    /// The server's keys and the pair-key cache; with the loader thread
    /// while a reload is being read.
    pub keyring: Option<Keyring>,
    /// The reload being read beside the loop.
    pub loading: Option<Loading>,
    /// Reload requests that came while another was being read: the files
    /// may have changed since that one read them.
    pub queued: Option<Vec<Sender<ReloadReport>>>,
    /// The record of the last reload being put in place.
    pub recording: Option<std::thread::JoinHandle<()>>,
    pub store: StateFile,
    /// The loop's own backend, for grants only (netlink, never a process).
    pub firewall: Box<dyn Firewall>,
    /// Checks and repairs our rules beside the loop.
    pub keeper: RulesKeeper,
    pub capture: Capture,
    pub signals: Signals,
    /// Where `knock-server reload` and `apply` ask for reloads.
    pub control: ControlSocket,
}

/// A reload being read by the loader thread.
#[derive(Debug)]
pub struct Loading {
    done: Receiver<(Keyring, Result<Prepared, ReloadError>)>,
    replies: Vec<Sender<ReloadReport>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config.path)
            .finish_non_exhaustive()
    }
}

/// Why the loop ended.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM or SIGINT: a clean stop.
    Terminated,
    /// Something we cannot recover from.
    Fatal(String),
}

/// Why a reload was refused; the server keeps its previous configuration.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    PairKeys(#[from] PairKeyError),
    #[error("changing {0} needs a restart")]
    NeedsRestart(&'static str),
    #[error(transparent)]
    Firewall(#[from] SettingsChange),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("installing the new rules: {0}")]
    Install(#[from] FirewallError),
}

/// What the loop knows about its capture besides the socket, and what it
/// has told systemd and the status file.
#[derive(Debug)]
struct Watch {
    link: Link,
    /// When `link` last changed, on the loop's clock and as Unix seconds.
    since: Instant,
    since_unix: u64,
    /// When capture last stopped being live.
    lost: Instant,
    started_unix: u64,
    /// The `ready` line was logged and systemd notified.
    ready: bool,
    /// The last refresh error logged, so that one that persists is said once.
    failing: Option<String>,
    /// The status file could not be written (said once).
    publish_failing: bool,
    kernel_drops: u64,
    watchdog: Option<Every>,
    last_reload: Option<LastReload>,
    /// Refusals counted in the status file last written.
    published_refusals: u64,
    /// How far the clock is behind the replay floor, if it is.
    behind_floor: Option<u64>,
    /// The floor last recorded beside the replay state.
    floor_recorded: u64,
    /// The longest the loop went without reading packets since the reload
    /// being read began.
    longest_step: Duration,
}

impl Watch {
    fn new(link: Link, now: Instant) -> Self {
        let unix = unix_ms() / 1000;
        Self {
            link,
            since: now,
            since_unix: unix,
            lost: now,
            started_unix: unix,
            ready: false,
            failing: None,
            publish_failing: false,
            kernel_drops: 0,
            watchdog: None,
            last_reload: None,
            published_refusals: 0,
            behind_floor: None,
            floor_recorded: 0,
            longest_step: Duration::ZERO,
        }
    }
}

/// Why a capture that is not live is not.
fn why_not_live(link: Link) -> &'static str {
    match link {
        Link::Live => "it is live",
        Link::Down => "the interface is down",
        Link::Missing => "the interface is gone",
    }
}

impl Daemon {
    /// Runs until SIGTERM or a fatal error. Our rules are installed; the
    /// `ready` line (and systemd's READY) waits until capture is live too,
    /// which for an interface that does not exist yet means waiting for it.
    pub fn run(mut self) -> Exit {
        let mut log = RejectionLog::default();
        let start = Instant::now();
        let mut tick = Every::new(TICK_EVERY, start);
        let mut publish = Every::new(PUBLISH_EVERY, start);
        let mut index_due = Every::new(INDEX_EVERY, start);
        let mut index_busy = true;
        let mut admitted = Admitted::default();
        let mut stepped = Instant::now();
        let status = StatusFile::in_dir(&self.config.state_dir);
        let mut watch = Watch::new(self.capture.link(), start);
        if watch.link == Link::Live {
            self.announce_ready(&mut watch, start);
        } else {
            self.say_waiting(watch.link);
        }
        self.publish(&status, &mut watch, &log);

        let exit = loop {
            if self.signals.terminate.load(Ordering::Relaxed) {
                break None;
            }
            // Each request gets its own reload, which reads the files after
            // the request came: a signal sent meanwhile is answered by it too.
            let mut requests = Vec::new();
            while let Some(Request::Reload(reply)) = self.control.next() {
                requests.push(reply);
            }
            let signalled = self.signals.reload.swap(false, Ordering::Relaxed);
            if signalled || !requests.is_empty() {
                self.queued.get_or_insert_with(Vec::new).extend(requests);
            }
            if self.loading.is_none() {
                if let Some(replies) = self.queued.take() {
                    if let Err(reason) = self.start_reload(replies, &mut watch) {
                        break Some(reason);
                    }
                }
            }
            let reloaded = match self.reload_finished(&mut watch) {
                Ok(reloaded) => reloaded,
                Err(reason) => break Some(reason),
            };
            if reloaded {
                // A reload may have moved capture to another interface.
                self.follow_capture(&mut watch, None, Instant::now());
                self.publish(&status, &mut watch, &log);
            }
            if let Some(reason) = self.keeper.fatal() {
                break Some(reason);
            }

            // The loop's own work since the last read: what a knock arriving
            // meanwhile waited for.
            let step = stepped.elapsed();
            watch.longest_step = watch.longest_step.max(step);
            // Wake soon while a reload or the index has work for the loop.
            self.capture.set_poll_every(if self.loading.is_some() {
                POLL_WHILE_LOADING
            } else if index_busy {
                INDEX_EVERY
            } else {
                POLL_EVERY
            });
            let mut read_error = None;
            let next = self.capture.wait_next();
            stepped = Instant::now();
            match next {
                Ok(Next::Datagram(datagram)) => {
                    let arrived = datagram.arrived.unwrap_or_else(SystemTime::now);
                    if let Err(rejection) = admitted.admit(
                        &mut self.verifier,
                        datagram.payload,
                        datagram.source,
                        unix_ms(),
                        arrived,
                    ) {
                        log.record(&rejection);
                    }
                }
                Ok(Next::Malformed) => log.record_other("malformed-packet"),
                // Refused before any cryptography: nothing is consumed.
                Ok(Next::Implausible(_)) => log.record_other("implausible-source"),
                Ok(Next::Idle) => {}
                // ENETDOWN: the interface went down or away. The kernel says
                // so once; we look at the interface now instead of at the
                // next tick.
                Err(err) => read_error = Some(err),
            }
            // Grant what was admitted once nothing more is queued: the next
            // read may wait for a packet.
            if !admitted.is_empty() && (!self.capture.has_queued() || admitted.len() >= GRANT_BATCH)
            {
                self.grant_admitted(&mut admitted, &mut log);
            }

            let now = Instant::now();
            if index_due.due(now) {
                index_busy = matches!(
                    self.verifier.advance_index(unix_ms(), INDEX_WORK),
                    Progress::More
                );
            }
            let due = tick.due(now);
            if due || read_error.is_some() {
                if self.follow_capture(&mut watch, read_error.as_ref(), now) {
                    self.publish(&status, &mut watch, &log);
                }
                if read_error.is_some() && watch.link == Link::Live {
                    // An error the interface does not explain: do not spin
                    // on it if it repeats.
                    std::thread::sleep(POLL_EVERY);
                }
            }
            if due {
                self.learn_time(&mut watch, unix_ms());
                match self.capture.take_kernel_drops() {
                    Ok(drops) => {
                        watch.kernel_drops = watch.kernel_drops.saturating_add(drops);
                        log.record_kernel_drops(drops);
                    }
                    Err(err) => debug!("cannot read the capture socket's statistics: {err}"),
                }
                log.maybe_summarise(now);
            }
            // New refusals are in the status file within a tick, for an
            // operator asking why a knock did nothing; a flood costs at most
            // one small write per tick.
            if publish.due(now) || (due && log.total() != watch.published_refusals) {
                self.publish(&status, &mut watch, &log);
            }
            if watch.watchdog.as_mut().is_some_and(|w| w.due(now)) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        };

        log.summarise(Instant::now());
        self.control.remove();
        // Gone at once, rather than stale after a while: `status` then says
        // "not running" right away.
        if let Err(err) = status.remove() {
            warn!("cannot remove {}: {err}", status.path().display());
        }
        match exit {
            None => self.shutdown(),
            Some(reason) => Exit::Fatal(reason),
        }
    }

    /// Tells the verifier the time, says when the clock is behind the
    /// replay guard's floor (and when it has caught up), and records the
    /// floor about once a second.
    fn learn_time(&mut self, watch: &mut Watch, now_ms: u64) {
        let behind = match self.verifier.tick(now_ms) {
            Tick::Forward => None,
            Tick::BehindFloor { by_ms } => Some(by_ms),
        };
        match (behind, watch.behind_floor) {
            (Some(by_ms), None) => warn!(
                "the clock is {}s behind the latest time this server has seen (it stepped back): knocks stamped before {}s ago by the old clock are refused until the clock catches up",
                by_ms / 1000,
                self.verifier_window_s()
            ),
            (None, Some(_)) => info!("the clock has caught up with the latest time this server had seen"),
            _ => {}
        }
        watch.behind_floor = behind;
        let floor = self.verifier.floor_ms();
        if floor >= watch.floor_recorded.saturating_add(FLOOR_EVERY_MS) {
            match self.store.record_floor(floor) {
                Ok(()) => watch.floor_recorded = floor,
                Err(err) => debug!("cannot record the replay floor: {err}"),
            }
        }
        // The journal made the grants durable; the state of record follows
        // once they pause, or every few seconds.
        if self.store.snapshot_due() {
            self.store
                .snapshot_beside(self.verifier.replay_guard().clone());
        }
    }

    fn verifier_window_s(&self) -> u64 {
        self.config.max_clock_skew.as_secs()
    }

    /// Makes the replay state of the admitted knocks durable, grants them,
    /// and says so.
    fn grant_admitted(&mut self, admitted: &mut Admitted, log: &mut RejectionLog) {
        for (outcome, arrived) in admitted.grant_all(
            &mut self.store,
            self.firewall.as_mut(),
            self.verifier.replay_guard(),
        ) {
            let outcome = match outcome {
                Outcome::FirewallFailed(grant, err) if err.is_missing() => {
                    self.grant_again(grant, &err)
                }
                outcome => outcome,
            };
            if let Outcome::Granted(grant) = &outcome {
                self.keeper
                    .granted(grant.addr, &grant.ports, grant.duration);
            }
            let after = SystemTime::now()
                .duration_since(arrived)
                .unwrap_or_default();
            report(outcome, after, log);
        }
    }

    /// A grant found our rules gone (another tool flushed them a moment
    /// ago): has the keeper put them back now, then grants once more.
    fn grant_again(&mut self, grant: Grant, err: &FirewallError) -> Outcome {
        warn!("granting failed ({err}); reinstalling our rules and trying again");
        if let Err(err) = self.keeper.repair() {
            return Outcome::FirewallFailed(grant, err);
        }
        match self
            .firewall
            .grant(grant.addr, &grant.ports, grant.duration)
        {
            Ok(()) => Outcome::Granted(grant),
            Err(err) => Outcome::FirewallFailed(grant, err),
        }
    }

    /// The `ready` line, and systemd's READY: rules installed, capture live.
    fn announce_ready(&self, watch: &mut Watch, now: Instant) {
        info!(
            "ready: {} clients, knock port udp/{} on {}, protecting {} with {} for {}s, capabilities {}",
            self.verifier.client_count(),
            self.config.knock_port,
            self.config.interface,
            port_list(&self.config.protected),
            self.firewall.name(),
            self.config.open_for.as_secs(),
            privileges::current()
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        watch.ready = true;
        // systemd's watchdog runs from READY on.
        watch.watchdog = watchdog_interval().map(|every| Every::new(every, now));
    }

    fn say_waiting(&self, link: Link) {
        let what = match link {
            Link::Down => "come up",
            Link::Live | Link::Missing => "appear",
        };
        info!(
            "waiting for interface {} to {what}; protected ports are closed meanwhile",
            self.capture.interface()
        );
    }

    /// Looks at the capture's interface, binding again as needed, and says
    /// what changed: `ready` the first time capture is live, then "failed"
    /// and "live again". Returns whether the state changed.
    fn follow_capture(
        &mut self,
        watch: &mut Watch,
        read_error: Option<&std::io::Error>,
        now: Instant,
    ) -> bool {
        let interface = self.capture.interface().to_owned();
        let index_before = self.capture.bound_index();
        let link = match self.capture.refresh() {
            Ok(link) => {
                watch.failing = None;
                link
            }
            Err(err) => {
                let message = err.to_string();
                if watch.failing.as_deref() != Some(message.as_str()) {
                    warn!(
                        "capture on {interface}: {message}; trying again every {}ms",
                        TICK_EVERY.as_millis()
                    );
                    watch.failing = Some(message);
                }
                return false;
            }
        };
        if link == watch.link {
            if link == Link::Live && index_before != self.capture.bound_index() {
                // Deleted and re-created between two looks.
                warn!(
                    "capture on {interface} moved to the re-created interface (index {} -> {}); knocks sent in between were not seen",
                    index_before.unwrap_or(0),
                    self.capture.bound_index().unwrap_or(0)
                );
            } else if let (Link::Live, Some(err)) = (link, read_error) {
                debug!("capture on {interface}: read failed ({err}), but the interface is up and bound");
            }
            return false;
        }
        let was = std::mem::replace(&mut watch.link, link);
        if was == Link::Live {
            watch.lost = now;
        }
        watch.since = now;
        watch.since_unix = unix_ms() / 1000;
        match (link, watch.ready) {
            (Link::Live, false) => self.announce_ready(watch, now),
            (Link::Live, true) => info!(
                "capture on {interface} is live again after {}s",
                now.duration_since(watch.lost).as_secs()
            ),
            (_, false) => self.say_waiting(link),
            (_, true) if was == Link::Live => {
                let detail = read_error.map(|e| format!(" ({e})")).unwrap_or_default();
                warn!(
                    "capture failed on {interface}: {}{detail}; knocks are not seen until it is back, protected ports stay closed",
                    why_not_live(link)
                );
            }
            (_, true) => info!(
                "capture on {interface}: {}; waiting for it",
                why_not_live(link)
            ),
        }
        true
    }

    /// Rewrites the status file; a failure is said once, and never stops
    /// the loop.
    fn publish(&self, status: &StatusFile, watch: &mut Watch, log: &RejectionLog) {
        let published = Published {
            pid: std::process::id(),
            started_at: watch.started_unix,
            written_at: unix_ms() / 1000,
            ready: watch.ready,
            interface: self.config.interface.clone(),
            capture: watch.link,
            capture_since: watch.since_unix,
            kernel_drops: watch.kernel_drops,
            clients: self.verifier.client_count(),
            public_key_clients: self.verifier.count_of(Mode::Public),
            signature_checks: self.verifier.signature_counts().checked,
            signature_failures: self.verifier.signature_counts().failed,
            refused: log
                .totals()
                .iter()
                .map(|(reason, n)| ((*reason).to_owned(), *n))
                .collect(),
            last_reload: watch.last_reload.clone(),
            expired: self.verifier.expired(unix_ms()),
            refusing_until: self.verifier.refused_through_ms().div_ceil(1000),
            clock_behind_s: watch.behind_floor.unwrap_or(0) / 1000,
        };
        watch.published_refusals = log.total();
        match status.write(&published) {
            Ok(()) => watch.publish_failing = false,
            Err(err) if !watch.publish_failing => {
                warn!(
                    "cannot write {}: {err}; `knock-server status` will report this server as not running",
                    status.path().display()
                );
                watch.publish_failing = true;
            }
            Err(_) => {}
        }
    }

    fn shutdown(mut self) -> Exit {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if self.store.snapshot_behind() {
            // The journal holds it durably already; this is for tidiness.
            let _ = self
                .store
                .write_snapshot(&self.verifier.replay_guard().encode());
        }
        if let Some(loading) = self.loading.take() {
            // The keyring comes back with the reload being read.
            if let Ok((keyring, _)) = loading.done.recv() {
                self.keyring = Some(keyring);
            }
        }
        if let Some(keyring) = self.keyring.as_mut() {
            keyring.finish_writing();
        }
        if let Some(recording) = self.recording.take() {
            let _ = recording.join();
        }
        let settings = self.settings;
        let firewall = self.keeper.stop();
        match self.config.on_exit {
            OnExit::StayClosed => {
                info!("stopping; protected ports stay closed, live grants run out in the kernel")
            }
            OnExit::RemoveRules => {
                let mut firewall = firewall.unwrap_or_else(|| settings.build());
                match firewall.remove() {
                    Ok(()) => warn!("stopping; on_exit = \"remove-rules\": protected ports are OPEN to everyone until knock-server starts again"),
                    Err(err) => error!("stopping; could not remove our rules: {err}"),
                }
            }
        }
        Exit::Terminated
    }

    /// SIGHUP or control requests: reads configuration and clients again
    /// in the loader thread, while the loop goes on; [`Self::reload_finished`]
    /// swaps the result in. Before `ready`, systemd hears nothing of it:
    /// READY must wait for capture.
    fn start_reload(
        &mut self,
        replies: Vec<Sender<ReloadReport>>,
        watch: &mut Watch,
    ) -> Result<(), String> {
        let Some(mut keyring) = self.keyring.take() else {
            // Not reached: the keyring is back whenever nothing is loading.
            self.queued = Some(replies);
            return Ok(());
        };
        if watch.ready {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        }
        info!(
            "reloading: reading {} and its clients beside the packet loop, which keeps honouring knocks",
            self.config.path.display()
        );
        watch.longest_step = Duration::ZERO;
        let (done, result) = mpsc::channel();
        let path = self.config.path.clone();
        let running = self.config.clone();
        let recording = self.recording.take();
        std::thread::Builder::new()
            .name("knock-loader".into())
            .spawn(move || {
                tuning::yield_to_the_loop();
                // The last record first: both are written under one name.
                if let Some(recording) = recording {
                    let _ = recording.join();
                }
                // One thread: the other core stays the packet loop's.
                let loaded = loader::load(&path, &mut keyring, Some(&running), Cores::One);
                let _ = done.send((keyring, loaded));
            })
            .map_err(|e| format!("cannot start a thread to reload in: {e}"))?;
        self.loading = Some(Loading {
            done: result,
            replies,
        });
        Ok(())
    }

    /// Swaps in a reload the loader thread has finished reading, if there
    /// is one, and answers whoever asked for it. On any error the server
    /// keeps running on the old configuration; live grants are never
    /// touched.
    fn reload_finished(&mut self, watch: &mut Watch) -> Result<bool, String> {
        let Some(loading) = self.loading.as_ref() else {
            return Ok(false);
        };
        let (keyring, loaded) = match loading.done.try_recv() {
            Ok(done) => done,
            Err(TryRecvError::Empty) => return Ok(false),
            // The loader thread panicked, and took the keyring with it.
            Err(TryRecvError::Disconnected) => {
                return Err("the thread reading a reload ended without an answer".into())
            }
        };
        let Some(loading) = self.loading.take() else {
            return Ok(false);
        };
        self.keyring = Some(keyring);
        let swapping = Instant::now();
        let switched = loaded.and_then(|prepared| self.switch_to(prepared));
        let longest = watch.longest_step.max(swapping.elapsed());
        let mut recording = None;
        let report = match switched {
            Ok(Switched {
                summary,
                warnings,
                took,
                record,
            }) => {
                recording = Some(record);
                info!(
                    "read the configuration and clients in {:.2}s beside the packet loop, whose longest step meanwhile (the swap included) took {:.3} ms",
                    took.as_secs_f64(),
                    longest.as_secs_f64() * 1000.0
                );
                info!("reloaded: {summary}");
                for warning in &warnings {
                    warn!("{warning}");
                }
                ReloadReport {
                    warnings,
                    outcome: Ok(summary),
                }
            }
            Err(err) => {
                error!("reload failed, still running on the previous configuration: {err}");
                ReloadReport {
                    warnings: Vec::new(),
                    outcome: Err(err.to_string()),
                }
            }
        };
        watch.last_reload = Some(LastReload {
            at: unix_ms() / 1000,
            outcome: report.outcome.clone(),
        });
        if watch.ready {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
        match recording {
            // The answer waits for the record: `apply` reads it next.
            Some(recording) => {
                self.recording = recording.commit_then_answer(loading.replies, report);
            }
            None => {
                for reply in loading.replies {
                    let _ = reply.send(report.clone());
                }
            }
        }
        Ok(true)
    }

    /// The part of a reload that happens on the loop: the firewall, the
    /// capture, and the swap.
    fn switch_to(&mut self, prepared: Prepared) -> Result<Switched, ReloadError> {
        let Prepared {
            config,
            roster,
            warnings,
            record,
            record_error,
            took,
        } = prepared;
        // Installing under a new table name (or with other commands) would
        // leave our old table or chain in place, still dropping the protected
        // ports for everyone: every grant would then be in vain.
        let settings = firewall_settings(&config);
        self.settings.change_to(&settings)?;
        // Open the new capture before the firewall changes: a reload that
        // fails there (an interface that does not exist) must leave the
        // firewall as the old configuration had it.
        let capture = if config.interface != self.config.interface
            || config.knock_port != self.config.knock_port
        {
            Some(Capture::open(
                &config.interface,
                config.knock_port,
                POLL_EVERY,
            )?)
        } else {
            None
        };
        let policy = policy(&config);
        if policy != self.policy || settings != self.settings {
            self.keeper.install(settings.clone(), policy.clone())?;
            if settings != self.settings {
                self.firewall = settings.build();
            }
            self.settings = settings;
            self.policy = policy;
        }
        if let Some(mut capture) = capture {
            capture.inherit_drops(&mut self.capture);
            self.capture = capture;
        }
        let identity = self
            .keyring
            .as_ref()
            .map_or(self.verifier.server(), identity_of);
        let old = self
            .verifier
            .reconfigure(identity, roster, server_policy(&config));
        drop_beside(old);
        let summary = format!(
            "{} clients, protecting {}",
            self.verifier.client_count(),
            port_list(&config.protected)
        );
        let state_dir = config.state_dir.clone();
        self.config = config;
        Ok(Switched {
            summary,
            warnings,
            took,
            record: Recording {
                state_dir,
                record,
                error: record_error,
            },
        })
    }
}

/// What the loop's part of a reload made.
struct Switched {
    summary: String,
    warnings: Vec<String>,
    took: Duration,
    record: Recording,
}

/// The record of a reload that runs, still to be put in place.
struct Recording {
    state_dir: std::path::PathBuf,
    record: Option<PendingRecord>,
    error: Option<String>,
}

/// A record to put in place and the answers that wait for it.
type RecordJob = (Recording, Vec<Sender<ReloadReport>>, ReloadReport);

impl Recording {
    /// Puts the record in place beside the loop (a rename and a directory
    /// fsync after a file of megabytes: milliseconds), then answers
    /// `replies`. The next reload joins it before it writes a record.
    fn commit_then_answer(
        self,
        replies: Vec<Sender<ReloadReport>>,
        report: ReloadReport,
    ) -> Option<std::thread::JoinHandle<()>> {
        let job = Arc::new(std::sync::Mutex::new(Some((self, replies, report))));
        let theirs = Arc::clone(&job);
        match std::thread::Builder::new()
            .name("knock-record".into())
            .spawn(move || {
                tuning::yield_to_the_loop();
                finish_recording(&theirs);
            }) {
            Ok(handle) => Some(handle),
            Err(err) => {
                debug!("recording on the loop: {err}");
                finish_recording(&job);
                None
            }
        }
    }
}

fn finish_recording(job: &std::sync::Mutex<Option<RecordJob>>) {
    let taken = job.lock().ok().and_then(|mut job| job.take());
    if let Some((recording, replies, report)) = taken {
        commit_record(&recording.state_dir, recording.record, recording.error);
        for reply in replies {
            let _ = reply.send(report.clone());
        }
    }
}

/// Drops a replaced roster in a thread of its own: wiping 100,000 clients'
/// keys takes milliseconds the loop does not have.
fn drop_beside(roster: Roster) {
    if let Err(err) = std::thread::Builder::new()
        .name("knock-drop".into())
        .spawn(move || {
            tuning::yield_to_the_loop();
            drop(roster);
        })
    {
        debug!("dropping the old clients on the loop: {err}");
    }
}

/// Makes `record` the record of what the server runs, for `knock-server
/// apply` to roll back to. If it could not be written, the old record is
/// removed rather than left stale: `apply` then refuses to start instead
/// of restoring something older.
pub fn commit_record(
    state_dir: &std::path::Path,
    record: Option<PendingRecord>,
    error: Option<String>,
) {
    let error = match record.map(PendingRecord::commit) {
        Some(Ok(())) => return,
        Some(Err(err)) => err.to_string(),
        None => error.unwrap_or_else(|| "not written".into()),
    };
    let _ = ConfigFiles::forget(state_dir);
    warn!(
        "cannot record the running configuration in {} ({error}); `knock-server apply` cannot roll back until the next successful reload",
        crate::running_config::path(state_dir).display()
    );
}

/// What the verifier needs to know of the server's keys.
pub fn identity_of(keyring: &Keyring) -> crate::verify::ServerIdentity {
    crate::verify::ServerIdentity {
        id: keyring.server_id(),
        public: keyring.server_public(),
    }
}

fn report(outcome: Outcome, after_arrival: Duration, log: &mut RejectionLog) {
    match outcome {
        Outcome::Granted(grant) => info!(
            "granted {} to {} for {}s (client {}; live {:.3} ms after arrival)",
            port_list(&grant.ports),
            grant.addr,
            grant.duration.as_secs(),
            grant.client,
            after_arrival.as_secs_f64() * 1000.0
        ),
        Outcome::Rejected(rejection) => log.record(&rejection),
        Outcome::StateNotDurable(_, err) => {
            error!("knock verified but NOT granted: cannot make the replay state durable: {err}")
        }
        Outcome::FirewallFailed(_, err) => {
            error!("knock verified but the firewall refused the grant: {err}")
        }
    }
}
