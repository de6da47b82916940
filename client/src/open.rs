//! `knock-client open HOST PORT...`: knock, then prove the TCP ports open.

use std::io::Write;

use knock_keys::cli::Failure;
use knock_proto::{port_list, PortSpec, Transport};

use crate::session::Session;
use crate::KnockOptions;

pub fn run(
    host: &str,
    ports: &[PortSpec],
    no_wait: bool,
    options: &KnockOptions,
) -> Result<(), Failure> {
    let mut session = Session::start(host, ports, options)?;
    let tcp: Vec<u16> = ports
        .iter()
        .filter(|p| p.transport == Transport::Tcp)
        .map(|p| p.port)
        .collect();
    let udp: Vec<PortSpec> = ports
        .iter()
        .copied()
        .filter(|p| p.transport == Transport::Udp)
        .collect();

    let line = if no_wait || tcp.is_empty() {
        let why = if no_wait {
            "not checked: --no-wait"
        } else {
            "UDP ports cannot be checked"
        };
        format!(
            "knock sent to {} udp/{} for {} ({why}); the server opens them {} {}",
            session.server.ip(),
            session.profile.knock_port,
            port_list(ports),
            session.for_whom(),
            session.how_long(),
        )
    } else {
        // The connections only prove the ports open; they close at once.
        drop(session.prove(&tcp)?);
        let opened: Vec<PortSpec> = tcp.iter().map(|&p| PortSpec::tcp(p)).collect();
        let mut line = format!(
            "opened {} on {} {} {}",
            port_list(&opened),
            session.server.ip(),
            session.for_whom(),
            session.how_long(),
        );
        if session.knocks > 1 {
            line.push_str(&format!(" (after {} knocks)", session.knocks));
        }
        if !udp.is_empty() {
            line.push_str(&format!(
                "; {} requested too, but UDP ports cannot be checked",
                port_list(&udp)
            ));
        }
        line
    };
    session.progress.finish();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::runtime(format!("writing to stdout: {e}")))
}
