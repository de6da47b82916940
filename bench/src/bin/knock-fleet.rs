//! knock-fleet: many clients derived from one seed, for the scale benchmark
//! (`bench/scale.sh`). Client `i` is `PREFIX-NNNNNN`; its secret (or, for
//! every K-th client, its identity) is HMAC-SHA256(seed, i), so the knocker
//! needs no per-client file (see `knock_bench::fleet`).
//!
//! * `enroll`: writes the fleet's entries into the server's `clients_dir`
//!   (`--remove` deletes them);
//! * `burst`: one knock from each of N clients, spread evenly over a time;
//! * `trickle`: one knock from the next client every DUR, for a bounded time;
//! * `grants`: matches the `granted` lines of the server's log with the
//!   knocks sent (`--sends`), for the share honoured and the delays;
//! * `await`: waits for a line in the server's log, polling every 1 ms.
//!
//! Each prints a `RESULT` line for `bench/scale.sh`. Every traffic command is
//! bounded in knocks and in time.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use knock_bench::fleet::{log_time_us, parse_grant, server_keys, Fleet, FleetArgs};
use knock_bench::{ms, parse_duration, Knocker, Summary};
use knock_keys::cli::{parse_args, Failure};
use knock_keys::config::ServerConfig;
use knock_keys::entry::{ClientEntry, Credential};
use knock_keys::identity;
use knock_proto::{PortSpec, Request, SealRandomness, ServerId, ServerPublicKey, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PROGRAM: &str = "knock-fleet";
/// No traffic command or wait runs longer than this.
const MAX_TIME: Duration = Duration::from_secs(600);
/// The most knocks one command sends, and the most clients one enroll writes.
const MAX_COUNT: u64 = 1_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "knock-fleet",
    version,
    about = "Many knock clients from one seed: enrol them, knock with them, read the grants"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

fn fleet_of(args: &FleetArgs) -> Result<Fleet, Failure> {
    args.fleet().map_err(Failure::usage)
}

#[derive(Debug, clap::Args)]
struct Target {
    /// Where the server sniffs knocks: ADDR:PORT (its knock_port).
    #[arg(long)]
    to: SocketAddr,
    /// Source address to send from (default: chosen by the route).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// The protected port the knocks ask for (default: the first of
    /// `protected`).
    #[arg(long)]
    port: Option<PortSpec>,
    /// Append `NAME UNIX_MICROS` for every knock sent to this file, for
    /// `grants --sends`.
    #[arg(long)]
    sends: Option<PathBuf>,
    /// Label of the RESULT line.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write N client entries PREFIX-NNNNNN.toml into the config's clients_dir
    /// (shared-key 0600, public-key 0644); or delete them with --remove.
    Enroll {
        /// The server configuration (server.toml).
        #[arg(long)]
        config: PathBuf,
        /// How many clients (required, except with --remove: then all of
        /// the fleet's files are removed).
        #[arg(long)]
        count: Option<u64>,
        /// Index of the first client.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// The ports the clients may open, comma-separated (default: all of
        /// `protected`).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<PortSpec>,
        /// Delete the clients' files instead.
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One valid knock from each of the clients FIRST..FIRST+COUNT, spread
    /// evenly over --within.
    Burst {
        /// The server configuration the fleet is enrolled in (server.toml).
        #[arg(long)]
        config: PathBuf,
        /// How many knocks, each from its own client.
        #[arg(long)]
        count: u64,
        /// Index of the first client.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// The knocks are sent evenly over this time (e.g. 1s; at most 10m).
        #[arg(long, value_parser = parse_duration)]
        within: Duration,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One valid knock from the next client every --every, for --duration
    /// (or until --stop-file exists).
    Trickle {
        /// The server configuration the fleet is enrolled in (server.toml).
        #[arg(long)]
        config: PathBuf,
        /// Time between two knocks (at least 100us).
        #[arg(long, value_parser = parse_duration)]
        every: Duration,
        /// Stop after this long (at most 10m).
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// Index of the first client.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Cycle through this many clients from --first (default: never
        /// wrap).
        #[arg(long)]
        count: Option<u64>,
        /// Stop as soon as this file exists.
        #[arg(long)]
        stop_file: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Read the `granted` lines of a server log (from --from-byte): with
    /// --sends, match them to the knocks sent, by client, in order.
    Grants {
        /// The server's log (stderr of `knock-server run`).
        #[arg(long)]
        log: PathBuf,
        /// The file `burst`/`trickle --sends` wrote.
        #[arg(long)]
        sends: Option<PathBuf>,
        /// Without --sends: only this client's grants.
        #[arg(long)]
        client: Option<String>,
        /// Start reading the log at this byte.
        #[arg(long, default_value_t = 0)]
        from_byte: u64,
        /// Label of the RESULT line.
        #[arg(long, default_value = "grants")]
        name: String,
    },
    /// Wait until a line containing TEXT appears in a log (from --from-byte),
    /// polling every --poll; exit 1 on timeout or when --pid ends.
    Await {
        /// The log to watch.
        #[arg(long)]
        log: PathBuf,
        /// The text the line must contain.
        #[arg(long = "match")]
        text: String,
        /// Start reading the log at this byte.
        #[arg(long, default_value_t = 0)]
        from_byte: u64,
        /// Give up after this long (at most 10m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Duration,
        /// How often to look (at most 1s).
        #[arg(long, default_value = "1ms", value_parser = parse_duration)]
        poll: Duration,
        /// Give up when this process has ended.
        #[arg(long)]
        pid: Option<u32>,
        /// Label of the RESULT line.
        #[arg(long, default_value = "await")]
        name: String,
    },
}

fn main() -> ExitCode {
    let args: Args = match parse_args(PROGRAM) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = match args.command {
        Command::Enroll {
            config,
            count,
            first,
            ports,
            remove,
            fleet,
        } => {
            if remove {
                remove_fleet(&config, count, first, &fleet)
            } else {
                enroll(&config, count, first, &ports, &fleet)
            }
        }
        Command::Burst {
            config,
            count,
            first,
            within,
            target,
            fleet,
        } => burst(&config, count, first, within, &target, &fleet),
        Command::Trickle {
            config,
            every,
            duration,
            first,
            count,
            stop_file,
            target,
            fleet,
        } => trickle(
            &config,
            &TrickleArgs {
                every,
                duration,
                first,
                count,
                stop_file,
            },
            &target,
            &fleet,
        ),
        Command::Grants {
            log,
            sends,
            client,
            from_byte,
            name,
        } => grants(&log, sends.as_deref(), client.as_deref(), from_byte, &name),
        Command::Await {
            log,
            text,
            from_byte,
            timeout,
            poll,
            pid,
            name,
        } => await_line(&log, &text, from_byte, timeout, poll, pid, &name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(PROGRAM),
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn ms_of_us(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn check_count(count: u64, first: u64) -> Result<(), Failure> {
    if count == 0 || count > MAX_COUNT {
        return Err(Failure::usage(format!("--count: use 1..={MAX_COUNT}")));
    }
    if first.checked_add(count).is_none_or(|end| end > 100_000_000) {
        return Err(Failure::usage("--first + --count: at most 100000000"));
    }
    Ok(())
}

// ------------------------------------------------------------------ enroll --

fn enroll(
    config: &Path,
    count: Option<u64>,
    first: u64,
    ports: &[PortSpec],
    fleet: &FleetArgs,
) -> Result<(), Failure> {
    let count = count.ok_or_else(|| Failure::usage("--count N is needed (or --remove)"))?;
    check_count(count, first)?;
    let fleet = fleet_of(fleet)?;
    let config = ServerConfig::load(config)?;
    let ports = if ports.is_empty() {
        config.protected.clone()
    } else {
        for port in ports {
            if !config.protected.contains(port) {
                return Err(Failure::usage(format!(
                    "--ports: {port} is not protected by {}",
                    config.path.display()
                )));
            }
        }
        ports.to_vec()
    };
    let dir = config.clients_dir.clone();
    knock_keys::secret_file::ensure_private_dir(&dir)?;
    let publics = (first..first + count)
        .filter(|&i| fleet.is_public(i))
        .count();
    if publics > 0 {
        let (_, created) = identity::load_or_create_server_key(&config.server_key_file)?;
        if created {
            eprintln!(
                "{PROGRAM}: created server key {}",
                config.server_key_file.display()
            );
        }
    }
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8) as u64;
    let per = count.div_ceil(threads);
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (fleet, ports, dir) = (&fleet, &ports, &dir);
                let start = first + t * per;
                let end = (start + per).min(first + count);
                scope.spawn(move || {
                    for i in start..end {
                        write_entry(dir, fleet, i, ports)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a writer thread failed".into()))
            })
            .collect()
    });
    for result in results {
        result.map_err(Failure::runtime)?;
    }
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{PROGRAM}: enrolled {count} clients {}..{} ({publics} public-key) in {} in {secs:.2}s",
        fleet.name(first),
        fleet.name(first + count - 1),
        dir.display()
    );
    println!("RESULT name=enroll count={count} public={publics} seconds={secs:.3}");
    Ok(())
}

/// Writes one entry: a temporary file with the right mode, then a rename
/// (readers never see half a file). No fsync per file: 100,000 would take
/// minutes; the directory is synced once at the end.
fn write_entry(dir: &Path, fleet: &Fleet, i: u64, ports: &[PortSpec]) -> Result<(), String> {
    let entry = fleet.entry(i, ports);
    let mode = match entry.credential {
        Credential::Shared(_) => 0o600,
        Credential::Public(_) => 0o644,
    };
    let file = fleet.file_name(i);
    let path = dir.join(&file);
    let temp = dir.join(format!(".{file}.fleet{}", std::process::id()));
    let text = entry.to_toml();
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
        out.write_all(text.as_bytes())?;
        drop(out);
        fs::rename(&temp, &path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&temp);
        format!("{}: {e}", path.display())
    })
}

fn remove_fleet(
    config: &Path,
    count: Option<u64>,
    first: u64,
    fleet: &FleetArgs,
) -> Result<(), Failure> {
    let fleet = fleet_of(fleet)?;
    let config = ServerConfig::load(config)?;
    let dir = &config.clients_dir;
    let mut removed = 0u64;
    let mut remove = |path: PathBuf| match fs::remove_file(&path) {
        Ok(()) => {
            removed += 1;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::runtime(format!("{}: {e}", path.display()))),
    };
    match count {
        Some(count) => {
            check_count(count, first)?;
            for i in first..first + count {
                remove(dir.join(fleet.file_name(i)))?;
            }
        }
        None => {
            let listing = fs::read_dir(dir)
                .map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
            for item in listing {
                let item = item.map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                let is_ours = name
                    .strip_suffix(".toml")
                    .and_then(|stem| fleet.index_of(stem))
                    .is_some_and(|i| i >= first);
                if is_ours {
                    remove(item.path())?;
                }
            }
        }
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    eprintln!(
        "{PROGRAM}: removed {removed} client files of fleet {:?} from {}",
        fleet.prefix(),
        dir.display()
    );
    println!("RESULT name=remove removed={removed}");
    Ok(())
}

// --------------------------------------------------------------- knocking --

/// What the knocking commands share: the server's identity and key, the
/// request, the socket and the record of sends.
struct Sender {
    fleet: Fleet,
    server_id: ServerId,
    server_key: Option<ServerPublicKey>,
    request: Request,
    socket: UdpSocket,
    to: SocketAddr,
    rng: SystemRandom,
    sends: Option<BufWriter<fs::File>>,
    errors: u64,
}

impl Sender {
    fn new(config: &Path, target: &Target, fleet: &FleetArgs, first: u64) -> Result<Self, Failure> {
        let fleet = fleet_of(fleet)?;
        let config = ServerConfig::load(config)?;
        let (server_id, server_key) = server_keys(&config)?;
        let port = match target.port {
            Some(port) => port,
            None => *config
                .protected
                .first()
                .ok_or_else(|| Failure::usage("the configuration protects no port"))?,
        };
        // The first client must be enrolled with this very seed: compare its
        // entry with what the seed gives, and the first public-key one too.
        let mut checked = vec![first];
        if let Some(p) = (first..first + 1000).find(|&i| fleet.is_public(i)) {
            checked.push(p);
        }
        for i in checked {
            let path = config.clients_dir.join(fleet.file_name(i));
            let entry = ClientEntry::load(&path).map_err(|e| {
                Failure::usage(format!("{e} (enroll the fleet first: knock-fleet enroll)"))
            })?;
            if entry.credential != fleet.credential(i) {
                return Err(Failure::usage(format!(
                    "{}: not the key that this --seed and --public-every give; enroll and knock with the same ones",
                    path.display()
                )));
            }
        }
        let local = target.bind.unwrap_or(match target.to.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        // Not connected: the server binds no port, so the kernel answers
        // knocks with ICMP port unreachable, and a connected socket would
        // fail (and not send) the next knock with ECONNREFUSED.
        let socket = UdpSocket::bind(SocketAddr::new(local, 0))
            .map_err(|e| Failure::runtime(format!("cannot bind a UDP socket to {local}: {e}")))?;
        let sends = match &target.sends {
            None => None,
            Some(path) => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?,
            )),
        };
        Ok(Self {
            fleet,
            server_id,
            server_key,
            request: Request {
                ports: vec![port],
                duration_s: 0,
                bound_addr: None,
            },
            socket,
            to: target.to,
            rng: SystemRandom::new(),
            sends,
            errors: 0,
        })
    }

    fn knocker(&self, i: u64) -> Result<Knocker, Failure> {
        self.fleet
            .knocker(i, self.server_id, self.server_key)
            .map_err(Failure::usage)
    }

    /// Seals a knock of client `i` stamped now and sends it; returns the
    /// time of the send (unix microseconds).
    fn send(&mut self, i: u64, knocker: &Knocker) -> Result<u64, Failure> {
        let mut random = [0u8; NONCE_LEN + 1];
        self.rng
            .fill(&mut random)
            .map_err(|_| Failure::runtime("the system random generator failed"))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(random.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
        let randomness = SealRandomness {
            nonce,
            padding: random.get(NONCE_LEN).copied().unwrap_or(0),
        };
        let now = unix_us();
        let bytes = knocker
            .seal(&self.request, now / 1000, &randomness)
            .map_err(Failure::runtime)?;
        let at = unix_us();
        if self.socket.send_to(&bytes, self.to).is_err() {
            // Once more (a pending error is reported, not the datagram sent).
            if self.socket.send_to(&bytes, self.to).is_err() {
                self.errors += 1;
            }
        }
        if let Some(out) = self.sends.as_mut() {
            writeln!(out, "{} {at}", self.fleet.name(i))
                .map_err(|e| Failure::runtime(format!("--sends: {e}")))?;
        }
        Ok(at)
    }

    fn flush(&mut self) -> Result<(), Failure> {
        match self.sends.as_mut() {
            Some(out) => out
                .flush()
                .map_err(|e| Failure::runtime(format!("--sends: {e}"))),
            None => Ok(()),
        }
    }
}

fn sleep_until(when: Instant) {
    let left = when.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

fn burst(
    config: &Path,
    count: u64,
    first: u64,
    within: Duration,
    target: &Target,
    fleet: &FleetArgs,
) -> Result<(), Failure> {
    check_count(count, first)?;
    if within > MAX_TIME {
        return Err(Failure::usage("--within: at most 10m"));
    }
    let mut sender = Sender::new(config, target, fleet, first)?;
    // Key derivation (an X25519 agreement per public-key client) before the
    // clock starts.
    let prepared = Instant::now();
    let knockers = (first..first + count)
        .map(|i| sender.knocker(i))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "{PROGRAM}: {count} knockers ready in {:.0} ms",
        ms(prepared.elapsed())
    );
    let started = Instant::now();
    let (mut first_sent, mut last_sent) = (0, 0);
    for (k, knocker) in knockers.iter().enumerate() {
        let offset = within.mul_f64(k as f64 / count as f64);
        sleep_until(started + offset);
        let at = sender.send(first + k as u64, knocker)?;
        if k == 0 {
            first_sent = at;
        }
        last_sent = at;
    }
    sender.flush()?;
    let name = target.name.as_deref().unwrap_or("burst");
    eprintln!(
        "{PROGRAM}: {name}: sent {count} knocks of {}..{} in {:.1} ms, {} send errors",
        sender.fleet.name(first),
        sender.fleet.name(first + count - 1),
        (last_sent - first_sent) as f64 / 1000.0,
        sender.errors
    );
    println!(
        "RESULT name={name} sent={count} errors={} first_sent_ms={} last_sent_ms={}",
        sender.errors,
        ms_of_us(first_sent),
        ms_of_us(last_sent)
    );
    Ok(())
}

struct TrickleArgs {
    every: Duration,
    duration: Duration,
    first: u64,
    count: Option<u64>,
    stop_file: Option<PathBuf>,
}

fn trickle(
    config: &Path,
    args: &TrickleArgs,
    target: &Target,
    fleet: &FleetArgs,
) -> Result<(), Failure> {
    if args.every < Duration::from_micros(100) {
        return Err(Failure::usage("--every: at least 100us"));
    }
    if args.duration > MAX_TIME || args.duration.is_zero() {
        return Err(Failure::usage("--duration: more than 0, at most 10m"));
    }
    let most = (args.duration.as_secs_f64() / args.every.as_secs_f64()).floor() as u64 + 1;
    if let Some(count) = args.count {
        check_count(count, args.first)?;
    } else {
        check_count(most, args.first)?;
    }
    let mut sender = Sender::new(config, target, fleet, args.first)?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let (mut sent, mut first_sent, mut last_sent) = (0u64, 0, 0);
    while sent < most {
        let due = started + args.every.mul_f64(sent as f64);
        if due > deadline {
            break;
        }
        sleep_until(due);
        if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        let i = args.first + args.count.map_or(sent, |c| sent % c);
        let knocker = sender.knocker(i)?;
        let at = sender.send(i, &knocker)?;
        // Flushed as it goes: the record survives a kill.
        sender.flush()?;
        if sent == 0 {
            first_sent = at;
        }
        last_sent = at;
        sent += 1;
    }
    let name = target.name.as_deref().unwrap_or("trickle");
    eprintln!(
        "{PROGRAM}: {name}: sent {sent} knocks, one every {:.3} ms, over {:.1} ms, {} send errors",
        ms(args.every),
        (last_sent.saturating_sub(first_sent)) as f64 / 1000.0,
        sender.errors
    );
    println!(
        "RESULT name={name} sent={sent} errors={} first_sent_ms={} last_sent_ms={}",
        sender.errors,
        ms_of_us(first_sent),
        ms_of_us(last_sent)
    );
    Ok(())
}

// -------------------------------------------------------------- the log --

fn read_from(path: &Path, from_byte: u64) -> Result<String, Failure> {
    let mut file =
        fs::File::open(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    file.seek(SeekFrom::Start(from_byte))
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn stats(prefix: &str, samples: &[Duration]) -> String {
    if samples.is_empty() {
        return format!(
            "{prefix}_n=0 {prefix}_p50_ms=n/a {prefix}_p90_ms=n/a {prefix}_p99_ms=n/a {prefix}_max_ms=n/a"
        );
    }
    let s = Summary::of(samples.len(), samples);
    format!(
        "{prefix}_n={} {prefix}_p50_ms={:.3} {prefix}_p90_ms={:.3} {prefix}_p99_ms={:.3} {prefix}_max_ms={:.3}",
        samples.len(),
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    )
}

fn grants(
    log: &Path,
    sends: Option<&Path>,
    client: Option<&str>,
    from_byte: u64,
    name: &str,
) -> Result<(), Failure> {
    let text = read_from(log, from_byte)?;
    // Sends by client, in order.
    let mut pending: HashMap<String, VecDeque<u64>> = HashMap::new();
    let (mut sent, mut first_sent, mut last_sent) = (0u64, u64::MAX, 0u64);
    if let Some(path) = sends {
        let record = read_from(path, 0)?;
        for line in record.lines() {
            let Some((who, at)) = line.split_once(' ') else {
                continue;
            };
            let Ok(at) = at.trim().parse::<u64>() else {
                continue;
            };
            pending.entry(who.to_owned()).or_default().push_back(at);
            sent += 1;
            first_sent = first_sent.min(at);
            last_sent = last_sent.max(at);
        }
    }
    let (mut honoured, mut last_grant) = (0u64, 0u64);
    let mut delays = Vec::new();
    let mut lives = Vec::new();
    for line in text.lines() {
        let Some(grant) = parse_grant(line) else {
            continue;
        };
        if sends.is_some() {
            let Some(at) = pending.get_mut(&grant.client).and_then(VecDeque::pop_front) else {
                continue;
            };
            if let Some(logged) = grant.logged_us {
                delays.push(Duration::from_micros(logged.saturating_sub(at)));
            }
        } else if client.is_some_and(|c| c != grant.client) {
            continue;
        }
        honoured += 1;
        if let Some(logged) = grant.logged_us {
            last_grant = last_grant.max(logged);
        }
        if let Some(live) = grant.live {
            lives.push(live);
        }
    }
    let opt = |v: u64, ok: bool| if ok { ms_of_us(v) } else { "n/a".into() };
    let span = if sent > 0 && last_grant >= first_sent {
        ms_of_us(last_grant - first_sent)
    } else {
        "n/a".into()
    };
    eprintln!(
        "{PROGRAM}: {name}: {honoured} grants{} in {}",
        if sends.is_some() {
            format!(" for {sent} knocks sent")
        } else {
            String::new()
        },
        log.display()
    );
    println!(
        "RESULT name={name} sent={sent} honoured={honoured} first_sent_ms={} last_sent_ms={} \
         last_grant_ms={} span_ms={span} {} {}",
        opt(first_sent, sent > 0),
        opt(last_sent, sent > 0),
        opt(last_grant, last_grant > 0),
        stats("delay", &delays),
        stats("live", &lives),
    );
    Ok(())
}

fn await_line(
    log: &Path,
    text: &str,
    from_byte: u64,
    timeout: Duration,
    poll: Duration,
    pid: Option<u32>,
    name: &str,
) -> Result<(), Failure> {
    if timeout > MAX_TIME {
        return Err(Failure::usage("--timeout: at most 10m"));
    }
    if poll.is_zero() || poll > Duration::from_secs(1) {
        return Err(Failure::usage("--poll: more than 0, at most 1s"));
    }
    let started = Instant::now();
    let mut offset = from_byte;
    let mut partial = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Ok(mut file) = fs::File::open(log) {
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                    partial.extend_from_slice(buf.get(..n).unwrap_or(&[]));
                    while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line);
                        if line.contains(text) {
                            let seen = unix_us();
                            let logged = log_time_us(&line);
                            println!(
                                "RESULT name={name} found=1 seen_ms={} logged_ms={} end_byte={}",
                                ms_of_us(seen),
                                logged.map_or_else(|| "n/a".into(), ms_of_us),
                                offset - partial.len() as u64
                            );
                            println!("LINE {}", line.trim_end());
                            return Ok(());
                        }
                    }
                }
            }
        }
        let gone = pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        if gone || started.elapsed() >= timeout {
            println!(
                "RESULT name={name} found=0 seen_ms=n/a logged_ms=n/a end_byte={offset} reason={}",
                if gone { "exited" } else { "timeout" }
            );
            return Err(Failure::runtime(format!(
                "{name}: no line with {text:?} in {} {}",
                log.display(),
                if gone {
                    "before the process ended".to_owned()
                } else {
                    format!("within {:.0}s", timeout.as_secs_f64())
                }
            )));
        }
        std::thread::sleep(poll);
    }
}
