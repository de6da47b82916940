//! Proving one TCP port open: connection attempts started on a schedule and
//! raced, the first one established wins.
//!
//! The firewall drops, rather than rejects, a SYN that arrives before the
//! grant, and the first SYN always does: it leaves microseconds after the
//! knock, while the server needs a millisecond or so to open the port. A
//! dropped SYN is only retransmitted by the kernel after a second, so waiting
//! on one attempt costs that long. Instead a new non-blocking attempt starts
//! [`FIRST_GAP`] after the previous one, the gap growing by a quarter each
//! time up to [`MAX_GAP`] (about 30 attempts in the first second, then 4 a
//! second), and earlier attempts stay in flight (at most [`MAX_IN_FLIGHT`]):
//! on a slow path, an attempt that was about to succeed is never abandoned.
//! The attempts are watched with `poll`, so the winner is seen as soon as its
//! handshake completes. A grant that lands T after the knock is thus seen
//! within about T/4 plus one round trip.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use socket2::{Domain, Protocol, Socket, Type};

/// The gap between the first attempt and the second. The server opens the
/// port about a millisecond after the knock on a local link; 250 µs, growing
/// by a quarter, puts attempts at 0.25, 0.56, 0.95, 1.44, 2.05, 2.81 ms...
const FIRST_GAP: Duration = Duration::from_micros(250);
/// The longest gap between two attempts.
const MAX_GAP: Duration = Duration::from_millis(250);
/// The most attempts kept in flight; beyond it, the oldest is closed.
const MAX_IN_FLIGHT: usize = 32;

/// One attempt still in flight.
#[derive(Debug)]
struct Attempt {
    /// Its place in the order the attempts started.
    seq: u64,
    socket: Socket,
}

/// The attempts to connect to one address.
#[derive(Debug)]
pub struct Race {
    addr: SocketAddr,
    in_flight: VecDeque<Attempt>,
    next_start: Instant,
    gap: Duration,
    /// How many attempts were started.
    started: u64,
    /// The latest attempt that failed, and its error.
    last_failure: Option<(u64, io::Error)>,
}

