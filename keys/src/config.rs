//! The server's configuration file, `server.toml`.
//!
//! Read by `knock-server` and by `knock-keygen`. Unknown keys and bad values
//! are errors that name the file and the field; nothing is guessed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use knock_proto::PortSpec;
use serde::Deserialize;

use crate::duration::parse_duration;
use crate::secret_file::read_config;
use crate::FileError;

/// Where the configuration is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/knock/server.toml";
/// The packet mark bit of iptables refusals unless configured otherwise:
/// clear of the bits Docker, kube-proxy and Weave use.
pub const DEFAULT_IPTABLES_MARK: u32 = 0x0020_0000;
/// The port knocks are sent to unless configured otherwise.
pub const DEFAULT_KNOCK_PORT: u16 = 62201;

/// Which firewall the server drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

/// What happens to the protected ports when the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Rules stay: protected ports stay closed; live grants run out on their
    /// own. Nobody new gets in while the server is down (fail-closed).
    StayClosed,
    /// Our table or chains are removed: protected ports are open to everyone
    /// until the server starts again (fail-open).
    RemoveRules,
}

/// What a refused connection attempt to a protected port (and a datagram
/// to the knock port) gets: whatever the host gives its other closed ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuse {
    /// A TCP reset, or an ICMP port unreachable: a host that answers closed
    /// ports (the kernel's default).
    Reject,
    /// Nothing: a host whose own ruleset drops traffic to closed ports.
    Drop,
}

impl Refuse {
    pub fn name(self) -> &'static str {
        match self {
            Refuse::Reject => "reject",
            Refuse::Drop => "drop",
        }
    }

    /// The value `name` gives, as `server.toml` spells it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Refuse::Reject, Refuse::Drop]
            .into_iter()
            .find(|refuse| refuse.name() == name)
    }
}

/// An iptables packet-mark bit as `iptables_mark` writes it: `0x` and hex
/// digits, exactly one bit set.
pub fn parse_mark(text: &str) -> Option<u32> {
    text.strip_prefix("0x")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .filter(|mark| mark.count_ones() == 1)
}

