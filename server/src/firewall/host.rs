//! What the host's own ruleset does to a port nothing listens on, so that
//! `knock-server check` can say which `refuse` makes knock's ports look like
//! their neighbours: a host that answers closed ports wants "reject", one
//! whose input policy drops wants "drop".

use super::command::{self, DEADLINE, XTABLES_WAIT_SECONDS};
use super::Refusal;

/// The refusal the host's ruleset calls for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRefusal {
    pub refusal: Refusal,
    pub because: String,
}

/// Reads the host's input chains (nftables, iptables and ip6tables, those
/// that are installed); tables and chains of knock's own are ignored.
pub fn closed_ports() -> HostRefusal {
    let mut dropping = Vec::new();
    if let Ok(ruleset) = command::run("nft", &["list", "ruleset"], None, DEADLINE) {
        dropping.extend(nft_dropping_chains(&ruleset));
    }
    for program in ["iptables", "ip6tables"] {
        let args = ["-w", XTABLES_WAIT_SECONDS, "-S", "INPUT"];
        if let Ok(listing) = command::run(program, &args, None, DEADLINE) {
            if listing.lines().any(|l| l.trim() == "-P INPUT DROP") {
                dropping.push(format!("{program} INPUT has policy DROP"));
            }
        }
    }
    if dropping.is_empty() {
        HostRefusal {
            refusal: Refusal::Reject,
            because: "no input chain of the host drops by policy: closed ports are answered".into(),
        }
    } else {
        HostRefusal {
            refusal: Refusal::Drop,
            because: format!("{}: closed ports are dropped", dropping.join(", ")),
        }
    }
}

/// The base chains on the input hook with policy drop, in `nft list
/// ruleset` output.
fn nft_dropping_chains(ruleset: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut table = "";
    let mut chain = "";
    for line in ruleset.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches(" {");
        } else if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.trim_end_matches(" {");
        } else if line.starts_with("type filter hook input") && line.contains("policy drop;") {
            found.push(format!("nft chain {table} {chain} has policy drop"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_chains_with_policy_drop_are_found() {
        let ruleset = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established accept\n\t}\n\
                       \tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n\
                       table inet knock {\n\tchain prerouting {\n\t\ttype filter hook prerouting priority -150; policy accept;\n\t}\n}\n";
        assert_eq!(
            nft_dropping_chains(ruleset),
            ["nft chain inet filter input has policy drop"]
        );
        let open = ruleset.replace(
            "input priority filter; policy drop;",
            "input priority filter; policy accept;",
        );
        assert!(nft_dropping_chains(&open).is_empty());
    }
}
