//! placeholder
#[derive(Debug)]
pub struct Iptables;
impl Iptables { pub fn new() -> Self { Self } }
impl super::Firewall for Iptables {
    fn name(&self) -> &'static str { "iptables" }
    fn plan(&self, _r: &super::RuleSet) -> String { String::new() }
    fn install(&mut self, _r: &super::RuleSet) -> Result<(), super::FirewallError> { Ok(()) }
    fn grant(&mut self, _a: std::net::IpAddr, _p: &[knock_proto::PortSpec], _d: std::time::Duration) -> Result<(), super::FirewallError> { Ok(()) }
    fn verify(&mut self, _r: &super::RuleSet) -> Result<(), super::FirewallError> { Ok(()) }
    fn grants(&mut self, _r: &super::RuleSet) -> Result<Vec<super::LiveGrant>, super::FirewallError> { Ok(vec![]) }
    fn remove(&mut self, _r: &super::RuleSet) -> Result<(), super::FirewallError> { Ok(()) }
}
