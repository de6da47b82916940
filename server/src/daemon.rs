//! The running server: one loop that reads datagrams, verifies them, makes
//! replay state durable, grants, and between packets looks at signals,
//! timers, the watchdog and the health of our firewall rules.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use knock_keys::config::{OnExit, ServerConfig};
use knock_proto::port_list;
use tracing::{error, info, warn};

use crate::capture::{Capture, Next};
use crate::clients::load_clients;
use crate::firewall::{Firewall, RuleSet};
use crate::state::{ReplayStore, StateFile};
use crate::verify::{Grant, Rejection, Verifier};

/// How long one wait for a packet may last before we look at signals and
/// timers.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Rejection summaries are logged at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// At most this many individual lines for authentic rejections per summary
/// period; the rest are only counted.
const DETAILED_REJECTIONS: u32 = 20;

/// The current Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What became of one datagram.
#[derive(Debug)]
pub enum Outcome {
    Granted(Grant),
    Rejected(Rejection),
    /// Verified, but the replay state could not be made durable, so nothing
    /// was granted (fail-closed).
    StateNotDurable(String),
    /// Verified and recorded, but the firewall refused the grant.
    FirewallFailed(String),
}

/// The pipeline for one datagram: verify → consume → durable state → grant.
pub fn honour(
    verifier: &mut Verifier,
    store: &mut dyn ReplayStore,
    firewall: &mut dyn Firewall,
    payload: &[u8],
    source: IpAddr,
    now_ms: u64,
) -> Outcome {
    let pending = match verifier.verify(payload, source, now_ms) {
        Ok(pending) => pending,
        Err(rejection) => return Outcome::Rejected(rejection),
    };
    let (grant, state) = verifier.consume(pending, now_ms);
    if let Err(err) = store.persist(&state) {
        return Outcome::StateNotDurable(err.to_string());
    }
    match firewall.grant(grant.addr, &grant.ports, grant.duration) {
        Ok(()) => Outcome::Granted(grant),
        Err(err) => Outcome::FirewallFailed(err.to_string()),
    }
}

/// Counts rejections by reason and logs a summary at most every 10 s, so a
/// flood can never flood the journal.
#[derive(Debug)]
pub struct RejectionLog {
    counts: BTreeMap<&'static str, u64>,
    detailed: u32,
    since: Instant,
}

impl Default for RejectionLog {
    fn default() -> Self {
        Self {
            counts: BTreeMap::new(),
            detailed: 0,
            since: Instant::now(),
        }
    }
}

impl RejectionLog {
    pub fn record(&mut self, rejection: &Rejection) {
        *self.counts.entry(rejection.reason()).or_default() += 1;
        if rejection.is_authentic() && self.detailed < DETAILED_REJECTIONS {
            self.detailed += 1;
            warn!("knock refused ({}): {rejection}", rejection.reason());
        }
    }

    pub fn record_other(&mut self, reason: &'static str) {
        *self.counts.entry(reason).or_default() += 1;
    }

