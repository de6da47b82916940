//! Reading and writing files that hold secrets.
//!
//! Secrets are written 0600, atomically (a temporary file, fsync, rename), and
//! refused on read when group or others may read them, as ssh refuses a loose
//! private key: a secret that others could have read must be treated as
//! leaked, so the operator has to look at it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::FileError;

/// No file of ours is anywhere near this long; a larger one is refused before
/// it is read into memory.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Reads a file that holds a secret, refusing it if group or others may read
/// or write it.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, FileError> {
    let (file, meta) = open_with_metadata(path)?;
    check_secret_mode(path, meta.mode() & 0o777)?;
    read_limited(path, file, meta.len())
}

/// Reads a file and returns its text with its permission bits (`mode &
/// 0o777`), both from one open file descriptor, for files whose rule depends
/// on what they hold (see [`check_secret_mode`] and [`check_not_writable`]).
pub fn read_with_mode(path: &Path) -> Result<(Zeroizing<String>, u32), FileError> {
    let (file, meta) = open_with_metadata(path)?;
    let mode = meta.mode() & 0o777;
    Ok((read_limited(path, file, meta.len())?, mode))
}

/// A file that holds a secret must not be readable or writable by group or
/// others.
pub fn check_secret_mode(path: &Path, mode: u32) -> Result<(), FileError> {
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// A file that holds no secret but decides who gets in (a public-key client
/// entry) may be readable by anyone, but not writable by group or others.
pub fn check_not_writable(path: &Path, mode: u32) -> Result<(), FileError> {
    if mode & 0o022 != 0 {
        return Err(FileError::Writable {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

/// Reads a configuration file that holds no secret.
pub fn read_config(path: &Path) -> Result<Zeroizing<String>, FileError> {
    let (file, meta) = open_with_metadata(path)?;
    read_limited(path, file, meta.len())
}

/// Opens `path` and reads its metadata from the open file, so the checks and
/// the read concern the same file.
fn open_with_metadata(path: &Path) -> Result<(File, fs::Metadata), FileError> {
    let read_err = |source| FileError::Read {
        path: path.into(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    Ok((file, meta))
}

fn read_limited(path: &Path, file: File, len: u64) -> Result<Zeroizing<String>, FileError> {
    if len > MAX_FILE_LEN {
        return Err(FileError::Syntax {
            path: path.into(),
            message: format!("{len} bytes is too large (at most {MAX_FILE_LEN})"),
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize));
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Read {
            path: path.into(),
            source,
        })?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(FileError::Syntax {
            path: path.into(),
            message: "not UTF-8 text".into(),
        }),
    }
}

/// Writes `contents` to `path` with mode 0600, atomically. Unless `replace`,
/// an existing file is an error.
pub fn write_private(path: &Path, contents: &[u8], replace: bool) -> Result<(), FileError> {
    write_with_mode(path, contents, 0o600, replace)
}

/// Writes `contents` to `path` with `mode`, atomically (a temporary file,
/// fsync, rename): readers see the old file or the new, never half. Unless
/// `replace`, an existing file is an error.
pub fn write_with_mode(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: bool,
) -> Result<(), FileError> {
    let write_err = |source| FileError::Write {
        path: path.into(),
        source,
    };
    if !replace && path.exists() {
        return Err(FileError::Exists { path: path.into() });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may narrow `mode` and an inherited ACL default widen it.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        if let Ok(dir) = File::open(&dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_err)
}

/// Creates a directory for secrets (mode 0700) if it does not exist.
pub fn ensure_private_dir(path: &Path) -> Result<(), FileError> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| FileError::Write {
            path: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-keys-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_0600_and_refuses_overwrite() {
        let dir = scratch("write");
        let path = dir.join("secret.toml");
        write_private(&path, b"a = 1\n", false).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(matches!(
            write_private(&path, b"b", false),
            Err(FileError::Exists { .. })
        ));
        write_private(&path, b"c = 2\n", true).unwrap();
        assert_eq!(read_secret(&path).unwrap().as_str(), "c = 2\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_group_or_world_readable_secrets() {
        let dir = scratch("modes");
        let path = dir.join("secret.toml");
        write_private(&path, b"a = 1\n", false).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_secret(&path).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_non_utf8_and_huge_files() {
        let dir = scratch("junk");
        let path = dir.join("junk");
        write_private(&path, &[0xff, 0xfe, 0x00], false).unwrap();
        assert!(matches!(read_secret(&path), Err(FileError::Syntax { .. })));
        write_private(&path, &vec![b'#'; 100_000], true).unwrap();
        assert!(matches!(read_secret(&path), Err(FileError::Syntax { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}
