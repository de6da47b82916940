//! knock-server's command line. Self-contained (clap and std only) so that
//! the man page and completion generator (`xtask`) can include it too.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Show live grants, read from the kernel, and what the running server
    /// says of itself: capture, refusals by reason, kernel drops, clients,
    /// the last reload.
    Status {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
        /// Machine-readable output (the same as --format json).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// text, json, or prometheus (for node-exporter's textfile
        /// collector).
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
    },
    /// Make the running server reload its configuration and clients, and
    /// wait for the outcome: exit 0 when loaded, 2 when refused (the reason
    /// on stderr; the server keeps its previous configuration).
    Reload {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
    },
    /// Load what is on disk into the running server, and keep it only if
    /// confirmed in time (`yes` on this terminal, or `knock-server confirm`
    /// from a new session): otherwise the previous configuration and clients
    /// are restored and loaded again, and apply exits 1. Invalid files: exit
    /// 2, nothing changes.
    Apply {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
        /// How long to wait for a confirmation (30s, 2m, ...).
        #[arg(long, value_name = "DUR", default_value = "60s")]
        timeout: String,
    },
    /// Confirm what `knock-server apply` loaded, from any session.
    Confirm {
        #[arg(long, default_value = "/etc/knock/server.toml")]
        config: PathBuf,
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

/// How `status` prints.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
    Prometheus,
}
