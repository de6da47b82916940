//! The keeper of our firewall rules: a thread beside the packet loop that
//! makes sure the rules stay as installed, and puts them back, with every
//! live grant, when another tool removed or changed them.
//!
//! It looks when the kernel says the nf_tables ruleset changed (`nft flush
//! ruleset`, `systemctl reload nftables`, iptables-nft), so our rules are
//! back within milliseconds, and every `verify_every` in any case (the only
//! way to notice iptables-legacy changes). Checking may wait on other tools
//! (iptables waits for the xtables lock, which anyone may hold), so it never
//! runs on the packet loop: the loop grants through its own backend
//! instance, over netlink, whatever the keeper is waiting for.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use knock_proto::PortSpec;
use tracing::{debug, error, warn};

use crate::firewall::netlink::{Notified, Subscription, NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES};
use crate::firewall::{Firewall, FirewallError, Policy, Settings};

/// `NFNLGRP_NFTABLES`: the multicast group of nf_tables changes.
const NFNLGRP_NFTABLES: u32 = 7;
/// nf_tables notifications that are not about the ruleset's shape: set
/// elements (our own grants) and the generation marker of each transaction.
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;

enum Request {
    /// Install another policy, with the backend built from these settings
    /// (a reload), and say how it went.
    Install(Settings, Policy, Sender<Result<(), FirewallError>>),
    /// The loop granted this; remembered so it can be restored.
    Granted(IpAddr, Vec<PortSpec>, Instant),
    /// Look now (the ruleset changed, or a grant found our set missing);
    /// with a reply, say whether our rules are in place afterwards.
    Check(Option<Sender<Result<(), FirewallError>>>),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Install(settings, policy, _) => f
                .debug_tuple("Install")
                .field(settings)
                .field(policy)
                .finish(),
            Request::Granted(addr, ports, until) => f
                .debug_tuple("Granted")
                .field(addr)
                .field(ports)
                .field(until)
                .finish(),
            Request::Check(reply) => f.debug_tuple("Check").field(&reply.is_some()).finish(),
        }
    }
}

/// Called with what the keeper has just installed (to save it for the next
/// boot); it must not block for long.
pub type OnInstalled = Box<dyn Fn(&Settings, &Policy) + Send>;

/// The handle the daemon keeps.
#[derive(Debug)]
pub struct RulesKeeper {
    requests: Option<Sender<Request>>,
    fatal: Receiver<String>,
    thread: Option<JoinHandle<Box<dyn Firewall>>>,
    stopping: Arc<AtomicBool>,
}

impl RulesKeeper {
    /// Takes over `firewall`, built from `settings`, which has just
    /// installed `policy`, and checks it every `every` and whenever the
    /// nf_tables ruleset changes; `on_installed` is told of every install it
    /// does.
    pub fn start(
        firewall: Box<dyn Firewall>,
        settings: Settings,
        policy: Policy,
        every: Duration,
        on_installed: OnInstalled,
    ) -> std::io::Result<Self> {
        let (requests, incoming) = mpsc::channel();
        let (fatal_tx, fatal) = mpsc::channel();
        let kept = Kept {
            firewall,
            settings,
            policy,
            live: LiveGrants::default(),
            on_installed,
        };
        let thread = thread::Builder::new()
            .name("rules-keeper".into())
            .spawn(move || keep(kept, every, &incoming, &fatal_tx))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (watcher, stop) = (requests.clone(), Arc::clone(&stopping));
        thread::Builder::new()
            .name("nft-watch".into())
            .spawn(move || watch_ruleset(&watcher, &stop))?;
        Ok(Self {
            requests: Some(requests),
            fatal,
            thread: Some(thread),
            stopping,
        })
    }

    fn ask(
        &self,
        request: impl FnOnce(Sender<Result<(), FirewallError>>) -> Request,
    ) -> Result<(), FirewallError> {
        let gone = || FirewallError::Missing("the rules keeper has stopped".into());
        let (reply, outcome) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(request(reply))
            .map_err(|_| gone())?;
        outcome.recv().map_err(|_| gone())?
    }

