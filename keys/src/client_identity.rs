//! The client's identity: `$KNOCK_HOME/identity` (or `--identity FILE`).
//!
//! It holds one secret, a 32-byte seed, from which `knock-proto` derives the
//! client's Ed25519 signing key and X25519 agreement key
//! ([`ClientIdentity::from_seed`]). One identity serves every server that
//! enrolled its public line. The file is written 0600 in a 0700 directory,
//! refused when group or others may read it, and the seed is zeroized in
//! memory.
//!
//! ```toml
//! # knock client identity. SECRET: keep it 0600, back it up, never send it.
//! # Public line (safe to share): knock-id1:...
//! seed = "<standard base64, 32 bytes>"
//! ```
//!
//! The public line in the comment is for people; it is recomputed from the
//! seed, never read back.

use std::path::{Path, PathBuf};

use knock_proto::{ClientIdentity, IdentitySeed, IDENTITY_SEED_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret_file::{ensure_private_dir, read_secret, write_private};
use crate::{decode_base64, encode_base64, FileError};

/// The identity's file name under `$KNOCK_HOME`.
pub const IDENTITY_FILE_NAME: &str = "identity";

/// `$KNOCK_HOME/identity`.
pub fn default_path(knock_home: &Path) -> PathBuf {
    knock_home.join(IDENTITY_FILE_NAME)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    seed: Zeroizing<String>,
}

/// Reads the identity file; it must be 0600 or stricter.
pub fn load(path: &Path) -> Result<ClientIdentity, FileError> {
    let text = read_secret(path)?;
    parse(path, &text)
}

/// Checks `text` as the identity file `path`.
pub fn parse(path: &Path, text: &str) -> Result<ClientIdentity, FileError> {
    let raw: RawIdentity = toml::from_str(text).map_err(|e| FileError::syntax(path, text, &e))?;
    let seed = decode_base64(&raw.seed)
        .and_then(|bytes| IdentitySeed::from_slice(&bytes))
        .ok_or_else(|| {
            FileError::field(
                path,
                "seed",
                format!("must be {IDENTITY_SEED_LEN} bytes of base64"),
            )
        })?;
    Ok(ClientIdentity::from_seed(&seed))
}

/// The file's text for `seed`.
pub fn to_toml(seed: &IdentitySeed) -> Zeroizing<String> {
    let line = ClientIdentity::from_seed(seed).public().to_line();
    let encoded = Zeroizing::new(encode_base64(seed.expose()));
    Zeroizing::new(format!(
        "# knock client identity. SECRET: keep it 0600, back it up, never send it.\n\
         # Public line (safe to share): {line}\n\
         seed = \"{}\"\n",
        encoded.as_str()
    ))
}

/// Reads the identity at `path`, creating it first (a new random seed, 0600,
/// its directory 0700 if missing) when there is none. Returns whether it was
/// created. An existing identity is never replaced.
pub fn load_or_create(path: &Path) -> Result<(ClientIdentity, bool), FileError> {
    if path.exists() {
        return Ok((load(path)?, false));
    }
    let mut bytes = Zeroizing::new([0u8; IDENTITY_SEED_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| FileError::Write {
            path: path.into(),
            source: std::io::Error::other("the system random generator failed"),
        })?;
    let seed = IdentitySeed::from_bytes(*bytes);
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            ensure_private_dir(dir)?;
        }
    }
    match write_private(path, to_toml(&seed).as_bytes(), false) {
        Ok(()) => Ok((ClientIdentity::from_seed(&seed), true)),
        // Created meanwhile by another run: that one is the identity.
        Err(FileError::Exists { .. }) => Ok((load(path)?, false)),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("knock-keys-cid-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn created_once_private_and_read_back() {
        let dir = scratch("create");
        let home = dir.join("home");
        let path = default_path(&home);
        let (identity, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&home).unwrap().mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        let line = identity.public().to_line();
        assert!(text.contains(&line), "{text}");
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.public(), identity.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_public_line_comes_from_the_seed_not_the_comment() {
        let seed = IdentitySeed::from_bytes([3; 32]);
        let other = ClientIdentity::from_seed(&IdentitySeed::from_bytes([4; 32]));
        let text = to_toml(&seed).replace(
            &ClientIdentity::from_seed(&seed).public().to_line(),
            &other.public().to_line(),
        );
        let path = Path::new("/home/a/.config/knock/identity");
        let parsed = parse(path, &text).unwrap();
        assert_eq!(parsed.public(), ClientIdentity::from_seed(&seed).public());
    }

    #[test]
    fn bad_files_name_the_file_and_field() {
        let path = Path::new("/home/a/.config/knock/identity");
        for (text, field) in [
            ("seed = \"AAAA\"\n", "seed"),
            ("seed = \"!!\"\n", "seed"),
            ("", "seed"),
            (
                "seed = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nx = 1\n",
                "x",
            ),
        ] {
            let err = parse(path, text).unwrap_err().to_string();
            assert!(err.contains("/home/a/.config/knock/identity"), "{err}");
            assert!(err.contains(field), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
