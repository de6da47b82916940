//! What a client asks for: ports.

use std::fmt;
use std::str::FromStr;

use crate::PortSpecError;

/// At most this many ports in one knock.
pub const MAX_PORTS: usize = 16;

/// The transport of a protected port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The IP protocol number, as on the wire and in the firewall.
    pub fn ip_proto(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }

    pub fn from_ip_proto(value: u8) -> Option<Self> {
        match value {
            6 => Some(Transport::Tcp),
            17 => Some(Transport::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// One port, written `tcp/4992`, `udp/53`, or `4992` (meaning tcp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub transport: Transport,
    pub port: u16,
}

impl PortSpec {
    pub fn tcp(port: u16) -> Self {
        Self {
            transport: Transport::Tcp,
            port,
        }
    }
}

/// Ports as people write them, comma-separated: `tcp/22,udp/53`.
pub fn port_list(ports: &[PortSpec]) -> String {
    ports
        .iter()
        .map(PortSpec::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transport.name(), self.port)
    }
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (transport, number) = match text.split_once('/') {
            Some(("tcp", n)) => (Transport::Tcp, n),
            Some(("udp", n)) => (Transport::Udp, n),
            Some((other, _)) => {
                return Err(PortSpecError::UnknownTransport {
                    transport: other.to_owned(),
                    text: text.to_owned(),
                })
            }
            None => (Transport::Tcp, text),
        };
        match number.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Self { transport, port }),
            _ => Err(PortSpecError::InvalidPort {
                text: text.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_spellings() {
        assert_eq!("4992".parse(), Ok(PortSpec::tcp(4992)));
        assert_eq!("tcp/4992".parse(), Ok(PortSpec::tcp(4992)));
        assert_eq!(
            "udp/53".parse(),
            Ok(PortSpec {
                transport: Transport::Udp,
                port: 53
            })
        );
    }

    /// The messages users see, word for word.
    #[test]
    fn errors_are_typed_and_say_what_to_write() {
        let err = "sctp/9".parse::<PortSpec>().unwrap_err();
        assert_eq!(
            err,
            PortSpecError::UnknownTransport {
                transport: "sctp".into(),
                text: "sctp/9".into()
            }
        );
        assert_eq!(
            err.to_string(),
            r#"unknown transport "sctp" in "sctp/9": use tcp/PORT or udp/PORT"#
        );
        for text in ["0", "tcp/0", "udp/65536", "tcp/", "", "x", "-1", "tcp/22/"] {
            let err = text.parse::<PortSpec>().unwrap_err();
            assert_eq!(
                err,
                PortSpecError::InvalidPort { text: text.into() },
                "{text:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("invalid port {text:?}: expected 1-65535, as 4992, tcp/4992 or udp/53")
            );
        }
    }
}
