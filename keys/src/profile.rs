//! The client's files: the profile, everything `knock-client` needs to knock
//! on one server; and `client.toml`, the settings that hold for every server.
//!
//! A profile is of one of two kinds, told apart by the key it holds (there is
//! no separate mode field that could disagree):
//!
//! * shared-key: `key`, the client's secret. The profile is a secret (0600).
//! * public-key: `server_public_key`, the server's X25519 public key (and
//!   `client_public_key`, the identity it was made for). The profile holds no
//!   secret and may be published; the secret is the client's identity
//!   (`$KNOCK_HOME/identity`, see [`crate::client_identity`]).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use knock_proto::{
    valid_client_name, ClientPublicKey, ClientSecret, Mode, PortSpec, ServerId, ServerPublicKey,
    SERVER_ID_LEN, SERVER_PUBLIC_KEY_LEN,
};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret_file::{check_secret_mode, read_config, read_with_mode};
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
    /// The key: a shared secret, or the server's public key.
    pub key: ProfileKey,
    /// The ports this client may open.
    pub ports: Vec<PortSpec>,
    /// STUN servers that `--allow-ip auto` asks for this host's public
    /// address when knocking on this server (optional; none by default).
    pub stun: Vec<StunServer>,
}

/// What a profile knocks with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileKey {
    /// `key`: the secret the server's entry holds too (shared-key mode).
    Shared(ClientSecret),
    /// Public-key mode: the client's identity (not in the profile) and the
    /// server's public key.
    Public {
        /// `server_public_key`.
        server: ServerPublicKey,
        /// `client_public_key`: the identity this profile was made for, so
        /// that a knock with another one can be refused with a clear message
        /// instead of being ignored by the server. Optional in the file.
        client: Option<ClientPublicKey>,
    },
}

impl ProfileKey {
    pub fn mode(&self) -> Mode {
        match self {
            ProfileKey::Shared(_) => Mode::Shared,
            ProfileKey::Public { .. } => Mode::Public,
        }
    }
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
    key: Option<Zeroizing<String>>,
    server_public_key: Option<String>,
    client_public_key: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    stun: Vec<String>,
}

