//! knock-server: `run`, `check`, `status`, `reload`, `apply`, `confirm`,
//! `restore-rules`, `remove-rules`.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use cli::{Args, Command, StatusFormat};

use knock_keys::cli::{parse_args, Failure};
use knock_keys::config::ServerConfig;
use knock_keys::identity;
use knock_keys::secret_file::read_config;
use knock_proto::{port_list, Mode};
use knock_server::apply;
use knock_server::capture::{filter, Capture};
use knock_server::clients::mode;
use knock_server::control::{ControlSocket, ANSWER_WITHIN};
use knock_server::daemon::{
    commit_record, firewall_settings, identity_of, policy, server_policy, window_ms, Daemon, Exit,
    ReloadError, Signals, POLL_EVERY,
};
use knock_server::firewall::{self, Policy, Refusal, Settings};
use knock_server::health::RulesKeeper;
use knock_server::loader::{self, Prepared};
use knock_server::pair_keys::{self, Keyring};
use knock_server::parallel::Cores;
use knock_server::privileges;
use knock_server::sanity;
use knock_server::saved_rules;
use knock_server::state::{Restored, StateFile, StateLock};
use knock_server::status::json_string;
use knock_server::status::{Assessment, StatusFile};
use knock_server::timers::unix_ms;
use knock_server::verify::Verifier;
use tracing::{error, info, warn};

const PROGRAM: &str = "knock-server";
/// The state directory when the configuration says nothing (or cannot be
/// read, at boot).
const DEFAULT_STATE_DIR: &str = "/var/lib/knock";

fn main() -> ExitCode {
    let args = match parse_args::<Args>(PROGRAM) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = match args.command {
        Command::Run { config } => run(&config),
        Command::Check { config, json } => check(&config, json),
        Command::Status {
            config,
            json,
            format,
        } => status(&config, if json { StatusFormat::Json } else { format }),
        Command::Reload { config } => reload(&config),
        Command::Apply { config, timeout } => apply_command(&config, &timeout),
        Command::Confirm { config } => confirm(&config),
        Command::RestoreRules { config, state_dir } => restore_rules(&config, state_dir),
        Command::RemoveRules { config } => remove_rules(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&failure.message)]);
            failure.report(PROGRAM)
        }
    }
}

