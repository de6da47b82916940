//! `knock-server apply` and `confirm`: a change that is undone unless the
//! operator shows, in time, that it still lets them in.
//!
//! `apply` checks what is on disk (and changes nothing if it is wrong), reads
//! what the running server recorded it runs ([`running_config`]), asks the
//! server to load the files on disk ([`control`]), then waits for a
//! confirmation: `yes` on its terminal, or `knock-server confirm` from any
//! session. Without one in time it puts the recorded files back and has the
//! server load them again.
//!
//! The decision is a file in the state directory, so that exactly one side
//! wins a race between `confirm` and the deadline: `apply.pending` exists
//! while the trial runs; `confirm` renames it to `apply.confirmed`; at the
//! deadline `apply` deletes it, and whichever rename or delete succeeds
//! first decides.
//!
//! A lost terminal is the case this exists for (the change broke the way
//! in, then the session died): `apply` ignores SIGHUP and keeps waiting, and
//! rolls back on time. SIGINT or SIGTERM roll back at once.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use knock_keys::cli::Failure;
use knock_keys::identity;
use thiserror::Error;

use crate::control::{request_reload, ControlError, ReloadReport, ANSWER_WITHIN};
use crate::daemon::firewall_settings;
use crate::running_config::{ConfigFiles, Loaded};
use crate::sanity;

const PENDING: &str = "apply.pending";
const CONFIRMED: &str = "apply.confirmed";
/// How often the wait looks for a confirmation and updates its countdown.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// A trial in progress: this process holds `apply.pending`.
#[derive(Debug)]
pub struct Trial {
    dir: PathBuf,
    token: String,
}

#[derive(Debug, Error)]
pub enum TrialError {
    #[error("another `knock-server apply` (pid {0}) is waiting for confirmation; confirm it (knock-server confirm) or let it roll back first")]
    Busy(u32),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Confirmed,
    Unconfirmed,
}

impl Trial {
    /// Starts a trial, unless another live `apply` holds one (a marker left
    /// by a killed one is taken over).
    pub fn begin(state_dir: &Path) -> Result<Self, TrialError> {
        let pending = state_dir.join(PENDING);
        let io_err = |source| TrialError::Io {
            path: pending.clone(),
            source,
        };
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&pending)
            {
                Ok(mut file) => {
                    file.write_all(format!("{token}\n").as_bytes())
                        .map_err(io_err)?;
                    let _ = fs::remove_file(state_dir.join(CONFIRMED));
                    return Ok(Self {
                        dir: state_dir.to_path_buf(),
                        token,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => match holder(&pending) {
                    Some(pid) if alive(pid) => return Err(TrialError::Busy(pid)),
                    _ => {
                        let _ = fs::remove_file(&pending);
                    }
                },
                Err(err) => return Err(io_err(err)),
            }
        }
        Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it keeps coming back",
        )))
    }

    /// `confirm` has renamed our marker.
    pub fn is_confirmed(&self) -> bool {
        fs::read_to_string(self.dir.join(CONFIRMED)).is_ok_and(|t| t.trim() == self.token)
    }

    /// Ends the trial: from now on `confirm` finds nothing. Says whether a
    /// confirmation came first.
    pub fn close(self) -> Closed {
        let closed = match fs::remove_file(self.dir.join(PENDING)) {
            Err(err) if err.kind() == io::ErrorKind::NotFound && self.is_confirmed() => {
                Closed::Confirmed
            }
            _ => Closed::Unconfirmed,
        };
        if self.is_confirmed() {
            let _ = fs::remove_file(self.dir.join(CONFIRMED));
        }
        closed
    }
}