impl Race {
    /// The first attempt starts at the first [`Race::step`].
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
            next_start: Instant::now(),
            gap: FIRST_GAP,
            started: 0,
            last_failure: None,
        }
    }

    /// Back to the fast schedule, starting now: after a new knock, the grant
    /// is again a millisecond or so away. Attempts in flight are kept.
    pub fn restart(&mut self) {
        self.next_start = Instant::now();
        self.gap = FIRST_GAP;
    }

    /// Starts an attempt if one is due, then waits until one is established,
    /// or until the next attempt is due or `until`, whichever is first.
    /// Returns the established connection, in blocking mode; the attempts
    /// that lost are closed.
    pub fn step(&mut self, until: Instant) -> Option<TcpStream> {
        let now = Instant::now();
        if now >= self.next_start {
            self.next_start = now + self.gap;
            self.gap = (self.gap * 5 / 4).min(MAX_GAP);
            if let Some(stream) = self.start() {
                return Some(stream);
            }
        }
        let wait = self
            .next_start
            .min(until)
            .saturating_duration_since(Instant::now());
        let ready = self.wait(wait);
        self.finish(&ready)
    }

    /// What became of the latest attempt, for the message when none
    /// succeeded: still in flight means timed out. `None` when no attempt
    /// was started.
    pub fn last_error(&self) -> Option<io::Error> {
        let newest_pending = self.in_flight.back().map(|a| a.seq);
        match (&self.last_failure, newest_pending) {
            (Some((failed, _)), Some(pending)) if pending > *failed => Some(timed_out()),
            (Some((_, err)), _) => Some(copy(err)),
            (None, Some(_)) => Some(timed_out()),
            (None, None) => None,
        }
    }

    /// Starts one attempt. A connection established at once is returned.
    fn start(&mut self) -> Option<TcpStream> {
        self.started += 1;
        let seq = self.started;
        let socket = match Socket::new(
            Domain::for_address(self.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(socket) => socket,
            Err(err) => {
                self.last_failure = Some((seq, err));
                return None;
            }
        };
        match socket.connect(&self.addr.into()) {
            Ok(()) => {
                let attempt = Attempt { seq, socket };
                match self.check(&attempt) {
                    Outcome::Established => return self.win(attempt),
                    Outcome::Failed(err) => self.last_failure = Some((seq, err)),
                    Outcome::Pending => self.keep(attempt),
                }
            }
            Err(err) if in_progress(&err) => self.keep(Attempt { seq, socket }),
            // Refused, unreachable: failed at once. The grant may still come
            // (or a firewall that rejects may still open), so the schedule
            // goes on.
            Err(err) => self.last_failure = Some((seq, err)),
        }
        None
    }

    fn keep(&mut self, attempt: Attempt) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(attempt);
    }

    /// Waits up to `wait` for any attempt to finish; returns, for each
    /// attempt in flight, whether it may have.
    fn wait(&self, wait: Duration) -> Vec<bool> {
        let mut fds: Vec<PollFd<'_>> = self
            .in_flight
            .iter()
            .map(|a| PollFd::new(&a.socket, PollFlags::OUT))
            .collect();
        let timeout = Timespec::try_from(wait).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => fds.iter().map(|fd| !fd.revents().is_empty()).collect(),
            // Interrupted: look at every attempt and go round again.
            Err(Errno::INTR) => vec![true; fds.len()],
            // poll should not fail otherwise; should it, fall back to short
            // naps rather than give up.
            Err(_) => {
                std::thread::sleep(wait.min(Duration::from_millis(1)));
                vec![true; fds.len()]
            }
        }
    }

    /// Looks at the attempts `ready` marks: the first established one wins;
    /// failed ones are dropped and their error kept.
    fn finish(&mut self, ready: &[bool]) -> Option<TcpStream> {
        let mut index = 0;
        let mut kept = VecDeque::with_capacity(self.in_flight.len());
        while let Some(attempt) = self.in_flight.pop_front() {
            let look = ready.get(index).copied().unwrap_or(true);
            index += 1;
            if !look {
                kept.push_back(attempt);
                continue;
            }
            match self.check(&attempt) {
                Outcome::Established => {
                    self.in_flight = kept;
                    return self.win(attempt);
                }
                Outcome::Failed(err) => {
                    // (`is_none_or` would need Rust 1.82.)
                    if !matches!(&self.last_failure, Some((s, _)) if *s > attempt.seq) {
                        self.last_failure = Some((attempt.seq, err));
                    }
                }
                Outcome::Pending => kept.push_back(attempt),
            }
        }
        self.in_flight = kept;
        None
    }

    fn check(&self, attempt: &Attempt) -> Outcome {
        let socket = &attempt.socket;
        match socket.take_error() {
            Ok(Some(err)) | Err(err) => return Outcome::Failed(err),
            Ok(None) => {}
        }
        // getpeername succeeds only once the handshake is complete.
        match socket.peer_addr() {
            Ok(peer) => {
                // On loopback, an attempt on a closed port can connect to
                // itself (TCP simultaneous open) when the kernel happens to
                // pick the destination port as the source port. That proves
                // nothing.
                if socket.local_addr().is_ok_and(|local| local == peer) {
                    return Outcome::Failed(io::Error::from(ErrorKind::ConnectionRefused));
                }
                Outcome::Established
            }
            Err(_) => Outcome::Pending,
        }
    }

    /// Ends the race: the winner goes back to blocking mode; the others are
    /// closed.
    fn win(&mut self, attempt: Attempt) -> Option<TcpStream> {
        self.in_flight.clear();
        match attempt.socket.set_nonblocking(false) {
            Ok(()) => Some(TcpStream::from(attempt.socket)),
            Err(err) => {
                self.last_failure = Some((attempt.seq, err));
                None
            }
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Established,
    Failed(io::Error),
    Pending,
}

fn in_progress(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::INPROGRESS.raw_os_error())
        || err.kind() == ErrorKind::WouldBlock
}

/// What `TcpStream::connect_timeout` reports when its time is up.
fn timed_out() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "connection timed out")
}

/// io::Error is not Clone; the kind, the OS code and the text are enough.
fn copy(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connects_to_a_listening_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut race = Race::new(addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            if let Some(stream) = race.step(deadline) {
                break stream;
            }
            assert!(Instant::now() < deadline, "no connection");
        };
        assert_eq!(stream.peer_addr().unwrap(), addr);
        // Back in blocking mode: a read waits (here, for the timeout).
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let err = std::io::Read::read(&mut &stream, &mut [0u8; 1]).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );
    }

    #[test]
    fn refused_attempts_follow_the_schedule_and_report_refused() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut race = Race::new(addr);
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            assert!(race.step(deadline).is_none());
        }
        // 250 µs, ×1.25: about 21 attempts within 100 ms, not thousands.
        assert!((5..=40).contains(&race.started), "{}", race.started);
        let err = race.last_error().unwrap();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn no_attempt_no_error() {
        let race = Race::new("127.0.0.1:9".parse().unwrap());
        assert!(race.last_error().is_none());
    }
}
