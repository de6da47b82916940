//! `knock-client connect HOST PORT`: knock, connect, then relay stdin and
//! stdout over the connection, for `ProxyCommand knock-client connect %h %p`.
//!
//! Two directions, two threads, each ending on its own:
//!
//! * stdin → socket: at EOF on stdin, shut the socket's write side (the
//!   server sees EOF) and keep reading from the socket;
//! * socket → stdout: at EOF from the server, close stdout (ssh sees EOF) and
//!   keep sending stdin to the server.
//!
//! The program ends when both are done, or at once when the connection fails
//! (a reset, say), since nothing more can be relayed either way.
//! Diagnostics go to stderr only: stdout carries the stream and nothing else.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::thread;

use knock_keys::cli::Failure;
use knock_proto::PortSpec;

use crate::session::Session;
use crate::KnockOptions;

const BUFFER: usize = 64 * 1024;

pub fn run(host: &str, port: PortSpec, options: &KnockOptions) -> Result<ExitCode, Failure> {
    let mut session = Session::start(host, &[port], options)?;
    let stream = session
        .prove(&[port.port])?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::runtime("internal error: no connection was returned"))?;
    session.progress.step(format!(
        "connected to {} tcp/{}",
        session.server.ip(),
        port.port
    ));
    session.progress.finish();
    let _ = stream.set_nodelay(true);
    relay(stream)
}

/// How one direction ended.
#[derive(Debug)]
enum End {
    /// The source reached EOF and everything was passed on.
    Eof,
    /// The reader of our stdout went away: nobody wants the rest.
    StdoutClosed,
    /// The connection failed.
    Failed(String),
}

fn relay(stream: TcpStream) -> Result<ExitCode, Failure> {
    let upstream = stream
        .try_clone()
        .map_err(|e| Failure::runtime(format!("relaying: cannot share the connection: {e}")))?;
    let up = thread::spawn(move || stdin_to_socket(upstream));
    match socket_to_stdout(&stream) {
        End::Eof => {
            // The server is done sending; stdin may still have more for it.
            close_stdout();
            match up.join() {
                Ok(End::Failed(message)) => Err(Failure::runtime(message)),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        End::StdoutClosed => {
            let _ = stream.shutdown(Shutdown::Both);
            Ok(ExitCode::SUCCESS)
        }
        // The thread reading stdin may be blocked for good; leave it.
        End::Failed(message) => Err(Failure::runtime(message)),
    }
}

fn stdin_to_socket(mut socket: TcpStream) -> End {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return End::Failed(format!("relaying: reading stdin failed: {e}")),
        };
        let Some(chunk) = buf.get(..n) else { break };
        if let Err(e) = socket.write_all(chunk) {
            return End::Failed(format!("relaying: sending to the server failed: {e}"));
        }
    }
    // Half-close: the server sees EOF, and can still answer.
    match socket.shutdown(Shutdown::Write) {
        Ok(()) => End::Eof,
        Err(e) if e.kind() == ErrorKind::NotConnected => End::Eof,
        Err(e) => End::Failed(format!("relaying: closing the sending side failed: {e}")),
    }
}

fn socket_to_stdout(mut socket: &TcpStream) -> End {
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return End::Failed(format!("relaying: the connection failed: {e}")),
        };
        let Some(chunk) = buf.get(..n) else {
            return End::Eof;
        };
        match stdout.write_all(chunk).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return End::StdoutClosed,
            Err(e) => return End::Failed(format!("relaying: writing stdout failed: {e}")),
        }
    }
}

/// Closes stdout so that its reader sees EOF, by putting /dev/null in its
/// place: std cannot close fd 1, and rustix does this without unsafe code.
fn close_stdout() {
    let _ = std::io::stdout().flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}
