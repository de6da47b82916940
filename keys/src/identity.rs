//! The server identity: 16 random bytes that every profile of this server
//! carries and every knock is sealed with. It lives beside the configuration
//! (not in the state directory), so losing state never breaks profiles.
//!
//! Beside it, `server.key`: the server's static X25519 key pair, which
//! public-key clients agree their pair keys with. Its public half is in every
//! public profile of this server. It is a secret (0600), but not one that
//! lets its holder knock: public-key knocks are signed by the client.

use std::path::Path;

use knock_proto::{ServerId, ServerSecretKey, SERVER_ID_LEN, SERVER_SECRET_KEY_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::secret_file::{read_config, read_secret, write_private};
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
    let id = ServerId(*random_bytes::<SERVER_ID_LEN>(path)?);
    let text = format!(
        "# knock server identity. Every client profile of this server depends on it:\n\
         # keep it with the configuration and back it up; a new one invalidates all profiles.\n\
         server_id = \"{}\"\n",
        encode_base64(&id.0)
    );
    create_parent(path)?;
    write_private(path, text.as_bytes(), false)?;
    Ok((id, true))
}

fn create_parent(path: &Path) -> Result<(), FileError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| FileError::Write {
                path: dir.into(),
                source,
            })?;
        }
    }
    Ok(())
}

fn random_bytes<const N: usize>(path: &Path) -> Result<zeroize::Zeroizing<[u8; N]>, FileError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; N]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| FileError::Write {
            path: path.into(),
            source: std::io::Error::other("the system random generator failed"),
        })?;
    Ok(bytes)
}

/// The file name of the server key, beside `server.id` unless
/// `server_key_file` says otherwise.
pub const SERVER_KEY_FILE_NAME: &str = "server.key";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerKey {
    secret_key: zeroize::Zeroizing<String>,
}

/// Reads the server key file (`server.key`); it must be 0600 or stricter. A
/// missing file is [`FileError::MissingServerKey`], which says how to fix it.
pub fn load_server_key(path: &Path) -> Result<ServerSecretKey, FileError> {
    let text = match read_secret(path) {
        Ok(text) => text,
        Err(FileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::MissingServerKey { path: path.into() })
        }
        Err(err) => return Err(err),
    };
    parse_server_key(path, &text)
}

/// Checks `text` as the server key file `path`.
pub fn parse_server_key(path: &Path, text: &str) -> Result<ServerSecretKey, FileError> {
    let raw: RawServerKey = toml::from_str(text).map_err(|e| FileError::syntax(path, text, &e))?;
    let bytes = decode_base64(&raw.secret_key)
        .filter(|bytes| bytes.len() == SERVER_SECRET_KEY_LEN)
        .ok_or_else(|| {
            FileError::field(
                path,
                "secret_key",
                format!("must be {SERVER_SECRET_KEY_LEN} bytes of base64"),
            )
        })?;
    let mut array = zeroize::Zeroizing::new([0u8; SERVER_SECRET_KEY_LEN]);
    array.copy_from_slice(&bytes);
    let key = ServerSecretKey::from_bytes(*array);
    if key.public().is_small_order() {
        // Impossible for a clamped scalar; refused all the same.
        return Err(FileError::field(
            path,
            "secret_key",
            "not a usable X25519 key",
        ));
    }
    Ok(key)
}

/// The text of a server key file.
pub fn server_key_to_toml(key: &ServerSecretKey) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        "# knock server key (public-key clients). SECRET: 0600; keep and back it up with server.id.\n\
         # Replacing it invalidates this server's public profiles (not the clients' identities).\n\
         # Public key (in every public profile): {}\n\
         secret_key = \"{}\"\n",
        encode_base64(key.public().as_bytes()),
        encode_base64(key.expose())
    ))
}

/// Reads the server key file, creating it (0600) with a new random key if it
/// does not exist yet. Returns whether it was created.
pub fn load_or_create_server_key(path: &Path) -> Result<(ServerSecretKey, bool), FileError> {
    if path.exists() {
        return Ok((load_server_key(path)?, false));
    }
    let bytes = random_bytes::<SERVER_SECRET_KEY_LEN>(path)?;
    let key = ServerSecretKey::from_bytes(*bytes);
    create_parent(path)?;
    write_private(path, server_key_to_toml(&key).as_bytes(), false)?;
    Ok((key, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-keys-id-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn server_key_is_created_once_0600_and_read_back() {
        let dir = scratch("server-key");
        let path = dir.join("etc").join(SERVER_KEY_FILE_NAME);
        let missing = load_server_key(&path).unwrap_err().to_string();
        assert!(missing.contains(&path.display().to_string()), "{missing}");
        assert!(missing.contains("knock-keygen"), "{missing}");
        let (key, created) = load_or_create_server_key(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (again, created) = load_or_create_server_key(&path).unwrap();
        assert!(!created);
        assert_eq!(again.public(), key.public());
        assert_eq!(load_server_key(&path).unwrap().expose(), key.expose());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&encode_base64(key.public().as_bytes())));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_server_key(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_server_keys_name_the_field() {
        let path = Path::new("/etc/knock/server.key");
        for text in [
            "secret_key = \"AAAA\"\n",
            "secret_key = \"not base64!\"\n",
            "secret_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nextra = 1\n",
            "",
        ] {
            let err = parse_server_key(path, text).unwrap_err().to_string();
            assert!(err.contains("/etc/knock/server.key"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let key = ServerSecretKey::from_bytes([5; 32]);
        let parsed = parse_server_key(path, &server_key_to_toml(&key)).unwrap();
        assert_eq!(parsed.public(), key.public());
    }
}
