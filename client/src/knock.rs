//! Sealing and sending knocks. Every knock is new: a fresh nonce, fresh
//! padding and a timestamp strictly greater than the previous one, so a
//! second knock is never a copy of the first (a copy would be refused as a
//! replay anyway).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use knock_keys::profile::ClientProfile;
use knock_proto::{
    seal, ClientIdentity, ClientSecret, KeyError, PairKeys, Request, SealRandomness, Sealer,
    ServerId, ServerPublicKey, NONCE_LEN,
};
use ring::rand::{SecureRandom, SystemRandom};

/// What one profile's knocks are sealed with: the pair keys, and in
/// public-key mode the identity that signs them. Secrets are zeroized on
/// drop (by their types).
pub struct KnockKeys {
    pair: PairKeys,
    server_id: ServerId,
    /// Public-key mode: the client's identity and the server's public key.
    public: Option<(ClientIdentity, ServerPublicKey)>,
}

impl KnockKeys {
    /// Shared-key mode: the profile's secret, bound to the server identity.
    pub fn shared(secret: &ClientSecret, server_id: ServerId) -> Self {
        Self {
            pair: PairKeys::shared(secret, &server_id),
            server_id,
            public: None,
        }
    }

    /// Public-key mode: `identity` agrees its pair key with `server`.
    /// Refuses a server key of small order.
    pub fn public(
        identity: ClientIdentity,
        server: ServerPublicKey,
        server_id: ServerId,
    ) -> Result<Self, KeyError> {
        let prk = identity.pair_prk(&server, &server_id)?;
        Ok(Self {
            pair: PairKeys::from_prk(&prk),
            server_id,
            public: Some((identity, server)),
        })
    }

    fn sealer(&self) -> Sealer<'_> {
        match &self.public {
            None => Sealer::Shared,
            Some((identity, server)) => Sealer::Public {
                identity,
                server,
                server_id: &self.server_id,
            },
        }
    }
}

impl std::fmt::Debug for KnockKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnockKeys")
            .field("server_id", &self.server_id)
            .field("mode", &self.sealer().mode())
            .finish_non_exhaustive()
    }
}

/// Why a knock could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// The knock could not be made: clock, randomness or sealing.
    Prepare(String),
    /// The datagram could not be sent to this address.
    Network(std::io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Prepare(message) => f.write_str(message),
            SendError::Network(err) => write!(f, "{err}"),
        }
    }
}

/// A knock that left this host.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// The source address the datagram was sent from (before any NAT).
    pub local: SocketAddr,
    pub len: usize,
}

/// Makes and sends the knocks of one run.
#[derive(Debug)]
pub struct Knocker {
    keys: Arc<KnockKeys>,
    knock_port: u16,
    request: Request,
    last_stamp: Option<u64>,
    rng: SystemRandom,
}

impl Knocker {
    pub fn new(profile: &ClientProfile, keys: Arc<KnockKeys>, request: Request) -> Self {
        Self {
            keys,
            knock_port: profile.knock_port,
            request,
            last_stamp: None,
            rng: SystemRandom::new(),
        }
    }

    pub fn knock_port(&self) -> u16 {
        self.knock_port
    }

    /// Seals a new knock and sends it as one UDP datagram to `server` at the
    /// profile's knock port, from a new ephemeral socket.
    pub fn send(&mut self, server: SocketAddr) -> Result<Sent, SendError> {
        let socket = UdpSocket::bind(unspecified_like(server)).map_err(SendError::Network)?;
        self.send_on(&socket, server)
    }

    /// [`Self::send`] from `socket`, an unconnected socket or one connected
    /// elsewhere before (the STUN server it asked): it keeps its local
    /// address and port.
    pub fn send_on(&mut self, socket: &UdpSocket, server: SocketAddr) -> Result<Sent, SendError> {
        let bytes = self.make()?;
        let target = self.target(server);
        // Connecting picks the route and the source address, and reports a
        // missing route here rather than silently.
        socket.connect(target).map_err(SendError::Network)?;
        let written = socket.send(&bytes.0).map_err(SendError::Network)?;
        if written != bytes.0.len() {
            return Err(SendError::Network(std::io::Error::other(format!(
                "only {written} of {} bytes were sent",
                bytes.0.len()
            ))));
        }
        let local = socket.local_addr().map_err(SendError::Network)?;
        self.last_stamp = Some(bytes.1);
        Ok(Sent {
            local,
            len: written,
        })
    }

    /// The local address a knock to `server` would be sent from (port 0),
    /// found without sending anything.
    pub fn source_toward(&self, server: SocketAddr) -> std::io::Result<SocketAddr> {
        let socket = UdpSocket::bind(unspecified_like(server))?;
        socket.connect(self.target(server))?;
        let mut local = socket.local_addr()?;
        local.set_port(0);
        Ok(local)
    }

    fn target(&self, server: SocketAddr) -> SocketAddr {
        let mut target = server;
        target.set_port(self.knock_port);
        target
    }

