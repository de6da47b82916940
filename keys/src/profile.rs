//! The client's files: the profile, everything `knock-client` needs to knock
//! on one server; and `client.toml`, the settings that hold for every server.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use knock_proto::{valid_client_name, ClientSecret, PortSpec, ServerId, SERVER_ID_LEN};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret_file::{read_config, read_secret};
use crate::{decode_base64, encode_base64, parse_ports, FileError};

/// A client's view of one server.
#[derive(Debug, Clone)]
pub struct ClientProfile {
    /// The client's name on the server (informational: knocks do not carry it).
    pub name: String,
    /// The server as the client reaches it: a name or an address.
    pub host: String,
    /// Other names or addresses that find this profile.
    pub aliases: Vec<String>,
    pub knock_port: u16,
    pub server_id: ServerId,
    pub secret: ClientSecret,
    /// The ports this client may open.
    pub ports: Vec<PortSpec>,
    /// STUN servers that `--allow-ip auto` asks for this host's public
    /// address when knocking on this server (optional; none by default).
    pub stun: Vec<StunServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    host: String,
    #[serde(default)]
    aliases: Vec<String>,
    knock_port: i64,
    server_id: String,
    key: Zeroizing<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    stun: Vec<String>,
}

impl ClientProfile {
    /// Reads a profile; it must be 0600 or stricter.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = read_secret(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, FileError> {
        let raw: RawProfile =
            toml::from_str(text).map_err(|e| FileError::syntax(path, text, &e))?;
        if !valid_client_name(&raw.name) {
            return Err(FileError::field(
                path,
                "name",
                "use letters, digits, '-', '_' or '.'",
            ));
        }
        if !plausible_host(&raw.host) {
            return Err(FileError::field(
                path,
                "host",
                "must be a host name or address",
            ));
        }
        if !raw.aliases.iter().all(|a| plausible_host(a)) {
            return Err(FileError::field(
                path,
                "aliases",
                "each must be a host name or address",
            ));
        }
        let knock_port = u16::try_from(raw.knock_port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| FileError::field(path, "knock_port", "use 1-65535"))?;
        let server_id = decode_base64(&raw.server_id)
            .and_then(|bytes| ServerId::from_slice(&bytes))
            .ok_or_else(|| {
                FileError::field(
                    path,
                    "server_id",
                    format!("must be {SERVER_ID_LEN} bytes of base64"),
                )
            })?;
        let secret = decode_base64(&raw.key)
            .and_then(|bytes| ClientSecret::from_slice(&bytes))
            .ok_or_else(|| FileError::field(path, "key", "must be 32 bytes of base64"))?;
        let ports = parse_ports(path, "ports", &raw.ports)?;
        let stun = parse_stun_list(path, &raw.stun)?;
        Ok(Self {
            name: raw.name,
            host: raw.host,
            aliases: raw.aliases,
            knock_port,
            server_id,
            secret,
            ports,
            stun,
        })
    }

    /// Does this profile answer to `host` (its host or one of its aliases)?
    pub fn answers_to(&self, host: &str) -> bool {
        let wanted = host.trim_end_matches('.');
        std::iter::once(&self.host)
            .chain(&self.aliases)
            .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(wanted))
    }

    /// The file's text.
    pub fn to_toml(&self) -> Zeroizing<String> {
        let quote = |items: &mut dyn Iterator<Item = String>| {
            items
                .map(|s| toml_string(&s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Written only when set, so that profiles without it stay as they were.
        let stun = if self.stun.is_empty() {
            String::new()
        } else {
            format!(
                "stun = [{}]\n",
                quote(&mut self.stun.iter().map(|s| s.to_string()))
            )
        };
        Zeroizing::new(format!(
            "# knock client profile: client \"{name}\".\n\
             # Install it with `knock-client import FILE`. It holds a secret: keep it 0600.\n\
             name = \"{name}\"\n\
             host = {host_toml}\n\
             aliases = [{aliases}]\n\
             knock_port = {port}\n\
             server_id = \"{server_id}\"\n\
             key = \"{key}\"\n\
             ports = [{ports}]\n\
             {stun}",
            name = self.name,
            host_toml = toml_string(&self.host),
            aliases = quote(&mut self.aliases.iter().cloned()),
            port = self.knock_port,
            server_id = encode_base64(&self.server_id.0),
            key = encode_base64(self.secret.expose()),
            ports = quote(&mut self.ports.iter().map(|p| p.to_string())),
        ))
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Host names and addresses as a profile may hold them: no blanks, no control
/// characters, nothing that could break the file it is written back to.
fn plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

/// The port STUN servers listen on when none is given (RFC 5389).
pub const STUN_DEFAULT_PORT: u16 = 3478;

/// A STUN server as written: `HOST`, `HOST:PORT`, `[IPv6]` or `[IPv6]:PORT`,
/// or a bare IPv6 address (then without a port). HOST is a name, an IPv4 or
/// an IPv6 address; the port defaults to [`STUN_DEFAULT_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServer {
    /// A host name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl StunServer {
    /// Parses one server; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let form = "give HOST, HOST:PORT or [IPv6]:PORT";
        if text.is_empty() {
            return Err(format!("an empty STUN server: {form}"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?} has no closing ']': {form}"))?;
            if inside.parse::<Ipv6Addr>().is_err() {
                return Err(format!(
                    "{text:?}: only an IPv6 address goes between [ and ]: {form}"
                ));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{text:?}: expected ':PORT' after ']': {form}"))?,
                ),
            };
            (inside, port)
        } else if text.parse::<Ipv6Addr>().is_ok() {
            (text, None)
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            None => STUN_DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{text:?}: the port must be 1-65535: {form}"))?,
        };
        if host.parse::<IpAddr>().is_err() && !valid_host_name(host) {
            return Err(format!(
                "{text:?}: {host:?} is not a host name or an IP address: {form}"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for StunServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name: labels of letters, digits, '-' and '_', separated by dots.
fn valid_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn parse_stun_list(path: &Path, items: &[String]) -> Result<Vec<StunServer>, FileError> {
    let mut servers = Vec::with_capacity(items.len());
    for item in items {
        let server = StunServer::parse(item).map_err(|m| FileError::field(path, "stun", m))?;
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    Ok(servers)
}

/// `$KNOCK_HOME/client.toml`: settings for every server. Optional; it holds
/// no secret.
///
/// ```toml
/// stun = ["stun.example:3478", "[2001:db8::3]:3478"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// STUN servers for `--allow-ip auto`, when neither `--stun` nor the
    /// profile names any.
    pub stun: Vec<StunServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientConfig {
    #[serde(default)]
    stun: Vec<String>,
}

impl ClientConfig {
    /// Reads `path`; a missing file is the default (empty) configuration.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        match read_config(path) {
            Ok(text) => Self::parse(path, &text),
            Err(FileError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Self::default())
            }
            Err(err) => Err(err),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, FileError> {
        let raw: RawClientConfig =
            toml::from_str(text).map_err(|e| FileError::syntax(path, text, &e))?;
        Ok(Self {
            stun: parse_stun_list(path, &raw.stun)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(host: &str, port: u16) -> StunServer {
        StunServer {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn stun_servers_as_written() {
        let cases = [
            ("stun.example", server("stun.example", 3478)),
            ("stun.example:19302", server("stun.example", 19302)),
            ("198.51.100.3", server("198.51.100.3", 3478)),
            ("198.51.100.3:3479", server("198.51.100.3", 3479)),
            ("[2001:db8::3]:3479", server("2001:db8::3", 3479)),
            ("[2001:db8::3]", server("2001:db8::3", 3478)),
            ("2001:db8::3", server("2001:db8::3", 3478)),
            (" stun.example. ", server("stun.example.", 3478)),
        ];
        for (text, expected) in cases {
            let parsed = StunServer::parse(text).unwrap();
            assert_eq!(parsed, expected, "{text}");
            // Written back, it reads the same.
            assert_eq!(StunServer::parse(&parsed.to_string()).unwrap(), parsed);
        }
        assert_eq!(
            server("2001:db8::3", 3478).to_string(),
            "[2001:db8::3]:3478"
        );
        for bad in [
            "",
            ":3478",
            "stun.example:",
            "stun.example:0",
            "stun.example:65536",
            "stun.example:x",
            "[stun.example]:3478",
            "[2001:db8::3",
            "[2001:db8::3]3478",
            "2001:db8::3:99999",
            "stun example",
            "a..b",
            "host/path",
            "\"quoted\"",
        ] {
            assert!(StunServer::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn client_config() {
        let path = Path::new("/k/client.toml");
        let config =
            ClientConfig::parse(path, "stun = [\"a.example\", \"[2001:db8::1]:5\"]\n").unwrap();
        assert_eq!(
            config.stun,
            vec![server("a.example", 3478), server("2001:db8::1", 5)]
        );
        assert_eq!(
            ClientConfig::parse(path, "").unwrap(),
            ClientConfig::default()
        );
        let unknown = ClientConfig::parse(path, "stun = []\nstunn = []\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("/k/client.toml"), "{unknown}");
        assert!(unknown.contains("stunn"), "{unknown}");
        let bad = ClientConfig::parse(path, "stun = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("field `stun`"), "{bad}");
        let missing = ClientConfig::load(Path::new("/nonexistent/knock/client.toml")).unwrap();
        assert!(missing.stun.is_empty());
    }

    #[test]
    fn profile_stun_list_round_trips() {
        let base = "name = \"alice\"\nhost = \"relay.example\"\nknock_port = 62201\n\
                    server_id = \"AAAAAAAAAAAAAAAAAAAAAA==\"\n\
                    key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
        let path = Path::new("p.knock");
        let plain = ClientProfile::parse(path, base).unwrap();
        assert!(plain.stun.is_empty());
        assert!(!plain.to_toml().contains("stun"));
        let with = ClientProfile::parse(
            path,
            &format!("{base}stun = [\"stun.example\", \"[2001:db8::3]:3479\"]\n"),
        )
        .unwrap();
        assert_eq!(
            with.stun,
            vec![server("stun.example", 3478), server("2001:db8::3", 3479)]
        );
        let again = ClientProfile::parse(path, &with.to_toml()).unwrap();
        assert_eq!(again.stun, with.stun);
        let err = ClientProfile::parse(path, &format!("{base}stun = [\"x:0\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `stun`"), "{err}");
    }
}