    /// Installs `policy` in place of the current one, with a backend built
    /// from `settings` if they changed, and waits for the outcome (a
    /// reload). The keeper checks `policy` from then on.
    pub fn install(&self, settings: Settings, policy: Policy) -> Result<(), FirewallError> {
        self.ask(|reply| Request::Install(settings, policy, reply))
    }

    /// Checks our rules now, reinstalling them (and the live grants) if they
    /// are gone, and waits for the outcome: for a grant that found our set
    /// missing, before it tries again.
    pub fn repair(&self) -> Result<(), FirewallError> {
        self.ask(|reply| Request::Check(Some(reply)))
    }

    /// Remembers a grant the loop made, to restore it if our rules are
    /// replaced while it lasts.
    pub fn granted(&self, addr: IpAddr, ports: &[PortSpec], duration: Duration) {
        if let Some(requests) = &self.requests {
            let until = Instant::now() + duration;
            let _ = requests.send(Request::Granted(addr, ports.to_vec(), until));
        }
    }

    /// Why the keeper gave up, if it did: our rules are gone and cannot be
    /// put back.
    pub fn fatal(&self) -> Option<String> {
        match self.fatal.try_recv() {
            Ok(reason) => Some(reason),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => match &self.thread {
                Some(thread) if thread.is_finished() => {
                    Some("the rules keeper stopped unexpectedly".into())
                }
                _ => None,
            },
        }
    }

    /// Stops checking; returns the backend (to remove our rules on exit).
    pub fn stop(mut self) -> Option<Box<dyn Firewall>> {
        self.stopping.store(true, Ordering::Relaxed);
        self.requests = None;
        self.thread.take().and_then(|thread| thread.join().ok())
    }
}

/// Grants the loop made that have not run out, with when they do.
#[derive(Debug, Default)]
struct LiveGrants {
    grants: Vec<(IpAddr, PortSpec, Instant)>,
}

impl LiveGrants {
    fn record(&mut self, addr: IpAddr, ports: &[PortSpec], until: Instant) {
        let now = Instant::now();
        self.grants
            .retain(|&(a, p, end)| end > now && !(a == addr && ports.contains(&p)));
        self.grants
            .extend(ports.iter().map(|&port| (addr, port, until)));
    }

    /// The grants still live, with the time they have left.
    fn remaining(&mut self) -> Vec<(IpAddr, PortSpec, Duration)> {
        let now = Instant::now();
        self.grants.retain(|&(_, _, end)| end > now);
        self.grants
            .iter()
            .map(|&(addr, port, end)| (addr, port, end - now))
            .collect()
    }
}

/// The backend the keeper owns, what it installed, and the live grants.
struct Kept {
    firewall: Box<dyn Firewall>,
    settings: Settings,
    policy: Policy,
    live: LiveGrants,
    on_installed: OnInstalled,
}

impl Kept {
    fn install(&mut self, settings: Settings, policy: Policy) -> Result<(), FirewallError> {
        let mut rebuilt = (settings != self.settings).then(|| settings.build());
        rebuilt
            .as_mut()
            .unwrap_or(&mut self.firewall)
            .install(&policy)?;
        if let Some(firewall) = rebuilt {
            self.firewall = firewall;
        }
        self.settings = settings;
        self.policy = policy;
        (self.on_installed)(&self.settings, &self.policy);
        Ok(())
    }

    /// Verifies our rules; when they are gone or changed, reinstalls them
    /// and restores the live grants. `Err` only when they cannot be put back.
    fn check(&mut self, unchecked: &mut bool, every: Duration) -> Result<(), FirewallError> {
        match self.firewall.verify(&self.policy) {
            Ok(()) => {
                *unchecked = false;
                Ok(())
            }
            Err(err) if err.is_missing() => {
                let started = Instant::now();
                error!("our firewall rules were changed or removed ({err}); reinstalling them");
                self.firewall.install(&self.policy)?;
                (self.on_installed)(&self.settings, &self.policy);
                let restored = self.restore_grants();
                warn!(
                    "firewall rules reinstalled in {} ms; {restored} live grants restored with their remaining time",
                    started.elapsed().as_millis()
                );
                Ok(())
            }
            Err(err) => {
                if !*unchecked {
                    warn!("cannot check our firewall rules now ({err}); trying again every {}s, knocks are still granted", every.as_secs_f32());
                }
                *unchecked = true;
                Ok(())
            }
        }
    }

