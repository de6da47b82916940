//! knock-server's command line. Self-contained (clap and std only) so that
//! the man page and completion generator (`xtask`) can include it too.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Single-packet authorization server: opens protected ports for the sender of
/// a valid knock alone, for a short window held by the kernel.
#[derive(Parser, Debug)]
#[command(name = "knock-server", version, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run in the foreground (as a systemd service): sniff, verify, grant.
    Run {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
    },
    /// Validate configuration, clients and identity; print the rules it would
    /// install. Changes nothing.
    Check {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show live grants, read from the kernel.
    Status {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Install the firewall rules that `run` installed last, saved in the
    /// state directory (run at boot by knock-server-restore.service, before
    /// the network is up). If the configuration cannot be read, the default
    /// state directory is used, so that a broken edit does not open the
    /// protected ports at boot. Nothing saved (first boot): exits 0.
    RestoreRules {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
        /// Read the saved rules from DIR instead of the configuration's
        /// `state_dir`.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Remove our firewall table or chains (used when uninstalling): protected
    /// ports become reachable by everyone.
    RemoveRules {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
    },
}
