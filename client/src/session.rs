//! One run of `open` or `connect`: find the profile, resolve HOST, send the
//! knock, then prove the TCP ports open by connecting to them.
//!
//! The server never answers a knock, so a TCP connection that succeeds is the
//! only sign that the knock worked. A knock that seems lost (no connection
//! after [`REKNOCK_AFTER`]) is followed by exactly one NEW knock: new nonce,
//! later timestamp. Resending the same bytes would be pointless, since the
//! server honours a knock's bytes at most once.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use knock_keys::cli::Failure;
use knock_keys::duration::format_duration;
use knock_keys::profile::{ClientConfig, ClientProfile, StunServer};
use knock_proto::{PortSpec, Request};

use std::sync::Arc;

use crate::knock::{KnockKeys, Knocker, SendError, Sent};
use crate::lookup;
use crate::progress::Progress;
use crate::race::Race;
use crate::resolve::{resolve, Resolver};
use crate::store::knock_home;
use crate::stun;
use crate::{AllowIp, KnockOptions};

/// The client-wide settings, under $KNOCK_HOME.
pub const CLIENT_CONFIG: &str = "client.toml";

/// When no port has opened this long after the first knock, knock again once.
const REKNOCK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Session {
    pub host: String,
    pub profile_path: PathBuf,
    pub profile: ClientProfile,
    /// The address knocked on and then connected to (port 0).
    pub server: SocketAddr,
    /// The first knock.
    pub first: Sent,
    /// How many knocks were sent: 1, or 2 after a re-knock.
    pub knocks: u32,
    /// The address the knocks are bound to (`--allow-ip`), if any.
    pub bound: Option<IpAddr>,
    /// With `--allow-ip auto`: the STUN server that told the address, and
    /// the socket it was asked from, which sends the knocks too.
    stun: Option<(StunServer, UdpSocket)>,
    pub options: KnockOptions,
    pub progress: Progress,
    knocker: Knocker,
    started: Instant,
}

/// The knocks of a session, until the first is sent.
struct Pending<'a> {
    host: &'a str,
    found: lookup::Found,
    keys: Arc<KnockKeys>,
    request: Request,
    options: &'a KnockOptions,
    progress: Progress,
}

