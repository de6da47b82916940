//! The one way the backends run `nft`, `iptables`, `ip6tables`, their
//! `-restore` variants and `ipset`: with a deadline, so that a tool stuck on
//! a lock held by someone else (the xtables lock, typically) is killed and
//! reported instead of stalling whoever called it.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long iptables waits for the xtables lock (`-w SECONDS`) before it
/// gives up. The runner's own deadline is longer, so iptables reports the
/// held lock itself.
pub const XTABLES_WAIT_SECONDS: &str = "3";
/// How long any command may run before it is killed.
pub const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("{command}: not found; install the package that provides {program}, or set the command in server.toml")]
    NotFound { command: String, program: String },
    #[error("{command}: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command}: still running after {deadline:?}, killed")]
    TimedOut { command: String, deadline: Duration },
    #[error("{command}: {message}")]
    Failed {
        command: String,
        status: ExitStatus,
        message: String,
    },
    #[error("{command}: output is not UTF-8")]
    NotUtf8 { command: String },
}

/// Runs `program args`, feeding it `stdin`, in the C locale; returns its
/// standard output. Fails if it cannot start, exits non-zero (the message
/// is its standard error on one line) or outlives `deadline`.
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    deadline: Duration,
) -> Result<String, CommandError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let io_error = |source: io::Error| CommandError::Io {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => CommandError::NotFound {
                command: command.clone(),
                program: program.to_owned(),
            },
            _ => io_error(e),
        })?;
    // Readers drain both pipes while we wait, so a large listing can never
    // block the child on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits early closes the pipe; its status says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let status = match wait_until(&mut child, Instant::now() + deadline).map_err(io_error)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CommandError::TimedOut { command, deadline });
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let message = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(CommandError::Failed {
            command,
            status,
            message: if message.is_empty() {
                format!("exited with {status}")
            } else {
                message
            },
        });
    }
    String::from_utf8(stdout).map_err(|_| CommandError::NotUtf8 { command })
}

/// Is `program` (a name looked up in `PATH`, or a path) an executable file?
pub fn installed(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Waits for `child` until `deadline`; `None` if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    // Most commands end within a few milliseconds: poll often at first.
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_stdin_pass_through() {
        let out = run("cat", &[], Some("hello\n"), DEADLINE).expect("cat runs");
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn failure_carries_stderr_on_one_line() {
        let err = run(
            "sh",
            &["-c", "echo one >&2; echo two >&2; exit 3"],
            None,
            DEADLINE,
        )
        .expect_err("exit 3 fails");
        match err {
            CommandError::Failed {
                status, message, ..
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(message, "one | two");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run("knock-no-such-program", &["-x"], None, DEADLINE).expect_err("missing");
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with("knock-no-such-program -x: not found"));
    }

    #[test]
    fn installed_programs_are_found_in_path() {
        assert!(installed("sh"));
        assert!(installed("/bin/sh"));
        assert!(!installed("knock-no-such-program"));
        assert!(!installed("/etc/passwd"), "not executable");
    }

    #[test]
    fn a_stuck_command_is_killed_at_the_deadline() {
        let started = Instant::now();
        let err = run("sleep", &["30"], None, Duration::from_millis(300)).expect_err("killed");
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn large_output_does_not_block_the_child() {
        let out = run("sh", &["-c", "yes | head -c 1000000"], None, DEADLINE).expect("runs");
        assert_eq!(out.len(), 1_000_000);
    }
}
