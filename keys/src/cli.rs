//! What the three binaries share at their edge: argument errors as one line
//! with exit status 2, and failures as one line with status 1 or 2.

use std::fmt::Display;
use std::io::Write as _;
use std::process::ExitCode;

/// Exit status for a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit status for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// A failure that ends the program: a one-line message and an exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Display) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.to_string(),
        }
    }

    pub fn runtime(message: impl Display) -> Self {
        Self {
            code: EXIT_RUNTIME,
            message: message.to_string(),
        }
    }

    /// Prints the message as one line on stderr and returns the exit status.
    pub fn report(&self, program: &str) -> ExitCode {
        let one_line = bounded(&self.message.replace('\n', " "));
        // Never a panic, even with stderr gone (a closed terminal).
        let _ = writeln!(std::io::stderr(), "{program}: error: {one_line}");
        ExitCode::from(self.code)
    }
}

impl From<crate::FileError> for Failure {
    fn from(err: crate::FileError) -> Self {
        match err {
            crate::FileError::Write { .. } => Failure::runtime(err),
            _ => Failure::usage(err),
        }
    }
}

/// Parses the command line; help and version go to stdout with status 0, and
/// any mistake is one line on stderr with status 2, instead of clap's
/// multi-line report.
pub fn parse_args<P: clap::Parser>(program: &str) -> Result<P, ExitCode> {
    match P::try_parse() {
        Ok(parsed) => Ok(parsed),
        Err(err) => {
            use clap::error::ErrorKind;
            match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    Err(ExitCode::SUCCESS)
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    eprintln!("{program}: error: a command is required (see {program} --help)");
                    Err(ExitCode::from(EXIT_USAGE))
                }
                _ => {
                    eprintln!(
                        "{program}: error: {} (see {program} --help)",
                        summarise(&err.render().to_string())
                    );
                    Err(ExitCode::from(EXIT_USAGE))
                }
            }
        }
    }
}

/// clap's report in one line: everything before the usage section, joined,
/// without the "error:" label, and bounded so that a huge argument cannot
/// make a huge line.
fn summarise(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.trim_start_matches("error:").trim());
        }
    }
    let joined = if parts.is_empty() {
        "invalid arguments".to_owned()
    } else {
        parts.join(" ")
    };
    bounded(&joined)
}

/// Cuts a message to a length a terminal and a journal can take.
pub fn bounded(message: &str) -> String {
    const MAX: usize = 1000;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}