fn init_logging() {
    // Under systemd the journal adds its own timestamps.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn run(config_path: &Path) -> Result<(), Failure> {
    init_logging();
    knock_server::tuning::keep_large_blocks_mapped();
    let started_at_ms = unix_ms();
    let config = ServerConfig::parse(config_path, &read_config(config_path)?)?;
    let settings = firewall_settings(&config);
    settings.resolve().map_err(Failure::usage)?;
    // The identity is never created here: every profile is bound to it, so
    // a new one would silently lock every client out (and the packaged
    // unit cannot write /etc/knock anyway).
    if !config.identity_file.exists() {
        return Err(Failure::usage(format!(
            "{}: missing: the server identity, which client profiles depend on; restore it from \
             your backup of {}, or create it (with a first client) by `knock-keygen NAME --host \
             THIS-HOST --config {}`",
            config.identity_file.display(),
            config
                .identity_file
                .parent()
                .unwrap_or(Path::new("/"))
                .display(),
            config.path.display()
        )));
    }
    let server_id = identity::load(&config.identity_file)?;
    // The server key is read when it exists, and required when a client is
    // public-key (derive() says so, naming the file).
    let key_file = config.server_key_file.clone();
    let server_key = if key_file.exists() {
        Some(identity::load_server_key(&key_file)?)
    } else {
        None
    };
    let mut keyring = Keyring::new(server_id, server_key, key_file);
    let cache = keyring.load_cache(&config.state_dir);
    match cache.describe(&pair_keys::path(&config.state_dir)) {
        Some(line) if cache.is_warning() => warn!("{line}"),
        Some(line) => info!("{line}"),
        None => {}
    }

    // Before the firewall or the replay state is touched: a second server on
    // this state directory would honour knocks the first has honoured.
    let lock = StateLock::acquire(&config.state_dir).map_err(Failure::runtime)?;
    // Every client, read once (with the record of what runs written as it
    // goes), its pair key and its hints made.
    let Prepared {
        config,
        roster,
        warnings,
        record,
        record_error,
        took: _,
    } = loader::load(config_path, &mut keyring, None, Cores::All).map_err(|e| match e {
        ReloadError::File(e) => Failure::from(e),
        other => Failure::usage(other),
    })?;
    for warning in warnings {
        warn!("{warning}");
    }
    let mut store = StateFile::open(lock);
    let window = window_ms(&config);
    let (guard, restored) = store
        .load_guard(window, started_at_ms)
        .map_err(|e| Failure::runtime(format!("{}: {e}", store.path().display())))?;
    let refused_for_s = guard
        .refused_through_ms()
        .saturating_sub(started_at_ms)
        .div_ceil(1000);
    match restored {
        Restored::Previous(n) => info!("replay state restored ({n} recent keys)"),
        Restored::Missing => warn!(
            "no replay state at {} (the state directory was lost; knock-keygen writes one for a new server): knocks are refused for the next {refused_for_s}s, so that none honoured before can be honoured again",
            store.path().display()
        ),
        Restored::Corrupt(err) => warn!(
            "replay state {} was unreadable ({err}); set aside as replay.corrupt: knocks are refused for the next {refused_for_s}s, so that none honoured before can be honoured again",
            store.path().display()
        ),
    }
    // Proves the state directory is writable before we promise anything.
    store.write_snapshot(&guard.encode()).map_err(|e| {
        Failure::runtime(format!(
            "cannot write replay state {}: {e}",
            store.path().display()
        ))
    })?;
    if let Err(err) = store.open_journal() {
        warn!(
            "cannot make the replay journal in {} ({err}): each grant waits for a rewrite of {} instead (slower, as safe)",
            store.dir().display(),
            store.path().display()
        );
    }

    // The packet socket first: without CAP_NET_RAW we fail here, before
    // touching the firewall. A missing interface is no failure: it is
    // waited for after our rules are installed, so the protected ports are
    // closed meanwhile, and `ready` is said once capture is live
    // (Daemon::run).
    let capture = Capture::start(&config.interface, config.knock_port, POLL_EVERY)
        .map_err(Failure::runtime)?;
    let policy = policy(&config);
    remove_rules_saved_elsewhere(store.dir(), &settings);
    let mut installer = settings.build();
    installer
        .install(&policy)
        .map_err(|e| Failure::runtime(format!("installing {} rules: {e}", installer.name())))?;
    save_rules(store.dir(), &settings, &policy);
    let firewall = settings.build();
    // Capabilities are per thread: drop them before the keeper's threads
    // are spawned, so that they inherit only ours.
    if let Err(err) = privileges::drop_to_network_caps() {
        warn!("could not drop capabilities: {err}");
    }
    let state_dir = store.dir().to_path_buf();
    let keeper = RulesKeeper::start(
        installer,
        settings.clone(),
        policy.clone(),
        config.verify_every,
        Box::new(move |settings, policy| save_rules(&state_dir, settings, policy)),
    )
    .map_err(|e| Failure::runtime(format!("starting the rules keeper: {e}")))?;
    let signals =
        Signals::install().map_err(|e| Failure::runtime(format!("signal handlers: {e}")))?;
    let control = ControlSocket::listen(store.dir(), ANSWER_WITHIN).map_err(|e| {
        Failure::runtime(format!("control socket in {}: {e}", store.dir().display()))
    })?;
    commit_record(store.dir(), record, record_error);
    let verifier = Verifier::new(identity_of(&keyring), roster, server_policy(&config), guard);

    let daemon = Daemon {
        config,
        settings,
        policy,
        verifier,
        keyring: Some(keyring),
        loading: None,
        queued: None,
        recording: None,
        store,
        firewall,
        keeper,
        capture,
        signals,
        control,
    };
    match daemon.run() {
        Exit::Terminated => Ok(()),
        Exit::Fatal(message) => Err(Failure::runtime(message)),
    }
}

/// Saves what was just installed for the next boot. A failure does not stop
/// the server, which protects the ports now; it costs the protection at the
/// next boot until the server is ready again, which the log says.
fn save_rules(state_dir: &Path, settings: &Settings, policy: &Policy) {
    if let Err(err) = saved_rules::save(state_dir, settings, policy) {
        error!(
            "cannot save the installed rules to {} ({err}): after a reboot the protected ports are open until knock-server is ready",
            saved_rules::path(state_dir).display()
        );
    }
}

