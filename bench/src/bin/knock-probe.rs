//! knock-probe: how long from a knock to the first TCP connection that the
//! firewall lets through, and how many knocks are honoured at all.
//!
//! Each trial uses its own source address (so no earlier grant can make it
//! look open):
//!
//! * `knock`: seals a fresh knock with the profile (or, with `--fleet`, as
//!   the next client of a `knock-fleet` fleet; bound to no address: the
//!   server opens for the source it sees), sends it from a UDP socket bound to
//!   the trial's source, then tries a TCP connect from the same source every
//!   `--retry` (each attempt a new socket whose SYN the firewall drops until
//!   the grant is in), and records the time from the send to the first
//!   connect that succeeds. A trial fails if none succeeds within `--timeout`.
//! * `client`: times the real `knock-client open HOST PORT` process end to
//!   end (exec, profile, knock, connect). knock-client has no source option,
//!   so before each run (outside the timed part) the route to the server is
//!   replaced with one whose preferred source (`src`) is the trial's address;
//!   the knock and the connection both take it.
//! * `command`: the same for any knock command (fwknop, or
//!   `knock-client open --no-wait`): runs it from the trial's source, then
//!   connects as `knock` does; the time runs from the command's start.
//!
//! Both print the latency percentiles of the honoured trials and the share
//! honoured, then a `RESULT` line for `bench/run.sh`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use knock_bench::fleet::{server_keys, Fleet, FleetArgs};
use knock_bench::{
    ms, parse_duration, parse_ipv4_range, Knocker, Summary, EXIT_RUNTIME, EXIT_USAGE,
};
use knock_keys::config::ServerConfig;
use knock_keys::profile::ClientProfile;
use knock_proto::{PortSpec, Request, SealRandomness, ServerId, ServerPublicKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use socket2::{Domain, Protocol, Socket, Type};

/// No probe runs longer than this, whatever the flags say.
const MAX_RUN: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
#[command(
    name = "knock-probe",
    about = "Knock → first TCP connect latency and honour share"
)]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The client profile (its key, server identity and knock port); needed
    /// by `knock` and `client`.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The identity of a public-key profile (default: `identity` beside the
    /// profile, where `knock-client identity` puts it for `client`).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The server address to knock on and connect to.
    #[arg(long)]
    server: IpAddr,
    /// The protected TCP port to open (a listener must be there).
    #[arg(long, default_value_t = 4992)]
    port: u16,
    /// Source addresses, one per trial: A-B, A+COUNT or A. They must be
    /// configured on this host.
    #[arg(long)]
    sources: String,
    /// Number of trials (default: one per source address).
    #[arg(long)]
    trials: Option<usize>,
    /// A trial not connected within this long counts as not honoured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Pause between trials.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    gap: Duration,
    /// Stop starting trials after this long (at most 10m).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    max_run: Duration,
    /// Label of the RESULT line.
    #[arg(long, default_value = "probe")]
    name: String,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Knock in-process from each source, then connect from it.
    Knock {
        #[command(flatten)]
        common: Common,
        /// Knock as the clients of a `knock-fleet` fleet enrolled in this
        /// server configuration, one client per trial from --fleet-first
        /// (instead of --profile: no client knocks twice, so no per-client
        /// limit applies).
        #[arg(long)]
        fleet: Option<PathBuf>,
        /// The fleet client of the first trial.
        #[arg(long, default_value_t = 0)]
        fleet_first: u64,
        #[command(flatten)]
        fleet_args: FleetArgs,
        /// Interval between connection attempts, microseconds.
        #[arg(long = "retry-us", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
        retry_us: u64,
    },
    /// Time `knock-client open SERVER PORT --profile P` end to end.
    Client {
        #[command(flatten)]
        common: Common,
        /// The knock-client binary.
        #[arg(long)]
        exec: PathBuf,
        /// The interface the route to the server goes out of.
        #[arg(long)]
        dev: String,
    },
    /// Time any knock command (e.g. fwknop) plus the first connect: runs
    /// COMMAND from the trial's source (route `src`, as in `client`), then
    /// connects from that source as `knock` does, every `--retry-us`.
    Command {
        #[command(flatten)]
        common: Common,
        /// The interface the route to the server goes out of.
        #[arg(long)]
        dev: String,
        /// Interval between connection attempts, microseconds.
        #[arg(long = "retry-us", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
        retry_us: u64,
        /// The knock command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
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
    let result = match &args.command {
        Mode::Knock {
            common,
            retry_us,
            fleet,
            fleet_first,
            fleet_args,
        } => {
            let fleet = fleet
                .as_deref()
                .map(|config| (config, *fleet_first, fleet_args));
            knock_trials(common, Duration::from_micros(*retry_us), fleet)
        }
        Mode::Client { common, exec, dev } => client_trials(common, exec, dev),
        Mode::Command {
            common,
            dev,
            retry_us,
            command,
        } => command_trials(common, dev, Duration::from_micros(*retry_us), command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("knock-probe: {message}");
            ExitCode::from(code as u8)
        }
    }
}

