//! An in-memory firewall, for unit tests of the pipeline only.

use std::net::IpAddr;
use std::time::Duration;

use knock_proto::PortSpec;

use super::{Firewall, FirewallError, LiveGrant, RuleSet};

/// Records grants; `fail_grants` makes every grant fail.
#[derive(Debug, Default)]
pub struct MemoryFirewall {
    pub installed: Option<RuleSet>,
    pub granted: Vec<(IpAddr, Vec<PortSpec>, Duration)>,
    pub fail_grants: bool,
}

impl Firewall for MemoryFirewall {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn plan(&self, rules: &RuleSet) -> String {
        format!("{rules:?}\n")
    }

    fn install(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        self.installed = Some(rules.clone());
        Ok(())
    }

    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError> {
        if self.fail_grants {
            return Err(FirewallError::Netlink("injected failure".into()));
        }
        self.granted.push((addr, ports.to_vec(), duration));
        Ok(())
    }

    fn verify(&mut self, _rules: &RuleSet) -> Result<(), FirewallError> {
        match self.installed {
            Some(_) => Ok(()),
            None => Err(FirewallError::Missing("not installed".into())),
        }
    }

    fn grants(&mut self, _rules: &RuleSet) -> Result<Vec<LiveGrant>, FirewallError> {
        Ok(self
            .granted
            .iter()
            .flat_map(|(addr, ports, duration)| {
                ports.iter().map(move |port| LiveGrant {
                    addr: *addr,
                    port: *port,
                    expires_in: *duration,
                })
            })
            .collect())
    }

    fn remove(&mut self, _rules: &RuleSet) -> Result<(), FirewallError> {
        self.installed = None;
        Ok(())
    }
}