impl ClientProfile {
    /// Reads a profile. A shared-key profile holds a secret and must be 0600
    /// or stricter; a public-key profile holds none and may have any mode.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let (text, mode) = read_with_mode(path)?;
        let profile = Self::parse(path, &text)?;
        if profile.mode() == Mode::Shared {
            check_secret_mode(path, mode)?;
        }
        Ok(profile)
    }

    /// `shared-key` or `public-key`.
    pub fn mode(&self) -> Mode {
        self.key.mode()
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
        let key = match (&raw.key, &raw.server_public_key) {
            (Some(key), None) => {
                if raw.client_public_key.is_some() {
                    return Err(FileError::field(
                        path,
                        "client_public_key",
                        "only a public-key profile (with `server_public_key`) names the \
                         client's public key; remove it",
                    ));
                }
                ProfileKey::Shared(
                    decode_base64(key)
                        .and_then(|bytes| ClientSecret::from_slice(&bytes))
                        .ok_or_else(|| {
                            FileError::field(path, "key", "must be 32 bytes of base64")
                        })?,
                )
            }
            (None, Some(server)) => {
                let server = decode_base64(server)
                    .and_then(|bytes| ServerPublicKey::from_slice(&bytes))
                    .ok_or_else(|| {
                        FileError::field(
                            path,
                            "server_public_key",
                            format!("must be {SERVER_PUBLIC_KEY_LEN} bytes of base64"),
                        )
                    })?;
                if server.is_small_order() {
                    return Err(FileError::field(
                        path,
                        "server_public_key",
                        "not a usable X25519 key (small order): ask the server's operator for \
                         a new profile",
                    ));
                }
                let client = raw
                    .client_public_key
                    .as_deref()
                    .map(ClientPublicKey::parse_line)
                    .transpose()
                    .map_err(|err| FileError::field(path, "client_public_key", err.to_string()))?;
                ProfileKey::Public { server, client }
            }
            (Some(_), Some(_)) => {
                return Err(FileError::field(
                    path,
                    "server_public_key",
                    "the profile holds both `key` and `server_public_key`: a profile is \
                     shared-key (`key`) or public-key (`server_public_key`), not both",
                ))
            }
            (None, None) => {
                return Err(FileError::field(
                    path,
                    "key",
                    "missing: a profile holds `key` (shared-key) or `server_public_key` \
                     (public-key); use the file knock-keygen wrote",
                ))
            }
        };
        let ports = parse_ports(path, "ports", &raw.ports)?;
        let stun = parse_stun_list(path, &raw.stun)?;
        Ok(Self {
            name: raw.name,
            host: raw.host,
            aliases: raw.aliases,
            knock_port,
            server_id,
            key,
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
        let (header, key) = match &self.key {
            ProfileKey::Shared(secret) => (
                "It holds a secret: keep it 0600.",
                format!("key = \"{}\"\n", encode_base64(secret.expose())),
            ),
            ProfileKey::Public { server, client } => (
                "Public-key profile: it holds no secret and may be published;\n\
                 # the client's secret is its identity (`knock-client identity`).",
                format!(
                    "server_public_key = \"{}\"\n{}",
                    encode_base64(server.as_bytes()),
                    client
                        .map(|c| format!("client_public_key = \"{}\"\n", c.to_line()))
                        .unwrap_or_default()
                ),
            ),
        };
        Zeroizing::new(format!(
            "# knock client profile: client \"{name}\".\n\
             # Install it with `knock-client import FILE`. {header}\n\
             name = \"{name}\"\n\
             host = {host_toml}\n\
             aliases = [{aliases}]\n\
             knock_port = {port}\n\
             server_id = \"{server_id}\"\n\
             {key}\
             ports = [{ports}]\n\
             {stun}",
            name = self.name,
            host_toml = toml_string(&self.host),
            aliases = quote(&mut self.aliases.iter().cloned()),
            port = self.knock_port,
            server_id = encode_base64(&self.server_id.0),
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

    fn public_profile_text() -> String {
        let server = knock_proto::ServerSecretKey::from_bytes([8; 32]).public();
        let client =
            knock_proto::ClientIdentity::from_seed(&knock_proto::IdentitySeed::from_bytes([1; 32]))
                .public();
        format!(
            "name = \"alice\"\nhost = \"relay.example\"\nknock_port = 62201\n\
             server_id = \"AAAAAAAAAAAAAAAAAAAAAA==\"\n\
             server_public_key = \"{}\"\nclient_public_key = \"{}\"\nports = [\"tcp/22\"]\n",
            encode_base64(server.as_bytes()),
            client.to_line()
        )
    }

    #[test]
    fn public_profiles_round_trip_and_hold_no_secret() {
        let path = Path::new("p.knock");
        let profile = ClientProfile::parse(path, &public_profile_text()).unwrap();
        assert_eq!(profile.mode(), Mode::Public);
        let ProfileKey::Public { server, client } = &profile.key else {
            panic!("not public: {profile:?}");
        };
        assert_eq!(
            *server,
            knock_proto::ServerSecretKey::from_bytes([8; 32]).public()
        );
        assert!(client.is_some());
        let text = profile.to_toml();
        assert!(!text.contains("\nkey ="), "{}", text.as_str());
        assert!(text.contains("may be published"), "{}", text.as_str());
        let again = ClientProfile::parse(path, &text).unwrap();
        assert_eq!(again.key, profile.key);
        assert_eq!(again.ports, profile.ports);
        // client_public_key is optional.
        let without: String = public_profile_text()
            .lines()
            .filter(|l| !l.starts_with("client_public_key"))
            .map(|l| format!("{l}\n"))
            .collect();
        let profile = ClientProfile::parse(path, &without).unwrap();
        assert!(matches!(
            profile.key,
            ProfileKey::Public { client: None, .. }
        ));
        assert!(!profile.to_toml().contains("client_public_key"));
    }

    #[test]
    fn a_profile_is_shared_or_public_not_both() {
        let path = Path::new("/k/p.knock");
        let key = "key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
        let public = public_profile_text();
        let client_line = public
            .lines()
            .find(|l| l.starts_with("client_public_key"))
            .unwrap()
            .to_owned();
        let neither: String = public
            .lines()
            .filter(|l| !l.starts_with("server_public_key") && !l.starts_with("client_public_key"))
            .map(|l| format!("{l}\n"))
            .collect();
        let small_order = public.replace(
            &encode_base64(
                knock_proto::ServerSecretKey::from_bytes([8; 32])
                    .public()
                    .as_bytes(),
            ),
            &encode_base64(&[0u8; 32]),
        );
        for (text, field) in [
            (format!("{public}{key}"), "server_public_key"),
            (neither.clone(), "key"),
            (
                format!("{neither}{key}{client_line}\n"),
                "client_public_key",
            ),
            (small_order, "server_public_key"),
            (
                public.replace("server_public_key = \"", "server_public_key = \"AA"),
                "server_public_key",
            ),
            (
                public.replace("knock-id1:", "knock-id1:x"),
                "client_public_key",
            ),
        ] {
            let err = ClientProfile::parse(path, &text).unwrap_err().to_string();
            assert!(err.contains("/k/p.knock"), "{err}");
            assert!(err.contains(&format!("field `{field}`")), "{text}: {err}");
        }
    }

    #[test]
    fn only_shared_profiles_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("knock-keys-prof-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let public = dir.join("public.knock");
        std::fs::write(&public, public_profile_text()).unwrap();
        let shared = dir.join("shared.knock");
        let shared_profile = ClientProfile {
            key: ProfileKey::Shared(ClientSecret::from_bytes([4; 32])),
            ..ClientProfile::parse(&public, &public_profile_text()).unwrap()
        };
        std::fs::write(&shared, shared_profile.to_toml()).unwrap();
        for mode in [0o644, 0o666, 0o600] {
            std::fs::set_permissions(&public, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(ClientProfile::load(&public).is_ok(), "0{mode:o}");
        }
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClientProfile::load(&shared).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = ClientProfile::load(&shared).unwrap();
        assert_eq!(loaded.mode(), Mode::Shared);
        std::fs::remove_dir_all(dir).unwrap();
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
