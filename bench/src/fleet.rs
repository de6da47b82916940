//! A fleet of generated clients for the scale benchmark (`knock-fleet`,
//! `bench/scale.sh`).
//!
//! Client `i` of a fleet is named `PREFIX-NNNNNN` (six digits or more). Its
//! credential is derived from the fleet's seed text and `i` with
//! HMAC-SHA256, so whoever knows the seed (the enroller and the knocker)
//! needs no per-client file: every `public_every`-th client (`i % K == 0`)
//! is a public-key client whose identity seed is derived so; the others are
//! shared-key clients whose secret is derived so. The derivations are for
//! benchmarks only: anyone who knows the seed text can knock as the fleet.
//!
//! The module also reads the server's log: the timestamps that
//! `tracing-subscriber` writes (`2025-01-02T03:04:05.123456Z`) and the
//! `granted ...` lines.

use std::time::Duration;

use knock_keys::entry::{ClientEntry, Credential};
use knock_proto::{
    valid_client_name, ClientIdentity, ClientSecret, IdentitySeed, PortSpec, ServerId,
    ServerPublicKey,
};
use ring::hmac;

use crate::Knocker;

/// Domain separation of the two derivations.
const LABEL_SHARED: &[u8] = b"knock-fleet shared secret v1";
const LABEL_IDENTITY: &[u8] = b"knock-fleet identity seed v1";