    /// A new sealed knock and its timestamp.
    fn make(&self) -> Result<(Vec<u8>, u64), SendError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .ok_or_else(|| {
                SendError::Prepare("the system clock is before 1970: set the clock".to_owned())
            })?;
        let stamp = match self.last_stamp {
            Some(last) => now_ms.max(last.saturating_add(1)),
            None => now_ms,
        };
        let mut random = [0u8; NONCE_LEN + 1];
        self.rng.fill(&mut random).map_err(|_| {
            SendError::Prepare("the system random number generator failed".to_owned())
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        let (head, tail) = random.split_at(NONCE_LEN);
        nonce.copy_from_slice(head);
        let padding = tail.first().copied().unwrap_or(0);
        let randomness = SealRandomness { nonce, padding };
        let bytes = seal(
            &self.keys.pair,
            &self.keys.sealer(),
            &self.request,
            stamp,
            &randomness,
        )
        .map_err(|e| SendError::Prepare(format!("sealing the knock failed: {e}")))?;
        Ok((bytes, stamp))
    }
}

/// The unspecified address of `addr`'s family, port 0.
fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knock_keys::profile::ProfileKey;
    use knock_proto::{open, IdentitySeed, KnockBytes, Mode, PortSpec, ServerSecretKey};

    fn profile() -> ClientProfile {
        ClientProfile {
            name: "alice".into(),
            host: "127.0.0.1".into(),
            aliases: vec![],
            knock_port: 1,
            server_id: ServerId([7; 16]),
            key: ProfileKey::Shared(ClientSecret::from_bytes([9; 32])),
            ports: vec![],
            stun: vec![],
        }
    }

    fn shared_keys() -> Arc<KnockKeys> {
        Arc::new(KnockKeys::shared(
            &ClientSecret::from_bytes([9; 32]),
            ServerId([7; 16]),
        ))
    }

    /// The server's view of the shared profile's pair.
    fn server_keys() -> PairKeys {
        PairKeys::shared(&ClientSecret::from_bytes([9; 32]), &ServerId([7; 16]))
    }

    #[test]
    fn every_knock_is_new_and_opens() {
        let profile = profile();
        let request = Request {
            ports: vec![PortSpec::tcp(22)],
            duration_s: 0,
            bound_addr: Some("203.0.113.5".parse().unwrap()),
        };
        let mut knocker = Knocker::new(&profile, shared_keys(), request.clone());
        let (first, t1) = knocker.make().unwrap();
        knocker.last_stamp = Some(t1);
        let (second, t2) = knocker.make().unwrap();
        assert!(t2 > t1, "timestamps must increase: {t1} then {t2}");
        assert_ne!(first, second);
        let keys = server_keys();
        for (bytes, stamp) in [(&first, t1), (&second, t2)] {
            let parsed = KnockBytes::parse(bytes).unwrap();
            let opened = open(&keys, Mode::Shared, &parsed).unwrap();
            assert_eq!(opened.request, request);
            assert_eq!(opened.timestamp_ms, stamp);
        }
    }

    /// A public-key knock opens with the server's side of the pair key,
    /// in public-key mode only, and its signature verifies against the
    /// enrolled key.
    #[test]
    fn public_key_knocks_are_signed_and_open_at_the_server() {
        let seed = IdentitySeed::from_bytes([3; 32]);
        let identity = ClientIdentity::from_seed(&seed);
        let client_pk = identity.public();
        let server_sk = ServerSecretKey::from_bytes([5; 32]);
        let server_id = ServerId([7; 16]);
        let keys = KnockKeys::public(identity, server_sk.public(), server_id).unwrap();
        assert!(!format!("{keys:?}").contains("03, 03"));
        let request = Request {
            ports: vec![PortSpec::tcp(22)],
            duration_s: 0,
            bound_addr: None,
        };
        let knocker = Knocker::new(&profile(), Arc::new(keys), request.clone());
        let (bytes, stamp) = knocker.make().unwrap();
        let server_pair = PairKeys::from_prk(&server_sk.pair_prk(&client_pk, &server_id).unwrap());
        let parsed = KnockBytes::parse(&bytes).unwrap();
        assert!(open(&server_pair, Mode::Shared, &parsed).is_err());
        let opened = open(&server_pair, Mode::Public, &parsed).unwrap();
        assert_eq!(opened.request, request);
        assert_eq!(opened.timestamp_ms, stamp);
        opened
            .verify_signature(&client_pk, &server_sk.public(), &server_id)
            .unwrap();
        // A server key of small order is refused before anything is sealed.
        let identity = ClientIdentity::from_seed(&seed);
        assert!(
            KnockKeys::public(identity, ServerPublicKey::from_bytes([0; 32]), server_id).is_err()
        );
    }

    #[test]
    fn sends_one_datagram_to_the_knock_port() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut profile = profile();
        profile.knock_port = receiver.local_addr().unwrap().port();
        let request = Request {
            ports: vec![PortSpec::tcp(22)],
            duration_s: 0,
            bound_addr: None,
        };
        let mut knocker = Knocker::new(&profile, shared_keys(), request.clone());
        let sent = knocker.send("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut buf = [0u8; 2048];
        let (len, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(len, sent.len);
        assert_eq!(from, sent.local);
        let parsed = KnockBytes::parse(&buf[..len]).unwrap();
        let opened = open(&server_keys(), Mode::Shared, &parsed).unwrap();
        assert_eq!(opened.request, request);
    }

    #[test]
    fn send_on_keeps_the_sockets_address() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut profile = profile();
        profile.knock_port = receiver.local_addr().unwrap().port();
        let request = Request {
            ports: vec![PortSpec::tcp(22)],
            duration_s: 0,
            bound_addr: None,
        };
        let mut knocker = Knocker::new(&profile, shared_keys(), request);
        let server: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            knocker.source_toward(server).unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        // Connected elsewhere first, as after a STUN question.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(elsewhere.local_addr().unwrap()).unwrap();
        let before = socket.local_addr().unwrap();
        let sent = knocker.send_on(&socket, server).unwrap();
        assert_eq!(sent.local, before);
        let mut buf = [0u8; 2048];
        let (len, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!((len, from), (sent.len, before));
    }
}
