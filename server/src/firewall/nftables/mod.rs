//! The nftables backend (the default).
//!
//! We own one table, `inet <table>`:
//!
//! ```text
//! table inet knock {
//!     set allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
//!     set allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
//!     chain prerouting {
//!         type filter hook prerouting priority -150; policy accept;
//!         iif "lo" accept
//!         fib daddr type local meta l4proto . th dport { tcp . 4992 } ip saddr . meta l4proto . th dport @allow4 accept
//!         fib daddr type local meta l4proto . th dport { tcp . 4992 } ip6 saddr . meta l4proto . th dport @allow6 accept
//!         fib daddr type local tcp dport { 4992 } tcp flags & (ack | rst) == 0 reject with tcp reset
//!     }
//! }
//! ```
//!
//! That is `refuse = "reject"`; with "drop" the knock port is dropped too
//! and refusals are drops. ([`script::chain_rules`] says why each rule is
//! what it is.)
//!
//! `install` feeds one `nft -f -` transaction ([`script`]) that creates the
//! table and sets if missing (keeping the sets' live elements), and flushes
//! and refills our chain. A table that does not match this layout is deleted
//! and recreated in one transaction that carries its live grants over.
//! Everything at run time (grant, verify, grants, remove) speaks nf_tables
//! netlink directly ([`nfnl`]); no process is spawned per grant.

mod nfnl;
pub mod script;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use knock_proto::PortSpec;

pub use self::nfnl::{decode_key, element_key};
use self::nfnl::{
    ChainInfo, Nfnl, SetInfo, KEY_LEN4, KEY_LEN6, KEY_TYPE4, KEY_TYPE6, NFT_SET_ANONYMOUS,
    NFT_SET_CONSTANT, NFT_SET_INTERVAL, NFT_SET_MAP, NFT_SET_OBJECT, NFT_SET_TIMEOUT,
    NFT_TABLE_F_DORMANT, NF_ACCEPT, NF_INET_PRE_ROUTING,
};
use super::command::{self, DEADLINE};
use super::{expect_rule_count, Firewall, FirewallError, Installed, LiveGrant, Policy};

/// Our chain and sets inside our table.
pub const CHAIN: &str = "prerouting";
pub const SET4: &str = "allow4";
pub const SET6: &str = "allow6";

/// Where our table lives: the operator's choice in `server.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Table name (family inet).
    pub table: String,
    /// Priority of our input chain.
    pub priority: i32,
}

/// The nftables backend. Keeps one netlink socket open across grants.
#[derive(Debug)]
pub struct Nftables {
    settings: Settings,
    nfnl: Nfnl,
    /// What install left: the expressions of our chain's rules as the kernel
    /// reports them.
    installed: Option<Installed<Vec<Vec<u8>>>>,
}

impl Nftables {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            nfnl: Nfnl::new(),
            installed: None,
        }
    }

    fn chain_name(&self) -> String {
        format!("inet {} {CHAIN}", self.settings.table)
    }
}

/// Runs `nft -f -` on `script`.
fn run_nft(script: &str) -> Result<(), FirewallError> {
    command::run("nft", &["-f", "-"], Some(script), DEADLINE)?;
    Ok(())
}

/// Is `chain` our input chain as `settings` want it?
fn check_chain(settings: &Settings, chain: &ChainInfo) -> Result<(), String> {
    let table = &settings.table;
    let want = (NF_INET_PRE_ROUTING, settings.priority);
    if chain.hook != Some(want) || chain.chain_type.as_deref() != Some("filter") {
        return Err(format!(
            "chain inet {table} {CHAIN} is not a filter chain on hook prerouting at priority {} (found {:?} {:?})",
            settings.priority, chain.chain_type, chain.hook
        ));
    }
    if chain.policy != Some(NF_ACCEPT) {
        return Err(format!(
            "chain inet {table} {CHAIN} no longer has policy accept"
        ));
    }
    Ok(())
}

/// Is `set` one of ours, of the right type?
fn check_set(table: &str, set: &SetInfo) -> Result<(), String> {
    let (key_type, key_len) = if set.name == SET4 {
        (KEY_TYPE4, KEY_LEN4)
    } else {
        (KEY_TYPE6, KEY_LEN6)
    };
    let forbidden =
        NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL | NFT_SET_MAP | NFT_SET_OBJECT;
    if set.key_type != key_type
        || usize::try_from(set.key_len).ok() != Some(key_len)
        || set.flags & NFT_SET_TIMEOUT == 0
        || set.flags & forbidden != 0
    {
        return Err(format!(
            "set inet {table} {} has another type (key type {}, length {}, flags {:#x})",
            set.name, set.key_type, set.key_len, set.flags
        ));
    }
    Ok(())
}

/// What install finds in the kernel before it starts.
#[derive(Debug)]
enum TableState {
    Absent,
    Compatible,
    Incompatible(String),
}

