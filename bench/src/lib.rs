//! knock-bench: the pieces shared by the benchmark tools.
//!
//! * `knock-flood`: a paced UDP flooder, bounded in packets and time;
//! * `knock-probe`: knock → first TCP connect latency, and the share of
//!   knocks honoured, from many source addresses;
//! * `knock-sink`: a TCP listener that accepts and closes, bounded in time;
//! * `knock-fleet`: many clients derived from one seed ([`fleet`]): enrols
//!   them, sends bursts and trickles of their knocks, and reads the server's
//!   log for the grants (`bench/scale.sh`).
//!
//! `bench/run.sh` drives them in network namespaces; `docs/PERFORMANCE.md`
//! describes the method and the figures.
#![forbid(unsafe_code)]

pub mod fleet;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use knock_keys::profile::{ClientProfile, ProfileKey};
use knock_proto::{
    seal, ClientIdentity, PairKeys, Request, SealRandomness, Sealer, ServerId, ServerPublicKey,
};
use ring::rand::{SecureRandom, SystemRandom};

pub use knock_keys::duration::parse_duration;

/// Exit status for runtime failures and for usage errors, as everywhere in
/// knock.
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// What a profile's knocks are sealed with, in either mode: its pair keys,
/// and for a public-key profile the identity that signs them.
pub struct Knocker {
    pub pair: PairKeys,
    pub server_id: ServerId,
    public: Option<(ClientIdentity, ServerPublicKey)>,
}

impl std::fmt::Debug for Knocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knocker")
            .field("server_id", &self.server_id)
            .field("public", &self.public.is_some())
            .finish_non_exhaustive()
    }
}

impl Knocker {
    /// The knocker of `profile`, read from `profile_path`. A public-key
    /// profile needs an identity: `identity`, else the file `identity`
    /// beside the profile (where `knock-client identity` puts it when
    /// `KNOCK_HOME` is the profile's directory).
    pub fn for_profile(
        profile: &ClientProfile,
        profile_path: &Path,
        identity: Option<&Path>,
    ) -> Result<Self, String> {
        match &profile.key {
            ProfileKey::Shared(secret) => Ok(Self {
                pair: PairKeys::shared(secret, &profile.server_id),
                server_id: profile.server_id,
                public: None,
            }),
            ProfileKey::Public { server, .. } => {
                let path = identity_path(profile_path, identity);
                let identity =
                    knock_keys::client_identity::load(&path).map_err(|e| e.to_string())?;
                let prk = identity
                    .pair_prk(server, &profile.server_id)
                    .map_err(|e| format!("{}: server_public_key: {e}", profile.host))?;
                Ok(Self {
                    pair: PairKeys::from_prk(&prk),
                    server_id: profile.server_id,
                    public: Some((identity, *server)),
                })
            }
        }
    }

    /// A shared-key client's knocker, from its secret.
    pub fn shared(secret: &knock_proto::ClientSecret, server_id: ServerId) -> Self {
        Self {
            pair: PairKeys::shared(secret, &server_id),
            server_id,
            public: None,
        }
    }

    /// A public-key client's knocker, from its identity and the server's
    /// public key.
    pub fn public(
        identity: ClientIdentity,
        server: ServerPublicKey,
        server_id: ServerId,
    ) -> Result<Self, String> {
        let prk = identity
            .pair_prk(&server, &server_id)
            .map_err(|e| format!("server public key: {e}"))?;
        Ok(Self {
            pair: PairKeys::from_prk(&prk),
            server_id,
            public: Some((identity, server)),
        })
    }

    pub fn is_public(&self) -> bool {
        self.public.is_some()
    }

    pub fn seal(
        &self,
        request: &Request,
        timestamp_ms: u64,
        randomness: &SealRandomness,
    ) -> Result<Vec<u8>, String> {
        let sealer = match &self.public {
            None => Sealer::Shared,
            Some((identity, server)) => Sealer::Public {
                identity,
                server,
                server_id: &self.server_id,
            },
        };
        seal(&self.pair, &sealer, request, timestamp_ms, randomness)
            .map_err(|e| format!("sealing failed: {e}"))
    }
}

/// `identity`, or the `identity` file beside the profile (`--profile P`
/// means `KNOCK_HOME` is P's directory, as in the probe's `client` mode).
pub fn identity_path(profile_path: &Path, identity: Option<&Path>) -> PathBuf {
    identity.map(Path::to_path_buf).unwrap_or_else(|| {
        let dir = profile_path.parent().unwrap_or(Path::new("."));
        knock_keys::client_identity::default_path(dir)
    })
}