/// At boot, `restore-rules` installed the rules saved last. If the
/// configuration has since moved them (another nft_table, other iptables
/// commands, another backend), installing the new ones would leave those in
/// place, still dropping the protected ports for every grant of ours: they
/// are removed first.
fn remove_rules_saved_elsewhere(state_dir: &Path, settings: &Settings) {
    let saved = match saved_rules::load(state_dir) {
        Ok(Some(saved)) => saved,
        Ok(None) => return,
        Err(err) => {
            warn!("ignoring the saved rules: {err}");
            return;
        }
    };
    if saved.settings.change_to(settings).is_err() {
        let mut old = saved.settings.build();
        match old.remove() {
            Ok(()) => info!(
                "removed the {} rules saved last, which the configuration has moved",
                old.name()
            ),
            Err(err) => error!(
                "cannot remove the {} rules saved last, which the configuration has moved: {err}; they may still close the protected ports",
                old.name()
            ),
        }
    }
}

fn check(config_path: &Path, json: bool) -> Result<(), Failure> {
    let config = ServerConfig::load(config_path)?;
    let identity = if config.identity_file.exists() {
        identity::load(&config.identity_file)?;
        "present".to_owned()
    } else {
        "missing (knock-keygen creates it; the packaged unit cannot write /etc/knock)".to_owned()
    };
    let clients = knock_server::clients::load_clients(&config.clients_dir)?;
    let public_clients = clients.iter().filter(|c| mode(c) == Mode::Public).count();
    let key_file = &config.server_key_file;
    let server_key = if key_file.exists() {
        identity::load_server_key(key_file)?;
        if public_clients == 0 {
            "present (no public-key client uses it yet)".to_owned()
        } else {
            "present".to_owned()
        }
    } else if public_clients == 0 {
        "missing (not needed: no public-key client; knock-keygen creates it)".to_owned()
    } else {
        format!(
            "MISSING: {public_clients} public-key clients need it; `run` refuses to start without it"
        )
    };
    let settings = firewall_settings(&config);
    settings.resolve().map_err(Failure::usage)?;
    let mut firewall = settings.build();
    let policy = policy(&config);
    let plan = firewall.plan(&policy);
    // Reading others' rules needs privileges `check` may not have; then
    // there is nothing to warn about that we could see.
    let mut warnings = sanity::warnings(&config, &clients, unix_ms());
    if public_clients > 0 && !key_file.exists() {
        if let Some(first) = clients.iter().find(|c| mode(c) == Mode::Public) {
            warnings.push(
                pair_keys::PairKeyError::NoServerKey {
                    key_file: key_file.clone(),
                    client: first.name.clone(),
                    others: public_clients - 1,
                }
                .to_string(),
            );
        }
    }
    warnings.extend(firewall.audit(&policy).unwrap_or_default());
    let host = firewall::host::closed_ports();
    let refusal = policy.refusal;
    if host.refusal != refusal {
        warnings.push(format!(
            "refuse = \"{}\", but {}: set refuse = \"{}\" so that knock's ports look like their neighbours to a scanner",
            refusal.name(),
            host.because,
            host.refusal.name()
        ));
    }
    for warning in &warnings {
        eprintln!("{PROGRAM}: warning: {warning}");
    }
    let program = filter::knock_filter(config.knock_port);
    if json {
        let names: Vec<String> = clients.iter().map(|c| json_string(&c.name)).collect();
        let modes: Vec<String> = clients
            .iter()
            .map(|c| format!("{}:{}", json_string(&c.name), json_string(mode(c).name())))
            .collect();
        let now = unix_ms();
        let expired: Vec<String> = clients
            .iter()
            .filter(|c| c.expires.as_ref().is_some_and(|e| e.has_passed(now)))
            .map(|c| json_string(&c.name))
            .collect();
        let protected: Vec<String> = config
            .protected
            .iter()
            .map(|p| json_string(&p.to_string()))
            .collect();
        println!(
            "{{\"config\":{},\"interface\":{},\"knock_port\":{},\"firewall\":{},\"refuse\":{},\"host_calls_for\":{},\"protected\":[{}],\"open_for_s\":{},\"require_bound_addr\":{},\"clients\":[{}],\"modes\":{{{}}},\"expired\":[{}],\"identity\":{},\"server_key\":{},\"rules\":{}}}",
            json_string(&config.path.display().to_string()),
            json_string(&config.interface),
            config.knock_port,
            json_string(config.firewall.name()),
            json_string(refusal.name()),
            json_string(host.refusal.name()),
            protected.join(","),
            config.open_for.as_secs(),
            config.require_bound_addr,
            names.join(","),
            modes.join(","),
            expired.join(","),
            json_string(&identity),
            json_string(&server_key),
            json_string(&plan)
        );
        return Ok(());
    }
    println!("configuration  {}: OK", config.path.display());
    println!("interface      {}", config.interface);
    println!(
        "knock port     udp/{} (no socket is bound; {})",
        config.knock_port,
        match refusal {
            Refusal::Reject => "the kernel answers it like any closed port",
            Refusal::Drop => "the firewall drops it",
        }
    );
    println!("protected      {}", port_list(&config.protected));
    println!(
        "refuse         {} ({}; {} calls for {})",
        refusal.name(),
        match refusal {
            Refusal::Reject => "a TCP reset or an ICMP port unreachable, like a closed port",
            Refusal::Drop => "no answer, like a port the host's firewall drops",
        },
        host.because,
        host.refusal.name()
    );
    println!("open_for       {}s", config.open_for.as_secs());
    if config.require_bound_addr {
        println!("binding        required: unbound knocks are refused (require_bound_addr)");
    }
    println!("clock skew     ±{}s", config.max_clock_skew.as_secs());
    println!("state_dir      {}", config.state_dir.display());
    println!(
        "identity       {} ({identity})",
        config.identity_file.display()
    );
    println!("server key     {} ({server_key})", key_file.display());
    println!(
        "clients        {} in {}{}",
        clients.len(),
        config.clients_dir.display(),
        if public_clients == 0 {
            String::new()
        } else {
            format!(
                " ({} shared-key, {public_clients} public-key)",
                clients.len() - public_clients
            )
        }
    );
    let now = unix_ms();
    for client in &clients {
        let mut policy = Vec::new();
        if client.require_bound_addr {
            policy.push("must bind".to_owned());
        }
        if !client.allow_from.is_empty() {
            let blocks: Vec<String> = client.allow_from.iter().map(ToString::to_string).collect();
            policy.push(format!("from {}", blocks.join(",")));
        }
        match &client.expires {
            Some(e) if e.has_passed(now) => policy.push(format!("EXPIRED ({e})")),
            Some(e) => policy.push(format!("expires {e}")),
            None => {}
        }
        let policy = if policy.is_empty() {
            String::new()
        } else {
            format!("  [{}]", policy.join("; "))
        };
        println!(
            "  {:<20} {:<10} {}{policy}",
            client.name,
            mode(client).name(),
            port_list(&client.ports)
        );
    }
    println!();
    println!("# {} rules that `run` installs:", firewall.name());
    print!("{plan}");
    println!();
    println!(
        "# kernel packet filter on the capture socket ({} instructions):",
        program.len()
    );
    print!("{}", filter::describe(&program));
    Ok(())
}

