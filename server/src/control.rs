//! The running server's control socket, `<state_dir>/control`: how
//! `knock-server reload` and `apply` make the server reload and learn
//! whether it did. SIGHUP reloads too, but a signal carries no answer, and
//! two signals sent close together are one.
//!
//! A Unix stream socket in the state directory (0700, root's): only root
//! reaches it, and no network port is bound. One request per connection, one
//! line each way:
//!
//! ```text
//! -> reload
//! <- warning TEXT        (zero or more)
//! <- loaded SUMMARY      or   refused REASON
//! ```
//!
//! A thread accepts connections and hands requests to the packet loop, which
//! answers between two packets.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use thiserror::Error;
use tracing::warn;

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "control";
/// How long a client waits for the server to answer a reload (100,000
/// clients take seconds to load).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// How long a client may take to say what it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest line either side sends.
const MAX_LINE: u64 = 4096;

/// What a reload came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Doubts about a configuration that loaded (see `sanity`).
    pub warnings: Vec<String>,
    /// `Ok(summary)` when loaded, `Err(reason)` when refused.
    pub outcome: Result<String, String>,
}

/// A request from a client, for the loop to answer.
#[derive(Debug)]
pub enum Request {
    Reload(Sender<ReloadReport>),
}

/// The listening side, owned by the daemon.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    requests: Receiver<Request>,
}

impl ControlSocket {
    /// Listens on `<state_dir>/control`. A socket left there by a server that
    /// was killed is replaced: the caller holds the state directory's lock,
    /// so no other server listens there.
    pub fn listen(state_dir: &Path, answer_within: Duration) -> io::Result<Self> {
        let path = state_dir.join(SOCKET_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(&path)?;
        // Whatever the umask: connecting needs write permission, root's alone.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let (sender, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(&listener, &sender, answer_within))?;
        Ok(Self { path, requests })
    }

    /// The next request waiting, if any; never blocks.
    pub fn next(&self) -> Option<Request> {
        self.requests.try_recv().ok()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket (a clean stop), so that clients hear at once that
    /// nobody listens.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts clients one at a time, for ever (the thread ends with the process).
fn serve(listener: &UnixListener, loop_requests: &Sender<Request>, answer_within: Duration) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                warn!("control socket: accept failed: {err}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(err) = answer(stream, loop_requests, answer_within) {
            warn!("control socket: {err}");
        }
    }
}

fn answer(
    stream: UnixStream,
    loop_requests: &Sender<Request>,
    answer_within: Duration,
) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
    let mut out = &stream;
    match line.trim() {
        "reload" => {
            let (reply, report) = mpsc::channel();
            if loop_requests.send(Request::Reload(reply)).is_err() {
                return writeln!(out, "refused the server is stopping");
            }
            match report.recv_timeout(answer_within) {
                Ok(report) => out.write_all(render(&report).as_bytes()),
                Err(RecvTimeoutError::Timeout) => writeln!(
                    out,
                    "refused no answer from the server within {}s",
                    answer_within.as_secs()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    writeln!(out, "refused the server is stopping")
                }
            }
        }
        other => writeln!(out, "refused unknown request {:?}", one_line(other)),
    }
}

fn render(report: &ReloadReport) -> String {
    let mut text = String::new();
    for warning in &report.warnings {
        text.push_str(&format!("warning {}\n", one_line(warning)));
    }
    match &report.outcome {
        Ok(summary) => text.push_str(&format!("loaded {}\n", one_line(summary))),
        Err(reason) => text.push_str(&format!("refused {}\n", one_line(reason))),
    }
    text
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Why a client got no answer.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("knock-server is not running on state directory {dir} (nobody listens on {socket})")]
    NotRunning { dir: PathBuf, socket: PathBuf },
    #[error("{socket}: {source}")]
    Io { socket: PathBuf, source: io::Error },
    #[error("{socket}: the server's answer is not understood: {line:?}")]
    Garbled { socket: PathBuf, line: String },
}

/// Asks the server on `state_dir` to reload, and waits up to `timeout` for
/// what came of it.
pub fn request_reload(state_dir: &Path, timeout: Duration) -> Result<ReloadReport, ControlError> {
    let socket = state_dir.join(SOCKET_NAME);
    let io_err = |source| ControlError::Io {
        socket: socket.clone(),
        source,
    };
    let stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                dir: state_dir.to_path_buf(),
                socket,
            })
        }
        Err(err) => return Err(io_err(err)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    (&stream).write_all(b"reload\n").map_err(io_err)?;
    let mut warnings = Vec::new();
    let mut lines = BufReader::new((&stream).take(64 * MAX_LINE)).lines();
    loop {
        let line = match lines.next() {
            Some(line) => line.map_err(io_err)?,
            None => {
                return Err(ControlError::Garbled {
                    socket,
                    line: "(the connection closed without an answer)".into(),
                })
            }
        };
        let (kind, text) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match kind {
            "warning" => warnings.push(text.to_owned()),
            "loaded" => {
                return Ok(ReloadReport {
                    warnings,
                    outcome: Ok(text.to_owned()),
                })
            }
            "refused" => {
                return Ok(ReloadReport {
                    warnings,
                    outcome: Err(text.to_owned()),
                })
            }
            _ => return Err(ControlError::Garbled { socket, line }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_asked_answered_and_understood() {
        let dir = std::env::temp_dir().join(format!("knock-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let timeout = Duration::from_secs(5);
        assert!(matches!(
            request_reload(&dir, timeout),
            Err(ControlError::NotRunning { .. })
        ));
        // A socket left by a killed server is replaced.
        drop(UnixListener::bind(dir.join(SOCKET_NAME)).unwrap());
        let control = ControlSocket::listen(&dir, timeout).unwrap();
        let reports = [
            ReloadReport {
                warnings: vec!["one\nline".into(), "two".into()],
                outcome: Ok("2 clients, protecting tcp/22".into()),
            },
            ReloadReport {
                warnings: vec![],
                outcome: Err("alice.toml: readable by others".into()),
            },
        ];
        for expected in reports {
            let answered = expected.clone();
            let asker = std::thread::spawn({
                let dir = dir.clone();
                move || request_reload(&dir, timeout)
            });
            let request = loop {
                if let Some(request) = control.next() {
                    break request;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let Request::Reload(reply) = request;
            reply.send(answered).unwrap();
            let mut want = expected;
            want.warnings = want.warnings.iter().map(|w| one_line(w)).collect();
            assert_eq!(asker.join().unwrap().unwrap(), want);
        }
        control.remove();
        assert!(matches!(
            request_reload(&dir, timeout),
            Err(ControlError::NotRunning { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
