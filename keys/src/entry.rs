//! One client's file in `clients.d/`, on the server. The file name (without
//! `.toml`) is the client's name.
//!
//! An entry holds exactly one credential: a shared `key` (the file is then a
//! secret, 0600), or a `public_key`, the line `knock-client identity` prints
//! (no secret: the file may be readable by anyone, but not writable by group
//! or others, since it decides who may knock). The other keys are policy.

use std::path::Path;
use std::time::Duration;

use knock_proto::{valid_client_name, ClientPublicKey, ClientSecret, Mode, PortSpec};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::duration::{format_duration, parse_duration};
use crate::policy::{Cidr, Expiry};
use crate::secret_file::{check_not_writable, check_secret_mode, read_with_mode};
use crate::{decode_base64, encode_base64, parse_ports, FileError};

/// A client the server honours.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    pub name: String,
    /// What the client proves itself with.
    pub credential: Credential,
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

/// What a client proves itself with: the entry's `key` or `public_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `key = "base64"`: a secret shared with the client (shared-key mode).
    Shared(ClientSecret),
    /// `public_key = "knock-id1:..."`: the client's public identity
    /// (public-key mode).
    Public(ClientPublicKey),
}

impl Credential {
    pub fn mode(&self) -> Mode {
        match self {
            Credential::Shared(_) => Mode::Shared,
            Credential::Public(_) => Mode::Public,
        }
    }

