//! What the user sees while waiting: a spinner on stderr when it is a
//! terminal; nothing otherwise, unless `--verbose` asks for plain lines. The
//! spinner line is erased before anything else is printed, so the final
//! result (or error) is still exactly one line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::PROGRAM;

const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Shared {
    message: Mutex<String>,
    stop: AtomicBool,
}

#[derive(Debug)]
pub struct Progress {
    spinner: Option<(Arc<Shared>, JoinHandle<()>)>,
    verbose: bool,
}

impl Progress {
    /// A spinner if stderr is a terminal; plain lines if `verbose` and it is
    /// not; otherwise silence.
    pub fn start(verbose: bool) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                spinner: None,
                verbose,
            };
        }
        let shared = Arc::new(Shared {
            message: Mutex::new(String::new()),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let mut frame = 0usize;
            while !thread_shared.stop.load(Ordering::Relaxed) {
                let message = match thread_shared.message.lock() {
                    Ok(m) => m.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                if !message.is_empty() {
                    let spin = FRAMES.get(frame % FRAMES.len()).copied().unwrap_or('*');
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K{spin} {message} ({:.1}s)",
                        started.elapsed().as_secs_f32()
                    );
                    let _ = err.flush();
                }
                frame = frame.wrapping_add(1);
                std::thread::sleep(TICK);
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        });
        Self {
            spinner: Some((shared, handle)),
            verbose,
        }
    }

    /// What is happening now.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.spinner {
            Some((shared, _)) => {
                if self.verbose {
                    // Above the spinner, which redraws itself on the next tick.
                    eprint!("\r\x1b[2K{PROGRAM}: {message}\n");
                }
                match shared.message.lock() {
                    Ok(mut m) => *m = message,
                    Err(poisoned) => *poisoned.into_inner() = message,
                }
            }
            None if self.verbose => eprintln!("{PROGRAM}: {message}"),
            None => {}
        }
    }

    /// Erases the spinner; after this, stderr is free for other lines.
    pub fn finish(&mut self) {
        if let Some((shared, handle)) = self.spinner.take() {
            shared.stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
