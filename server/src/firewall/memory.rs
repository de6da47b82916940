//! An in-memory firewall, for unit tests of the pipeline only.

use std::net::IpAddr;
use std::time::Duration;

use knock_proto::PortSpec;

use super::{Firewall, FirewallError, LiveGrant, Policy};

/// Records grants; `fail_grants` makes every grant fail.
#[derive(Debug, Default)]
pub struct MemoryFirewall {
    pub installed: Option<Policy>,
    pub granted: Vec<(IpAddr, Vec<PortSpec>, Duration)>,
    pub fail_grants: bool,
}

impl Firewall for MemoryFirewall {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn plan(&self, policy: &Policy) -> String {
        format!("{policy:?}\n")
    }

    fn install(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        self.installed = Some(policy.clone());
        Ok(())
    }

    fn grant(
        &mut self,
        addr: IpAddr,
        ports: &[PortSpec],
        duration: Duration,
    ) -> Result<(), FirewallError> {
        if self.fail_grants {
            return Err(FirewallError::Missing("injected failure".into()));
        }
        self.granted.push((addr, ports.to_vec(), duration));
        Ok(())
    }

    fn verify(&mut self, policy: &Policy) -> Result<(), FirewallError> {
        match &self.installed {
            Some(installed) if installed == policy => Ok(()),
            _ => Err(FirewallError::Missing("not installed".into())),
        }
    }

    fn grants(&mut self) -> Result<Vec<LiveGrant>, FirewallError> {
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

    fn remove(&mut self) -> Result<(), FirewallError> {
        self.installed = None;
        Ok(())
    }
}