    fn restore_grants(&mut self) -> usize {
        let mut restored = 0;
        for (addr, port, left) in self.live.remaining() {
            match self.firewall.grant(addr, &[port], left) {
                Ok(()) => restored += 1,
                Err(err) => warn!("could not restore the grant of {port} to {addr}: {err}"),
            }
        }
        restored
    }
}

fn keep(
    mut kept: Kept,
    every: Duration,
    requests: &Receiver<Request>,
    fatal: &Sender<String>,
) -> Box<dyn Firewall> {
    // Only the first of a run of failed checks is logged.
    let mut unchecked = false;
    let mut next_check = Instant::now() + every;
    loop {
        let wait = next_check.saturating_duration_since(Instant::now());
        // A failed check is fatal: our rules are gone and cannot be put
        // back. Whoever asked for the check hears why, too.
        let (outcome, reply) = match requests.recv_timeout(wait) {
            Ok(Request::Install(settings, policy, reply)) => {
                let _ = reply.send(kept.install(settings, policy));
                continue;
            }
            Ok(Request::Granted(addr, ports, until)) => {
                kept.live.record(addr, &ports, until);
                continue;
            }
            Ok(Request::Check(reply)) => (kept.check(&mut unchecked, every), reply),
            Err(RecvTimeoutError::Disconnected) => return kept.firewall,
            Err(RecvTimeoutError::Timeout) => {
                next_check = Instant::now() + every;
                (kept.check(&mut unchecked, every), None)
            }
        };
        let reason = outcome
            .as_ref()
            .err()
            .map(|err| format!("cannot reinstall the firewall rules: {err}"));
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
        if let Some(reason) = reason {
            let _ = fatal.send(reason);
            return kept.firewall;
        }
    }
}

/// Asks the keeper to look whenever the nf_tables ruleset changes shape.
/// Ends when the keeper does.
fn watch_ruleset(keeper: &Sender<Request>, stopping: &AtomicBool) {
    let mut subscription = match Subscription::open(NETLINK_NETFILTER, NFNLGRP_NFTABLES) {
        Ok(subscription) => subscription,
        Err(err) => {
            // Without nf_tables there is nothing to watch; the periodic
            // check still runs.
            debug!("not watching nf_tables changes: {err}");
            return;
        }
    };
    while !stopping.load(Ordering::Relaxed) {
        let changed = match subscription.wait(Duration::from_millis(500)) {
            Ok(Notified::Nothing) => false,
            Ok(Notified::Lost) => true,
            Ok(Notified::Messages(types)) => types.iter().any(|&t| reshapes_ruleset(t)),
            Err(err) => {
                warn!("watching nf_tables changes failed ({err}); relying on the periodic check");
                return;
            }
        };
        if changed {
            debug!("the nf_tables ruleset changed; checking our rules");
            if keeper.send(Request::Check(None)).is_err() {
                return;
            }
        }
    }
}

