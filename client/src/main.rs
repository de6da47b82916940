//! knock-client: sends one knock, then proves that the ports opened; relays a
//! TCP connection for ssh's `ProxyCommand`; installs and lists profiles;
//! creates and shows the client's identity (public-key mode).
//!
//! The path of `open` and `connect`:
//!
//! ```text
//! profile (lookup) ──► resolve HOST ──► [--allow-ip auto: ask STUN, stun.rs]
//!     ──► session: seal + send one datagram
//!     ──► prove: raced TCP connects until the deadline (a NEW knock once, at 1 s)
//!     ──► open: one line on stdout │ connect: relay stdin/stdout
//! ```
#![forbid(unsafe_code)]

mod cli;
mod connect;
mod identity;
mod knock;
mod lookup;
mod open;
mod progress;
mod race;
mod resolve;
mod session;
mod store;
mod stun;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cli::{Cli, Command, ConnectArgs, KnockArgs, OpenArgs};

use knock_keys::cli::{parse_args, Failure};
use knock_keys::duration::parse_duration;
use knock_keys::profile::StunServer;
use knock_proto::{PortSpec, Transport, MAX_PORTS};

const PROGRAM: &str = "knock-client";

/// The validated options of a knock.
#[derive(Debug, Clone)]
pub(crate) struct KnockOptions {
    pub profile: Option<PathBuf>,
    /// `--identity`: for public-key profiles.
    pub identity: Option<PathBuf>,
    pub timeout: Duration,
    pub allow_ip: Option<AllowIp>,
    /// `--stun`: tried before the profile's and client.toml's lists.
    pub stun: Vec<StunServer>,
    pub open_for: Option<Duration>,
    pub verbose: bool,
}

/// What `--allow-ip` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllowIp {
    /// This address, as given.
    Addr(IpAddr),
    /// This host's public address, learned with STUN.
    Auto,
}

impl KnockArgs {
    fn validate(self) -> Result<KnockOptions, Failure> {
        let timeout =
            parse_duration(&self.timeout).map_err(|m| Failure::usage(format!("--timeout: {m}")))?;
        let allow_ip = match self.allow_ip {
            None => None,
            Some(text) if text.eq_ignore_ascii_case("auto") => Some(AllowIp::Auto),
            Some(text) => Some(AllowIp::Addr(parse_ip(&text).ok_or_else(|| {
                Failure::usage(format!(
                    "--allow-ip {text:?} is not an IP address: give the IPv4 or IPv6 address \
                     the server sees your knocks come from, or `auto` to learn it with STUN"
                ))
            })?)),
        };
        if let Some(AllowIp::Addr(ip)) = allow_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(Failure::usage(format!(
                    "--allow-ip {ip}: the server can never see a knock from this address; \
                     give a unicast address"
                )));
            }
        }
        let mut stun = Vec::with_capacity(self.stun.len());
        for text in &self.stun {
            let server =
                StunServer::parse(text).map_err(|m| Failure::usage(format!("--stun: {m}")))?;
            if !stun.contains(&server) {
                stun.push(server);
            }
        }
        if !stun.is_empty() && allow_ip != Some(AllowIp::Auto) {
            return Err(Failure::usage(
                "--stun is used only to learn the address for --allow-ip auto: add \
                 --allow-ip auto, or leave --stun out",
            ));
        }
        let open_for = match self.open_for {
            None => None,
            Some(text) => {
                let d = parse_duration(&text)
                    .map_err(|m| Failure::usage(format!("--open-for: {m}")))?;
                if d < Duration::from_secs(1) {
                    return Err(Failure::usage(format!(
                        "--open-for {text:?}: the server counts whole seconds; use 1s or more"
                    )));
                }
                Some(d)
            }
        };
        Ok(KnockOptions {
            profile: self.profile,
            identity: self.identity,
            timeout,
            allow_ip,
            stun,
            open_for,
            verbose: self.verbose,
        })
    }
}

/// An address as typed: `192.0.2.7`, `2001:db8::7` or `[2001:db8::7]`.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    inner.parse().ok()
}

/// Parses the PORT arguments: at least one, at most [`MAX_PORTS`], duplicates
/// dropped, order kept.
pub(crate) fn parse_port_args(items: &[String]) -> Result<Vec<PortSpec>, Failure> {
    let mut ports: Vec<PortSpec> = Vec::new();
    for item in items {
        let spec: PortSpec = item
            .parse()
            .map_err(|err| Failure::usage(format!("PORT: {err}")))?;
        if !ports.contains(&spec) {
            ports.push(spec);
        }
    }
    if ports.is_empty() {
        return Err(Failure::usage(
            "PORT: give at least one port, as 4992, tcp/4992 or udp/53",
        ));
    }
    if ports.len() > MAX_PORTS {
        return Err(Failure::usage(format!(
            "PORT: {} ports given, but one knock can carry at most {MAX_PORTS}; knock twice",
            ports.len()
        )));
    }
    Ok(ports)
}

fn main() -> ExitCode {
    let cli = match parse_args::<Cli>(PROGRAM) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Open(args) => run_open(args),
        Command::Connect(args) => run_connect(args),
        Command::Import(args) => store::import(&args.file, &args.alias, args.force),
        Command::List => store::list(),
        Command::Identity(args) => identity::run(args.identity.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(failure) => failure.report(PROGRAM),
    }
}

fn run_open(args: OpenArgs) -> Result<ExitCode, Failure> {
    let ports = parse_port_args(&args.ports)?;
    let options = args.knock.validate()?;
    open::run(&args.host, &ports, args.no_wait, &options)?;
    Ok(ExitCode::SUCCESS)
}

fn run_connect(args: ConnectArgs) -> Result<ExitCode, Failure> {
    let spec: PortSpec = args
        .port
        .parse()
        .map_err(|err| Failure::usage(format!("PORT: {err}")))?;
    if spec.transport != Transport::Tcp {
        return Err(Failure::usage(format!(
            "PORT {spec}: connect relays a TCP connection; use `knock-client open HOST {spec}` \
             for UDP ports"
        )));
    }
    let options = args.knock.validate()?;
    connect::run(&args.host, spec, &options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_arguments() {
        let ports = parse_port_args(&["22".into(), "tcp/22".into(), "udp/53".into()]).unwrap();
        assert_eq!(ports, vec![PortSpec::tcp(22), "udp/53".parse().unwrap()]);
        for bad in ["0", "tcp/abc", "sctp/5", "65536", "", "tcp/"] {
            assert_eq!(
                parse_port_args(&[bad.to_owned()]).unwrap_err().code,
                2,
                "{bad}"
            );
        }
        let many: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        assert!(parse_port_args(&many)
            .unwrap_err()
            .message
            .contains("at most 16"));
    }

    #[test]
    fn ip_arguments() {
        assert_eq!(parse_ip("192.0.2.7"), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            parse_ip("[2001:db8::7]"),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(
            parse_ip("2001:db8::7"),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(parse_ip("relay.example"), None);
        assert_eq!(parse_ip("300.1.1.1"), None);
    }
}