#[derive(Debug, Error)]
pub enum ConfirmError {
    #[error("nothing to confirm: no `knock-server apply` is waiting on {0} (it may have rolled back already)")]
    NothingPending(PathBuf),
    #[error("nothing to confirm: the `knock-server apply` that waited (pid {0}) is gone")]
    Gone(u32),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Confirms the trial waiting on `state_dir`; returns the pid of its `apply`.
pub fn confirm(state_dir: &Path) -> Result<u32, ConfirmError> {
    let pending = state_dir.join(PENDING);
    let Some(pid) = holder(&pending) else {
        return Err(ConfirmError::NothingPending(state_dir.to_path_buf()));
    };
    if !alive(pid) {
        let _ = fs::remove_file(&pending);
        return Err(ConfirmError::Gone(pid));
    }
    match fs::rename(&pending, state_dir.join(CONFIRMED)) {
        Ok(()) => Ok(pid),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Err(ConfirmError::NothingPending(state_dir.to_path_buf()))
        }
        Err(source) => Err(ConfirmError::Io {
            path: pending,
            source,
        }),
    }
}

/// The pid in a marker's token.
fn holder(marker: &Path) -> Option<u32> {
    let text = fs::read_to_string(marker).ok()?;
    text.trim().split('-').next()?.parse().ok()
}

/// A `knock-server` process of that pid runs (not a recycled pid).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "knock-server")
}

/// What the operator (or nobody) said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Confirmed(&'static str),
    Declined,
    TimedOut,
    Interrupted,
}

/// What the server would refuse of public-key clients, said before it is
/// asked: an unusable public key, or no server key to use it with.
fn check_public_keys(new: &Loaded) -> Result<(), Failure> {
    let public: Vec<&str> = new
        .clients
        .iter()
        .filter(|c| c.mode() == knock_proto::Mode::Public)
        .map(|c| c.name.as_str())
        .collect();
    let Some(first) = public.first() else {
        return Ok(());
    };
    let key_file = &new.config.server_key_file;
    if !key_file.exists() {
        return Err(Failure::usage(
            crate::pair_keys::PairKeyError::NoServerKey {
                key_file: key_file.clone(),
                client: (*first).to_owned(),
                others: public.len() - 1,
            },
        ));
    }
    identity::load_server_key(key_file)?;
    for client in &new.clients {
        client.validate(&new.config.clients_dir.join(format!("{}.toml", client.name)))?;
    }
    Ok(())
}