/// The seed, the share of public-key clients and the name prefix: all a
/// fleet is.
pub struct Fleet {
    key: hmac::Key,
    public_every: u64,
    prefix: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("public_every", &self.public_every)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// `public_every` 0 means no public-key client.
    pub fn new(seed: &str, public_every: u64, prefix: &str) -> Result<Self, String> {
        if seed.is_empty() {
            return Err("the seed text is empty".into());
        }
        if prefix.is_empty() || !valid_client_name(&format!("{prefix}-000000")) {
            return Err(format!(
                "prefix {prefix:?}: client names are letters, digits, '-', '_', '.'"
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes()),
            public_every,
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Client `i`'s name: `PREFIX-NNNNNN`.
    pub fn name(&self, i: u64) -> String {
        format!("{}-{i:06}", self.prefix)
    }

    /// Client `i`'s file name in `clients.d`.
    pub fn file_name(&self, i: u64) -> String {
        format!("{}.toml", self.name(i))
    }

    /// The index of a fleet client's name (`None` for another name).
    pub fn index_of(&self, name: &str) -> Option<u64> {
        let digits = name.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    pub fn is_public(&self, i: u64) -> bool {
        self.public_every > 0 && i.is_multiple_of(self.public_every)
    }

    fn derive(&self, label: &[u8], i: u64) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label);
        ctx.update(&i.to_be_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Client `i`'s shared secret (meaningful for a shared-key client).
    pub fn secret(&self, i: u64) -> ClientSecret {
        ClientSecret::from_bytes(self.derive(LABEL_SHARED, i))
    }

    /// Client `i`'s identity seed (meaningful for a public-key client).
    pub fn identity_seed(&self, i: u64) -> IdentitySeed {
        IdentitySeed::from_bytes(self.derive(LABEL_IDENTITY, i))
    }

    /// What client `i`'s entry on the server holds.
    pub fn credential(&self, i: u64) -> Credential {
        if self.is_public(i) {
            Credential::Public(ClientIdentity::from_seed(&self.identity_seed(i)).public())
        } else {
            Credential::Shared(self.secret(i))
        }
    }

    /// Client `i`'s entry, for `ports`.
    pub fn entry(&self, i: u64, ports: &[PortSpec]) -> ClientEntry {
        ClientEntry {
            name: self.name(i),
            credential: self.credential(i),
            ports: ports.to_vec(),
            max_open_for: None,
            allow_from: Vec::new(),
            expires: None,
            require_bound_addr: false,
        }
    }

    /// What client `i` seals its knocks with. A public-key client needs the
    /// server's public key.
    pub fn knocker(
        &self,
        i: u64,
        server_id: ServerId,
        server_key: Option<ServerPublicKey>,
    ) -> Result<Knocker, String> {
        if self.is_public(i) {
            let server = server_key.ok_or_else(|| {
                format!(
                    "{} is a public-key client: the server's key (server_key_file) is needed",
                    self.name(i)
                )
            })?;
            let identity = ClientIdentity::from_seed(&self.identity_seed(i));
            Knocker::public(identity, server, server_id)
        } else {
            Ok(Knocker::shared(&self.secret(i), server_id))
        }
    }
}

/// What defines a fleet on the command line of `knock-fleet` and
/// `knock-probe knock --fleet`; the same values must be given to every
/// command.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The text every client's key is derived from.
    #[arg(long, default_value = "knock-fleet")]
    pub seed: String,
    /// Every K-th client (index divisible by K) is a public-key client; 0:
    /// none.
    #[arg(long, default_value_t = 10)]
    pub public_every: u64,
    /// Client names are PREFIX-NNNNNN.
    #[arg(long, default_value = "fleet")]
    pub prefix: String,
}

impl FleetArgs {
    pub fn fleet(&self) -> Result<Fleet, String> {
        Fleet::new(&self.seed, self.public_every, &self.prefix)
            .map_err(|e| format!("--seed/--prefix: {e}"))
    }
}

/// The server's identity and (when it has one) public key, from its
/// configuration: what a fleet client's knocks are sealed for.
pub fn server_keys(
    config: &knock_keys::config::ServerConfig,
) -> Result<(ServerId, Option<ServerPublicKey>), knock_keys::FileError> {
    let server_id = knock_keys::identity::load(&config.identity_file)?;
    let server_key = if config.server_key_file.exists() {
        Some(knock_keys::identity::load_server_key(&config.server_key_file)?.public())
    } else {
        None
    };
    Ok((server_id, server_key))
}

/// The UTC time at the start of a log line written by `tracing-subscriber`
/// (`2025-01-02T03:04:05.123456Z ...`), in microseconds since the epoch.
pub fn log_time_us(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, fraction)) => (hms, fraction),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let hour: u64 = t.next()?.parse().ok()?;
    let minute: u64 = t.next()?.parse().ok()?;
    let second: u64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: u64 = format!("{:0<6}", fraction.get(..fraction.len().min(6))?)
        .parse()
        .ok()?;
    let days = days_from_civil(year, month, day);
    let seconds = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One `granted ...` line of the server's log.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantLine {
    pub client: String,
    /// When it was logged (see [`log_time_us`]).
    pub logged_us: Option<u64>,
    /// The server's own figure, `live X ms after arrival`, when it gives one.
    pub live: Option<Duration>,
}

/// Reads `... granted tcp/4992 to 198.18.0.2 for 30s (client NAME)` or
/// `... (client NAME; live 0.412 ms after arrival)`.
pub fn parse_grant(line: &str) -> Option<GrantLine> {
    let at = line
        .find(" granted ")
        .map(|p| p + 1)
        .or_else(|| line.starts_with("granted ").then_some(0))?;
    let rest = line.get(at..)?;
    let client_at = rest.find("(client ")? + "(client ".len();
    let tail = rest.get(client_at..)?;
    let end = tail.find([';', ')'])?;
    let client = tail.get(..end)?.trim().to_owned();
    if client.is_empty() {
        return None;
    }
    let live = tail.find("live ").and_then(|p| {
        let figure = tail.get(p + "live ".len()..)?;
        let (number, after) = figure.split_once(' ')?;
        let unit_ms = if after.starts_with("ms after arrival") {
            1e-3
        } else if after.starts_with("µs after arrival") || after.starts_with("us after arrival") {
            1e-6
        } else {
            return None;
        };
        let value: f64 = number.parse().ok()?;
        (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * unit_ms))
    });
    Some(GrantLine {
        client,
        logged_us: log_time_us(line),
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_deterministic_and_distinct() {
        let a = Fleet::new("seed", 10, "fleet").unwrap();
        let b = Fleet::new("seed", 10, "fleet").unwrap();
        let c = Fleet::new("other", 10, "fleet").unwrap();
        assert_eq!(a.secret(5).expose(), b.secret(5).expose());
        assert_ne!(a.secret(5).expose(), a.secret(6).expose());
        assert_ne!(a.secret(5).expose(), c.secret(5).expose());
        assert_ne!(a.secret(5).expose(), a.identity_seed(5).expose());
        assert!(a.is_public(0) && a.is_public(10) && !a.is_public(9));
        assert!(!Fleet::new("seed", 0, "fleet").unwrap().is_public(0));
        assert_eq!(a.name(42), "fleet-000042");
        assert_eq!(a.name(1_234_567), "fleet-1234567");
        assert_eq!(a.index_of("fleet-000042"), Some(42));
        assert_eq!(a.index_of("fleet-42"), None);
        assert_eq!(a.index_of("bench"), None);
        assert!(Fleet::new("seed", 1, "bad name").is_err());
        assert!(Fleet::new("", 1, "fleet").is_err());
    }

    #[test]
    fn entries_round_trip_through_the_server_parser() {
        let fleet = Fleet::new("seed", 2, "fleet").unwrap();
        let ports = [PortSpec::tcp(4992)];
        for i in 0..4 {
            let entry = fleet.entry(i, &ports);
            let path = std::path::PathBuf::from(format!("/x/{}", fleet.file_name(i)));
            let back = ClientEntry::parse(&path, &entry.to_toml()).unwrap();
            assert_eq!(back.credential, entry.credential);
            assert_eq!(back.name, fleet.name(i));
            assert_eq!(back.mode(), entry.mode());
            assert!(back.validate(&path).is_ok());
        }
    }

    #[test]
    fn log_times() {
        assert_eq!(
            log_time_us("1970-01-01T00:00:01.000002Z  INFO x"),
            Some(1_000_002)
        );
        // date -u -d 2025-03-01T12:34:56Z +%s = 1740832496
        assert_eq!(
            log_time_us("2025-03-01T12:34:56.5Z INFO ready: 3 clients"),
            Some(1_740_832_496_500_000)
        );
        assert_eq!(
            log_time_us("2024-02-29T00:00:00Z x"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(log_time_us("INFO granted"), None);
        assert_eq!(log_time_us(""), None);
    }

    #[test]
    fn grant_lines() {
        let g = parse_grant(
            "2025-03-01T12:34:56.500000Z  INFO granted tcp/4992 to 198.18.0.2 for 30s (client fleet-000123)",
        )
        .unwrap();
        assert_eq!(g.client, "fleet-000123");
        assert_eq!(g.live, None);
        assert_eq!(g.logged_us, Some(1_740_832_496_500_000));
        let g = parse_grant(
            "2025-03-01T12:34:56.500000Z  INFO granted tcp/4992 to 198.18.0.2 for 30s (client fleet-000123; live 0.412 ms after arrival)",
        )
        .unwrap();
        assert_eq!(g.client, "fleet-000123");
        assert_eq!(g.live, Some(Duration::from_micros(412)));
        assert!(parse_grant("x ERROR knock verified but NOT granted: disk").is_none());
        assert!(parse_grant("x INFO refused 3 datagrams in the last 10s").is_none());
        assert_eq!(
            parse_grant("granted tcp/22 to ::1 for 5s (client a; live 12 µs after arrival)")
                .unwrap()
                .live,
            Some(Duration::from_micros(12))
        );
    }
}
