//! knock-keys: every file knock reads or writes that holds configuration or a
//! secret, with the permission checks that protect them.
//!
//! * [`config`]: the server's `server.toml`, shared by the server and by
//!   `knock-keygen`, which takes the knock port, ports and identity from it;
//! * [`identity`]: the server identity (`server.id`) that profiles depend on,
//!   and the server's key pair (`server.key`) for public-key clients;
//! * [`client_identity`]: the client's identity (`$KNOCK_HOME/identity`),
//!   the secret behind a public-key client;
//! * [`entry`]: one client's file in `clients.d/` (server side);
//! * [`profile`]: the client's profile;
//! * [`secret_file`]: reading and writing 0600 files, refusing loose modes.
#![forbid(unsafe_code)]

pub mod client_identity;
pub mod config;
pub mod duration;
pub mod entry;
pub mod identity;
pub mod policy;
pub mod profile;
pub mod secret_file;

use std::path::PathBuf;

use thiserror::Error;

/// Why a file could not be used. Every message names the file and, where
/// there is one, the fix.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error(
        "{path}: permissions 0{mode:03o} are too open: it holds a secret and must not be \
         readable by group or others; run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{path}: permissions 0{mode:03o} let group or others change it, and it decides who \
         may knock; run `chmod go-w {path}`"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{path}: missing: public-key clients need this server key; restore it from the backup \
         of this server's configuration (with server.id), or run knock-keygen to create a new one \
         (this server's public profiles must then be issued again)"
    )]
    MissingServerKey { path: PathBuf },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl FileError {
    pub(crate) fn field(
        path: &std::path::Path,
        field: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::Field {
            path: path.to_path_buf(),
            field,
            message: message.into(),
        }
    }

    pub(crate) fn syntax(path: &std::path::Path, text: &str, err: &toml::de::Error) -> Self {
        // toml's messages span several lines with a source excerpt; keep one
        // line, and name the line and the key it points at.
        let message = err.message().trim().replace('\n', " ");
        let location = err
            .span()
            .map(|span| {
                let start = span.start.min(text.len());
                let line_no = text
                    .get(..start)
                    .map_or(0, |head| head.matches('\n').count())
                    + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("");
                match line.split_once('=') {
                    Some((key, _))
                        if !key.trim().is_empty() && !key.trim_start().starts_with('#') =>
                    {
                        format!("line {line_no}, field `{}`: ", key.trim())
                    }
                    _ => format!("line {line_no}: "),
                }
            })
            .unwrap_or_default();
        Self::Syntax {
            path: path.to_path_buf(),
            message: format!("{location}{message}"),
        }
    }
}

/// Base64 (standard alphabet, padded) for keys in files.
pub(crate) fn decode_base64(text: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .map(zeroize::Zeroizing::new)
}

pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Parses a list of `tcp/4992`-style ports from a file field.
pub(crate) fn parse_ports(
    path: &std::path::Path,
    field: &'static str,
    items: &[String],
) -> Result<Vec<knock_proto::PortSpec>, FileError> {
    let mut ports = Vec::with_capacity(items.len());
    for item in items {
        let spec: knock_proto::PortSpec =
            item.parse().map_err(|err: knock_proto::PortSpecError| {
                FileError::field(path, field, err.to_string())
            })?;
        if !ports.contains(&spec) {
            ports.push(spec);
        }
    }
    Ok(ports)
}

pub mod cli;
