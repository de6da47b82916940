//! The running server: one loop that reads datagrams and honours them
//! ([`pipeline`](crate::pipeline)), and between packets looks at signals,
//! timers and the watchdog. Our firewall rules are checked beside the loop
//! ([`health`](crate::health)), never on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knock_keys::config::{OnExit, Refuse, ServerConfig};
use knock_keys::FileError;
use knock_proto::port_list;
use thiserror::Error;
use tracing::{error, info, warn};

use crate::capture::{Capture, CaptureError, Next};
use crate::clients::load_clients;
use crate::firewall::{
    iptables, nftables, Firewall, FirewallError, Policy, Refusal, Settings, SettingsChange,
};
use crate::health::RulesKeeper;
use crate::pipeline::{honour, Outcome};
use crate::rejections::RejectionLog;
use crate::state::StateFile;
use crate::timers::{unix_ms, watchdog_interval, Every};
use crate::verify::{Grant, Verifier};

/// How long one wait for a packet may last before we look at signals and
/// timers.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often the hint index and the replay guard learn the time.
const TICK_EVERY: Duration = Duration::from_millis(500);

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

/// What the configuration asks the firewall to enforce.
pub fn policy(config: &ServerConfig) -> Policy {
    Policy::new(config.knock_port, &config.protected).refusing(match config.refuse {
        Refuse::Reject => Refusal::Reject,
        Refuse::Drop => Refusal::Drop,
    })
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
    pub store: StateFile,
    /// The loop's own backend, for grants only (netlink, never a process).
    pub firewall: Box<dyn Firewall>,
    /// Checks and repairs our rules beside the loop.
    pub keeper: RulesKeeper,
    pub capture: Capture,
    pub signals: Signals,
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
    #[error("changing {0} needs a restart")]
    NeedsRestart(&'static str),
    #[error(transparent)]
    Firewall(#[from] SettingsChange),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("installing the new rules: {0}")]
    Install(#[from] FirewallError),
}

impl Daemon {
    /// Runs until SIGTERM or a fatal error.
    pub fn run(mut self) -> Exit {
        let mut log = RejectionLog::default();
        let start = Instant::now();
        let mut tick = Every::new(TICK_EVERY, start);
        let mut watchdog = watchdog_interval().map(|every| Every::new(every, start));
        let mut capture_down_since: Option<Instant> = None;

        loop {
            if self.signals.terminate.load(Ordering::Relaxed) {
                log.summarise(Instant::now());
                return self.shutdown();
            }
            if self.signals.reload.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            if let Some(reason) = self.keeper.fatal() {
                log.summarise(Instant::now());
                return Exit::Fatal(reason);
            }

            let next = self.capture.wait_next();
            if next.is_ok() {
                // Only a capture that delivers (or times out waiting) is live:
                // a socket reopened on an interface that is still down fails
                // again at once, and must not log "live again" every 200 ms.
                if let Some(since) = capture_down_since.take() {
                    info!(
                        "capture on {} is live again after {}s",
                        self.config.interface,
                        since.elapsed().as_secs()
                    );
                }
            }
            match next {
                Ok(Next::Datagram(datagram)) => {
                    let outcome = match honour(
                        &mut self.verifier,
                        &mut self.store,
                        self.firewall.as_mut(),
                        datagram.payload,
                        datagram.source,
                        unix_ms(),
                    ) {
                        Outcome::FirewallFailed(grant, err) if err.is_missing() => {
                            self.grant_again(grant, &err)
                        }
                        outcome => outcome,
                    };
                    if let Outcome::Granted(grant) = &outcome {
                        self.keeper
                            .granted(grant.addr, &grant.ports, grant.duration);
                    }
                    report(outcome, &mut log);
                }
                Ok(Next::Malformed) => log.record_other("malformed-packet"),
                Ok(Next::Idle) => {}
                Err(err) => {
                    // ENETDOWN and friends: the interface went away or down.
                    // Reopen until it is back; the firewall keeps protecting
                    // meanwhile.
                    if capture_down_since.is_none() {
                        warn!("capture failed: {err}; reopening until the interface is back");
                        capture_down_since = Some(Instant::now());
                    }
                    std::thread::sleep(POLL_EVERY);
                    match Capture::open(&self.config.interface, self.config.knock_port, POLL_EVERY)
                    {
                        Ok(capture) => self.capture = capture,
                        Err(err) => {
                            tracing::debug!("capture still down: {err}");
                        }
                    }
                }
            }

            let now = Instant::now();
            if tick.due(now) {
                self.verifier.tick(unix_ms());
                log.maybe_summarise(now);
            }
            if watchdog.as_mut().is_some_and(|w| w.due(now)) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
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

    fn shutdown(self) -> Exit {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
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

    /// SIGHUP: re-read configuration and clients. On any error keep running
    /// on the old configuration. Live grants are never touched.
    fn reload(&mut self) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        match self.try_reload() {
            Ok(summary) => info!("reloaded: {summary}"),
            Err(err) => error!("reload failed, still running on the previous configuration: {err}"),
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }

    fn try_reload(&mut self) -> Result<String, ReloadError> {
        let config = ServerConfig::load(&self.config.path)?;
        if self.config.state_dir != config.state_dir {
            return Err(ReloadError::NeedsRestart("state_dir"));
        }
        if self.config.identity_file != config.identity_file {
            return Err(ReloadError::NeedsRestart("identity_file"));
        }
        // Installing under a new table name (or with other commands) would
        // leave our old table or chain in place, still dropping the protected
        // ports for everyone: every grant would then be in vain.
        let settings = firewall_settings(&config);
        self.settings.change_to(&settings)?;
        let clients = load_clients(&config.clients_dir)?;
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
        if let Some(capture) = capture {
            self.capture = capture;
        }
        self.verifier.reconfigure(
            &clients,
            config.protected.clone(),
            config.open_for,
            window_ms(&config),
            unix_ms(),
        );
        let summary = format!(
            "{} clients, protecting {}",
            clients.len(),
            port_list(&config.protected)
        );
        self.config = config;
        Ok(summary)
    }
}

fn report(outcome: Outcome, log: &mut RejectionLog) {
    match outcome {
        Outcome::Granted(grant) => info!(
            "granted {} to {} for {}s (client {})",
            port_list(&grant.ports),
            grant.addr,
            grant.duration.as_secs(),
            grant.client
        ),
        Outcome::Rejected(rejection) => log.record(&rejection),
        Outcome::StateNotDurable(err) => {
            error!("knock verified but NOT granted: cannot make the replay state durable: {err}")
        }
        Outcome::FirewallFailed(_, err) => {
            error!("knock verified but the firewall refused the grant: {err}")
        }
    }
}