fn status(config_path: &Path, format: StatusFormat) -> Result<(), Failure> {
    let config = ServerConfig::load(config_path)?;
    let mut firewall = firewall_settings(&config).build();
    let grants = firewall
        .verify(&policy(&config))
        .map_err(|e| {
            format!(
                "{} rules are not installed ({e}); is knock-server running?",
                firewall.name()
            )
        })
        .and_then(|()| {
            firewall
                .grants()
                .map_err(|e| format!("reading grants: {e}"))
        });
    // What the daemon says of itself; a missing or stale file is reported,
    // not an error: the kernel's grants are the truth either way.
    let now = unix_ms() / 1000;
    let daemon = Assessment::of(StatusFile::in_dir(&config.state_dir).read(), now);
    if format == StatusFormat::Prometheus {
        // A scrape always gets an answer: rules that are missing are a
        // metric (knock_rules_installed 0), not a failure.
        print!(
            "{}",
            daemon.prometheus(grants.as_ref().ok().map(|grants| grants.len()))
        );
        return Ok(());
    }
    let mut grants = grants.map_err(Failure::runtime)?;
    grants.sort_by_key(|g| (g.addr, g.port));
    if format == StatusFormat::Json {
        let items: Vec<String> = grants
            .iter()
            .map(|g| {
                format!(
                    "{{\"source\":{},\"port\":{},\"seconds_left\":{}}}",
                    json_string(&g.addr.to_string()),
                    json_string(&g.port.to_string()),
                    g.expires_in.as_secs_f64()
                )
            })
            .collect();
        println!(
            "{{\"firewall\":{},\"grants\":[{}],\"daemon\":{}}}",
            json_string(firewall.name()),
            items.join(","),
            daemon.json(now)
        );
        return Ok(());
    }
    if grants.is_empty() {
        println!("no live grants ({} rules in place)", firewall.name());
    } else {
        println!("{:<40} {:<10} {:>12}", "SOURCE", "PORT", "SECONDS LEFT");
        for grant in &grants {
            println!(
                "{:<40} {:<10} {:>12}",
                grant.addr,
                grant.port,
                grant.expires_in.as_secs()
            );
        }
    }
    println!();
    for (label, text) in daemon.lines(now) {
        println!("{label:<14} {text}");
    }
    Ok(())
}