/// `knock-server apply`.
pub fn apply(config_path: &Path, timeout: Duration) -> Result<(), Failure> {
    // Before anything is loaded: from then on a hang-up must not kill us
    // before the rollback.
    let interrupted = catch_signals();
    // What is on disk, checked the way the server checks it: nothing is
    // changed when it is wrong.
    // Absolute, as the server has it: the files are named in what `apply`
    // says, and compared with the server's record.
    let config_path = &fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let mut new = Loaded::from_disk(config_path)?;
    identity::load(&new.config.identity_file)?;
    check_public_keys(&new)?;
    firewall_settings(&new.config)
        .resolve()
        .map_err(Failure::usage)?;
    for warning in sanity::warnings(&new.config, &new.clients, crate::timers::unix_ms()) {
        warn(&warning);
    }
    let state_dir = new.config.state_dir.clone();
    let before = match ConfigFiles::recorded(&state_dir).map_err(Failure::runtime)? {
        Some((files, _)) => files,
        None => {
            return Err(Failure::runtime(format!(
                "the server on state directory {} has recorded no running configuration to roll back to; is knock-server running (systemctl status knock-server)?",
                state_dir.display()
            )))
        }
    };
    if !same_file(&before.config_path, config_path) {
        return Err(Failure::usage(format!(
            "--config {}: the server on state directory {} runs {}; apply that one",
            config_path.display(),
            state_dir.display(),
            before.config_path.display()
        )));
    }
    new.files.config_path.clone_from(&before.config_path);
    let changes = before.changes_to(&new.files);
    if changes.is_empty() {
        say("nothing to apply: the running server already runs what is on disk");
        return Ok(());
    }
    say(&format!("applying: {}", changes.join("; ")));

    let trial = Trial::begin(&state_dir).map_err(Failure::runtime)?;
    let loaded = match request_reload(&state_dir, ANSWER_WITHIN) {
        Ok(ReloadReport {
            outcome: Ok(summary),
            ..
        }) => summary,
        Ok(ReloadReport {
            outcome: Err(reason),
            ..
        }) => {
            trial.close();
            return Err(Failure::usage(format!(
                "the running server refused it and runs the previous configuration, unchanged: {reason}"
            )));
        }
        Err(err) => {
            trial.close();
            return Err(control_failure(err));
        }
    };
    say(&format!("the running server loaded it: {loaded}"));

    let decision = wait_for_confirmation(&trial, &state_dir, timeout, &interrupted);
    let decision = match (trial.close(), decision) {
        // `confirm` won the race with the deadline (or with ^C).
        (Closed::Confirmed, Decision::Confirmed(how)) => Decision::Confirmed(how),
        (Closed::Confirmed, _) => Decision::Confirmed("by knock-server confirm"),
        (Closed::Unconfirmed, Decision::Confirmed(_)) => Decision::TimedOut,
        (Closed::Unconfirmed, other) => other,
    };
    let why = match decision {
        Decision::Confirmed(how) => {
            say(&format!("confirmed {how}: the new configuration stays"));
            return Ok(());
        }
        Decision::Declined => "not confirmed (answered no)".to_owned(),
        Decision::TimedOut => format!("not confirmed within {}s", timeout.as_secs()),
        Decision::Interrupted => "interrupted before a confirmation".to_owned(),
    };
    let undone = before.restore().map_err(|e| {
        Failure::runtime(format!(
            "{why}, and restoring the previous files failed: {e}; the server still runs the unconfirmed configuration"
        ))
    })?;
    for item in &undone {
        say(&format!("undid: {item}"));
    }
    // The error line names what was undone; the lines above say where the
    // unconfirmed versions were kept.
    let undone: Vec<&str> = undone.iter().map(|u| u.what.as_str()).collect();
    let reloaded = match request_reload(&state_dir, ANSWER_WITHIN) {
        Ok(ReloadReport {
            outcome: Ok(summary),
            ..
        }) => summary,
        Ok(ReloadReport {
            outcome: Err(reason),
            ..
        }) => {
            return Err(Failure::runtime(format!(
                "{why}; the previous files are back ({}), but the server refused to load them: {reason}",
                undone.join("; ")
            )))
        }
        Err(err) => {
            return Err(Failure::runtime(format!(
                "{why}; the previous files are back ({}), but reloading them failed: {}",
                undone.join("; "),
                control_failure(err).message
            )))
        }
    };
    Err(Failure::runtime(format!(
        "{why}: rolled back ({}); the server runs the previous configuration again: {reloaded}",
        undone.join("; ")
    )))
}

/// `knock-server reload`: the server's answer as an exit status.
pub fn reload(state_dir: &Path) -> Result<String, Failure> {
    let report = request_reload(state_dir, ANSWER_WITHIN).map_err(control_failure)?;
    for warning in &report.warnings {
        warn(warning);
    }
    report.outcome.map_err(|reason| {
        Failure::usage(format!(
            "reload refused, the server runs its previous configuration: {reason}"
        ))
    })
}

fn control_failure(err: ControlError) -> Failure {
    Failure::runtime(err)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A line on stdout; a closed terminal is no reason to stop (or panic).
fn say(line: &str) {
    let _ = writeln!(io::stdout(), "{line}");
}

fn warn(line: &str) {
    let _ = writeln!(io::stderr(), "knock-server: warning: {line}");
}

/// SIGINT and SIGTERM set the flag returned (roll back now). SIGHUP is
/// caught and ignored: the terminal going away is the lock-out `apply`
/// guards against, and the rollback must still happen on time.
fn catch_signals() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, Arc::clone(&interrupted));
    }
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    );
    interrupted
}

