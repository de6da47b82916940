//! Configurations that load but cannot be what the operator meant: said by
//! `check`, `apply` and every reload, never refused (an operator may be half
//! way through a change, or mean it).

use knock_keys::config::ServerConfig;
use knock_keys::entry::ClientEntry;
use knock_proto::port_list;

/// One line per doubtful point at `now_ms`, in a stable order.
pub fn warnings(config: &ServerConfig, clients: &[ClientEntry], now_ms: u64) -> Vec<String> {
    let mut scan = Scan::new(config, now_ms);
    for client in clients {
        scan.client(client);
    }
    scan.finish()
}

/// Warnings about single clients said at most: with 100,000 clients one
/// mistake in a template would otherwise be 100,000 lines.
const CLIENT_POINTS: usize = 20;

/// [`warnings`] for clients read one at a time.
#[derive(Debug)]
pub struct Scan<'c> {
    config: &'c ServerConfig,
    now_ms: u64,
    clients: usize,
    /// Protected ports some client may open.
    permitted: Vec<bool>,
    /// Each client's own points, in order.
    points: Vec<String>,
}

impl<'c> Scan<'c> {
    pub fn new(config: &'c ServerConfig, now_ms: u64) -> Self {
        Self {
            config,
            now_ms,
            clients: 0,
            permitted: vec![false; config.protected.len()],
            points: Vec::new(),
        }
    }

    pub fn client(&mut self, client: &ClientEntry) {
        self.clients += 1;
        for (port, permitted) in self.config.protected.iter().zip(&mut self.permitted) {
            *permitted |= client.ports.contains(port);
        }
        if let Some(expires) = client
            .expires
            .as_ref()
            .filter(|e| e.has_passed(self.now_ms))
        {
            self.points.push(format!(
                "client {} expired ({expires}): its knocks are refused (expired); remove its file, or move its expires",
                client.name
            ));
        }
        let unprotected: Vec<_> = client
            .ports
            .iter()
            .filter(|p| !self.config.protected.contains(p))
            .copied()
            .collect();
        if !unprotected.is_empty() {
            self.points.push(format!(
                "client {} is permitted {}, not in protected: its knocks for {} are refused (port-not-permitted)",
                client.name,
                port_list(&unprotected),
                if unprotected.len() == 1 { "it" } else { "them" }
            ));
        }
    }

    pub fn finish(self) -> Vec<String> {
        let config = self.config;
        if self.clients == 0 {
            return vec![format!(
                "no clients in {}: nobody can knock (create one with knock-keygen NAME --host THIS-HOST)",
                config.clients_dir.display()
            )];
        }
        let mut warnings: Vec<String> = config
            .protected
            .iter()
            .zip(&self.permitted)
            .filter(|(_, permitted)| !**permitted)
            .map(|(port, _)| format!(
                "protected port {port} is permitted to no client: nobody can open it (add it to a client's ports, or knock-keygen NAME --host HOST --ports {port})"
            ))
            .collect();
        let more = self.points.len().saturating_sub(CLIENT_POINTS);
        warnings.extend(self.points.into_iter().take(CLIENT_POINTS));
        if more > 0 {
            warnings.push(format!(
                "and {more} more like these about other clients (`knock-server check` lists the first {CLIENT_POINTS})"
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knock_keys::entry::Credential;
    use knock_proto::{ClientSecret, PortSpec};
    use std::path::Path;

    fn config(protected: &str) -> ServerConfig {
        let text = format!("protected = [{protected}]\nclients_dir = \"/etc/knock/clients.d\"\n");
        ServerConfig::parse(Path::new("/etc/knock/server.toml"), &text).expect("config")
    }

    fn client(name: &str, ports: &[&str], key: u8) -> ClientEntry {
        ClientEntry {
            name: name.into(),
            credential: Credential::Shared(ClientSecret::from_slice(&[key; 32]).expect("secret")),
            ports: ports
                .iter()
                .map(|p| p.parse::<PortSpec>().expect("port"))
                .collect(),
            max_open_for: None,
            allow_from: Vec::new(),
            expires: None,
            require_bound_addr: false,
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn an_expired_client_is_said() {
        let config = config("\"tcp/22\"");
        let mut old = client("carol", &["tcp/22"], 1);
        old.expires = Some("2020-01-01".parse().expect("date"));
        let mut later = client("dave", &["tcp/22"], 2);
        later.expires = Some("2099-01-01".parse().expect("date"));
        assert_eq!(
            warnings(&config, &[old, later], NOW),
            ["client carol expired (2020-01-01): its knocks are refused (expired); remove its file, or move its expires"]
        );
    }

    #[test]
    fn a_consistent_configuration_has_nothing_to_say() {
        let config = config("\"tcp/22\", \"tcp/4992\"");
        let clients = [
            client("alice", &["tcp/22"], 1),
            client("bob", &["tcp/4992"], 2),
        ];
        assert_eq!(warnings(&config, &clients, NOW), Vec::<String>::new());
    }

    #[test]
    fn each_doubtful_point_is_said() {
        let config = config("\"tcp/22\", \"tcp/4992\"");
        assert_eq!(
            warnings(&config, &[], NOW),
            ["no clients in /etc/knock/clients.d: nobody can knock (create one with knock-keygen NAME --host THIS-HOST)"]
        );
        let clients = [client("alice", &["tcp/22", "udp/53", "tcp/80"], 1)];
        assert_eq!(
            warnings(&config, &clients, NOW),
            [
                "protected port tcp/4992 is permitted to no client: nobody can open it (add it to a client's ports, or knock-keygen NAME --host HOST --ports tcp/4992)",
                "client alice is permitted udp/53,tcp/80, not in protected: its knocks for them are refused (port-not-permitted)",
            ]
        );
    }
}