/// The state directory of the server that `config_path` configures. A
/// configuration that cannot be read is the answer to a reload already (the
/// server would refuse it); the server that runs from the default state
/// directory is still asked, so that its log and status say so too.
fn state_dir_for_reload(config_path: &Path) -> Result<std::path::PathBuf, Failure> {
    match ServerConfig::load(config_path) {
        Ok(config) => Ok(config.state_dir),
        Err(err) => {
            let default = Path::new(DEFAULT_STATE_DIR);
            if default.join(knock_server::control::SOCKET_NAME).exists() {
                Ok(default.to_path_buf())
            } else {
                Err(Failure::usage(format!("reload refused: {err}")))
            }
        }
    }
}

fn reload(config_path: &Path) -> Result<(), Failure> {
    let state_dir = state_dir_for_reload(config_path)?;
    let summary = apply::reload(&state_dir)?;
    println!("reloaded: {summary}");
    Ok(())
}

fn apply_command(config_path: &Path, timeout: &str) -> Result<(), Failure> {
    let timeout = knock_keys::duration::parse_duration(timeout)
        .ok()
        .filter(|t| !t.is_zero() && t.as_secs() <= 24 * 3600)
        .ok_or_else(|| {
            Failure::usage(format!(
                "--timeout {timeout:?}: give a duration from 1s to 24h, like 60s or 5m"
            ))
        })?;
    apply::apply(config_path, timeout)
}

fn confirm(config_path: &Path) -> Result<(), Failure> {
    let config = ServerConfig::load(config_path)?;
    let pid = apply::confirm(&config.state_dir).map_err(Failure::runtime)?;
    println!("confirmed: `knock-server apply` (pid {pid}) keeps the new configuration");
    Ok(())
}

/// Installs the rules saved by the last `run`, for the boot unit. Prints one
/// line on stderr saying what it did.
fn restore_rules(config_path: &Path, state_dir: Option<std::path::PathBuf>) -> Result<(), Failure> {
    let state_dir = match state_dir {
        // Given by hand: a directory that is not there is a typo, not a
        // first boot.
        Some(dir) if !dir.is_dir() => {
            return Err(Failure::usage(format!(
                "--state-dir {}: not a directory; give the server's state_dir",
                dir.display()
            )))
        }
        Some(dir) => dir,
        None => match ServerConfig::load(config_path) {
            Ok(config) => config.state_dir,
            // A broken edit of server.toml must not open the ports at boot:
            // the last good rules are where the packaged unit keeps them.
            Err(err) => {
                eprintln!(
                    "{PROGRAM}: warning: {err}; restoring from the default state directory {DEFAULT_STATE_DIR}"
                );
                DEFAULT_STATE_DIR.into()
            }
        },
    };
    let saved = saved_rules::load(&state_dir).map_err(Failure::runtime)?;
    let Some(saved) = saved else {
        eprintln!(
            "{PROGRAM}: no saved rules in {} (knock-server has not installed any yet); nothing to restore",
            saved_rules::path(&state_dir).display()
        );
        return Ok(());
    };
    let mut firewall = saved.settings.build();
    firewall.install(&saved.policy).map_err(|e| {
        Failure::runtime(format!(
            "installing the {} rules saved in {}: {e}",
            firewall.name(),
            saved_rules::path(&state_dir).display()
        ))
    })?;
    eprintln!(
        "{PROGRAM}: restored the {} rules saved in {}: {} closed (refuse = \"{}\"), knock port udp/{}",
        firewall.name(),
        saved_rules::path(&state_dir).display(),
        port_list(saved.policy.protected()),
        saved.policy.refusal.name(),
        saved.policy.knock_port
    );
    Ok(())
}

fn remove_rules(config_path: &Path) -> Result<(), Failure> {
    let config = ServerConfig::load(config_path)?;
    let mut firewall = firewall_settings(&config).build();
    firewall
        .remove()
        .map_err(|e| Failure::runtime(format!("removing {} rules: {e}", firewall.name())))?;
    eprintln!(
        "{PROGRAM}: removed the {} rules; protected ports are no longer closed",
        firewall.name()
    );
    Ok(())
}