/// Waits for a confirmation until `timeout`. On a terminal it asks, with a
/// countdown; anywhere, `knock-server confirm` answers.
fn wait_for_confirmation(
    trial: &Trial,
    state_dir: &Path,
    timeout: Duration,
    interrupted: &AtomicBool,
) -> Decision {
    let mut terminal = (io::stdin().is_terminal() && io::stdout().is_terminal()).then(ask);
    say(&format!(
        "Now open a NEW session through a fresh knock (knock-client open HOST PORT, then ssh).\n\
         If it works, {}run `knock-server confirm` there. Otherwise, or without an answer within {}s, the previous configuration is restored.",
        if terminal.is_some() { "answer yes here, or " } else { "" },
        timeout.as_secs()
    ));
    let start = Instant::now();
    let mut shown = None;
    loop {
        let elapsed = start.elapsed();
        if trial.is_confirmed() {
            end_prompt(terminal.is_some());
            return Decision::Confirmed("by knock-server confirm");
        }
        if elapsed >= timeout {
            end_prompt(terminal.is_some());
            return Decision::TimedOut;
        }
        if interrupted.load(Ordering::Relaxed) {
            end_prompt(terminal.is_some());
            return Decision::Interrupted;
        }
        if let Some(answers) = &terminal {
            match answers.try_recv() {
                Ok(Answer::Yes) => {
                    // The same rename `confirm` does: one winner against the
                    // deadline.
                    return match confirm(state_dir) {
                        Ok(_) => Decision::Confirmed("on this terminal"),
                        Err(_) => Decision::TimedOut,
                    };
                }
                Ok(Answer::No) => return Decision::Declined,
                Ok(Answer::Other) => shown = None,
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    say(
                        "\n(no terminal to answer on any more: waiting for `knock-server confirm`)",
                    );
                    terminal = None;
                }
            }
        }
        let left = timeout.saturating_sub(elapsed).as_secs() + 1;
        if terminal.is_some() && shown != Some(left) {
            // The same width every time, so that a typed answer stays in view
            // after it.
            let _ = write!(
                io::stdout(),
                "\rRolling back in {left:>3}s. Keep the new configuration? [yes/no] "
            );
            let _ = io::stdout().flush();
            shown = Some(left);
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

fn end_prompt(prompted: bool) {
    if prompted {
        say("");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Yes,
    No,
    Other,
}

/// Reads answers from the terminal on a thread; the channel closes at end
/// of input (or when the terminal is gone).
fn ask() -> mpsc::Receiver<Answer> {
    let (answers, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let answer = match line.trim().to_ascii_lowercase().as_str() {
                "yes" | "y" => Answer::Yes,
                "no" | "n" => Answer::No,
                _ => Answer::Other,
            };
            if answers.send(answer).is_err() {
                break;
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knock-apply-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The test binary is not called knock-server: a marker naming it is
    /// held by a process that is not alive as far as `alive` knows.
    #[test]
    fn confirm_and_the_deadline_have_exactly_one_winner() {
        let dir = scratch("race");
        assert!(matches!(
            confirm(&dir),
            Err(ConfirmError::NothingPending(_))
        ));

        let trial = Trial::begin(&dir).unwrap();
        assert!(!trial.is_confirmed());
        // Our own pid does not run knock-server: confirm calls the marker
        // stale, removes it, and confirms nothing.
        assert!(matches!(confirm(&dir), Err(ConfirmError::Gone(_))));
        assert_eq!(trial.close(), Closed::Unconfirmed);

        let trial = Trial::begin(&dir).unwrap();
        // What confirm does once it has found a live apply.
        fs::rename(dir.join(PENDING), dir.join(CONFIRMED)).unwrap();
        assert!(trial.is_confirmed());
        assert_eq!(trial.close(), Closed::Confirmed);
        assert!(
            !dir.join(CONFIRMED).exists(),
            "the confirmation is consumed"
        );

        let trial = Trial::begin(&dir).unwrap();
        assert_eq!(
            trial.close(),
            Closed::Unconfirmed,
            "the deadline came first"
        );
        assert!(matches!(
            confirm(&dir),
            Err(ConfirmError::NothingPending(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_marker_left_by_a_dead_apply_is_taken_over() {
        let dir = scratch("stale");
        fs::write(dir.join(PENDING), "999999999-1\n").unwrap();
        let trial = Trial::begin(&dir).unwrap();
        assert_eq!(holder(&dir.join(PENDING)), Some(std::process::id()));
        trial.close();
        fs::remove_dir_all(&dir).unwrap();
    }
}
