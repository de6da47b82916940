//! The replay guard: every knock is honoured at most once, ever.
//!
//! A knock stamped `t` from client `c` is fresh at server time `now` when all
//! of these hold:
//!
//! 1. `now - window <= t <= now + window` (freshness, default ±30 s);
//! 2. `t >= start`, the time this server process started;
//! 3. `t > last[c]`, the newest stamp accepted from `c` (strictly increasing).
//!
//! Rule 3 makes every accepted knock unusable afterwards: a replay carries the
//! same stamp, which is no longer newer. Rule 1 bounds how long `last[c]` must
//! be remembered: an entry older than the window can be forgotten, because
//! every knock it would refuse is already too old. Rule 2 covers a lost state
//! file: every knock accepted by an earlier process was stamped before this one
//! started (unless that client's clock ran ahead of the server's; see
//! docs/PROTOCOL.md), so it is refused even with `last` empty.
//!
//! `last` is written to disk, and made durable, before any grant: the state is
//! O(clients active within the window) and serialises to a few lines.
//!
//! Forgetting is safe only while the window does not widen and the clock does
//! not step back, so [`ReplayGuard::prune`] also raises a floor: a knock
//! stamped before the horizon of the last prune is refused as too old, even
//! under a wider window or an earlier `now` than the prune saw.

use std::collections::HashMap;

use thiserror::Error;

use crate::error::ReplayError;
use crate::valid_client_name;

const STATE_HEADER: &str = "knock-replay-state v1";

/// Remembers, per client, the newest stamp it accepted.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window_ms: u64,
    started_at_ms: u64,
    /// The horizon of the latest [`Self::prune`]: nothing stamped before it
    /// is remembered, so nothing stamped before it is accepted.
    forgotten_before_ms: u64,
    last: HashMap<String, u64>,
}

/// An authentic knock that the guard found fresh. Only [`ReplayGuard::check`]
/// makes one, and [`ReplayGuard::commit`] consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a fresh knock must be committed before it is honoured"]
pub struct FreshKnock {
    client: String,
    timestamp_ms: u64,
}

impl FreshKnock {
    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
}

/// The state file could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StateDecodeError {
    #[error("not a knock replay state file (missing header)")]
    Header,
    #[error("line {0}: expected `CLIENT TIMESTAMP_MS`")]
    Line(usize),
}

impl ReplayGuard {
    /// A guard with no memory, for a server process that started at
    /// `started_at_ms`.
    pub fn new(window_ms: u64, started_at_ms: u64) -> Self {
        Self {
            window_ms,
            started_at_ms,
            forgotten_before_ms: 0,
            last: HashMap::new(),
        }
    }

    /// A guard that remembers what an earlier process wrote with [`Self::encode`].
    pub fn restore(
        window_ms: u64,
        started_at_ms: u64,
        encoded: &[u8],
    ) -> Result<Self, StateDecodeError> {
        let text = std::str::from_utf8(encoded).map_err(|_| StateDecodeError::Header)?;
        let mut lines = text.lines();
        if lines.next() != Some(STATE_HEADER) {
            return Err(StateDecodeError::Header);
        }
        let mut guard = Self::new(window_ms, started_at_ms);
        for (index, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            let (name, stamp) = line
                .split_once(' ')
                .ok_or(StateDecodeError::Line(index + 2))?;
            let stamp: u64 = stamp
                .parse()
                .map_err(|_| StateDecodeError::Line(index + 2))?;
            if !valid_client_name(name) {
                return Err(StateDecodeError::Line(index + 2));
            }
            let entry = guard.last.entry(name.to_owned()).or_insert(stamp);
            *entry = (*entry).max(stamp);
        }
        Ok(guard)
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Changes the freshness window (on reload) without forgetting anything.
    pub fn set_window_ms(&mut self, window_ms: u64) {
        self.window_ms = window_ms;
    }

    /// Is a knock from `client`, stamped `timestamp_ms`, fresh at `now_ms`?
    /// Checking changes nothing: a knock that a later step refuses (a source
    /// mismatch, say) is not consumed.
    pub fn check(
        &self,
        client: &str,
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<FreshKnock, ReplayError> {
        if timestamp_ms.saturating_add(self.window_ms) < now_ms {
            return Err(ReplayError::TooOld {
                age_ms: now_ms - timestamp_ms,
            });
        }
        if timestamp_ms > now_ms.saturating_add(self.window_ms) {
            return Err(ReplayError::FromFuture {
                ahead_ms: timestamp_ms - now_ms,
            });
        }
        if timestamp_ms < self.started_at_ms {
            return Err(ReplayError::BeforeStart);
        }
        if timestamp_ms < self.forgotten_before_ms {
            // Only reachable after the window widened or the clock stepped
            // back since a prune: `last` may have held this client's entry.
            return Err(ReplayError::TooOld {
                age_ms: now_ms.saturating_sub(timestamp_ms),
            });
        }
        if let Some(&last) = self.last.get(client) {
            if timestamp_ms <= last {
                return Err(ReplayError::Replay);
            }
        }
        Ok(FreshKnock {
            client: client.to_owned(),
            timestamp_ms,
        })
    }

    /// Consumes a fresh knock: from now on it, and everything its client
    /// stamped before it, is a replay. Persist [`Self::encode`] before granting.
    pub fn commit(&mut self, fresh: FreshKnock) {
        let entry = self.last.entry(fresh.client).or_insert(fresh.timestamp_ms);
        *entry = (*entry).max(fresh.timestamp_ms);
    }

    /// Forgets entries that can no longer refuse anything: every knock they
    /// would refuse is older than the window already. Knocks stamped before
    /// the horizon stay refused even if the window is widened or the clock
    /// steps back afterwards.
    pub fn prune(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        self.forgotten_before_ms = self.forgotten_before_ms.max(horizon);
        self.last.retain(|_, &mut last| last >= horizon);
    }

    /// Number of clients remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// The state to write to disk, sorted so that equal states give equal
    /// files.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.last.iter().collect();
        entries.sort();
        let mut text = String::from(STATE_HEADER);
        text.push('\n');
        for (name, stamp) in entries {
            text.push_str(name);
            text.push(' ');
            text.push_str(&stamp.to_string());
            text.push('\n');
        }
        text.into_bytes()
    }
}
