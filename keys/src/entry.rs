//! One client's file in `clients.d/`, on the server. The file name (without
//! `.toml`) is the client's name.

use std::path::Path;
use std::time::Duration;

use knock_proto::{valid_client_name, ClientSecret, PortSpec};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::duration::{format_duration, parse_duration};
use crate::policy::{Cidr, Expiry};
use crate::secret_file::read_secret;
use crate::{decode_base64, encode_base64, parse_ports, FileError};

/// A client the server honours.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub name: String,
    pub secret: ClientSecret,
    /// The protected ports this client may open.
    pub ports: Vec<PortSpec>,
    /// The longest window this client may ask for; `None` means the server's
    /// `open_for`.
    pub max_open_for: Option<Duration>,
    /// Knocks are honoured only from sources in these blocks (empty: from
    /// anywhere).
    pub allow_from: Vec<Cidr>,
    /// From then on, this client is refused.
    pub expires: Option<Expiry>,
    /// This client's knocks must be bound to their source (`--allow-ip`).
    pub require_bound_addr: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    key: Zeroizing<String>,
    ports: Vec<String>,
    max_open_for: Option<String>,
    allow_from: Option<Vec<String>>,
    /// A string, or a TOML date or date-time.
    expires: Option<toml::Value>,
    require_bound_addr: Option<bool>,
}

impl ClientEntry {
    /// Reads `clients.d/NAME.toml`; it must be 0600 or stricter.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        Self::load_with_text(path).map(|(entry, _)| entry)
    }

    /// Like [`load`](Self::load), and also returns the file's text as read,
    /// for a record of exactly what was loaded.
    pub fn load_with_text(path: &Path) -> Result<(Self, Zeroizing<String>), FileError> {
        let text = read_secret(path)?;
        let entry = Self::parse(path, &text)?;
        Ok((entry, text))
    }

    /// Checks `text` as the file `path` (whose name gives the client's).
    pub fn parse(path: &Path, text: &str) -> Result<Self, FileError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| valid_client_name(s))
            .ok_or_else(|| {
                FileError::field(
                    path,
                    "name",
                    "file name must be NAME.toml, NAME of letters, digits, '-', '_' or '.'",
                )
            })?
            .to_owned();
        let raw: RawEntry = toml::from_str(text).map_err(|e| FileError::syntax(path, text, &e))?;
        let secret = decode_base64(&raw.key)
            .and_then(|bytes| ClientSecret::from_slice(&bytes))
            .ok_or_else(|| FileError::field(path, "key", "must be 32 bytes of base64"))?;
        let ports = parse_ports(path, "ports", &raw.ports)?;
        if ports.is_empty() {
            return Err(FileError::field(
                path,
                "ports",
                "empty: this client could open nothing",
            ));
        }
        let max_open_for = raw
            .max_open_for
            .map(|text| {
                parse_duration(&text).map_err(|m| FileError::field(path, "max_open_for", m))
            })
            .transpose()?;
        let allow_from = match raw.allow_from {
            None => Vec::new(),
            Some(blocks) if blocks.is_empty() => return Err(FileError::field(
                path,
                "allow_from",
                "empty: this client could knock from nowhere; remove the key to allow any source",
            )),
            Some(blocks) => blocks
                .iter()
                .map(|b| b.parse::<Cidr>())
                .collect::<Result<_, _>>()
                .map_err(|m| FileError::field(path, "allow_from", m))?,
        };
        let expires = match raw.expires {
            None => None,
            Some(toml::Value::String(text)) => Some(text.parse::<Expiry>()),
            Some(toml::Value::Datetime(datetime)) => {
                Some(Expiry::from_datetime(&datetime, &datetime.to_string()))
            }
            Some(_) => Some(Err(
                "must be a date like \"2027-06-30\" or a date-time like \"2027-06-30T18:00:00Z\""
                    .to_owned(),
            )),
        }
        .transpose()
        .map_err(|m| FileError::field(path, "expires", m))?;
        Ok(Self {
            name,
            secret,
            ports,
            max_open_for,
            allow_from,
            expires,
            require_bound_addr: raw.require_bound_addr.unwrap_or(false),
        })
    }

    /// The file's text.
    pub fn to_toml(&self) -> Zeroizing<String> {
        let ports: Vec<String> = self.ports.iter().map(|p| format!("\"{p}\"")).collect();
        let mut text = format!(
            "# knock client \"{}\": the server's copy of its secret. Delete this file to revoke it\n\
             # (then run knock-server apply).\n\
             key = \"{}\"\n\
             ports = [{}]\n",
            self.name,
            encode_base64(self.secret.expose()),
            ports.join(", ")
        );
        if let Some(max) = self.max_open_for {
            text.push_str(&format!("max_open_for = \"{}\"\n", format_duration(max)));
        }
        if !self.allow_from.is_empty() {
            let blocks: Vec<String> = self.allow_from.iter().map(|b| format!("\"{b}\"")).collect();
            text.push_str(&format!("allow_from = [{}]\n", blocks.join(", ")));
        }
        if let Some(expires) = &self.expires {
            text.push_str(&format!("expires = \"{expires}\"\n"));
        }
        if self.require_bound_addr {
            text.push_str("require_bound_addr = true\n");
        }
        Zeroizing::new(text)
    }
}