    /// The public key, for a public-key client.
    pub fn public_key(&self) -> Option<&ClientPublicKey> {
        match self {
            Credential::Shared(_) => None,
            Credential::Public(key) => Some(key),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    key: Option<Zeroizing<String>>,
    public_key: Option<String>,
    ports: Vec<String>,
    max_open_for: Option<String>,
    allow_from: Option<Vec<String>>,
    /// A string, or a TOML date or date-time.
    expires: Option<toml::Value>,
    require_bound_addr: Option<bool>,
}

impl ClientEntry {
    /// Reads `clients.d/NAME.toml`: a shared-key entry must be 0600 or
    /// stricter, a public-key entry must not be writable by group or others,
    /// and its public key must be valid ([`ClientPublicKey::validate`]).
    pub fn load(path: &Path) -> Result<Self, FileError> {
        Self::load_with_text(path).map(|(entry, _)| entry)
    }

    /// Like [`load`](Self::load), and also returns the file's text as read,
    /// for a record of exactly what was loaded.
    pub fn load_with_text(path: &Path) -> Result<(Self, Zeroizing<String>), FileError> {
        let (entry, text) = Self::load_unvalidated(path)?;
        entry.validate(path)?;
        Ok((entry, text))
    }

    /// Like [`load_with_text`](Self::load_with_text) (the mode checks
    /// included), but without the curve-point check of a public key (a point
    /// decompression, some µs): for a server that validates when it computes
    /// the pair key ([`knock_proto::ServerSecretKey::pair_prk`] does), or
    /// knows the key valid from its pair-key cache.
    pub fn load_unvalidated(path: &Path) -> Result<(Self, Zeroizing<String>), FileError> {
        let (text, mode) = read_with_mode(path)?;
        let entry = Self::parse(path, &text)?;
        entry.check_mode(path, mode)?;
        Ok((entry, text))
    }

    /// The permission rule for this entry's file: 0600 for a secret (a
    /// shared key), not writable by group or others for a public key.
    pub fn check_mode(&self, path: &Path, mode: u32) -> Result<(), FileError> {
        match self.credential {
            Credential::Shared(_) => check_secret_mode(path, mode),
            Credential::Public(_) => check_not_writable(path, mode),
        }
    }

    /// Checks the curve points of a public key (nothing to check for a
    /// shared key).
    pub fn validate(&self, path: &Path) -> Result<(), FileError> {
        match &self.credential {
            Credential::Shared(_) => Ok(()),
            Credential::Public(key) => key.validate().map_err(|err| {
                FileError::field(
                    path,
                    "public_key",
                    format!("{err}; enrol the client again with the line `knock-client identity` prints"),
                )
            }),
        }
    }

    pub fn mode(&self) -> Mode {
        self.credential.mode()
    }

    /// Checks `text` as the file `path` (whose name gives the client's).
    /// The form only: neither the file's mode nor the curve points of a
    /// public key (see [`load`](Self::load)).
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
        let credential = match (&raw.key, &raw.public_key) {
            (Some(key), None) => Credential::Shared(
                decode_base64(key)
                    .and_then(|bytes| ClientSecret::from_slice(&bytes))
                    .ok_or_else(|| FileError::field(path, "key", "must be 32 bytes of base64"))?,
            ),
            (None, Some(line)) => Credential::Public(
                ClientPublicKey::parse_line(line)
                    .map_err(|err| FileError::field(path, "public_key", err.to_string()))?,
            ),
            (Some(_), Some(_)) => {
                return Err(FileError::field(
                    path,
                    "public_key",
                    "the entry holds both `key` and `public_key`: keep exactly one \
                     (`key` for a shared-key client, `public_key` for a public-key client)",
                ))
            }
            (None, None) => {
                return Err(FileError::field(
                    path,
                    "key",
                    "missing: an entry holds `key` (a shared-key client) or `public_key` \
                     (a public-key client); knock-keygen writes them",
                ))
            }
        };
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
            credential,
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
        let mut text = match &self.credential {
            Credential::Shared(secret) => format!(
                "# knock client \"{}\": the server's copy of its secret. Delete this file to revoke it\n\
                 # (then run knock-server apply).\n\
                 key = \"{}\"\n",
                self.name,
                encode_base64(secret.expose()),
            ),
            Credential::Public(key) => format!(
                "# knock client \"{}\": its public identity and policy. No secret. Delete this file\n\
                 # to revoke it (then run knock-server apply).\n\
                 public_key = \"{}\"\n",
                self.name,
                key.to_line(),
            ),
        };
        text.push_str(&format!("ports = [{}]\n", ports.join(", ")));
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

#[cfg(test)]
mod tests {
    use super::*;
    use knock_proto::{ClientIdentity, IdentitySeed};
    use std::os::unix::fs::PermissionsExt;

    const SHARED_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn line(seed: u8) -> String {
        ClientIdentity::from_seed(&IdentitySeed::from_bytes([seed; 32]))
            .public()
            .to_line()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("knock-keys-entry-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn shared_and_public_entries_round_trip() {
        let path = Path::new("/etc/knock/clients.d/alice.toml");
        let shared = ClientEntry::parse(
            path,
            &format!("key = \"{SHARED_KEY}\"\nports = [\"tcp/22\"]\n"),
        )
        .unwrap();
        assert_eq!(shared.mode(), Mode::Shared);
        assert!(shared.credential.public_key().is_none());
        let again = ClientEntry::parse(path, &shared.to_toml()).unwrap();
        assert_eq!(again.credential, shared.credential);

        let text = format!(
            "public_key = \"{} alice@laptop\"\nports = [\"tcp/22\", \"udp/53\"]\n\
             allow_from = [\"203.0.113.0/24\"]\nexpires = \"2027-06-30\"\nrequire_bound_addr = true\n",
            line(1)
        );
        let public = ClientEntry::parse(path, &text).unwrap();
        assert_eq!(public.mode(), Mode::Public);
        assert_eq!(public.credential.public_key().unwrap().to_line(), line(1));
        public.validate(path).unwrap();
        let written = public.to_toml();
        assert!(!written.contains("\nkey = "), "{}", written.as_str());
        assert!(written.contains(&line(1)));
        let again = ClientEntry::parse(path, &written).unwrap();
        assert_eq!(again.credential, public.credential);
        assert_eq!(again.ports, public.ports);
        assert_eq!(again.allow_from, public.allow_from);
        assert!(again.require_bound_addr);
        assert!(again.expires.is_some());
    }

    #[test]
    fn exactly_one_credential() {
        let path = Path::new("/etc/knock/clients.d/alice.toml");
        for (text, field) in [
            ("ports = [\"tcp/22\"]\n".to_owned(), "key"),
            (
                format!(
                    "key = \"{SHARED_KEY}\"\npublic_key = \"{}\"\nports = [\"tcp/22\"]\n",
                    line(1)
                ),
                "public_key",
            ),
            (
                "public_key = \"knock-id1:AAAA\"\nports = [\"tcp/22\"]\n".to_owned(),
                "public_key",
            ),
            (
                format!(
                    "public_key = \"{}\"\nports = [\"tcp/22\"]\n",
                    line(1).replace("knock-id1:", "knock-id2:")
                ),
                "public_key",
            ),
        ] {
            let err = ClientEntry::parse(path, &text).unwrap_err().to_string();
            assert!(err.contains("alice.toml"), "{err}");
            assert!(err.contains(&format!("field `{field}`")), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn invalid_curve_points_are_refused_at_load() {
        // A well-formed line (right check bytes) around an X25519 key of
        // small order: parse accepts it, load refuses it.
        let good = knock_proto::ClientPublicKey::parse_line(&line(1)).unwrap();
        let bad = knock_proto::ClientPublicKey::from_bytes(*good.ed25519_bytes(), [0; 32]);
        let dir = scratch("invalid");
        let path = dir.join("mallory.toml");
        let text = format!("public_key = \"{}\"\nports = [\"tcp/22\"]\n", bad.to_line());
        crate::secret_file::write_private(&path, text.as_bytes(), false).unwrap();
        assert!(ClientEntry::parse(&path, &text).is_ok());
        assert!(ClientEntry::load_unvalidated(&path).is_ok());
        let err = ClientEntry::load(&path).unwrap_err().to_string();
        assert!(err.contains("field `public_key`"), "{err}");
        assert!(err.contains("mallory.toml"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn modes_follow_the_credential() {
        let dir = scratch("modes");
        let shared = dir.join("bob.toml");
        let public = dir.join("alice.toml");
        crate::secret_file::write_private(
            &shared,
            format!("key = \"{SHARED_KEY}\"\nports = [\"tcp/22\"]\n").as_bytes(),
            false,
        )
        .unwrap();
        crate::secret_file::write_private(
            &public,
            format!("public_key = \"{}\"\nports = [\"tcp/22\"]\n", line(2)).as_bytes(),
            false,
        )
        .unwrap();
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(ClientEntry::load(&shared).is_ok());
        }
        for mode in [0o640, 0o644] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = ClientEntry::load(&shared).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        for mode in [0o600, 0o640, 0o644, 0o444] {
            std::fs::set_permissions(&public, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(ClientEntry::load(&public).is_ok(), "0{mode:o}");
        }
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&public, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = ClientEntry::load(&public).unwrap_err().to_string();
            assert!(err.contains("chmod go-w"), "{err}");
            assert!(err.contains("alice.toml"), "{err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
