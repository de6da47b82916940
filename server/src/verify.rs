//! The verification pipeline: bytes, a source address and a time in; a
//! [`PendingGrant`] or a [`Rejection`] out. No sockets, no firewall, no files,
//! so every step is unit-tested without root.
//!
//! Steps, cheapest first (protocol v2, both modes); each one short-circuits:
//!
//! 1. length (`bad-length`);
//! 2. key hint (`unknown-client`): one candidate client; a hint kept only to
//!    diagnose clock skew is opened at most once a second (`stale-hint`);
//! 3. one AEAD open with that client's pair keys (`bad-mac`);
//! 4. decoding: version, flags, the mode of the knock must be the mode of
//!    the entry (`wrong-mode`), ports, zero padding (`malformed`);
//! 5. freshness and replay, checked only (`replay`, `too-old`, ...);
//! 6. the policy: expiry, source binding, `require_bound_addr`, implausible
//!    sources, `allow_from`, ports;
//! 7. a shared-key client is done here;
//! 8. a public-key client whose last failed signature check is less than
//!    20 s old is refused without a check (`sig-limited`, [`crate::sig_limit`]);
//! 9. the signature, against the key in its entry (`bad-signature`; the
//!    failure is charged to that client's limit);
//! 10. a client granted more than its burst lately waits its turn
//!     (`rate-limited`, [`crate::grant_limit`]).
//!
//! So a replayed or refused knock never costs a signature check, and a
//! forger (who holds this server's key, or its pair-key cache) can never
//! consume a client's knock, only hold that one client down. A knock is
//! consumed only by [`Verifier::consume`], after every check has passed, so
//! a copy raced from another address (refused at source binding) never burns
//! the real one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use knock_keys::entry::ClientEntry;
use knock_keys::policy::{Cidr, Expiry};
use knock_proto::{
    open, slot_range, ClientPublicKey, Consumed, FreshKnock, KeyHint, KnockBytes, Mode, OpenError,
    OpenedKnock, PairKeys, ParseError, PortSpec, Progress, ReplayError, ReplayGuard, ReplayId,
    RollingIndex, ServerId, ServerPublicKey, Tick, SLOT_MS,
};
use thiserror::Error;

use crate::clients::{credential, Credential};
use crate::grant_limit::{GrantLimiter, GRANT_BURST, GRANT_EVERY_MS};
use crate::sig_limit::{SigLimiter, SIG_FAILURE_EVERY_MS};

/// Why a datagram did not open anything. Each reason has a short name for the
/// rate-limited counters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("not a knock: {0}")]
    Length(ParseError),
    /// No client has this hint now: junk, a knock for another server, or
    /// from a client no longer configured.
    #[error("unknown client (no key hint matches)")]
    UnknownClient,
    #[error("client {client}: {reason}")]
    Open { client: String, reason: OpenError },
    #[error("client {client}: {reason}")]
    Replay { client: String, reason: ReplayError },
    #[error("client {client}: bound to {bound} but sent from {sender}; not consumed")]
    SourceMismatch {
        client: String,
        bound: IpAddr,
        sender: IpAddr,
    },
    #[error("client {client}: sent from {sender}, which no host can have; not consumed")]
    ImplausibleSource { client: String, sender: IpAddr },
    #[error("client {client}: {port} is not permitted for this client")]
    PortNotPermitted { client: String, port: PortSpec },
    #[error(
        "client {client}: not bound to its source (--allow-ip), which {by} requires; not consumed"
    )]
    Unbound { client: String, by: &'static str },
    #[error("client {client}: sent from {sender}, outside its allow_from; not consumed")]
    NotAllowedFrom { client: String, sender: IpAddr },
    #[error("client {client}: expired ({expires})")]
    Expired { client: String, expires: String },
    /// A hint kept only to diagnose clock skew, seen again within a second:
    /// refused without opening it, so that a copied one costs no more than
    /// junk.
    #[error("a stale key hint, opened less than a second ago")]
    StaleHint,
    /// A public-key knock, authentic under the pair keys, whose client had a
    /// signature check fail less than [`SIG_FAILURE_EVERY_MS`] ago: refused
    /// without a check.
    #[error("client {client}: a knock in its name failed its signature check less than {}s ago; refused without a check, not consumed (someone holds this server's key or pair keys and impersonates this client)", SIG_FAILURE_EVERY_MS / 1000)]
    SigLimited { client: String },
    /// A public-key knock, authentic under the pair keys, whose signature
    /// does not verify against the client's key: whoever made it holds this
    /// server's key or pair keys, not the client's identity.
    #[error("client {client}: signature does not verify: someone holds this server's key or pair keys; rotate server.key (and re-issue the public profiles); not consumed")]
    BadSignature { client: String },
    /// A valid knock of a client that was granted more than its burst
    /// lately ([`crate::grant_limit`]).
    #[error("client {client}: more than {GRANT_BURST} grants lately, then one per {}s; not consumed", GRANT_EVERY_MS / 1000)]
    RateLimited { client: String },
}

impl Rejection {
    /// A short, fixed name for counting.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Length(_) => "bad-length",
            Rejection::UnknownClient => "unknown-client",
            Rejection::Open {
                reason: OpenError::BadMac,
                ..
            } => "bad-mac",
            Rejection::Open {
                reason: OpenError::WrongMode,
                ..
            } => "wrong-mode",
            Rejection::Open { .. } => "malformed",
            Rejection::Replay {
                reason: ReplayError::TooOld { .. },
                ..
            } => "too-old",
            Rejection::Replay {
                reason: ReplayError::FromFuture { .. },
                ..
            } => "from-future",
            Rejection::Replay {
                reason: ReplayError::BeforeFloor { .. },
                ..
            } => "before-floor",
            Rejection::Replay {
                reason: ReplayError::StateLost { .. },
                ..
            } => "state-lost",
            Rejection::Replay { .. } => "replay",
            Rejection::SourceMismatch { .. } => "source-mismatch",
            Rejection::ImplausibleSource { .. } => "implausible-source",
            Rejection::PortNotPermitted { .. } => "port-not-permitted",
            Rejection::Unbound { .. } => "unbound",
            Rejection::NotAllowedFrom { .. } => "not-allowed-from",
            Rejection::Expired { .. } => "expired",
            Rejection::StaleHint => "stale-hint",
            Rejection::SigLimited { .. } => "sig-limited",
            Rejection::BadSignature { .. } => "bad-signature",
            Rejection::RateLimited { .. } => "rate-limited",
        }
    }

    /// Rejections that only a holder of a client key (or, for a public-key
    /// client, of this server's key) can cause: worth a log line each
    /// (rate-limited by the caller), unlike junk.
    pub fn is_authentic(&self) -> bool {
        !matches!(
            self,
            Rejection::Length(_)
                | Rejection::UnknownClient
                | Rejection::StaleHint
                | Rejection::Open {
                    reason: OpenError::BadMac,
                    ..
                }
        )
    }
}

