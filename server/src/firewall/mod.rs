//! The firewall: told "this address, these ports, this long", it knows
//! nothing of knocks.
//!
//! Every backend owns its own rules (a table, or chains and sets), installs
//! them in one step at start, and at run time only adds timed elements whose
//! expiry the kernel enforces, so grants end on time even if the server is
//! killed. Backends share one trait and one behaviour test suite
//! (`server/tests/backends.rs`), and the contract suite runs end to end on
//! each (`tests/tests/contract.rs`).

pub mod iptables;
pub mod memory;
pub mod netlink;
pub mod nftables;

use std::net::IpAddr;
use std::time::Duration;

use knock_keys::config::{Backend, ServerConfig};
use knock_proto::PortSpec;
use thiserror::Error;

/// What the server wants enforced: derived from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// UDP port of knocks: dropped so the kernel never answers a knock.
    pub knock_port: u16,
    /// Ports closed to every address without a grant.
    pub protected: Vec<PortSpec>,
    /// nftables table name (family inet).
    pub nft_table: String,
    /// nftables input chain priority.
    pub nft_priority: i32,
    /// iptables and ip6tables commands (iptables backend).
    pub iptables_cmd: String,
    pub ip6tables_cmd: String,
}

impl RuleSet {
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            knock_port: config.knock_port,
            protected: config.protected.clone(),
            nft_table: config.nft_table.clone(),
            nft_priority: config.nft_priority,
            iptables_cmd: config.iptables_cmd.clone(),
            ip6tables_cmd: config.ip6tables_cmd.clone(),
        }
    }
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
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// Our rules are not (or no longer) what we installed.
    #[error("rules missing or changed: {0}")]
    Missing(String),
    /// The kernel's answer could not be understood.
    #[error("unexpected output from {command}: {message}")]
    Parse { command: String, message: String },
}

/// A firewall backend.
pub trait Firewall: Send {
    /// The backend's name for logs.
    fn name(&self) -> &'static str;

    /// The exact rules `install` would apply, as text, without touching the
    /// kernel (for `knock-server check`).
    fn plan(&self, rules: &RuleSet) -> String;

    /// Installs our rules atomically and idempotently: a second call (or a
    /// restart) leaves one copy, and live grants survive it. Verifies the
    /// result before returning.
    fn install(&mut self, rules: &RuleSet) -> Result<(), FirewallError>;

    /// Lets `addr` open new connections to `ports` for `duration`; the kernel
    /// expires it. Granting again refreshes the timeout. Must not spawn a
    /// process on the nftables backend.
    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError>;

    /// Are our rules still in place as installed? Cheap enough to call every
    /// few seconds.
    fn verify(&mut self, rules: &RuleSet) -> Result<(), FirewallError>;

    /// The live grants, read from the kernel.
    fn grants(&mut self, rules: &RuleSet) -> Result<Vec<LiveGrant>, FirewallError>;

    /// Removes everything we installed (fail-open exit, package removal).
    fn remove(&mut self, rules: &RuleSet) -> Result<(), FirewallError>;
}

/// Labels a failed read-back right after `install` as such: the rules we just
/// applied are not what the kernel holds.
pub(crate) fn after_install(err: FirewallError) -> FirewallError {
    match err {
        FirewallError::Missing(m) => FirewallError::Missing(format!("after install: {m}")),
        other => other,
    }
}

/// The backend the configuration asks for.
pub fn for_backend(backend: Backend) -> Box<dyn Firewall> {
    match backend {
        Backend::Nftables => Box::new(nftables::Nftables::new()),
        Backend::Iptables => Box::new(iptables::Iptables::new()),
    }
}
