//! The keeper of our firewall rules: a thread beside the packet loop that
//! checks every `verify_every` that the rules are still as installed, and
//! reinstalls them when another tool removed or changed them.
//!
//! Checking may wait on other tools (iptables waits for the xtables lock,
//! which anyone may hold), so it never runs on the packet loop: a knock is
//! granted by the loop's own backend instance, over netlink, whatever the
//! keeper is waiting for.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{error, warn};

use crate::firewall::{Firewall, FirewallError, Policy, Settings};

enum Request {
    /// Install another policy, with the backend built from these settings
    /// (a reload), and say how it went.
    Install(Settings, Policy, Sender<Result<(), FirewallError>>),
}

/// The handle the daemon keeps.
#[derive(Debug)]
pub struct RulesKeeper {
    requests: Option<Sender<Request>>,
    fatal: Receiver<String>,
    thread: Option<JoinHandle<Box<dyn Firewall>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Install(settings, policy, _) => f
                .debug_tuple("Install")
                .field(settings)
                .field(policy)
                .finish(),
        }
    }
}

impl RulesKeeper {
    /// Takes over `firewall`, built from `settings`, which has just
    /// installed `policy`, and checks it every `every`.
    pub fn start(
        firewall: Box<dyn Firewall>,
        settings: Settings,
        policy: Policy,
        every: Duration,
    ) -> std::io::Result<Self> {
        let (requests, incoming) = mpsc::channel();
        let (fatal_tx, fatal) = mpsc::channel();
        let installed = Kept {
            firewall,
            settings,
            policy,
        };
        let thread = thread::Builder::new()
            .name("rules-keeper".into())
            .spawn(move || keep(installed, every, &incoming, &fatal_tx))?;
        Ok(Self {
            requests: Some(requests),
            fatal,
            thread: Some(thread),
        })
    }

    /// Installs `policy` in place of the current one, with a backend built
    /// from `settings` if they changed, and waits for the outcome (a
    /// reload). The keeper checks `policy` from then on.
    pub fn install(&self, settings: Settings, policy: Policy) -> Result<(), FirewallError> {
        let gone = || FirewallError::Missing("the rules keeper has stopped".into());
        let (reply, outcome) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(Request::Install(settings, policy, reply))
            .map_err(|_| gone())?;
        outcome.recv().map_err(|_| gone())?
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
        self.requests = None;
        self.thread.take().and_then(|thread| thread.join().ok())
    }
}

/// The backend the keeper owns, and what it installed.
struct Kept {
    firewall: Box<dyn Firewall>,
    settings: Settings,
    policy: Policy,
}

fn keep(
    mut kept: Kept,
    every: Duration,
    requests: &Receiver<Request>,
    fatal: &Sender<String>,
) -> Box<dyn Firewall> {
    // Only the first of a run of failed checks is logged.
    let mut unchecked = false;
    loop {
        match requests.recv_timeout(every) {
            Ok(Request::Install(settings, policy, reply)) => {
                let mut firewall = if settings == kept.settings {
                    None
                } else {
                    Some(settings.build())
                };
                let outcome = firewall
                    .as_mut()
                    .unwrap_or(&mut kept.firewall)
                    .install(&policy);
                if outcome.is_ok() {
                    if let Some(firewall) = firewall {
                        kept.firewall = firewall;
                    }
                    kept.settings = settings;
                    kept.policy = policy;
                }
                let _ = reply.send(outcome);
            }
            Err(RecvTimeoutError::Disconnected) => return kept.firewall,
            Err(RecvTimeoutError::Timeout) => match kept.firewall.verify(&kept.policy) {
                Ok(()) => unchecked = false,
                Err(err) if err.is_missing() => {
                    error!("our firewall rules were changed or removed ({err}); reinstalling them");
                    if let Err(err) = kept.firewall.install(&kept.policy) {
                        let _ = fatal.send(format!("cannot reinstall the firewall rules: {err}"));
                        return kept.firewall;
                    }
                    warn!("firewall rules reinstalled; grants that were live in the removed rules are gone");
                }
                Err(err) => {
                    if !unchecked {
                        warn!("cannot check our firewall rules now ({err}); trying again every {}s, knocks are still granted", every.as_secs_f32());
                    }
                    unchecked = true;
                }
            },
        }
    }
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