type Failure = (i32, String);

fn sources(common: &Common) -> Result<Vec<IpAddr>, Failure> {
    let all =
        parse_ipv4_range(&common.sources).map_err(|m| (EXIT_USAGE, format!("--sources: {m}")))?;
    let trials = common.trials.unwrap_or(all.len());
    if trials > all.len() {
        return Err((
            EXIT_USAGE,
            format!(
                "--trials {trials}: only {} source addresses; each trial needs its own",
                all.len()
            ),
        ));
    }
    if common.max_run > MAX_RUN {
        return Err((
            EXIT_USAGE,
            format!("--max-run: at most {}s", MAX_RUN.as_secs()),
        ));
    }
    Ok(all.into_iter().take(trials).collect())
}

fn profile_path(common: &Common) -> Result<&PathBuf, Failure> {
    common
        .profile
        .as_ref()
        .ok_or_else(|| (EXIT_USAGE, "--profile FILE is needed".to_owned()))
}

fn report(common: &Common, trials: usize, samples: &[Duration], started: Instant) {
    let s = Summary::of(trials, samples);
    println!(
        "knock-probe {}: {}/{} honoured ({:.2}%), latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, \
         max {:.3} ms, min {:.3} ms; {:.1}s",
        common.name,
        s.honoured,
        s.trials,
        s.share(),
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max),
        ms(s.min),
        started.elapsed().as_secs_f64()
    );
    println!("{}", s.result_line(&common.name));
}

/// Who knocks: the profile's client, or a fleet's clients one per trial.
enum Knockers {
    Profile(Knocker),
    Fleet {
        fleet: Fleet,
        first: u64,
        server_id: ServerId,
        server_key: Option<ServerPublicKey>,
    },
}

