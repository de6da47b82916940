//! The server identity: 16 random bytes that every profile of this server
//! carries and every knock is sealed with. It lives beside the configuration
//! (not in the state directory), so losing state never breaks profiles.

use std::path::Path;

use knock_proto::{ServerId, SERVER_ID_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::secret_file::{read_config, write_private};
use crate::{decode_base64, encode_base64, FileError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    server_id: String,
}

/// Reads the identity file.
pub fn load(path: &Path) -> Result<ServerId, FileError> {
    let text = read_config(path)?;
    let raw: RawIdentity = toml::from_str(&text).map_err(|e| FileError::syntax(path, &text, &e))?;
    decode_base64(&raw.server_id)
        .and_then(|bytes| ServerId::from_slice(&bytes))
        .ok_or_else(|| {
            FileError::field(
                path,
                "server_id",
                format!("must be {SERVER_ID_LEN} bytes of base64"),
            )
        })
}

/// Reads the identity file, creating it with a new random identity if it does
/// not exist yet. Returns whether it was created.
pub fn load_or_create(path: &Path) -> Result<(ServerId, bool), FileError> {
    if path.exists() {
        return Ok((load(path)?, false));
    }
    let mut bytes = [0u8; SERVER_ID_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| FileError::Write {
            path: path.into(),
            source: std::io::Error::other("the system random generator failed"),
        })?;
    let id = ServerId(bytes);
    let text = format!(
        "# knock server identity. Every client profile of this server depends on it:\n\
         # keep it with the configuration and back it up; a new one invalidates all profiles.\n\
         server_id = \"{}\"\n",
        encode_base64(&id.0)
    );
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| FileError::Write {
                path: dir.into(),
                source,
            })?;
        }
    }
    write_private(path, text.as_bytes(), false)?;
    Ok((id, true))
}
