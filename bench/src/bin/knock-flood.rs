//! knock-flood: sends UDP datagrams to ADDR:PORT at a paced rate, and stops
//! by itself after `--count` datagrams or `--duration`, whichever comes first.
//!
//! Modes:
//! * `junk`: random bytes of knock-like lengths (`MIN_KNOCK_LEN..=MAX_KNOCK_LEN`),
//!   so they pass the server's kernel filter and reach its userspace;
//! * `wrong-key`: real knocks, sealed with random keys the server does not
//!   know, for a random server identity: same lengths, same look as a knock;
//! * `forged-hint`: the key hint of a real client (as an on-path observer
//!   copies it from a knock it saw: the hint is sent in the clear), followed by
//!   random bytes; each one costs the server one AEAD check. Needs `--profile`.
//! * `stale-copy`: one real knock of that client, stamped five minutes ago
//!   (outside the freshness window, inside the hints the server keeps to
//!   diagnose clock skew), sent over and over, as an observer who copied an
//!   old knock would. The server opens it at most once a second. Needs
//!   `--profile`.
//! * `forged-signature`: what someone who stole the server's key
//!   (`server.key`, and `server.id` from the profile) sends for a public-key
//!   client: knocks that pass the hint and the AEAD, with fresh stamps, but
//!   signed by random identities. The server checks one signature per client
//!   per 20 s and refuses the rest as `sig-limited`. Needs `--profile` (a
//!   public-key profile) and `--server-key`.
//!
//! A public-key profile knocks with `--identity FILE`, or the `identity`
//! file beside the profile.
//!
//! Pacing: every tick (1 ms by default) it sends the datagrams that are due,
//! one `send` each on a connected socket (no sendmmsg). The achieved rate is
//! printed at the end, with a `RESULT` line for `bench/run.sh`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use knock_bench::{identity_path, parse_duration, FastRng, Knocker, EXIT_RUNTIME, EXIT_USAGE};
use knock_keys::profile::{ClientProfile, ProfileKey};
use knock_proto::{
    seal, ClientIdentity, ClientSecret, IdentitySeed, KeyHint, PairKeys, PortSpec, Request,
    SealRandomness, Sealer, ServerId, MAX_KNOCK_LEN, MIN_KNOCK_LEN,
};
use socket2::{Domain, Protocol, Socket, Type};

/// The longest a flood may last, whatever `--duration` says.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// The most datagrams a flood may send, whatever `--count` says.
const MAX_COUNT: u64 = 100_000_000;
/// Distinct payloads prepared before the flood and sent in turn.
const POOL: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Junk,
    WrongKey,
    ForgedHint,
    StaleCopy,
    ForgedSignature,
}

#[derive(Debug, Parser)]
#[command(
    name = "knock-flood",
    about = "Paced UDP flood, bounded in count and time"
)]
struct Args {
    /// Where to send: ADDR:PORT (e.g. 198.18.1.1:62201).
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "junk")]
    mode: Mode,
    /// Target rate, datagrams per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Stop after this many datagrams.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Stop after this long (e.g. 10s, 1500ms); at most 10m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Pacing tick: the datagrams due are sent once per tick.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    tick: Duration,
    /// Source address to bind (default: chosen by the route).
    #[arg(long)]
    source: Option<std::net::IpAddr>,
    /// Profile whose key hint `forged-hint` copies (and whose client the
    /// other profile modes knock or forge for).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The identity of a public-key profile (default: `identity` beside the
    /// profile).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The stolen server key, for `forged-signature`.
    #[arg(long)]
    server_key: Option<PathBuf>,
    /// Protected port the `wrong-key` knocks ask for.
    #[arg(long, default_value_t = 4992)]
    port: u16,
    /// Socket send buffer, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    sndbuf: usize,
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
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("knock-flood: {message}");
            ExitCode::from(code as u8)
        }
    }
}