/// A knock that passed every check. Honour it with [`Verifier::consume`].
#[derive(Debug)]
#[must_use]
pub struct PendingGrant {
    fresh: FreshKnock,
    pub client: String,
    pub addr: IpAddr,
    pub ports: Vec<PortSpec>,
    pub duration: Duration,
}

/// A consumed knock: the replay state to make durable, then the grant to make.
#[derive(Debug)]
pub struct Grant {
    pub client: String,
    pub addr: IpAddr,
    pub ports: Vec<PortSpec>,
    pub duration: Duration,
}

/// What a client may do. Interned: most clients share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientPolicy {
    ports: Vec<PortSpec>,
    max_open_for: Option<Duration>,
    allow_from: Vec<Cidr>,
    expires: Option<Expiry>,
    require_bound_addr: bool,
}

/// One client, kept small: a server holds 100,000 of them, twice during a
/// reload.
struct Client {
    keys: PairKeys,
    /// Where its name is in [`Roster::names`].
    name: NameRef,
    /// Its policy in [`Roster::policies`].
    policy: u32,
    /// A public-key client's key, which its signatures must verify with.
    public_key: Option<Box<ClientPublicKey>>,
}

/// A name in a roster's one string of names (one allocation instead of
/// 100,000).
#[derive(Debug, Clone, Copy)]
struct NameRef {
    start: u32,
    len: u32,
}

impl NameRef {
    fn of(self, names: &str) -> &str {
        let start = self.start as usize;
        names
            .get(start..start + self.len as usize)
            .unwrap_or_default()
    }
}

impl Client {
    fn mode(&self) -> Mode {
        if self.public_key.is_some() {
            Mode::Public
        } else {
            Mode::Shared
        }
    }

    /// Its pair key's name in the replay memory (and in the limiters): a
    /// renamed file keeps it.
    fn replay_id(&self) -> ReplayId {
        self.keys.replay_id()
    }
}

/// The hint index reaches beyond the freshness window, so that a knock from
/// a client whose clock is minutes off is opened and refused as "too old"
/// or "from the future", naming the client, instead of looking like junk.
/// Up to this many slots each side (10 minutes)...
const DIAGNOSIS_SLOTS: u64 = 20;
/// ...as long as all clients' diagnosis hints together stay within this
/// many: 20 slots each side up to 2,500 clients, one with 50,000, none
/// with 100,000 (12 bytes a hint).
const DIAGNOSIS_HINTS: u64 = 100_000;

