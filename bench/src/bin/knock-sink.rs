//! knock-sink: a TCP listener for the protected port in the benchmark. It
//! accepts connections and closes them at once, and exits by itself after
//! `--duration`.
//!
//! A client's connect succeeds when the kernel completes the handshake, not
//! when we accept, so the accept loop's pace does not affect the latencies
//! measured; the large backlog keeps the queue from overflowing meanwhile.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use knock_bench::{parse_duration, EXIT_RUNTIME, EXIT_USAGE};
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, Parser)]
#[command(
    name = "knock-sink",
    about = "Accept-and-close TCP listener, bounded in time"
)]
struct Args {
    /// TCP port to listen on (IPv4 and IPv6).
    #[arg(long, default_value_t = 4992)]
    port: u16,
    /// Exit after this long (at most 24h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_USAGE as u8
            } else {
                0
            });
        }
    };
    match run(&args) {
        Ok(accepted) => {
            println!(
                "knock-sink: accepted {accepted} connections on tcp/{}",
                args.port
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("knock-sink: tcp/{}: {message}", args.port);
            ExitCode::from(EXIT_RUNTIME as u8)
        }
    }
}

fn run(args: &Args) -> Result<u64, String> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot open a socket: {e}"))?;
    socket
        .set_only_v6(false)
        .map_err(|e| format!("cannot accept IPv4 too: {e}"))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), args.port);
    socket
        .bind(&addr.into())
        .map_err(|e| format!("cannot bind: {e}"))?;
    socket
        .listen(4096)
        .map_err(|e| format!("cannot listen: {e}"))?;
    let listener: TcpListener = socket.into();
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make it non-blocking: {e}"))?;
    let deadline = Instant::now() + args.duration;
    let mut accepted = 0u64;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted += 1;
                drop(stream);
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // ECONNABORTED and friends: that connection is gone, go on.
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    Ok(accepted)
}