fn run(args: &Args) -> Result<(), (i32, String)> {
    let usage = |m: String| (EXIT_USAGE, m);
    let runtime = |m: String| (EXIT_RUNTIME, m);
    if args.rate == 0 {
        return Err(usage("--rate: must be more than 0".into()));
    }
    if args.duration > MAX_DURATION {
        return Err(usage(format!(
            "--duration: at most {}s",
            MAX_DURATION.as_secs()
        )));
    }
    if args.count == 0 || args.count > MAX_COUNT {
        return Err(usage(format!("--count: use 1..={MAX_COUNT}")));
    }
    let mut rng = FastRng::from_os().map_err(runtime)?;
    let pool = match args.mode {
        Mode::Junk => junk_pool(&mut rng),
        Mode::WrongKey => wrong_key_pool(&mut rng, args.port).map_err(runtime)?,
        Mode::ForgedHint | Mode::StaleCopy | Mode::ForgedSignature => {
            let path = args.profile.as_ref().ok_or_else(|| {
                usage(
                    "--mode forged-hint, stale-copy and forged-signature need --profile FILE"
                        .into(),
                )
            })?;
            let profile = ClientProfile::load(path).map_err(|e| usage(e.to_string()))?;
            match args.mode {
                Mode::ForgedSignature => {
                    forged_signature_pool(&mut rng, args, path, &profile).map_err(usage)?
                }
                _ => {
                    let knocker = Knocker::for_profile(&profile, path, args.identity.as_deref())
                        .map_err(usage)?;
                    if args.mode == Mode::StaleCopy {
                        stale_copy_pool(&mut rng, &profile, &knocker).map_err(runtime)?
                    } else {
                        forged_hint_pool(&mut rng, &knocker)
                    }
                }
            }
        }
    };
    let socket = open_socket(args).map_err(runtime)?;

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut next = 0usize;
    // Never burst more than 10 ms worth of datagrams to catch up.
    let max_burst = (args.rate / 100).max(1);
    loop {
        let now = Instant::now();
        if now >= deadline || sent >= args.count {
            break;
        }
        let elapsed = now.duration_since(started).as_secs_f64();
        let due = ((elapsed * args.rate as f64) as u64).min(args.count);
        let burst = due.saturating_sub(sent).min(max_burst);
        for _ in 0..burst {
            let payload = pool.get(next).map_or(&[][..], Vec::as_slice);
            next = (next + 1) % pool.len();
            match socket.send(payload) {
                Ok(_) => {}
                // ENOBUFS, ECONNREFUSED from an ICMP error: count and go on.
                Err(_) => errors += 1,
            }
            sent += 1;
        }
        if burst < max_burst {
            let wake = (now + args.tick).min(deadline);
            let left = wake.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let achieved = sent as f64 / elapsed.max(1e-9);
    println!(
        "knock-flood: {mode:?} to {target}: sent {sent} datagrams in {elapsed:.3}s = {achieved:.0} \
         pps (target {rate} pps), {errors} send errors",
        mode = args.mode,
        target = args.target,
        rate = args.rate,
    );
    let cpu = own_cpu_seconds().map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3}"));
    println!(
        "RESULT name=flood mode={mode} sent={sent} errors={errors} seconds={elapsed:.3} \
         pps={achieved:.0} target_pps={rate} cpu_s={cpu}",
        mode = format!("{:?}", args.mode).to_lowercase(),
        rate = args.rate,
    );
    Ok(())
}

/// CPU time this process has used so far (all threads), from the scheduler.
fn own_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

fn open_socket(args: &Args) -> Result<UdpSocket, String> {
    let domain = Domain::for_address(args.target);
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let _ = socket.set_send_buffer_size(args.sndbuf);
    if let Some(source) = args.source {
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .map_err(|e| format!("--source {source}: cannot bind: {e}"))?;
    }
    socket
        .connect(&args.target.into())
        .map_err(|e| format!("--target {}: cannot connect: {e}", args.target))?;
    Ok(socket.into())
}

fn junk_pool(rng: &mut FastRng) -> Vec<Vec<u8>> {
    (0..POOL)
        .map(|_| {
            let mut payload = vec![0u8; rng.range(MIN_KNOCK_LEN, MAX_KNOCK_LEN)];
            rng.fill(&mut payload);
            payload
        })
        .collect()
}

fn now_ms() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| "the system clock is before 1970".to_owned())
}

/// Knocks exactly like the prober's (one TCP port, no bound address, random
/// padding), each sealed with its own random key for a random server.
fn wrong_key_pool(rng: &mut FastRng, port: u16) -> Result<Vec<Vec<u8>>, String> {
    let now = now_ms()?;
    let request = Request {
        ports: vec![PortSpec::tcp(port)],
        duration_s: 0,
        bound_addr: None,
    };
    (0..POOL)
        .map(|i| {
            let mut secret = [0u8; 32];
            rng.fill(&mut secret);
            let mut server = [0u8; 16];
            rng.fill(&mut server);
            let mut nonce = [0u8; 24];
            rng.fill(&mut nonce);
            let randomness = SealRandomness {
                nonce,
                padding: rng.next_u64() as u8,
            };
            let keys = PairKeys::shared(&ClientSecret::from_bytes(secret), &ServerId(server));
            seal(
                &keys,
                &Sealer::Shared,
                &request,
                now + i as u64,
                &randomness,
            )
            .map_err(|e| format!("sealing failed: {e}"))
        })
        .collect()
}