/// Can `text` name our nftables table (`nft_table`)?
pub fn is_table_name(text: &str) -> bool {
    (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Can `text` be run as a command (`iptables_cmd`, `ip6tables_cmd`)? It is
/// passed as one argument vector entry, never to a shell, but a space or a
/// control character in it is always a mistake.
pub fn is_command_name(text: &str) -> bool {
    !text.is_empty() && !text.contains(|c: char| c.is_whitespace() || c.is_control())
}

/// The server's configuration, checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file it was read from.
    pub path: PathBuf,
    pub interface: String,
    pub knock_port: u16,
    pub firewall: Backend,
    pub protected: Vec<PortSpec>,
    pub open_for: Duration,
    pub state_dir: PathBuf,
    pub clients_dir: PathBuf,
    pub identity_file: PathBuf,
    /// The server's X25519 key pair for public-key clients (`server.key`):
    /// `server_key_file`, by default beside `identity_file`.
    pub server_key_file: PathBuf,
    pub max_clock_skew: Duration,
    pub on_exit: OnExit,
    pub refuse: Refuse,
    /// iptables, `refuse = "reject"`: the packet mark bit that carries a
    /// refusal from the mangle table, where we decide, to the filter table,
    /// where the kernel lets us answer.
    pub iptables_mark: u32,
    /// nftables: the name of our table (family inet).
    pub nft_table: String,
    /// nftables: the priority of our prerouting chain; lower runs earlier.
    pub nft_priority: i32,
    /// iptables: the commands to drive (`iptables`, `iptables-legacy`, ...).
    pub iptables_cmd: String,
    pub ip6tables_cmd: String,
    /// Seconds between watchdog checks that our rules are still in place.
    pub verify_every: Duration,
    /// Knocks must be bound to their source (`--allow-ip`): an unbound one
    /// is refused, whoever sent it.
    pub require_bound_addr: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<String>,
    knock_port: Option<i64>,
    firewall: Option<String>,
    protected: Option<Vec<String>>,
    open_for: Option<String>,
    state_dir: Option<String>,
    clients_dir: Option<String>,
    identity_file: Option<String>,
    server_key_file: Option<String>,
    max_clock_skew: Option<String>,
    on_exit: Option<String>,
    refuse: Option<String>,
    iptables_mark: Option<String>,
    nft_table: Option<String>,
    nft_priority: Option<i64>,
    iptables_cmd: Option<String>,
    ip6tables_cmd: Option<String>,
    verify_every: Option<String>,
    require_bound_addr: Option<bool>,
}

impl ServerConfig {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = read_config(path)?;
        Self::parse(path, &text)
    }

    /// Checks `text` as if read from `path` (relative paths in it are taken
    /// relative to the directory of `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Self, FileError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| FileError::syntax(path, text, &e))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let field = |name, message: String| FileError::field(path, name, message);

        let interface = raw.interface.unwrap_or_else(|| "any".to_owned());
        if interface.is_empty()
            || interface.len() > 15
            || !interface.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(field(
                "interface",
                format!(
                    "{interface:?} is not an interface name; use a name like \"eth0\" or \"any\""
                ),
            ));
        }
        let knock_port = match raw.knock_port {
            None => DEFAULT_KNOCK_PORT,
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| field("knock_port", format!("{p} is not a port; use 1-65535")))?,
        };
        let firewall = match raw.firewall.as_deref() {
            None | Some("nftables") => Backend::Nftables,
            Some("iptables") => Backend::Iptables,
            Some(other) => {
                return Err(field(
                    "firewall",
                    format!("unknown backend {other:?}; use \"nftables\" or \"iptables\""),
                ))
            }
        };
        let protected = match raw.protected {
            None => {
                return Err(field(
                    "protected",
                    "missing: list the ports to protect, e.g. protected = [\"tcp/22\"]".into(),
                ))
            }
            Some(items) => crate::parse_ports(path, "protected", &items)?,
        };
        if protected.is_empty() {
            return Err(field(
                "protected",
                "empty: list at least one port, e.g. [\"tcp/22\"]".into(),
            ));
        }
        if protected.contains(&PortSpec {
            transport: knock_proto::Transport::Udp,
            port: knock_port,
        }) {
            return Err(field(
                "protected",
                format!("udp/{knock_port} is the knock port itself"),
            ));
        }
        let duration = |name: &'static str, value: Option<String>, default: u64| match value {
            None => Ok(Duration::from_secs(default)),
            Some(text) => parse_duration(&text).map_err(|m| field(name, m)),
        };
        let open_for = duration("open_for", raw.open_for, 30)?;
        let max_clock_skew = duration("max_clock_skew", raw.max_clock_skew, 30)?;
        if max_clock_skew > Duration::from_secs(600) {
            return Err(field(
                "max_clock_skew",
                "at most 10m; a wide window only helps an attacker".into(),
            ));
        }
        let verify_every = duration("verify_every", raw.verify_every, 2)?;
        let resolve = |name: &'static str,
                       value: Option<String>,
                       default: &str|
         -> Result<PathBuf, FileError> {
            let text = value.unwrap_or_else(|| default.to_owned());
            if text.is_empty() {
                return Err(field(name, "empty path".into()));
            }
            Ok(base.join(text))
        };
        let state_dir = resolve("state_dir", raw.state_dir, "/var/lib/knock")?;
        let clients_dir = resolve("clients_dir", raw.clients_dir, "/etc/knock/clients.d")?;
        let identity_file = resolve("identity_file", raw.identity_file, "server.id")?;
        let server_key_file = match raw.server_key_file {
            Some(text) => resolve("server_key_file", Some(text), "")?,
            None => identity_file
                .parent()
                .unwrap_or(base)
                .join(crate::identity::SERVER_KEY_FILE_NAME),
        };
        if server_key_file == identity_file {
            return Err(field(
                "server_key_file",
                "must not be the identity_file".into(),
            ));
        }
        let on_exit = match raw.on_exit.as_deref() {
            None | Some("stay-closed") => OnExit::StayClosed,
            Some("remove-rules") => OnExit::RemoveRules,
            Some(other) => {
                return Err(field(
                    "on_exit",
                    format!("unknown value {other:?}; use \"stay-closed\" or \"remove-rules\""),
                ))
            }
        };
        let refuse = match raw.refuse.as_deref() {
            None => Refuse::Reject,
            Some(text) => Refuse::from_name(text).ok_or_else(|| {
                field(
                    "refuse",
                    format!("unknown value {text:?}; use \"reject\" or \"drop\""),
                )
            })?,
        };
        let iptables_mark = match raw.iptables_mark.as_deref() {
            None => DEFAULT_IPTABLES_MARK,
            Some(text) => parse_mark(text).ok_or_else(|| {
                field(
                    "iptables_mark",
                    format!("{text:?}: use one bit in hexadecimal, e.g. \"0x00200000\""),
                )
            })?,
        };
        let nft_table = raw.nft_table.unwrap_or_else(|| "knock".to_owned());
        if !is_table_name(&nft_table) {
            return Err(field(
                "nft_table",
                format!("{nft_table:?}: use 1-32 letters, digits or _"),
            ));
        }
        let nft_priority = match raw.nft_priority {
            // Before destination NAT (-100), so forwarded ports are seen by
            // the port clients connect to.
            None => -150,
            Some(p) => i32::try_from(p)
                .ok()
                .filter(|p| (-1000..=1000).contains(p))
                .ok_or_else(|| field("nft_priority", format!("{p}: use -1000 to 1000")))?,
        };
        let command = |name: &'static str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_owned());
            if !is_command_name(&text) {
                return Err(field(name, format!("{text:?} is not a command name")));
            }
            Ok(text)
        };
        let iptables_cmd = command("iptables_cmd", raw.iptables_cmd, "iptables")?;
        let ip6tables_cmd = command("ip6tables_cmd", raw.ip6tables_cmd, "ip6tables")?;

        Ok(Self {
            path: path.to_path_buf(),
            interface,
            knock_port,
            firewall,
            protected,
            open_for,
            state_dir,
            clients_dir,
            identity_file,
            server_key_file,
            max_clock_skew,
            on_exit,
            refuse,
            iptables_mark,
            nft_table,
            nft_priority,
            iptables_cmd,
            ip6tables_cmd,
            verify_every,
            require_bound_addr: raw.require_bound_addr.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, FileError> {
        ServerConfig::parse(Path::new("/etc/knock/server.toml"), text)
    }

    #[test]
    fn accepts_the_contract_example() {
        let config = parse(
            r#"
interface  = "eth0"
knock_port = 62201
firewall   = "nftables"
protected  = ["tcp/4992"]
open_for   = "30s"
state_dir  = "/var/lib/knock"
clients_dir = "/etc/knock/clients.d"
"#,
        )
        .unwrap();
        assert_eq!(config.protected, vec![PortSpec::tcp(4992)]);
        assert_eq!(config.open_for, Duration::from_secs(30));
        assert_eq!(config.identity_file, PathBuf::from("/etc/knock/server.id"));
        assert_eq!(
            config.server_key_file,
            PathBuf::from("/etc/knock/server.key")
        );
    }

    #[test]
    fn the_server_key_lives_beside_the_identity_unless_configured() {
        let config = parse("protected = [\"tcp/22\"]\nidentity_file = \"/srv/k/id\"\n").unwrap();
        assert_eq!(config.server_key_file, PathBuf::from("/srv/k/server.key"));
        let config = parse("protected = [\"tcp/22\"]\nserver_key_file = \"keys/s.key\"\n").unwrap();
        assert_eq!(
            config.server_key_file,
            PathBuf::from("/etc/knock/keys/s.key")
        );
        for bad in ["server_key_file = \"\"", "server_key_file = \"server.id\""] {
            let err = parse(&format!("protected = [\"tcp/22\"]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("server_key_file"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("protected = [\"tcp/22\"]\nbogus = 1", "bogus"),
            ("protected = [\"tcp/22\"]\nknock_port = 70000", "knock_port"),
            ("protected = [\"tcp/22\"]\nknock_port = -1", "knock_port"),
            ("protected = [\"tcp/22\"]\nfirewall = \"pf\"", "firewall"),
            ("protected = [\"tcp/0\"]", "protected"),
            ("protected = []", "protected"),
            ("knock_port = 1", "protected"),
            ("protected = [\"tcp/22\"]\nopen_for = \"-5s\"", "open_for"),
            ("protected = [\"tcp/22\"]\nopen_for = 30", "open_for"),
            ("protected = \"tcp/22\"", "protected"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text:?} gave {err}");
            assert!(err.contains("/etc/knock/server.toml"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
