//! knock-keygen's command line. Self-contained (clap and std only) so that
//! the man page and completion generator (`xtask`) can include it too.

use std::path::PathBuf;

use clap::Parser;

/// Create a knock client: the server's entry and the client's profile, with a
/// new shared secret, or for a client identity (--public-key).
#[derive(Parser, Debug)]
#[command(name = "knock-keygen", version, long_about = None)]
pub struct Args {
    /// The client's name (letters, digits, '-', '_', '.').
    pub name: String,
    /// How the client reaches this server: a DNS name or an address.
    #[arg(long)]
    pub host: String,
    /// Limit the client to these protected ports (default: all of `protected`).
    #[arg(long, value_delimiter = ',')]
    pub ports: Option<Vec<String>>,
    /// The server configuration.
    #[arg(long, default_value = "/etc/knock/server.toml")]
    pub config: PathBuf,
    /// Where to write the client profile; `-` prints it [default: ./NAME@HOST.knock].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Other names or addresses under which the client finds this profile.
    #[arg(long, value_delimiter = ',')]
    pub alias: Vec<String>,
    /// Replace an existing client of that name (its old secret stops working).
    #[arg(long)]
    pub force: bool,
    /// Enrol this client identity (the line `knock-client identity` prints)
    /// instead of creating a shared secret: the entry and the profile then
    /// hold no secret, and the profile may be published.
    #[arg(long, value_name = "LINE")]
    pub public_key: Option<String>,
}
