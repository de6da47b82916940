//! knock-client's command line. Self-contained (clap and std only) so that
//! the man page and completion generator (`xtask`) can include it too.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Knock on a knock-server, then use the ports it opened.
#[derive(Parser, Debug)]
#[command(
    name = "knock-client",
    version,
    about = "Knock on a knock-server, then use the ports it opened.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send one knock, then wait until the TCP ports accept connections.
    Open(OpenArgs),
    /// Knock, connect and relay stdin/stdout: `ProxyCommand knock-client connect %h %p`.
    Connect(ConnectArgs),
    /// Install a profile under $KNOCK_HOME (default ~/.config/knock), mode 0600
    /// (a public-key profile may come at any mode; a shared-key one must be 0600).
    Import(ImportArgs),
    /// Show the installed profiles and their mode, without their keys.
    List,
    /// Create this client's identity if there is none, and print its public
    /// line (for `knock-keygen --public-key` on each server).
    Identity(IdentityArgs),
}

#[derive(Args, Debug)]
pub struct IdentityArgs {
    /// The identity file [default: $KNOCK_HOME/identity].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

/// The options shared by `open` and `connect`.
#[derive(Args, Debug)]
pub struct KnockArgs {
    /// The profile to use [default: the one under $KNOCK_HOME that answers to HOST].
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// The identity that knocks with public-key profiles (ignored for
    /// shared-key ones) [default: $KNOCK_HOME/identity].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Give up when the ports do not accept a connection within this long.
    #[arg(long, value_name = "DUR", default_value = "5s")]
    pub timeout: String,
    /// Ask the server to open for IP only, and to honour the knock only when
    /// it arrives from IP (use your public address when behind NAT). `auto`
    /// learns the public address with STUN, over the family the knock goes
    /// over, and binds the knock to it; if no STUN server answers, nothing
    /// is sent.
    #[arg(long, value_name = "IP|auto")]
    pub allow_ip: Option<String>,
    /// STUN server for --allow-ip auto, as HOST, HOST:PORT or [IPv6]:PORT
    /// (port 3478 by default); repeat it or separate with commas to try
    /// several in turn [default: the profile's `stun = [...]` list, else
    /// the one in $KNOCK_HOME/client.toml].
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    pub stun: Vec<String>,
    /// Ask for this long instead of the server's open_for (the server may shorten it).
    #[arg(long, value_name = "DUR")]
    pub open_for: Option<String>,
    /// Print each step on stderr (a spinner is shown instead when stderr is a terminal).
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct OpenArgs {
    /// The server: a name, an IPv4 or an IPv6 address.
    pub host: String,
    /// The ports to open: 4992 (tcp), tcp/4992 or udp/53.
    #[arg(required = true, value_name = "PORT")]
    pub ports: Vec<String>,
    /// Send the knock and exit, without checking that the ports opened.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub knock: KnockArgs,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The server: a name, an IPv4 or an IPv6 address.
    pub host: String,
    /// The TCP port to connect to: 22 or tcp/22.
    pub port: String,
    #[command(flatten)]
    pub knock: KnockArgs,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The profile file written by knock-keygen.
    pub file: PathBuf,
    /// More names or addresses under which this profile is found.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub alias: Vec<String>,
    /// Replace an installed profile of the same name and host.
    #[arg(long)]
    pub force: bool,
}
