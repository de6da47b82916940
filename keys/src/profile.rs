//! The client's profile: everything `knock-client` needs to knock on one
//! server.

use std::path::Path;

use knock_proto::{valid_client_name, ClientSecret, PortSpec, ServerId, SERVER_ID_LEN};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret_file::read_secret;
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
        Ok(Self {
            name: raw.name,
            host: raw.host,
            aliases: raw.aliases,
            knock_port,
            server_id,
            secret,
            ports,
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
        Zeroizing::new(format!(
            "# knock client profile: client \"{name}\".\n\
             # Install it with `knock-client import FILE`. It holds a secret: keep it 0600.\n\
             name = \"{name}\"\n\
             host = {host_toml}\n\
             aliases = [{aliases}]\n\
             knock_port = {port}\n\
             server_id = \"{server_id}\"\n\
             key = \"{key}\"\n\
             ports = [{ports}]\n",
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
