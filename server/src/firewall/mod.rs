//! The firewall: told "this address, these ports, this long", it knows
//! nothing of knocks.
//!
//! Every backend owns its own rules (a table, or chains and sets), installs
//! them in one step at start, and at run time only adds timed elements whose
//! expiry the kernel enforces, so grants end on time even if the server is
//! killed. Backends share one trait and one behaviour test suite
//! (`server/tests/backends.rs`), and the contract suite runs end to end on
//! each (`tests/tests/contract.rs`).
//!
//! The toolkit they share: [`netlink`] (one client, requests and batches),
//! [`command`] (one runner with a deadline), [`Installed`] (one way to tell
//! our rules from changed ones) and [`FirewallError`].

pub mod command;
pub mod host;
pub mod iptables;
#[cfg(test)]
pub mod memory;
pub mod netlink;
pub mod nftables;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::IpAddr;
use std::time::Duration;

use knock_proto::PortSpec;
use thiserror::Error;

pub use command::CommandError;
pub use netlink::NetlinkError;

/// What the firewall enforces: the ports closed to every address without a
/// grant, how a refused attempt is answered, and the knock port, which must
/// look like any other closed port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub knock_port: u16,
    /// Sorted, without duplicates.
    protected: Vec<PortSpec>,
    pub refusal: Refusal,
}

/// How a refused connection attempt is answered, as the host answers its
/// other closed ports: `Reject` (a TCP reset or an ICMP port unreachable,
/// within the kernel's own rate limits; the knock port is left to the
/// kernel, which answers it the same way since nothing listens there) or
/// `Drop` (nothing at all; the knock port is dropped too). The operator's
/// `refuse`, under the firewall's name for it.
pub use knock_keys::config::Refuse as Refusal;

impl Policy {
    /// Refusing with [`Refusal::Reject`], what a host without a firewall
    /// does.
    pub fn new(knock_port: u16, protected: &[PortSpec]) -> Self {
        let protected = protected
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Self {
            knock_port,
            protected,
            refusal: Refusal::Reject,
        }
    }

    #[must_use]
    pub fn refusing(mut self, refusal: Refusal) -> Self {
        self.refusal = refusal;
        self
    }

    /// The protected ports, sorted and without duplicates.
    pub fn protected(&self) -> &[PortSpec] {
        &self.protected
    }
}

/// Which backend, with the settings of that backend alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settings {
    Nftables(nftables::Settings),
    Iptables(iptables::Settings),
}

/// A change of settings that installing again cannot apply: the rules of
/// the old settings would stay behind, still closing the protected ports.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsChange {
    #[error("changing firewall needs a restart")]
    Backend,
    #[error(
        "changing {0} needs `knock-server remove-rules` with the old configuration, then a restart"
    )]
    Location(&'static str),
}

impl Settings {
    /// Can a running server move to `new` by installing its rules again?
    pub fn change_to(&self, new: &Settings) -> Result<(), SettingsChange> {
        match (self, new) {
            (Settings::Nftables(old), Settings::Nftables(new)) if old.table != new.table => {
                Err(SettingsChange::Location("nft_table"))
            }
            // A new priority is a new chain in the same table: install
            // replaces it, carrying the grants over.
            (Settings::Nftables(_), Settings::Nftables(_)) => Ok(()),
            (Settings::Iptables(old), Settings::Iptables(new)) if old.iptables != new.iptables => {
                Err(SettingsChange::Location("iptables_cmd"))
            }
            (Settings::Iptables(old), Settings::Iptables(new))
                if old.ip6tables != new.ip6tables =>
            {
                Err(SettingsChange::Location("ip6tables_cmd"))
            }
            (Settings::Iptables(_), Settings::Iptables(_)) => Ok(()),
            _ => Err(SettingsChange::Backend),
        }
    }

    /// Checks that every command the backend runs is installed, before
    /// anything is changed: a mistyped `ip6tables_cmd` must not leave a
    /// host with IPv4 closed and nobody granting.
    pub fn resolve(&self) -> Result<(), MissingCommand> {
        let needed: Vec<(&'static str, String)> = match self {
            Settings::Nftables(_) => vec![("firewall = \"nftables\"", "nft".to_owned())],
            Settings::Iptables(s) => vec![
                ("iptables_cmd", s.iptables.clone()),
                ("iptables_cmd", format!("{}-restore", s.iptables)),
                ("ip6tables_cmd", s.ip6tables.clone()),
                ("ip6tables_cmd", format!("{}-restore", s.ip6tables)),
                ("firewall = \"iptables\"", "ipset".to_owned()),
            ],
        };
        for (setting, program) in needed {
            if !command::installed(&program) {
                return Err(MissingCommand { setting, program });
            }
        }
        Ok(())
    }

    /// A backend that has not touched the kernel yet.
    pub fn build(&self) -> Box<dyn Firewall> {
        match self {
            Settings::Nftables(settings) => Box::new(nftables::Nftables::new(settings.clone())),
            Settings::Iptables(settings) => Box::new(iptables::Iptables::new(settings.clone())),
        }
    }
}