/// The clients and their hint index: what a reload replaces, built off the
/// packet loop ([`RosterBuilder`]) and swapped in whole.
pub struct Roster {
    clients: Vec<Client>,
    names: String,
    policies: Vec<ClientPolicy>,
    index: RollingIndex,
    window_ms: u64,
    diagnosis_ms: u64,
    public_clients: usize,
    /// Clients that have an expiry date.
    expiring: Vec<u32>,
}

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roster")
            .field("clients", &self.clients.len())
            .field("policies", &self.policies.len())
            .field("hints", &self.index.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Roster`] one client at a time, as the files are read.
#[derive(Default)]
pub struct RosterBuilder {
    clients: Vec<Client>,
    names: String,
    policies: Vec<ClientPolicy>,
    interned: HashMap<ClientPolicy, u32>,
    public_clients: usize,
    expiring: Vec<u32>,
}

impl std::fmt::Debug for RosterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RosterBuilder")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl RosterBuilder {
    pub fn with_capacity(clients: usize) -> Self {
        Self {
            clients: Vec::with_capacity(clients),
            ..Self::default()
        }
    }

    /// Adds `entry`, whose pair keys are `keys`.
    pub fn push(&mut self, entry: &ClientEntry, keys: PairKeys) {
        let policy = ClientPolicy {
            ports: entry.ports.clone(),
            max_open_for: entry.max_open_for,
            allow_from: entry.allow_from.clone(),
            expires: entry.expires.clone(),
            require_bound_addr: entry.require_bound_addr,
        };
        let next = u32::try_from(self.policies.len()).unwrap_or(u32::MAX);
        let policy = match self.interned.get(&policy) {
            Some(&i) => i,
            None => {
                self.policies.push(policy.clone());
                self.interned.insert(policy, next);
                next
            }
        };
        let public_key = match credential(entry) {
            Credential::Shared(_) => None,
            Credential::Public(key) => {
                self.public_clients += 1;
                Some(Box::new(*key))
            }
        };
        if entry.expires.is_some() {
            self.expiring
                .push(u32::try_from(self.clients.len()).unwrap_or(u32::MAX));
        }
        let name = NameRef {
            start: u32::try_from(self.names.len()).unwrap_or(u32::MAX),
            len: u32::try_from(entry.name.len()).unwrap_or(0),
        };
        self.names.push_str(&entry.name);
        self.clients.push(Client {
            keys,
            name,
            policy,
            public_key,
        });
    }

    /// The roster, its hint index complete for `now_ms`: every slot a knock
    /// can be fresh in, the next one, and those kept to diagnose clock skew
    /// (at most [`DIAGNOSIS_HINTS`] hints in all). Built beside the packet
    /// loop; the loop then only rolls it forward
    /// ([`Verifier::advance_index`]).
    pub fn finish(self, window_ms: u64, now_ms: u64) -> Roster {
        let clients = self.clients.len() as u64;
        let diagnosis_slots = (DIAGNOSIS_HINTS / clients.max(1) / 2).min(DIAGNOSIS_SLOTS);
        let diagnosis_ms = diagnosis_slots * SLOT_MS;
        let reach = window_ms.saturating_add(diagnosis_ms);
        // Both ends, plus the slot a window not aligned to slots touches,
        // plus the one added ahead.
        let span = (2 * reach).div_ceil(SLOT_MS) + 2;
        let mut roster = Roster {
            index: RollingIndex::new(self.clients.len(), span),
            clients: self.clients,
            names: self.names,
            policies: self.policies,
            window_ms,
            diagnosis_ms,
            public_clients: self.public_clients,
            expiring: self.expiring,
        };
        roster.advance(now_ms, usize::MAX);
        roster
    }
}

impl Roster {
    /// A roster of `entries`, whose pair keys are `keys`, in order: what
    /// the loader builds a part at a time, at once for the tests.
    #[cfg(test)]
    pub fn build(
        entries: &[ClientEntry],
        keys: Vec<PairKeys>,
        window_ms: u64,
        now_ms: u64,
    ) -> Self {
        let mut builder = RosterBuilder::with_capacity(entries.len());
        for (entry, keys) in entries.iter().zip(keys) {
            builder.push(entry, keys);
        }
        builder.finish(window_ms, now_ms)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The slots the index should cover at `now_ms`: the freshness window
    /// and the diagnosis reach around it, and the next slot, made ahead of
    /// time.
    fn wanted(&self, now_ms: u64) -> (u64, u64) {
        let (first, last) = slot_range(now_ms, self.window_ms.saturating_add(self.diagnosis_ms));
        (first, last + 1)
    }

    fn advance(&mut self, now_ms: u64, budget: usize) -> Progress {
        let want = self.wanted(now_ms);
        // Fresh now, and the slot after them: the next one to be fresh.
        let (first, last) = slot_range(now_ms, self.window_ms);
        let clients = &self.clients;
        self.index.advance(
            |i| clients.get(i).map(|c| &c.keys),
            want,
            (first, last + 1),
            budget,
        )
    }
}

/// A hint outside the freshness window is opened at most this often.
const STALE_HINT_EVERY_MS: u64 = 1_000;

/// The server-wide policy a verifier applies besides each client's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPolicy {
    pub protected: Vec<PortSpec>,
    pub open_for: Duration,
    /// `require_bound_addr` in server.toml.
    pub require_bound_addr: bool,
}

/// What the verifier knows of the server itself: its identity, and its
/// public key (the signatures of public-key clients are made over both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIdentity {
    pub id: ServerId,
    /// `None` when the server has no key (it has no public-key client).
    pub public: Option<ServerPublicKey>,
}

/// Signature checks since start, for `knock-server status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureCounts {
    /// Checks made (each a decompression and an Ed25519 verification).
    pub checked: u64,
    /// Checks that failed (`bad-signature`).
    pub failed: u64,
    /// Knocks refused without a check (`sig-limited`).
    pub limited: u64,
}

/// The server's verifier: clients, their hint index and the replay guard.
pub struct Verifier {
    server: ServerIdentity,
    roster: Roster,
    guard: ReplayGuard,
    policy: ServerPolicy,
    /// When each stale hint was last opened.
    stale_opened: HashMap<KeyHint, u64>,
    sig_limit: SigLimiter,
    grant_limit: GrantLimiter,
    signatures: SignatureCounts,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("roster", &self.roster)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(
        server: ServerIdentity,
        roster: Roster,
        policy: ServerPolicy,
        guard: ReplayGuard,
    ) -> Self {
        Self {
            server,
            roster,
            guard,
            policy,
            stale_opened: HashMap::new(),
            sig_limit: SigLimiter::default(),
            grant_limit: GrantLimiter::default(),
            signatures: SignatureCounts::default(),
        }
    }

    /// Replaces clients and policy (a reload), keeping the replay memory
    /// and the limits; returns the old clients, for the caller to drop off
    /// the packet loop. `server` may have gained a key (its first public-key
    /// client); its identity is the same. The roster's window becomes the
    /// replay guard's.
    pub fn reconfigure(
        &mut self,
        server: ServerIdentity,
        roster: Roster,
        policy: ServerPolicy,
    ) -> Roster {
        self.server = server;
        self.policy = policy;
        self.guard.set_window_ms(roster.window_ms);
        self.stale_opened.clear();
        std::mem::replace(&mut self.roster, roster)
    }

    /// What the verifier knows of the server.
    pub fn server(&self) -> ServerIdentity {
        self.server
    }

    /// Does at most `budget` units of work (a unit is one HMAC) to keep the
    /// hint index covering `now_ms`: one slot is added (and one dropped)
    /// every 30 s, spread over as many calls as it takes.
    pub fn advance_index(&mut self, now_ms: u64, budget: usize) -> Progress {
        self.roster.advance(now_ms, budget)
    }

    /// Tells the replay guard and the limiters the time; call at least once
    /// per second. The hint index follows the time in
    /// [`Self::advance_index`].
    pub fn tick(&mut self, now_ms: u64) -> Tick {
        self.stale_opened
            .retain(|_, &mut at| now_ms.saturating_sub(at) < STALE_HINT_EVERY_MS && at <= now_ms);
        self.sig_limit.prune(now_ms);
        self.grant_limit.prune(now_ms);
        self.guard.tick(now_ms)
    }

    /// The replay guard, whose state is made durable.
    pub fn replay_guard(&self) -> &ReplayGuard {
        &self.guard
    }

    /// The replay guard's floor: the highest time it has seen.
    pub fn floor_ms(&self) -> u64 {
        self.guard.floor_ms()
    }

    /// Until when knocks are refused after a lost state (0 if none).
    pub fn refused_through_ms(&self) -> u64 {
        self.guard.refused_through_ms()
    }

    /// The clients whose `expires` has passed at `now_ms`, with it.
    pub fn expired(&self, now_ms: u64) -> Vec<(String, String)> {
        let roster = &self.roster;
        roster
            .expiring
            .iter()
            .filter_map(|&i| {
                let client = roster.clients.get(i as usize)?;
                let expires = roster
                    .policies
                    .get(client.policy as usize)?
                    .expires
                    .as_ref()?;
                expires.has_passed(now_ms).then(|| {
                    (
                        client.name.of(&roster.names).to_owned(),
                        expires.to_string(),
                    )
                })
            })
            .collect()
    }

    pub fn client_count(&self) -> usize {
        self.roster.len()
    }

    /// How many clients of the mode `mode` are loaded.
    pub fn count_of(&self, mode: Mode) -> usize {
        match mode {
            Mode::Public => self.roster.public_clients,
            Mode::Shared => self.roster.clients.len() - self.roster.public_clients,
        }
    }

    /// Signature checks since start.
    pub fn signature_counts(&self) -> SignatureCounts {
        self.signatures
    }

    /// Runs every check on one datagram from `source` at `now_ms`. Consumes
    /// nothing (it notes when a stale hint was opened, and charges a failed
    /// signature check to its client's limit).
    pub fn verify(
        &mut self,
        payload: &[u8],
        source: IpAddr,
        now_ms: u64,
    ) -> Result<PendingGrant, Rejection> {
        // 1. Length.
        let knock = KnockBytes::parse(payload).map_err(Rejection::Length)?;
        // 2. Hint.
        let (index, slot) = self
            .roster
            .index
            .lookup(knock.hint())
            .ok_or(Rejection::UnknownClient)?;
        let (first, last) = slot_range(now_ms, self.guard.window_ms());
        if !(first..=last).contains(&slot) {
            // Only a knock from a client whose clock is off by more than
            // the window carries this hint, or a copy of an old knock: one
            // opening a second names the client in the log, no more.
            match self.stale_opened.get(knock.hint()) {
                Some(&at) if now_ms.saturating_sub(at) < STALE_HINT_EVERY_MS && at <= now_ms => {
                    return Err(Rejection::StaleHint)
                }
                _ => {
                    self.stale_opened.insert(*knock.hint(), now_ms);
                }
            }
        }
        let client = self
            .roster
            .clients
            .get(index)
            .ok_or(Rejection::UnknownClient)?;
        let client_policy = self
            .roster
            .policies
            .get(client.policy as usize)
            .ok_or(Rejection::UnknownClient)?;
        let client_name = client.name.of(&self.roster.names);
        let name = || client_name.to_owned();
        // 3, 4. One AEAD open, and decoding in the entry's mode.
        let opened =
            open(&client.keys, client.mode(), &knock).map_err(|reason| Rejection::Open {
                client: name(),
                reason,
            })?;
        // 5. Freshness and replay: checked, not consumed.
        let fresh = self
            .guard
            .check(client.replay_id(), opened.timestamp_ms, now_ms)
            .map_err(|reason| Rejection::Replay {
                client: name(),
                reason,
            })?;
        // 6. Policy.
        let (addr, duration) =
            self.policy_check(client_name, client_policy, &opened, source, now_ms)?;
        // 7-9. The signature of a public-key client, rate limited.
        if let Some(key) = &client.public_key {
            if !self.sig_limit.allows(client.replay_id(), now_ms) {
                self.signatures.limited += 1;
                return Err(Rejection::SigLimited { client: name() });
            }
            self.signatures.checked += 1;
            let verified = match &self.server.public {
                Some(server) => opened
                    .verify_signature(key, server, &self.server.id)
                    .is_ok(),
                // Not reached: a server with a public-key client has a key.
                None => false,
            };
            if !verified {
                self.signatures.failed += 1;
                self.sig_limit.charge(client.replay_id(), now_ms);
                return Err(Rejection::BadSignature { client: name() });
            }
        }
        // 10. A client granted more than its burst lately waits its turn.
        if !self.grant_limit.allows(client.replay_id(), now_ms) {
            return Err(Rejection::RateLimited { client: name() });
        }
        Ok(PendingGrant {
            fresh,
            client: name(),
            addr,
            ports: opened.request.ports,
            duration,
        })
    }

    /// Step 6: the client's and the server's policy. Returns the address to
    /// open for and for how long.
    fn policy_check(
        &self,
        name: &str,
        client: &ClientPolicy,
        opened: &OpenedKnock,
        source: IpAddr,
        now_ms: u64,
    ) -> Result<(IpAddr, Duration), Rejection> {
        let name = || name.to_owned();
        if let Some(expires) = client.expires.as_ref().filter(|e| e.has_passed(now_ms)) {
            return Err(Rejection::Expired {
                client: name(),
                expires: expires.to_string(),
            });
        }
        let request = &opened.request;
        let addr = match request.bound_addr {
            Some(bound) if canonical(bound) != canonical(source) => {
                return Err(Rejection::SourceMismatch {
                    client: name(),
                    bound,
                    sender: source,
                })
            }
            Some(_) => canonical(source),
            None if client.require_bound_addr || self.policy.require_bound_addr => {
                return Err(Rejection::Unbound {
                    client: name(),
                    by: if client.require_bound_addr {
                        "its entry"
                    } else {
                        "server.toml"
                    },
                })
            }
            None => canonical(source),
        };
        if !plausible_source(addr) {
            // A packet socket sees frames before the kernel drops martians, so
            // a raced copy could claim these; a grant for them means nothing.
            return Err(Rejection::ImplausibleSource {
                client: name(),
                sender: addr,
            });
        }
        if !client.allow_from.is_empty() && !client.allow_from.iter().any(|b| b.contains(addr)) {
            return Err(Rejection::NotAllowedFrom {
                client: name(),
                sender: addr,
            });
        }
        for port in &request.ports {
            if !client.ports.contains(port) || !self.policy.protected.contains(port) {
                return Err(Rejection::PortNotPermitted {
                    client: name(),
                    port: *port,
                });
            }
        }
        let cap = client
            .max_open_for
            .unwrap_or(self.policy.open_for)
            .min(self.policy.open_for);
        let duration = match request.duration_s {
            0 => cap,
            secs => Duration::from_secs(u64::from(secs)).min(cap),
        };
        Ok((addr, duration))
    }

    /// Consumes a verified knock. Returns the grant and what the replay
    /// guard now remembers of it, which must be durable before the grant
    /// is made ([`crate::state::ReplayStore::persist`]).
    pub fn consume(&mut self, pending: PendingGrant, now_ms: u64) -> (Grant, Consumed) {
        self.grant_limit.charge(pending.fresh.key(), now_ms);
        let consumed = self.guard.commit(pending.fresh, now_ms);
        let grant = Grant {
            client: pending.client,
            addr: pending.addr,
            ports: pending.ports,
            duration: pending.duration,
        };
        (grant, consumed)
    }
}

/// Can any host send from `addr`, wherever the datagram arrived? Not from
/// "this network" (0.0.0.0/8, whose addresses only a host without one yet
/// uses, to broadcast), nor from a multicast or broadcast address: the
/// kernel drops such sources as martians, and a grant for them means
/// nothing.
///
/// Loopback, link-local and this host's own addresses are plausible here:
/// on loopback they are the host knocking itself (how a packaged install is
/// smoke-tested). Arriving from anywhere else they are not, which capture
/// decides, since only it knows the device a datagram arrived on
/// (`capture::local_addrs`), before any cryptography.
fn plausible_source(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.octets()[0] == 0 || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Clients, knocks and a verifier for the unit tests of the pipeline.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod fixtures {
    use std::net::IpAddr;
    use std::path::Path;
    use std::time::Duration;

    use knock_keys::entry::{ClientEntry, Credential};
    use knock_proto::{
        seal, ClientIdentity, ClientSecret, IdentitySeed, PairKeys, PortSpec, ReplayGuard, Request,
        SealRandomness, Sealer, ServerId, ServerSecretKey,
    };

    use super::{Roster, ServerIdentity, ServerPolicy, Verifier};
    use crate::pair_keys::Keyring;

    pub const NOW: u64 = 1_800_000_000_000;
    pub const SERVER: ServerId = ServerId([7; 16]);

    /// This server's X25519 key.
    pub fn server_key() -> ServerSecretKey {
        ServerSecretKey::from_bytes([9; 32])
    }

    pub fn identity() -> ServerIdentity {
        ServerIdentity {
            id: SERVER,
            public: Some(server_key().public()),
        }
    }

    fn entry(name: &str, credential: Credential, ports: &[u16]) -> ClientEntry {
        ClientEntry {
            name: name.into(),
            credential,
            ports: ports.iter().map(|&p| PortSpec::tcp(p)).collect(),
            max_open_for: None,
            allow_from: Vec::new(),
            expires: None,
            require_bound_addr: false,
        }
    }

    /// A shared-key client whose secret is `[byte; 32]`.
    pub fn client(name: &str, byte: u8, ports: &[u16]) -> ClientEntry {
        entry(
            name,
            Credential::Shared(ClientSecret::from_bytes([byte; 32])),
            ports,
        )
    }

    /// The identity whose seed is `[seed; 32]`.
    pub fn person(seed: u8) -> ClientIdentity {
        ClientIdentity::from_seed(&IdentitySeed::from_bytes([seed; 32]))
    }

    /// A public-key client: the identity [`person`]`(seed)`.
    pub fn public_client(name: &str, seed: u8, ports: &[u16]) -> ClientEntry {
        entry(name, Credential::Public(person(seed).public()), ports)
    }

    /// A public-key knock of [`person`]`(seed)` to this server.
    pub fn public_knock(seed: u8, ports: &[u16], bound: Option<IpAddr>, at: u64) -> Vec<u8> {
        let identity = person(seed);
        let server = server_key().public();
        let prk = identity.pair_prk(&server, &SERVER).unwrap();
        let sealer = Sealer::Public {
            identity: &identity,
            server: &server,
            server_id: &SERVER,
        };
        seal(
            &PairKeys::from_prk(&prk),
            &sealer,
            &request(ports, bound),
            at,
            &randomness(at),
        )
        .unwrap()
    }

    /// What a thief who holds this server's key makes for the public-key
    /// client [`person`]`(victim)`: its pair keys (AEAD-valid, the right
    /// hint), signed by another identity, or (`shared_style`) unsigned.
    pub fn forged_knock(victim: u8, at: u64, shared_style: bool) -> Vec<u8> {
        let server = server_key().public();
        let prk = server_key()
            .pair_prk(&person(victim).public(), &SERVER)
            .unwrap();
        let thief = person(0xee);
        let sealer = if shared_style {
            Sealer::Shared
        } else {
            Sealer::Public {
                identity: &thief,
                server: &server,
                server_id: &SERVER,
            }
        };
        seal(
            &PairKeys::from_prk(&prk),
            &sealer,
            &request(&[4992], None),
            at,
            &randomness(at),
        )
        .unwrap()
    }

    pub fn policy() -> ServerPolicy {
        ServerPolicy {
            protected: vec![PortSpec::tcp(22), PortSpec::tcp(4992)],
            open_for: Duration::from_secs(30),
            require_bound_addr: false,
        }
    }

    /// The pair keys of `clients` on this server, as the daemon makes them.
    pub fn keys(clients: &[ClientEntry]) -> Vec<PairKeys> {
        Keyring::new(SERVER, Some(server_key()), "/etc/knock/server.key".into())
            .derive(clients, Path::new("/etc/knock/clients.d"))
            .unwrap()
            .keys
    }

    /// The roster of `clients` at [`NOW`].
    pub fn roster(clients: &[ClientEntry]) -> Roster {
        Roster::build(clients, keys(clients), 30_000, NOW)
    }

    pub fn verifier(clients: &[ClientEntry]) -> Verifier {
        Verifier::new(
            identity(),
            roster(clients),
            policy(),
            ReplayGuard::first_start(30_000, NOW - 60_000),
        )
    }

    /// Reloads `v` with `clients` and `policy`.
    pub fn reload(v: &mut Verifier, clients: &[ClientEntry], policy: ServerPolicy) {
        let _ = v.reconfigure(identity(), roster(clients), policy);
    }

    pub fn request(ports: &[u16], bound: Option<IpAddr>) -> Request {
        Request {
            ports: ports.iter().map(|&p| PortSpec::tcp(p)).collect(),
            duration_s: 0,
            bound_addr: bound,
        }
    }

    pub fn randomness(at: u64) -> SealRandomness {
        SealRandomness {
            nonce: [at as u8; 24],
            padding: at as u8,
        }
    }

    /// A shared-key knock of the client whose secret is `[secret; 32]`, for
    /// the server `server`.
    pub fn knock(
        secret: u8,
        ports: &[u16],
        bound: Option<IpAddr>,
        at: u64,
        server: ServerId,
    ) -> Vec<u8> {
        let keys = PairKeys::shared(&ClientSecret::from_bytes([secret; 32]), &server);
        seal(
            &keys,
            &Sealer::Shared,
            &request(ports, bound),
            at,
            &randomness(at),
        )
        .unwrap()
    }

    pub fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{
        addr, client, forged_knock, knock, person, public_client, public_knock, reload, verifier,
        NOW, SERVER,
    };
    use super::*;

    fn reason(result: Result<PendingGrant, Rejection>) -> &'static str {
        match result {
            Ok(pending) => panic!("verified: {pending:?}"),
            Err(rejection) => rejection.reason(),
        }
    }

    #[test]
    fn each_step_refuses_with_its_own_reason() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let a = addr("198.18.0.2");
        assert_eq!(reason(v.verify(&[0; 10], a, NOW)), "bad-length");
        assert_eq!(
            reason(v.verify(&knock(2, &[4992], None, NOW, SERVER), a, NOW)),
            "unknown-client"
        );
        let mut forged = knock(1, &[4992], None, NOW, SERVER);
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        assert_eq!(reason(v.verify(&forged, a, NOW)), "bad-mac");
        // A knock for another server: its hint is another server's.
        assert_eq!(
            reason(v.verify(&knock(1, &[4992], None, NOW, ServerId([8; 16])), a, NOW)),
            "unknown-client"
        );
        assert_eq!(
            reason(v.verify(&knock(1, &[4992], None, NOW - 31_000, SERVER), a, NOW)),
            "too-old"
        );
        assert_eq!(
            reason(v.verify(
                &knock(1, &[4992], Some(addr("198.18.0.9")), NOW, SERVER),
                a,
                NOW
            )),
            "source-mismatch"
        );
        assert_eq!(
            reason(v.verify(&knock(1, &[4992], None, NOW, SERVER), addr("0.0.0.0"), NOW)),
            "implausible-source"
        );
        assert_eq!(
            reason(v.verify(&knock(1, &[22], None, NOW, SERVER), a, NOW)),
            "port-not-permitted"
        );
    }

    #[test]
    fn verifying_changes_nothing_until_consumed() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let k = knock(1, &[4992], None, NOW, SERVER);
        let a = addr("198.18.0.2");
        let first = v.verify(&k, a, NOW).expect("valid");
        let again = v.verify(&k, a, NOW).expect("still valid: nothing consumed");
        assert_eq!((first.addr, &first.ports), (again.addr, &again.ports));
        let (grant, consumed) = v.consume(first, NOW);
        assert_eq!(grant.client, "alice");
        assert_eq!(consumed.stamp_ms, NOW, "the replay state to make durable");
        assert_eq!(reason(v.verify(&k, a, NOW)), "replay");
    }

    #[test]
    fn a_client_policy_refuses_without_consuming() {
        let mut bound = client("alice", 1, &[4992]);
        bound.require_bound_addr = true;
        let mut fenced = client("bob", 2, &[4992]);
        fenced.allow_from = vec!["198.18.0.0/24".parse().unwrap()];
        let mut old = client("carol", 3, &[4992]);
        old.expires = Some("2020-01-01".parse().unwrap());
        let mut v = verifier(&[bound, fenced, old]);
        let a = addr("198.18.0.2");

        let unbound = knock(1, &[4992], None, NOW, SERVER);
        assert_eq!(reason(v.verify(&unbound, a, NOW)), "unbound");
        let bound_knock = knock(1, &[4992], Some(a), NOW + 1, SERVER);
        assert!(v.verify(&bound_knock, a, NOW).is_ok());

        let from_outside = knock(2, &[4992], None, NOW, SERVER);
        assert_eq!(
            reason(v.verify(&from_outside, addr("198.18.1.66"), NOW)),
            "not-allowed-from"
        );
        // Not consumed: the same knock from inside the block is honoured.
        assert!(v.verify(&from_outside, a, NOW).is_ok());

        assert_eq!(
            reason(v.verify(&knock(3, &[4992], None, NOW, SERVER), a, NOW)),
            "expired"
        );
        assert_eq!(
            v.expired(NOW),
            [("carol".to_owned(), "2020-01-01".to_owned())]
        );
    }

    #[test]
    fn the_server_can_demand_binding() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        reload(
            &mut v,
            &[client("alice", 1, &[4992])],
            ServerPolicy {
                require_bound_addr: true,
                ..super::fixtures::policy()
            },
        );
        let a = addr("198.18.0.2");
        let unbound = knock(1, &[4992], None, NOW, SERVER);
        match v.verify(&unbound, a, NOW) {
            Err(
                r @ Rejection::Unbound {
                    by: "server.toml", ..
                },
            ) => {
                assert_eq!(r.reason(), "unbound")
            }
            other => panic!("{other:?}"),
        }
        assert!(v
            .verify(&knock(1, &[4992], Some(a), NOW, SERVER), a, NOW)
            .is_ok());
    }

    /// Renaming a client's file (same key) and reloading keeps its replay
    /// history: a knock it had accepted stays a replay.
    #[test]
    fn a_renamed_client_keeps_its_history() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let a = addr("198.18.0.2");
        let k = knock(1, &[4992], None, NOW, SERVER);
        let pending = v.verify(&k, a, NOW).unwrap();
        let _ = v.consume(pending, NOW);
        reload(
            &mut v,
            &[client("alice-laptop", 1, &[4992])],
            super::fixtures::policy(),
        );
        assert_eq!(reason(v.verify(&k, a, NOW + 10)), "replay");
    }

    /// The index follows the clock one slot at a time, in bounded steps:
    /// a client's knocks are found at every moment of an hour, whatever
    /// step of the work the index is at.
    #[test]
    fn knocks_are_found_while_the_index_rolls_forward() {
        let clients: Vec<_> = (1..=50u8)
            .map(|i| client(&format!("c{i}"), i, &[4992]))
            .collect();
        let mut v = verifier(&clients);
        let a = addr("198.18.0.2");
        let mut sent = 0;
        for second in (0..3_600u64).step_by(7) {
            let now = NOW + second * 1_000;
            v.tick(now);
            // A small budget: a slot takes several calls.
            let _ = v.advance_index(now, 40);
            let who = (second % 50) as u8 + 1;
            let k = knock(who, &[4992], None, now, SERVER);
            let pending = v.verify(&k, a, now).expect("found and fresh");
            assert_eq!(pending.client, format!("c{who}"));
            let _ = v.consume(pending, now);
            sent += 1;
        }
        assert!(sent > 500);
    }

    /// A reload swaps in a roster built elsewhere: knocks of clients kept
    /// are honoured at once, replay memory and limits carry over.
    #[test]
    fn a_reload_swaps_the_roster_and_keeps_the_memory() {
        let mut v = verifier(&[client("alice", 1, &[4992]), client("bob", 2, &[4992])]);
        let a = addr("198.18.0.2");
        let k = knock(1, &[4992], None, NOW, SERVER);
        let pending = v.verify(&k, a, NOW).unwrap();
        let _ = v.consume(pending, NOW);
        let old = v.reconfigure(
            super::fixtures::identity(),
            Roster::build(
                &[client("alice", 1, &[4992]), client("carol", 3, &[4992])],
                super::fixtures::keys(&[client("alice", 1, &[4992]), client("carol", 3, &[4992])]),
                30_000,
                NOW,
            ),
            super::fixtures::policy(),
        );
        assert_eq!(old.len(), 2);
        assert_eq!(reason(v.verify(&k, a, NOW + 1)), "replay");
        assert!(v
            .verify(&knock(3, &[4992], None, NOW + 2, SERVER), a, NOW + 2)
            .is_ok());
        assert_eq!(
            reason(v.verify(&knock(2, &[4992], None, NOW + 3, SERVER), a, NOW + 3)),
            "unknown-client"
        );
    }

    /// A hint kept only to diagnose clock skew is opened at most once a
    /// second: a flood of one copied stale knock costs a hash lookup each.
    #[test]
    fn a_stale_hint_is_opened_once_a_second() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let a = addr("198.18.0.2");
        let stale = knock(1, &[4992], None, NOW - 5 * 60_000, SERVER);
        assert_eq!(
            reason(v.verify(&stale, a, NOW)),
            "too-old",
            "opened: names the client"
        );
        for ms in [1, 500, 999] {
            assert_eq!(reason(v.verify(&stale, a, NOW + ms)), "stale-hint");
        }
        assert_eq!(reason(v.verify(&stale, a, NOW + 1_000)), "too-old");
        // A hint of the freshness window is opened every time.
        let fresh = knock(1, &[4992], None, NOW, SERVER);
        let mut forged = fresh.clone();
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        for ms in [0, 1, 2] {
            assert_eq!(reason(v.verify(&forged, a, NOW + ms)), "bad-mac");
        }
    }

    #[test]
    fn sources_no_host_can_have_are_implausible() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        for (at, from) in [
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "ff02::1",
            "::ffff:0.0.0.7",
            "::ffff:224.0.0.1",
        ]
        .into_iter()
        .enumerate()
        {
            let k = knock(1, &[4992], None, NOW + at as u64, SERVER);
            assert_eq!(
                reason(v.verify(&k, addr(from), NOW)),
                "implausible-source",
                "{from}"
            );
        }
        // Those that are plausible here; capture refuses the loopback,
        // link-local and own ones that did not arrive on loopback.
        for (at, from) in ["127.0.0.1", "::1", "169.254.1.1", "fe80::1", "1.0.0.1"]
            .into_iter()
            .enumerate()
        {
            let k = knock(1, &[4992], None, NOW + 100 + at as u64, SERVER);
            assert!(v.verify(&k, addr(from), NOW).is_ok(), "{from}");
        }
    }

    #[test]
    fn a_mapped_address_is_the_ipv4_address() {
        let mut v = verifier(&[client("alice", 1, &[4992])]);
        let k = knock(1, &[4992], Some(addr("198.18.0.2")), NOW, SERVER);
        let pending = v
            .verify(&k, addr("::ffff:198.18.0.2"), NOW)
            .expect("bound to the address it maps");
        assert_eq!(pending.addr, addr("198.18.0.2"));
    }

    /// Shared-key and public-key clients side by side: each opens with its
    /// own kind of knock, and only the public-key one costs a signature
    /// check.
    #[test]
    fn shared_and_public_clients_mix() {
        let mut v = verifier(&[client("alice", 1, &[4992]), public_client("bob", 2, &[22])]);
        assert_eq!((v.count_of(Mode::Shared), v.count_of(Mode::Public)), (1, 1));
        let a = addr("198.18.0.2");
        let pending = v
            .verify(&knock(1, &[4992], None, NOW, SERVER), a, NOW)
            .unwrap();
        assert_eq!(pending.client, "alice");
        assert_eq!(v.signature_counts().checked, 0);
        let pending = v
            .verify(&public_knock(2, &[22], None, NOW), a, NOW)
            .unwrap();
        assert_eq!(pending.client, "bob");
        assert_eq!(
            v.signature_counts(),
            SignatureCounts {
                checked: 1,
                failed: 0,
                limited: 0
            }
        );
        // A knock of an identity that is not enrolled is junk here.
        assert_eq!(
            reason(v.verify(&public_knock(3, &[22], None, NOW), a, NOW)),
            "unknown-client"
        );
    }

    /// The signed flag must agree with the entry's mode, both ways: a thief
    /// who holds the server's key cannot send an unsigned "shared-style"
    /// knock for a public-key client.
    #[test]
    fn the_mode_of_a_knock_must_be_its_entrys() {
        let mut v = verifier(&[
            client("alice", 1, &[4992]),
            public_client("bob", 2, &[4992]),
        ]);
        let a = addr("198.18.0.2");
        assert_eq!(
            reason(v.verify(&forged_knock(2, NOW, true), a, NOW)),
            "wrong-mode"
        );
        // Alice's pair keys, sealed as a signed knock.
        let identity = person(1);
        let server = super::fixtures::server_key().public();
        let signed = knock_proto::seal(
            &PairKeys::shared(&knock_proto::ClientSecret::from_bytes([1; 32]), &SERVER),
            &knock_proto::Sealer::Public {
                identity: &identity,
                server: &server,
                server_id: &SERVER,
            },
            &super::fixtures::request(&[4992], None),
            NOW,
            &super::fixtures::randomness(NOW),
        )
        .unwrap();
        assert_eq!(reason(v.verify(&signed, a, NOW)), "wrong-mode");
        assert_eq!(v.signature_counts().checked, 0);
    }

    /// Replayed, stale, expired, unbound, misdirected or over-reaching
    /// public-key knocks are refused before their signature is looked at.
    #[test]
    fn a_refused_public_knock_costs_no_signature_check() {
        let mut expired = public_client("old", 3, &[4992]);
        expired.expires = Some("2020-01-01".parse().unwrap());
        let mut bound = public_client("bound", 4, &[4992]);
        bound.require_bound_addr = true;
        let mut fenced = public_client("fenced", 5, &[4992]);
        fenced.allow_from = vec!["198.18.0.0/24".parse().unwrap()];
        let mut v = verifier(&[public_client("bob", 2, &[4992]), expired, bound, fenced]);
        let a = addr("198.18.0.2");
        let good = public_knock(2, &[4992], None, NOW);
        let pending = v.verify(&good, a, NOW).unwrap();
        let _ = v.consume(pending, NOW);
        assert_eq!(v.signature_counts().checked, 1);

        let cases = [
            (good.clone(), a, "replay"),
            (public_knock(2, &[4992], None, NOW - 31_000), a, "too-old"),
            (
                public_knock(2, &[4992], None, NOW + 31_000),
                a,
                "from-future",
            ),
            (
                public_knock(2, &[22], None, NOW + 1),
                a,
                "port-not-permitted",
            ),
            (
                public_knock(2, &[80], None, NOW + 1),
                a,
                "port-not-permitted",
            ),
            (
                public_knock(2, &[4992], Some(addr("198.18.0.9")), NOW + 1),
                a,
                "source-mismatch",
            ),
            (
                public_knock(2, &[4992], None, NOW + 1),
                addr("0.0.0.0"),
                "implausible-source",
            ),
            (public_knock(3, &[4992], None, NOW), a, "expired"),
            (public_knock(4, &[4992], None, NOW), a, "unbound"),
            (
                public_knock(5, &[4992], None, NOW),
                addr("198.18.1.66"),
                "not-allowed-from",
            ),
            (forged_knock(2, NOW, true), a, "wrong-mode"),
        ];
        for (knock, from, expected) in cases {
            assert_eq!(reason(v.verify(&knock, from, NOW)), expected);
        }
        assert_eq!(
            v.signature_counts().checked,
            1,
            "no refused knock was signature-checked"
        );
        // A forgery that is a replay or out of policy costs nothing either:
        // the forger cannot even spend the client's limit with it.
        assert_eq!(
            reason(v.verify(&forged_knock(2, NOW, false), a, NOW)),
            "replay"
        );
        assert_eq!(v.signature_counts().checked, 1);
    }

    /// A thief with the server's key makes AEAD-valid knocks for bob, which
    /// fail their signature check: bob is held down for 20 s, alice (public)
    /// and carol (shared) are not, and nothing of bob's is consumed.
    #[test]
    fn a_bad_signature_holds_down_only_the_impersonated_client() {
        let mut v = verifier(&[
            public_client("alice", 1, &[4992]),
            public_client("bob", 2, &[4992]),
            client("carol", 3, &[4992]),
        ]);
        let a = addr("198.18.0.2");
        match v.verify(&forged_knock(2, NOW, false), addr("203.0.113.9"), NOW) {
            Err(r @ Rejection::BadSignature { .. }) => {
                assert_eq!(r.reason(), "bad-signature");
                assert!(r.is_authentic());
                assert!(r.to_string().contains("rotate server.key"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            v.signature_counts(),
            SignatureCounts {
                checked: 1,
                failed: 1,
                limited: 0
            }
        );
        // Bob's own knock, and more forgeries, are refused without a check.
        let bobs = public_knock(2, &[4992], None, NOW + 1);
        assert_eq!(reason(v.verify(&bobs, a, NOW + 1)), "sig-limited");
        assert_eq!(
            reason(v.verify(&forged_knock(2, NOW + 2, false), a, NOW + 2)),
            "sig-limited"
        );
        assert_eq!(v.signature_counts().checked, 1, "no check while limited");
        assert_eq!(v.signature_counts().limited, 2);
        // The others are not slowed at all.
        assert!(v
            .verify(&public_knock(1, &[4992], None, NOW + 3), a, NOW + 3)
            .is_ok());
        assert!(v
            .verify(&knock(3, &[4992], None, NOW + 3, SERVER), a, NOW + 3)
            .is_ok());
        // The limit is kept across a reload and a rename.
        reload(
            &mut v,
            &[
                public_client("alice", 1, &[4992]),
                public_client("bob-laptop", 2, &[4992]),
                client("carol", 3, &[4992]),
            ],
            super::fixtures::policy(),
        );
        let t = NOW + SIG_FAILURE_EVERY_MS - 1;
        v.tick(t);
        assert_eq!(reason(v.verify(&bobs, a, t)), "sig-limited");
        // 20 s later bob's knock, which was never consumed, opens.
        let t = NOW + SIG_FAILURE_EVERY_MS;
        v.tick(t);
        let pending = v.verify(&bobs, a, t).expect("bob opens again");
        assert_eq!(pending.client, "bob-laptop");
        let _ = v.consume(pending, t);
        // Successes are never charged: bob knocks again at once.
        for n in 1..=3 {
            assert!(v
                .verify(&public_knock(2, &[4992], None, t + n), a, t + n)
                .is_ok());
        }
        assert_eq!(v.signature_counts().failed, 1);
    }
}