/// Is nf_tables notification `msg_type` a change of tables, chains, rules
/// or sets (rather than of set elements, or a transaction marker)?
fn reshapes_ruleset(msg_type: u16) -> bool {
    let (subsys, msg) = (msg_type >> 8, msg_type & 0xff);
    subsys == u16::from(NFNL_SUBSYS_NFTABLES)
        && !matches!(
            msg,
            NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM | NFT_MSG_NEWGEN
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::example_policy;
    use crate::firewall::memory::MemoryFirewall;
    use crate::firewall::nftables;

    /// Settings that stay the same, so the keeper never rebuilds the fake.
    fn settings() -> Settings {
        Settings::Nftables(nftables::Settings {
            table: "knock-test".into(),
            priority: 0,
        })
    }

    #[test]
    fn installs_on_request_and_hands_the_backend_back() {
        let mut firewall = MemoryFirewall::default();
        firewall.install(&example_policy()).expect("memory");
        let keeper = RulesKeeper::start(
            Box::new(firewall),
            settings(),
            example_policy(),
            Duration::from_millis(10),
            Box::new(|_: &Settings, _: &Policy| {}),
        )
        .expect("thread");
        let other = Policy::new(1, &[]);
        keeper.install(settings(), other.clone()).expect("install");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(keeper.fatal(), None, "the new policy verifies");
        let mut back = keeper.stop().expect("backend");
        back.verify(&other)
            .expect("the reloaded policy is what is installed");
    }

    #[test]
    fn live_grants_are_restored_with_their_remaining_time() {
        let mut kept = Kept {
            firewall: Box::new(MemoryFirewall::default()),
            settings: settings(),
            policy: example_policy(),
            live: LiveGrants::default(),
            on_installed: Box::new(|_: &Settings, _: &Policy| {}),
        };
        let a: IpAddr = "198.18.0.2".parse().expect("ip");
        let now = Instant::now();
        kept.live
            .record(a, &[PortSpec::tcp(4992)], now + Duration::from_secs(20));
        kept.live
            .record(a, &[PortSpec::tcp(22)], now - Duration::from_secs(1));
        // A new grant of the same port replaces the old one.
        kept.live
            .record(a, &[PortSpec::tcp(4992)], now + Duration::from_secs(25));
        // Nothing installed: the check reinstalls, then restores.
        kept.check(&mut false, Duration::from_secs(2))
            .expect("reinstalled");
        let grants = kept.firewall.grants().expect("memory");
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!((grants[0].addr, grants[0].port), (a, PortSpec::tcp(4992)));
        assert!(
            grants[0].expires_in > Duration::from_secs(20)
                && grants[0].expires_in <= Duration::from_secs(25),
            "{:?}",
            grants[0].expires_in
        );
    }

    #[test]
    fn only_changes_of_the_ruleset_shape_count() {
        let nft = |msg: u16| (u16::from(NFNL_SUBSYS_NFTABLES) << 8) | msg;
        assert!(reshapes_ruleset(nft(2)), "a deleted table");
        assert!(reshapes_ruleset(nft(8)), "a deleted rule");
        assert!(!reshapes_ruleset(nft(NFT_MSG_NEWSETELEM)), "our own grant");
        assert!(!reshapes_ruleset(nft(NFT_MSG_NEWGEN)));
        assert!(!reshapes_ruleset((6 << 8) | 2), "not nf_tables");
    }

    #[test]
    fn rules_that_cannot_be_reinstalled_are_fatal() {
        /// Verifies as missing, and refuses to install.
        #[derive(Debug)]
        struct Broken;
        impl Firewall for Broken {
            fn name(&self) -> &'static str {
                "broken"
            }
            fn plan(&self, _: &Policy) -> String {
                String::new()
            }
            fn install(&mut self, _: &Policy) -> Result<(), FirewallError> {
                Err(FirewallError::Missing("refused".into()))
            }
            fn grant(
                &mut self,
                _: std::net::IpAddr,
                _: &[knock_proto::PortSpec],
                _: Duration,
            ) -> Result<(), FirewallError> {
                Ok(())
            }
            fn verify(&mut self, _: &Policy) -> Result<(), FirewallError> {
                Err(FirewallError::Missing("gone".into()))
            }
            fn grants(&mut self) -> Result<Vec<crate::firewall::LiveGrant>, FirewallError> {
                Ok(Vec::new())
            }
            fn remove(&mut self) -> Result<(), FirewallError> {
                Ok(())
            }
        }
        let keeper = RulesKeeper::start(
            Box::new(Broken),
            settings(),
            example_policy(),
            Duration::from_millis(5),
            Box::new(|_: &Settings, _: &Policy| {}),
        )
        .expect("thread");
        let mut reason = None;
        for _ in 0..200 {
            reason = keeper.fatal();
            if reason.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            reason.as_deref(),
            Some("cannot reinstall the firewall rules: rules missing or changed: refused")
        );
    }
}