    /// Logs and resets the counters if the period is over.
    pub fn maybe_summarise(&mut self, now: Instant) {
        if now.duration_since(self.since) < SUMMARY_EVERY {
            return;
        }
        if !self.counts.is_empty() {
            let total: u64 = self.counts.values().sum();
            let detail: Vec<String> = self
                .counts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            info!(
                "refused {total} datagrams in the last {}s: {}",
                now.duration_since(self.since).as_secs(),
                detail.join(" ")
            );
        }
        self.counts.clear();
        self.detailed = 0;
        self.since = now;
    }
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
    pub rules: RuleSet,
    pub verifier: Verifier,
    pub store: StateFile,
    pub firewall: Box<dyn Firewall>,
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

impl Daemon {
    /// Runs until SIGTERM or a fatal error.
    pub fn run(mut self) -> Exit {
        let mut log = RejectionLog::default();
        let mut last_tick = Instant::now();
        let mut last_verify = Instant::now();
        let watchdog = watchdog_interval();
        let mut last_watchdog = Instant::now();
        let mut capture_down_since: Option<Instant> = None;

        loop {
            if self.signals.terminate.load(Ordering::Relaxed) {
                return self.shutdown();
            }
            if self.signals.reload.swap(false, Ordering::Relaxed) {
                self.reload();
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
                    let now_ms = unix_ms();
                    let outcome = honour(
                        &mut self.verifier,
                        &mut self.store,
                        self.firewall.as_mut(),
                        datagram.payload,
                        datagram.source,
                        now_ms,
                    );
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
            if now.duration_since(last_tick) >= Duration::from_millis(500) {
                last_tick = now;
                self.verifier.tick(unix_ms());
                log.maybe_summarise(now);
                if let Some(every) = watchdog {
                    if now.duration_since(last_watchdog) >= every {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                        last_watchdog = now;
                    }
                }
            }
            if now.duration_since(last_verify) >= self.config.verify_every {
                last_verify = now;
                if let Err(err) = self.firewall.verify(&self.rules) {
                    error!("our firewall rules were changed or removed ({err}); reinstalling them");
                    if let Err(err) = self.firewall.install(&self.rules) {
                        return Exit::Fatal(format!("cannot reinstall the firewall rules: {err}"));
                    }
                    warn!("firewall rules reinstalled; grants that were live in the removed rules are gone");
                }
            }
        }
    }

    fn shutdown(mut self) -> Exit {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        match self.config.on_exit {
            OnExit::StayClosed => info!(
                "stopping; protected ports stay closed, live grants run out in the kernel"
            ),
            OnExit::RemoveRules => match self.firewall.remove(&self.rules) {
                Ok(()) => warn!("stopping; on_exit = \"remove-rules\": protected ports are OPEN to everyone until knock-server starts again"),
                Err(err) => error!("stopping; could not remove our rules: {err}"),
            },
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

    fn try_reload(&mut self) -> Result<String, String> {
        let config = ServerConfig::load(&self.config.path).map_err(|e| e.to_string())?;
        for (what, old, new) in [
            (
                "firewall",
                self.config.firewall.name(),
                config.firewall.name(),
            ),
            (
                "state_dir",
                &*self.config.state_dir.to_string_lossy(),
                &*config.state_dir.to_string_lossy(),
            ),
            (
                "identity_file",
                &*self.config.identity_file.to_string_lossy(),
                &*config.identity_file.to_string_lossy(),
            ),
        ] {
            if old != new {
                return Err(format!("changing {what} needs a restart"));
            }
        }
        // Installing under a new table name (or with other commands) would
        // leave our old table or chain in place, still dropping the protected
        // ports for everyone: every grant would then be in vain.
        for (what, old, new) in [
            ("nft_table", &self.config.nft_table, &config.nft_table),
            (
                "iptables_cmd",
                &self.config.iptables_cmd,
                &config.iptables_cmd,
            ),
            (
                "ip6tables_cmd",
                &self.config.ip6tables_cmd,
                &config.ip6tables_cmd,
            ),
        ] {
            if old != new {
                return Err(format!(
                    "changing {what} needs `knock-server remove-rules` with the old configuration, then a restart"
                ));
            }
        }
        let clients = load_clients(&config.clients_dir).map_err(|e| e.to_string())?;
        // Open the new capture before the firewall changes: a reload that
        // fails there (an interface that does not exist) must leave the
        // firewall as the old configuration had it.
        let capture = if config.interface != self.config.interface
            || config.knock_port != self.config.knock_port
        {
            Some(
                Capture::open(&config.interface, config.knock_port, POLL_EVERY)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let rules = RuleSet::from_config(&config);
        if rules != self.rules {
            self.firewall.install(&rules).map_err(|e| e.to_string())?;
            self.rules = rules;
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
        Outcome::FirewallFailed(err) => {
            error!("knock verified but the firewall refused the grant: {err}")
        }
    }
}

pub fn window_ms(config: &ServerConfig) -> u64 {
    u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX)
}

fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::memory::MemoryFirewall;
    use knock_keys::entry::ClientEntry;
    use knock_proto::{
        seal, ClientSecret, PortSpec, ReplayGuard, Request, SealRandomness, ServerId,
    };

    const NOW: u64 = 1_800_000_000_000;
    const SERVER: ServerId = ServerId([7; 16]);

    #[derive(Default)]
    struct MemoryStore {
        writes: Vec<Vec<u8>>,
        full: bool,
    }

    impl ReplayStore for MemoryStore {
        fn persist(&mut self, encoded: &[u8]) -> std::io::Result<()> {
            if self.full {
                return Err(std::io::Error::other("No space left on device"));
            }
            self.writes.push(encoded.to_vec());
            Ok(())
        }
    }

    fn client(name: &str, byte: u8, ports: &[u16]) -> ClientEntry {
        ClientEntry {
            name: name.into(),
            secret: ClientSecret::from_bytes([byte; 32]),
            ports: ports.iter().map(|&p| PortSpec::tcp(p)).collect(),
            max_open_for: None,
        }
    }

    fn verifier(clients: &[ClientEntry]) -> Verifier {
        Verifier::new(
            SERVER,
            clients,
            vec![PortSpec::tcp(22), PortSpec::tcp(4992)],
            Duration::from_secs(30),
            ReplayGuard::new(30_000, NOW - 60_000),
            NOW,
        )
    }

    fn knock(
        secret: u8,
        ports: &[u16],
        bound: Option<IpAddr>,
        at: u64,
        server: ServerId,
    ) -> Vec<u8> {
        let request = Request {
            ports: ports.iter().map(|&p| PortSpec::tcp(p)).collect(),
            duration_s: 0,
            bound_addr: bound,
        };
        let randomness = SealRandomness {
            nonce: [at as u8; 24],
            padding: at as u8,
        };
        seal(
            &ClientSecret::from_bytes([secret; 32]).derive(),
            &server,
            &request,
            at,
            &randomness,
        )
        .unwrap()
    }

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn grants_the_sender_once() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let k = knock(1, &[4992], None, NOW, SERVER);
        let a = addr("198.18.0.2");
        match honour(&mut v, &mut store, &mut fw, &k, a, NOW + 5) {
            Outcome::Granted(g) => {
                assert_eq!(g.addr, a);
                assert_eq!(g.duration, Duration::from_secs(30));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fw.granted,
            vec![(a, vec![PortSpec::tcp(4992)], Duration::from_secs(30))]
        );
        assert_eq!(store.writes.len(), 1, "state made durable before the grant");
        // The same bytes again, from anywhere, are a replay.
        for from in [a, addr("198.18.0.66"), addr("fd00:18::66")] {
            match honour(&mut v, &mut store, &mut fw, &k, from, NOW + 10) {
                Outcome::Rejected(r) => assert_eq!(r.reason(), "replay"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fw.granted.len(), 1);
    }

    #[test]
    fn source_mismatch_does_not_burn_the_knock() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let owner = addr("198.18.0.2");
        let k = knock(1, &[4992], Some(owner), NOW, SERVER);
        match honour(&mut v, &mut store, &mut fw, &k, addr("198.18.0.66"), NOW) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "source-mismatch"),
            other => panic!("{other:?}"),
        }
        assert!(fw.granted.is_empty() && store.writes.is_empty());
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &k, owner, NOW),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn refuses_ports_not_permitted_and_unknown_servers() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let a = addr("198.18.0.2");
        let cases = [
            (knock(1, &[22], None, NOW, SERVER), "port-not-permitted"),
            (
                knock(1, &[4992, 80], None, NOW + 1, SERVER),
                "port-not-permitted",
            ),
            (
                knock(1, &[4992], None, NOW + 2, ServerId([8; 16])),
                "wrong-server",
            ),
            (knock(2, &[4992], None, NOW + 3, SERVER), "unknown-client"),
            (knock(1, &[4992], None, NOW - 120_000, SERVER), "too-old"),
            (
                knock(1, &[4992], None, NOW - 3_600_000, SERVER),
                "unknown-client",
            ),
            (knock(1, &[4992], None, NOW - 31_000, SERVER), "too-old"),
            (knock(1, &[4992], None, NOW + 31_000, SERVER), "from-future"),
            (vec![0u8; 10], "bad-length"),
            (
                knock(1, &[4992], None, NOW + 4, SERVER),
                "implausible-source@255.255.255.255",
            ),
            (
                knock(1, &[4992], None, NOW + 5, SERVER),
                "implausible-source@0.0.0.0",
            ),
            (
                knock(1, &[4992], None, NOW + 6, SERVER),
                "implausible-source@ff02::1",
            ),
        ];
        for (k, reason) in cases {
            let (reason, from) = match reason.split_once('@') {
                Some((reason, from)) => (reason, addr(from)),
                None => (reason, a),
            };
            match honour(&mut v, &mut store, &mut fw, &k, from, NOW) {
                Outcome::Rejected(r) => assert_eq!(r.reason(), reason),
                other => panic!("{reason}: {other:?}"),
            }
        }
        assert!(fw.granted.is_empty());
        // None of the refusals consumed anything: a good knock still works.
        assert!(matches!(
            honour(
                &mut v,
                &mut store,
                &mut fw,
                &knock(1, &[4992], None, NOW, SERVER),
                a,
                NOW
            ),
            Outcome::Granted(_)
        ));
    }

    #[test]
    fn a_knock_from_the_host_itself_is_honoured() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        for (at, from) in [(NOW, "127.0.0.1"), (NOW + 1, "::1")] {
            let k = knock(1, &[4992], None, at, SERVER);
            assert!(matches!(
                honour(&mut v, &mut store, &mut fw, &k, addr(from), NOW),
                Outcome::Granted(_)
            ));
        }
    }

    #[test]
    fn a_full_disk_means_no_grant() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let mut store = MemoryStore {
            full: true,
            ..Default::default()
        };
        let mut fw = MemoryFirewall::default();
        let k = knock(1, &[4992], None, NOW, SERVER);
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &k, addr("198.18.0.2"), NOW),
            Outcome::StateNotDurable(_)
        ));
        assert!(fw.granted.is_empty());
    }

    #[test]
    fn reload_revokes_removed_clients_and_keeps_replay_memory() {
        let alice = client("alice", 1, &[4992]);
        let bob = client("bob", 2, &[22]);
        let mut v = verifier(&[alice.clone(), bob.clone()]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let a = addr("198.18.0.2");
        let used = knock(1, &[4992], None, NOW, SERVER);
        assert!(matches!(
            honour(&mut v, &mut store, &mut fw, &used, a, NOW),
            Outcome::Granted(_)
        ));
        v.reconfigure(
            &[alice],
            vec![PortSpec::tcp(22), PortSpec::tcp(4992)],
            Duration::from_secs(30),
            30_000,
            NOW,
        );
        match honour(
            &mut v,
            &mut store,
            &mut fw,
            &knock(2, &[22], None, NOW + 1, SERVER),
            a,
            NOW,
        ) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "unknown-client"),
            other => panic!("{other:?}"),
        }
        match honour(&mut v, &mut store, &mut fw, &used, a, NOW) {
            Outcome::Rejected(r) => assert_eq!(r.reason(), "replay"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requested_duration_is_capped() {
        let mut capped = client("alice", 1, &[4992]);
        capped.max_open_for = Some(Duration::from_secs(10));
        let mut v = verifier(&[capped]);
        let (mut store, mut fw) = (MemoryStore::default(), MemoryFirewall::default());
        let request = Request {
            ports: vec![PortSpec::tcp(4992)],
            duration_s: 3600,
            bound_addr: None,
        };
        let randomness = SealRandomness {
            nonce: [1; 24],
            padding: 0,
        };
        let k = seal(
            &ClientSecret::from_bytes([1; 32]).derive(),
            &SERVER,
            &request,
            NOW,
            &randomness,
        )
        .unwrap();
        match honour(&mut v, &mut store, &mut fw, &k, addr("198.18.0.2"), NOW) {
            Outcome::Granted(g) => assert_eq!(g.duration, Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
    }
}