/// A command the configured backend needs is not installed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{setting}: the command {program:?} is not installed (not found in PATH); install it, or change {setting} in server.toml")]
pub struct MissingCommand {
    pub setting: &'static str,
    pub program: String,
}

/// One live grant as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGrant {
    pub addr: IpAddr,
    pub port: PortSpec,
    /// Time left before the kernel drops it.
    pub expires_in: Duration,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// A helper command (nft, iptables, ipset) could not be run or failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A netlink request failed; the kernel's errno is kept.
    #[error("{doing}: {source}")]
    Netlink {
        doing: String,
        #[source]
        source: NetlinkError,
    },
    /// Our rules are not (or no longer) what we installed.
    #[error("rules missing or changed: {0}")]
    Missing(String),
    /// The kernel's answer could not be understood.
    #[error("unexpected output from {command}: {message}")]
    Parse { command: String, message: String },
}

impl FirewallError {
    /// A netlink failure while `doing` something.
    pub fn netlink(doing: impl Into<String>) -> impl FnOnce(NetlinkError) -> FirewallError {
        let doing = doing.into();
        move |source| FirewallError::Netlink { doing, source }
    }

    /// Does this say our rules are gone or changed (so reinstalling helps),
    /// rather than that we could not look (a held lock, a busy kernel)?
    pub fn is_missing(&self) -> bool {
        matches!(self, FirewallError::Missing(_))
    }
}

/// A firewall backend.
pub trait Firewall: Send {
    /// The backend's name for logs.
    fn name(&self) -> &'static str;

    /// The exact rules `install` would apply, as text, without touching the
    /// kernel (for `knock-server check`).
    fn plan(&self, policy: &Policy) -> String;

    /// Installs our rules atomically and idempotently: a second call (or a
    /// restart) leaves one copy, and live grants survive it. Verifies the
    /// result before returning.
    fn install(&mut self, policy: &Policy) -> Result<(), FirewallError>;

    /// Lets `addr` open new connections to `ports` for `duration`; the kernel
    /// expires it. Granting again refreshes the timeout. Never spawns a
    /// process.
    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError>;

    /// Are our rules in place as `policy` renders them (and as install left
    /// them)? Cheap enough to call every few seconds, but it may wait on
    /// other tools: call it beside the packet path, never on it.
    fn verify(&mut self, policy: &Policy) -> Result<(), FirewallError>;

    /// The live grants, read from the kernel.
    fn grants(&mut self) -> Result<Vec<LiveGrant>, FirewallError>;

    /// Removes everything we installed (fail-open exit, package removal).
    fn remove(&mut self) -> Result<(), FirewallError>;

    /// Rules of others that keep ours from seeing a protected port, as
    /// warnings for the operator (for `knock-server check`).
    fn audit(&mut self, _policy: &Policy) -> Result<Vec<String>, FirewallError> {
        Ok(Vec::new())
    }
}

/// What `install` left in the kernel, as the backend reads it back: the
/// reference that `verify` compares the kernel against, so a rule changed
/// behind our back is noticed even when the rule count still matches.
#[derive(Debug)]
pub(crate) struct Installed<F> {
    policy: Policy,
    found: F,
}

impl<F: PartialEq + Debug> Installed<F> {
    /// What a backend's read-back right after installing `policy` found;
    /// a failed read-back is labelled as such: the rules we just applied
    /// are not what the kernel holds.
    pub(crate) fn read_back(
        policy: &Policy,
        found: Result<F, FirewallError>,
    ) -> Result<Self, FirewallError> {
        match found {
            Ok(found) => Ok(Self {
                policy: policy.clone(),
                found,
            }),
            Err(FirewallError::Missing(m)) => {
                Err(FirewallError::Missing(format!("after install: {m}")))
            }
            Err(other) => Err(other),
        }
    }

    /// Compares what the kernel holds now (`found`, for `policy`) with what
    /// install left; `chain` names the rules in the error.
    pub(crate) fn compare(
        installed: Option<&Self>,
        policy: &Policy,
        found: &F,
        chain: &str,
    ) -> Result<(), FirewallError> {
        let Some(installed) = installed else {
            return Ok(());
        };
        if installed.policy != *policy {
            return Err(FirewallError::Missing(
                "the configured rules differ from those installed".into(),
            ));
        }
        if installed.found != *found {
            return Err(FirewallError::Missing(format!(
                "rules of chain {chain} were changed"
            )));
        }
        Ok(())
    }
}

/// Checks that `chain` holds as many rules as were rendered for it.
pub(crate) fn expect_rule_count(
    chain: &str,
    found: usize,
    rendered: usize,
) -> Result<(), FirewallError> {
    if found == rendered {
        Ok(())
    } else {
        Err(FirewallError::Missing(format!(
            "chain {chain} holds {found} rules, expected {rendered}"
        )))
    }
}

/// The policy the unit tests of every backend render.
#[cfg(test)]
pub(crate) fn example_policy() -> Policy {
    use knock_proto::Transport;
    Policy::new(
        62201,
        &[
            PortSpec::tcp(4992),
            PortSpec {
                transport: Transport::Udp,
                port: 53,
            },
            PortSpec::tcp(4992),
        ],
    )
}