/// A small, fast, non-cryptographic generator (xorshift64*), seeded from the
/// system CSPRNG. Good enough for junk payloads and lengths; real knocks use
/// the CSPRNG itself.
#[derive(Debug, Clone)]
pub struct FastRng(u64);

impl FastRng {
    pub fn from_os() -> Result<Self, String> {
        let mut seed = [0u8; 8];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| "the system random generator failed".to_owned())?;
        Ok(Self(u64::from_le_bytes(seed) | 1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `low..=high`.
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        let span = (high - low + 1) as u64;
        low + (self.next_u64() % span) as usize
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&bytes));
        }
    }
}

/// Parses `198.18.16.10-198.18.16.209` (inclusive), `198.18.16.10+200`
/// (200 addresses from the first) or a single address.
pub fn parse_ipv4_range(text: &str) -> Result<Vec<IpAddr>, String> {
    let bad = |why: &str| format!("invalid address range {text:?}: {why}; use A-B, A+COUNT or A");
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| bad("not an IPv4 address"))
    };
    let (first, last) = if let Some((a, b)) = text.split_once('-') {
        (u32::from(parse(a)?), u32::from(parse(b)?))
    } else if let Some((a, n)) = text.split_once('+') {
        let first = u32::from(parse(a)?);
        let count: u32 = n.trim().parse().map_err(|_| bad("COUNT is not a number"))?;
        if count == 0 {
            return Err(bad("COUNT is 0"));
        }
        (
            first,
            first
                .checked_add(count - 1)
                .ok_or_else(|| bad("too many"))?,
        )
    } else {
        let one = u32::from(parse(text)?);
        (one, one)
    };
    if last < first {
        return Err(bad("the last address is before the first"));
    }
    if last - first >= 65_536 {
        return Err(bad("more than 65536 addresses"));
    }
    Ok((first..=last)
        .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
        .collect())
}

/// Latency statistics over the successful trials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub trials: usize,
    pub honoured: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub min: Duration,
}

impl Summary {
    /// `samples` are the latencies of the honoured trials; `trials` counts all.
    pub fn of(trials: usize, samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Self {
            trials,
            honoured: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or_default(),
            min: sorted.first().copied().unwrap_or_default(),
        }
    }

    /// Honoured share in percent.
    pub fn share(&self) -> f64 {
        if self.trials == 0 {
            0.0
        } else {
            100.0 * self.honoured as f64 / self.trials as f64
        }
    }

    /// One line, `key=value` pairs, for `bench/run.sh` to collect.
    pub fn result_line(&self, name: &str) -> String {
        format!(
            "RESULT name={name} trials={} honoured={} share_pct={:.2} p50_ms={:.3} p90_ms={:.3} \
             p99_ms={:.3} max_ms={:.3} min_ms={:.3}",
            self.trials,
            self.honoured,
            self.share(),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            ms(self.min),
        )
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_ipv4_range("198.18.16.10-198.18.16.209")
                .unwrap()
                .len(),
            200
        );
        let r = parse_ipv4_range("198.18.16.250+10").unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r[9], "198.18.17.3".parse::<IpAddr>().unwrap());
        assert_eq!(parse_ipv4_range("198.18.0.2").unwrap().len(), 1);
        assert!(parse_ipv4_range("198.18.0.9-198.18.0.2").is_err());
        assert!(parse_ipv4_range("x+3").is_err());
        assert!(parse_ipv4_range("198.18.0.1+0").is_err());
    }

    #[test]
    fn percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(110, &samples);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert!((s.share() - 100.0 * 100.0 / 110.0).abs() < 1e-9);
        assert_eq!(Summary::of(3, &[]).p50, Duration::ZERO);
    }

    #[test]
    fn rng_range_stays_inside() {
        use knock_proto::{MAX_KNOCK_LEN, MIN_KNOCK_LEN};
        let mut rng = FastRng(12345);
        for _ in 0..10_000 {
            let v = rng.range(MIN_KNOCK_LEN, MAX_KNOCK_LEN);
            assert!((MIN_KNOCK_LEN..=MAX_KNOCK_LEN).contains(&v));
        }
        let mut buf = [0u8; 13];
        rng.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
    }
}