fn knock_trials(
    common: &Common,
    retry: Duration,
    fleet: Option<(&Path, u64, &FleetArgs)>,
) -> Result<(), Failure> {
    let sources = sources(common)?;
    let usage = |e: String| (EXIT_USAGE, e);
    let (knockers, knock_port) = match fleet {
        None => {
            let path = profile_path(common)?;
            let profile = ClientProfile::load(path).map_err(|e| usage(e.to_string()))?;
            let knocker =
                Knocker::for_profile(&profile, path, common.identity.as_deref()).map_err(usage)?;
            (Knockers::Profile(knocker), profile.knock_port)
        }
        Some((config, first, args)) => {
            let config = ServerConfig::load(config).map_err(|e| usage(e.to_string()))?;
            let (server_id, server_key) = server_keys(&config).map_err(|e| usage(e.to_string()))?;
            let knockers = Knockers::Fleet {
                fleet: args.fleet().map_err(usage)?,
                first,
                server_id,
                server_key,
            };
            (knockers, config.knock_port)
        }
    };
    let request = Request {
        ports: vec![PortSpec::tcp(common.port)],
        duration_s: 0,
        bound_addr: None,
    };
    let rng = SystemRandom::new();
    let knock_to = SocketAddr::new(common.server, knock_port);
    let connect_to = SocketAddr::new(common.server, common.port);
    let started = Instant::now();
    let mut last_stamp = 0u64;
    let mut samples = Vec::with_capacity(sources.len());
    let mut trials = 0usize;
    for source in sources {
        if started.elapsed() >= common.max_run {
            break;
        }
        // Seal before the clock starts: the client's sealing cost is part of
        // the `client` mode, not of the network path measured here.
        let stamp = now_ms()?.max(last_stamp + 1);
        last_stamp = stamp;
        let mut random = [0u8; NONCE_LEN + 1];
        rng.fill(&mut random).map_err(|_| {
            (
                EXIT_RUNTIME,
                "the system random generator failed".to_owned(),
            )
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(random.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
        let randomness = SealRandomness {
            nonce,
            padding: random.get(NONCE_LEN).copied().unwrap_or(0),
        };
        let owned;
        let knocker = match &knockers {
            Knockers::Profile(knocker) => knocker,
            Knockers::Fleet {
                fleet,
                first,
                server_id,
                server_key,
            } => {
                owned = fleet
                    .knocker(first + trials as u64, *server_id, *server_key)
                    .map_err(usage)?;
                &owned
            }
        };
        let bytes = knocker
            .seal(&request, stamp, &randomness)
            .map_err(|e| (EXIT_RUNTIME, e))?;
        let udp = UdpSocket::bind(SocketAddr::new(source, 0)).map_err(|e| {
            (
                EXIT_RUNTIME,
                format!("cannot bind a UDP socket to {source}: {e}; is it configured here?"),
            )
        })?;

        trials += 1;
        let sent_at = Instant::now();
        udp.send_to(&bytes, knock_to).map_err(|e| {
            (
                EXIT_RUNTIME,
                format!("sending the knock from {source}: {e}"),
            )
        })?;
        if let Some(latency) = first_connect(source, connect_to, sent_at, common.timeout, retry)? {
            samples.push(latency);
        }
        std::thread::sleep(common.gap);
    }
    report(common, trials, &samples, started);
    Ok(())
}

/// At most this many connection attempts are kept in flight; older ones
/// (whose SYN the firewall dropped, and which the kernel would retransmit only
/// after a second) are closed.
const MAX_IN_FLIGHT: usize = 64;

/// Starts a non-blocking connect from `source` every `every`, keeping the
/// earlier ones in flight, until one is established or `timeout` after
/// `sent_at` has passed; returns the time from `sent_at` to the first one seen
/// established. The resolution is about `every` plus one sleep.
fn first_connect(
    source: IpAddr,
    to: SocketAddr,
    sent_at: Instant,
    timeout: Duration,
    every: Duration,
) -> Result<Option<Duration>, Failure> {
    let deadline = sent_at + timeout;
    let mut in_flight: VecDeque<Socket> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let mut next_attempt = Instant::now();
    let nap = (every / 2).max(Duration::from_micros(20));
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        if now >= next_attempt {
            next_attempt = now + every;
            let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| (EXIT_RUNTIME, format!("cannot open a TCP socket: {e}")))?;
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .map_err(|e| {
                    (
                        EXIT_RUNTIME,
                        format!("cannot bind a TCP socket to {source}: {e}"),
                    )
                })?;
            match socket.connect(&to.into()) {
                Ok(()) => return Ok(Some(sent_at.elapsed())),
                Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {
                    if in_flight.len() == MAX_IN_FLIGHT {
                        in_flight.pop_front();
                    }
                    in_flight.push_back(socket);
                }
                // Refused or unreachable: the firewall drops rather than
                // rejects, so nothing listens (yet); try again later.
                Err(_) => {}
            }
        }
        // getpeername succeeds only once the handshake is complete.
        if in_flight.iter().any(|s| s.peer_addr().is_ok()) {
            return Ok(Some(sent_at.elapsed()));
        }
        std::thread::sleep(nap.min(next_attempt.saturating_duration_since(Instant::now())));
    }
}

fn client_trials(common: &Common, exec: &PathBuf, dev: &str) -> Result<(), Failure> {
    let sources = sources(common)?;
    if !exec.exists() {
        return Err((
            EXIT_USAGE,
            format!("--exec {}: no such file", exec.display()),
        ));
    }
    let profile = profile_path(common)?;
    let home = profile
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let timeout = format!("{}ms", common.timeout.as_millis());
    let (server, port) = (common.server.to_string(), common.port.to_string());
    let started = Instant::now();
    let mut samples = Vec::with_capacity(sources.len());
    let mut trials = 0usize;
    let mut failures = Vec::new();
    for source in sources {
        if started.elapsed() >= common.max_run {
            break;
        }
        set_route_source(common.server, dev, source)?;
        trials += 1;
        let begin = Instant::now();
        let out = Command::new(exec)
            .args(["open", &server, &port, "--profile"])
            .arg(profile)
            .args(["--timeout", &timeout])
            .env("KNOCK_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| (EXIT_RUNTIME, format!("cannot run {}: {e}", exec.display())))?;
        let took = begin.elapsed();
        if out.status.success() {
            samples.push(took);
        } else if failures.len() < 3 {
            failures.push(format!(
                "from {source}: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::thread::sleep(common.gap);
    }
    for failure in &failures {
        eprintln!("knock-probe {}: knock-client failed {failure}", common.name);
    }
    report(common, trials, &samples, started);
    Ok(())
}

fn command_trials(
    common: &Common,
    dev: &str,
    retry: Duration,
    command: &[String],
) -> Result<(), Failure> {
    let sources = sources(common)?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| (EXIT_USAGE, "no knock command given after --".to_owned()))?;
    let connect_to = SocketAddr::new(common.server, common.port);
    let started = Instant::now();
    let mut samples = Vec::with_capacity(sources.len());
    let mut trials = 0usize;
    let mut failures = Vec::new();
    for source in sources {
        if started.elapsed() >= common.max_run {
            break;
        }
        set_route_source(common.server, dev, source)?;
        trials += 1;
        let begin = Instant::now();
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| (EXIT_RUNTIME, format!("cannot run {program}: {e}")))?;
        if !out.status.success() {
            if failures.len() < 3 {
                failures.push(format!(
                    "from {source}: exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        } else if let Some(latency) =
            first_connect(source, connect_to, begin, common.timeout, retry)?
        {
            samples.push(latency);
        }
        std::thread::sleep(common.gap);
    }
    for failure in &failures {
        eprintln!("knock-probe {}: {program} failed {failure}", common.name);
    }
    report(common, trials, &samples, started);
    Ok(())
}

/// `ip route replace SERVER/32 dev DEV src SOURCE`: the kernel then picks
/// SOURCE for every socket that does not bind one, knock-client's included.
fn set_route_source(server: IpAddr, dev: &str, source: IpAddr) -> Result<(), Failure> {
    let out = Command::new("ip")
        .args([
            "route",
            "replace",
            &format!("{server}/32"),
            "dev",
            dev,
            "src",
            &source.to_string(),
        ])
        .output()
        .map_err(|e| (EXIT_RUNTIME, format!("cannot run ip: {e}")))?;
    if !out.status.success() {
        return Err((
            EXIT_RUNTIME,
            format!(
                "ip route replace {server}/32 dev {dev} src {source}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn now_ms() -> Result<u64, Failure> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| (EXIT_RUNTIME, "the system clock is before 1970".to_owned()))
}