impl Session {
    /// Finds the profile, resolves HOST and sends the first knock; with
    /// `--allow-ip auto`, asks STUN for the address to bind it to first.
    pub fn start(host: &str, ports: &[PortSpec], options: &KnockOptions) -> Result<Self, Failure> {
        let resolver = Resolver::new(host);
        let found = lookup::find(&resolver, options.profile.as_deref())?;
        check_permitted(&found, ports)?;
        let keys = Arc::new(crate::identity::knock_keys(
            &found.profile,
            &found.path,
            options.identity.as_deref(),
        )?);
        let stun_servers = match options.allow_ip {
            Some(AllowIp::Auto) => Some(stun_servers(options, &found)?),
            _ => None,
        };
        let addrs = server_addrs(&resolver, &found.profile)?;
        let duration_s = match options.open_for {
            Some(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
            None => 0,
        };
        let fixed = match options.allow_ip {
            Some(AllowIp::Addr(ip)) => Some(ip),
            _ => None,
        };
        let pending = Pending {
            host,
            found,
            keys,
            request: Request {
                ports: ports.to_vec(),
                duration_s,
                bound_addr: fixed,
            },
            options,
            progress: Progress::start(options.verbose),
        };
        match stun_servers {
            Some(servers) => pending.send_auto(&addrs, &servers),
            None => {
                let candidates = order_candidates(host, &addrs, fixed)?;
                pending.send(&candidates, None)
            }
        }
    }

    /// Connects to each TCP port in turn until it accepts, re-knocking once,
    /// until the timeout. Returns the connections, in the order of `ports`.
    /// Each port gets a [`Race`] of connection attempts, fast at first.
    pub fn prove(&mut self, ports: &[u16]) -> Result<Vec<TcpStream>, Failure> {
        let deadline = self.started + self.options.timeout;
        let reknock_at = self.started + REKNOCK_AFTER;
        let mut streams = Vec::with_capacity(ports.len());
        for &port in ports {
            let mut addr = self.server;
            addr.set_port(port);
            let mut race = Race::new(addr);
            self.progress
                .step(format!("waiting for tcp/{port} on {}", addr.ip()));
            loop {
                let now = Instant::now();
                if self.knocks == 1 && now >= reknock_at && now < deadline {
                    self.reknock()?;
                    race.restart();
                    self.progress.step(format!(
                        "waiting for tcp/{port} on {} (second knock sent)",
                        addr.ip()
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(self.no_answer(port, race.last_error()));
                }
                let until = if self.knocks == 1 {
                    deadline.min(reknock_at)
                } else {
                    deadline
                };
                if let Some(stream) = race.step(until) {
                    streams.push(stream);
                    break;
                }
            }
        }
        Ok(streams)
    }

    fn reknock(&mut self) -> Result<(), Failure> {
        self.progress.step(format!(
            "no answer after {}s: sending a new knock",
            REKNOCK_AFTER.as_secs()
        ));
        let sent = match &self.stun {
            Some((_, socket)) => self.knocker.send_on(socket, self.server),
            None => self.knocker.send(self.server),
        };
        match sent {
            Ok(_) => {
                self.knocks += 1;
                Ok(())
            }
            Err(err) => Err(Failure::runtime(format!(
                "sending the second knock to {} udp/{} failed: {err}; the network may have gone \
                 down",
                self.server.ip(),
                self.knocker.knock_port()
            ))),
        }
    }

    fn no_answer(&self, port: u16, last_error: Option<std::io::Error>) -> Failure {
        let knock_port = self.knocker.knock_port();
        let last = match &last_error {
            Some(err) if err.kind() == ErrorKind::ConnectionRefused => {
                "last attempt: connection refused, i.e. reachable but closed or nothing listening"
                    .to_owned()
            }
            Some(err) => format!("last attempt: {err}"),
            None => "no attempt finished".to_owned(),
        };
        Failure::runtime(format!(
            "no answer in time: tcp/{port} on {}{} did not accept a connection within {} of \
             the knock ({} sent from {} to udp/{knock_port}; {last}); likely causes: clock skew \
             between this host and the server, a wrong or outdated profile ({}), tcp/{port} not \
             permitted for client {:?} on the server, a firewall on the path dropping udp/{knock_port} \
             or tcp/{port}, or no service listening on tcp/{port}",
            self.server.ip(),
            if self.server.ip().to_string() == crate::resolve::bare_host(&self.host) {
                String::new()
            } else {
                format!(" ({})", self.host)
            },
            format_duration(self.options.timeout),
            if self.knocks == 1 { "1 knock".to_owned() } else { format!("{} knocks", self.knocks) },
            self.first.local.ip(),
            self.profile_path.display(),
            self.profile.name,
        ))
    }

    /// "for ADDRESS", as far as this host can know it.
    pub fn for_whom(&self) -> String {
        match (self.bound, &self.stun) {
            (Some(ip), Some((server, _))) => {
                format!("for {ip} (--allow-ip auto: this host's address as STUN {server} sees it)")
            }
            (Some(ip), None) => format!("for {ip} (--allow-ip)"),
            (None, _) => format!(
                "for this host's address as the server sees it (sent from {})",
                self.first.local.ip()
            ),
        }
    }

    /// "for how long", as far as this host can know it.
    pub fn how_long(&self) -> String {
        match self.options.open_for {
            Some(d) => format!(
                "for up to {} (the server may allow less)",
                format_duration(d)
            ),
            None => "for the server's open_for window".to_owned(),
        }
    }
}

impl Pending<'_> {
    /// Sends the first knock to the first of `candidates` that takes it,
    /// from `stun`'s socket if there is one.
    fn send(
        self,
        candidates: &[SocketAddr],
        stun: Option<(StunServer, UdpSocket)>,
    ) -> Result<Session, Failure> {
        let mut knocker = Knocker::new(
            &self.found.profile,
            Arc::clone(&self.keys),
            self.request.clone(),
        );
        let knock_port = knocker.knock_port();
        let mut errors = Vec::new();
        for &server in candidates {
            self.progress
                .step(format!("knocking on {} udp/{knock_port}", server.ip()));
            let started = Instant::now();
            let sent = match &stun {
                Some((_, socket)) => knocker.send_on(socket, server),
                None => knocker.send(server),
            };
            match sent {
                Ok(first) => {
                    self.progress.step(format!(
                        "knock sent from {} to {} udp/{knock_port} ({} bytes)",
                        first.local,
                        server.ip(),
                        first.len
                    ));
                    return Ok(Session {
                        host: self.host.to_owned(),
                        profile_path: self.found.path,
                        profile: self.found.profile,
                        server,
                        first,
                        knocks: 1,
                        bound: self.request.bound_addr,
                        stun,
                        options: self.options.clone(),
                        progress: self.progress,
                        knocker,
                        started,
                    });
                }
                Err(SendError::Prepare(message)) => return Err(Failure::runtime(message)),
                Err(SendError::Network(err)) => errors.push(format!("to {}: {err}", server.ip())),
            }
        }
        Err(Failure::runtime(format!(
            "sending the knock to {} udp/{knock_port} failed ({}); likely causes: no route \
             to the server from this host (try HOST as an address of the other family), the \
             network is down, or a local firewall blocks outgoing UDP",
            self.host,
            errors.join("; ")
        )))
    }

    /// `--allow-ip auto`: for each family of the server's addresses, in the
    /// resolver's order, ask the STUN servers over that family, from the
    /// address the knock leaves from; the first answer binds the knock,
    /// which is then sent from the very socket that asked. Sends nothing
    /// unless an answer came.
    fn send_auto(
        mut self,
        addrs: &[SocketAddr],
        servers: &[StunServer],
    ) -> Result<Session, Failure> {
        let mut families: Vec<bool> = Vec::new();
        for addr in addrs {
            if !families.contains(&addr.is_ipv4()) {
                families.push(addr.is_ipv4());
            }
        }
        let knocker = Knocker::new(
            &self.found.profile,
            Arc::clone(&self.keys),
            self.request.clone(),
        );
        let mut failures = Vec::new();
        for v4 in families {
            let candidates: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| a.is_ipv4() == v4)
                .collect();
            let Some(&first) = candidates.first() else {
                continue;
            };
            let family = stun::family_name(first.ip());
            let local = match knocker.source_toward(first) {
                Ok(local) => local,
                Err(err) => {
                    failures.push(format!(
                        "over {family} (no route to the server {}: {err})",
                        first.ip()
                    ));
                    continue;
                }
            };
            let progress = &self.progress;
            match stun::discover(servers, local, &stun::SCHEDULE, &mut |m| progress.step(m)) {
                Ok(found) => {
                    self.request.bound_addr = Some(found.mapped.addr.ip());
                    return self.send(&candidates, Some((found.server, found.socket)));
                }
                Err(errors) => failures.push(format!("over {family} ({})", errors.join("; "))),
            }
        }
        Err(Failure::runtime(format!(
            "--allow-ip auto: could not learn this host's public address {}; nothing was sent; \
             check the STUN servers and that this network lets UDP out, or give --allow-ip \
             ADDRESS yourself",
            failures.join(" nor ")
        )))
    }
}

/// The STUN servers for `--allow-ip auto`: `--stun`, else the profile's
/// list, else client.toml's. client.toml is read (and must be valid) even
/// when a list before it is used; without any server it is a usage error.
fn stun_servers(options: &KnockOptions, found: &lookup::Found) -> Result<Vec<StunServer>, Failure> {
    let config = match knock_home() {
        Ok(home) => {
            let path = home.join(CLIENT_CONFIG);
            let config = ClientConfig::load(&path)?;
            Some((path, config))
        }
        // No $KNOCK_HOME nor $HOME (and so --profile): no client.toml.
        Err(_) => None,
    };
    if !options.stun.is_empty() {
        return Ok(options.stun.clone());
    }
    if !found.profile.stun.is_empty() {
        return Ok(found.profile.stun.clone());
    }
    match config {
        Some((_, config)) if !config.stun.is_empty() => Ok(config.stun),
        other => Err(Failure::usage(format!(
            "--allow-ip auto needs a STUN server to learn this host's public address, and none \
             is configured: pass --stun HOST:PORT, or add stun = [\"HOST:PORT\"] to the \
             profile ({}){}; nothing was sent",
            found.path.display(),
            match other {
                Some((path, _)) => format!(" or to {}", path.display()),
                None => " or to $KNOCK_HOME/client.toml".to_owned(),
            }
        ))),
    }
}

/// The server's addresses: HOST's. When HOST is only a name of the profile
/// (an alias such as `relay`) and does not resolve, the first of the
/// profile's host and aliases that does (its host, or an address alias).
fn server_addrs(resolver: &Resolver, profile: &ClientProfile) -> Result<Vec<SocketAddr>, Failure> {
    let host = resolver.host();
    let failed = |message: String| {
        Failure::runtime(format!(
            "name resolution failed for {message}; check the name and your DNS, or give the \
             server's IP address as HOST"
        ))
    };
    let err = match resolver.addrs() {
        Ok(addrs) => return Ok(addrs.to_vec()),
        Err(err) => err,
    };
    if !profile.answers_to(host) {
        return Err(failed(format!("{host:?}: {err}")));
    }
    let others = std::iter::once(&profile.host)
        .chain(&profile.aliases)
        .filter(|name| {
            !name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(host.trim_end_matches('.'))
        });
    let mut tried = vec![format!("{host:?}: {err}")];
    for name in others {
        match resolve(name) {
            Ok(addrs) => return Ok(addrs),
            Err(e) => tried.push(format!("{name:?}: {e}")),
        }
    }
    Err(failed(format!(
        "every name of the profile ({})",
        tried.join(", ")
    )))
}

/// Refuses ports the profile says this client may not open. A profile that
/// lists no ports leaves the decision to the server.
fn check_permitted(found: &lookup::Found, ports: &[PortSpec]) -> Result<(), Failure> {
    let allowed = &found.profile.ports;
    if allowed.is_empty() {
        return Ok(());
    }
    match ports.iter().find(|p| !allowed.contains(p)) {
        None => Ok(()),
        Some(port) => Err(Failure::usage(format!(
            "PORT {port}: not among the ports that profile {} may open ({}); if the server now \
             permits it, import an updated profile",
            found.path.display(),
            knock_proto::port_list(allowed)
        ))),
    }
}

/// The addresses to knock on, best first. The resolver's order is kept
/// (so the knock and the connection use the same, preferred family), except
/// that with `--allow-ip` only addresses of its family can work: the server
/// honours such a knock only when it arrives from that address.
fn order_candidates(
    host: &str,
    addrs: &[SocketAddr],
    allow_ip: Option<IpAddr>,
) -> Result<Vec<SocketAddr>, Failure> {
    let Some(allow) = allow_ip else {
        return Ok(addrs.to_vec());
    };
    let same_family: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| a.is_ipv4() == allow.is_ipv4())
        .collect();
    if same_family.is_empty() {
        let family = if allow.is_ipv4() { "IPv4" } else { "IPv6" };
        let other = if allow.is_ipv4() { "IPv6" } else { "IPv4" };
        return Err(Failure::usage(format!(
            "--allow-ip {allow} is {family}, but {host} has only {other} addresses ({}); the \
             knock must come from the allowed address, so give an {other} --allow-ip",
            addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(same_family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_ip_picks_its_family() {
        let addrs: Vec<SocketAddr> = vec![
            "[2001:db8::1]:0".parse().unwrap(),
            "192.0.2.1:0".parse().unwrap(),
        ];
        assert_eq!(order_candidates("h", &addrs, None).unwrap(), addrs);
        let v4 = order_candidates("h", &addrs, Some("203.0.113.5".parse().unwrap())).unwrap();
        assert_eq!(v4, vec!["192.0.2.1:0".parse::<SocketAddr>().unwrap()]);
        let only_v6 = &addrs[..1];
        let err = order_candidates("h", only_v6, Some("203.0.113.5".parse().unwrap())).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(err.message.contains("only IPv6"), "{}", err.message);
    }
}