impl Nftables {
    /// Looks at what is in the kernel before install.
    fn inspect(&mut self) -> Result<TableState, FirewallError> {
        let table = self.settings.table.clone();
        let Some(flags) = self.nfnl.table_flags(&table)? else {
            return Ok(TableState::Absent);
        };
        if flags & NFT_TABLE_F_DORMANT != 0 {
            return Ok(TableState::Incompatible(format!(
                "table inet {table} is dormant"
            )));
        }
        for chain in self.nfnl.chains(&table)? {
            if chain.name != CHAIN {
                return Ok(TableState::Incompatible(format!(
                    "unexpected chain {} in table inet {table}",
                    chain.name
                )));
            }
            // The script resets a changed policy; it cannot move a chain to
            // another hook or priority.
            let mut wanted = chain.clone();
            wanted.policy = Some(NF_ACCEPT);
            if let Err(reason) = check_chain(&self.settings, &wanted) {
                return Ok(TableState::Incompatible(reason));
            }
        }
        for set in self.nfnl.sets(&table)? {
            if set.flags & NFT_SET_ANONYMOUS != 0 {
                continue;
            }
            if set.name != SET4 && set.name != SET6 {
                return Ok(TableState::Incompatible(format!(
                    "unexpected set {} in table inet {table}",
                    set.name
                )));
            }
            if let Err(reason) = check_set(&table, &set) {
                return Ok(TableState::Incompatible(reason));
            }
        }
        Ok(TableState::Compatible)
    }

    /// Checks table, chain, sets and rule count against what `policy`
    /// renders; returns the chain's rule expressions.
    fn check(&mut self, policy: &Policy) -> Result<Vec<Vec<u8>>, FirewallError> {
        let table = self.settings.table.clone();
        match self.nfnl.table_flags(&table)? {
            None => {
                return Err(FirewallError::Missing(format!(
                    "table inet {table} does not exist"
                )))
            }
            Some(flags) if flags & NFT_TABLE_F_DORMANT != 0 => {
                return Err(FirewallError::Missing(format!(
                    "table inet {table} is dormant"
                )))
            }
            Some(_) => {}
        }
        let chain = self.nfnl.chain(&table, CHAIN)?.ok_or_else(|| {
            FirewallError::Missing(format!("chain inet {table} {CHAIN} does not exist"))
        })?;
        check_chain(&self.settings, &chain).map_err(FirewallError::Missing)?;
        for name in [SET4, SET6] {
            let set = self.nfnl.set(&table, name)?.ok_or_else(|| {
                FirewallError::Missing(format!("set inet {table} {name} does not exist"))
            })?;
            check_set(&table, &set).map_err(FirewallError::Missing)?;
        }
        let found = self.nfnl.rules(&table, CHAIN)?;
        expect_rule_count(
            &self.chain_name(),
            found.len(),
            script::chain_rules(policy).len(),
        )?;
        Ok(found)
    }
}

impl Firewall for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn plan(&self, policy: &Policy) -> String {
        script::install_script(&self.settings, policy)
    }

    fn install(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        let table = self.settings.table.clone();
        self.installed = None;
        let install = script::install_script(&self.settings, policy);
        let recreate_because = match self.inspect()? {
            TableState::Incompatible(reason) => Some(reason),
            TableState::Absent => {
                run_nft(&install)?;
                None
            }
            TableState::Compatible => match run_nft(&install) {
                Ok(()) => None,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(reason) = recreate_because {
            let keep = match self.grants() {
                Ok(keep) => keep,
                Err(e) => {
                    tracing::warn!("nftables: cannot read live grants of table inet {table} before recreating it: {e}");
                    Vec::new()
                }
            };
            tracing::warn!(
                "nftables: table inet {table} does not match our layout ({reason}); recreating it with {} live grants",
                keep.len()
            );
            run_nft(&script::recreate_script(&self.settings, policy, &keep))?;
        }
        let found = self.check(policy);
        self.installed = Some(Installed::read_back(policy, found)?);
        Ok(())
    }

    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError> {
        let ports: BTreeSet<PortSpec> = ports.iter().copied().collect();
        if ports.is_empty() {
            return Ok(());
        }
        let table = &self.settings.table;
        // Never 0: an element without a timeout would never expire.
        let timeout_ms = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut set = SET4;
        let mut keys = Vec::with_capacity(ports.len());
        for port in ports {
            let (s, key) = element_key(addr, port);
            set = s;
            keys.push(key);
        }
        self.nfnl
            .add_elements(table, set, &keys, timeout_ms)
            .map_err(|e| match e.errno() {
                Some(libc::ENOENT) => {
                    FirewallError::Missing(format!("set inet {table} {set} does not exist: {e}"))
                }
                _ => FirewallError::netlink(format!("adding to set inet {table} {set}"))(e),
            })
    }

    fn verify(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        let found = self.check(policy)?;
        Installed::compare(self.installed.as_ref(), policy, &found, &self.chain_name())
    }

    fn grants(&mut self) -> Result<Vec<LiveGrant>, FirewallError> {
        let table = self.settings.table.clone();
        let mut grants = Vec::new();
        for set in [SET4, SET6] {
            for (key, expiration) in self.nfnl.elements(&table, set)? {
                let Some((addr, port)) = decode_key(&key) else {
                    continue;
                };
                // An element without timeout (added by hand) never expires.
                let expires_in = expiration.map_or(Duration::MAX, Duration::from_millis);
                grants.push(LiveGrant {
                    addr,
                    port,
                    expires_in,
                });
            }
        }
        grants.sort_by_key(|g| (g.addr, g.port));
        Ok(grants)
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        let table = &self.settings.table;
        self.installed = None;
        match self.nfnl.delete_table(table) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(FirewallError::netlink(format!(
                "deleting table inet {table}"
            ))(e)),
        }
    }
}