/// One real knock of the client, stamped five minutes ago, in every slot.
fn stale_copy_pool(
    rng: &mut FastRng,
    profile: &ClientProfile,
    knocker: &Knocker,
) -> Result<Vec<Vec<u8>>, String> {
    let request = Request {
        ports: profile.ports.iter().take(1).copied().collect(),
        duration_s: 0,
        bound_addr: None,
    };
    let mut nonce = [0u8; 24];
    rng.fill(&mut nonce);
    let randomness = SealRandomness {
        nonce,
        padding: rng.next_u64() as u8,
    };
    let knock = knocker.seal(
        &request,
        now_ms()?.saturating_sub(5 * 60 * 1000),
        &randomness,
    )?;
    Ok(vec![knock; POOL])
}

/// The real client's current key hint, then random bytes.
fn forged_hint_pool(rng: &mut FastRng, knocker: &Knocker) -> Vec<Vec<u8>> {
    let hint = KeyHint::at(&knocker.pair, now_ms().unwrap_or(0));
    (0..POOL)
        .map(|_| {
            let mut payload = vec![0u8; rng.range(MIN_KNOCK_LEN, MAX_KNOCK_LEN)];
            rng.fill(&mut payload);
            if let Some(head) = payload.get_mut(..hint.0.len()) {
                head.copy_from_slice(&hint.0);
            }
            payload
        })
        .collect()
}

/// Knocks for the profile's public-key client made with the stolen server
/// key: its pair keys (so the right hint and a valid AEAD), a fresh stamp
/// each, signed by random identities. The client's public key comes from
/// the profile's `client_public_key`, else from its identity.
fn forged_signature_pool(
    rng: &mut FastRng,
    args: &Args,
    profile_path: &std::path::Path,
    profile: &ClientProfile,
) -> Result<Vec<Vec<u8>>, String> {
    let ProfileKey::Public { server, client } = &profile.key else {
        return Err("--mode forged-signature needs a public-key profile".into());
    };
    let key_file = args
        .server_key
        .as_ref()
        .ok_or("--mode forged-signature needs --server-key FILE (the stolen server.key)")?;
    let stolen = knock_keys::identity::load_server_key(key_file).map_err(|e| e.to_string())?;
    if stolen.public() != *server {
        return Err(format!(
            "--server-key {}: not the key of this profile's server",
            key_file.display()
        ));
    }
    let client = match client {
        Some(client) => *client,
        None => {
            let path = identity_path(profile_path, args.identity.as_deref());
            knock_keys::client_identity::load(&path)
                .map_err(|e| e.to_string())?
                .public()
        }
    };
    let prk = stolen
        .pair_prk(&client, &profile.server_id)
        .map_err(|e| format!("the profile's client key: {e}"))?;
    let pair = PairKeys::from_prk(&prk);
    let request = Request {
        ports: profile.ports.iter().take(1).copied().collect(),
        duration_s: 0,
        bound_addr: None,
    };
    // Fresh stamps for the next POOL ms; a flood longer than the freshness
    // window sees its later knocks refused as too old instead.
    let now = now_ms()?;
    let forgers: Vec<ClientIdentity> = (0..16)
        .map(|_| {
            let mut seed = [0u8; 32];
            rng.fill(&mut seed);
            ClientIdentity::from_seed(&IdentitySeed::from_bytes(seed))
        })
        .collect();
    (0..POOL)
        .map(|i| {
            let mut nonce = [0u8; 24];
            rng.fill(&mut nonce);
            let randomness = SealRandomness {
                nonce,
                padding: rng.next_u64() as u8,
            };
            let forger = forgers.get(i % forgers.len()).ok_or("no forger")?;
            let sealer = Sealer::Public {
                identity: forger,
                server,
                server_id: &profile.server_id,
            };
            seal(&pair, &sealer, &request, now + i as u64, &randomness)
                .map_err(|e| format!("sealing failed: {e}"))
        })
        .collect()
}
