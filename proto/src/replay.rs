//! The replay guard: every knock is honoured at most once, ever.
//!
//! A knock stamped `t` with the key whose replay id is `k` is fresh at server
//! time `now` when all of these hold:
//!
//! 1. `now - window <= t <= now + window` (freshness, default ±30 s);
//! 2. `t >= horizon`: nothing stamped before the horizon is accepted. The
//!    horizon is `floor - window`, where the floor is the highest server time
//!    the guard has ever seen (raised on every [`ReplayGuard::tick`], kept in
//!    the state across restarts), and it never moves back: not when the
//!    window widens, not when the clock steps back;
//! 3. `t > refused_through` after a loss of the state: every knock accepted
//!    before was stamped at most `window` after the moment it was accepted,
//!    which was before the restart, so `refused_through = start + window`;
//! 4. `t > last[k]`, the newest stamp accepted with that key.
//!
//! Rule 4 makes every accepted knock unusable afterwards: a replay carries the
//! same stamp, which is no longer newer. Rules 1 and 2 bound how long
//! `last[k]` must be remembered: an entry older than the horizon can be
//! forgotten, because rule 2 refuses everything it would. Rule 2 also keeps a
//! clock that steps back from making a knock fresh again: one accepted before
//! and forgotten, or one held back by an eavesdropper that expired unused.
//! The price of a server clock that steps back by more than the window is
//! that knocks are refused until the clock has caught up with the floor.
//! Rule 3 is the price of a lost state: one window of refusals, never paid
//! on a first start (the initial state is written before the first knock can
//! be accepted: [`ReplayGuard::first_start`]).
//!
//! `last` is written to disk, and made durable, before any grant: the state is
//! O(keys active within the window) and serialises to a few lines. Stored
//! stamps are clamped to the ceiling, the latest stamp any knock could have
//! been accepted with (`floor + window`, at the widest window the guard has
//! used): a later one (a damaged or forged file) would lock its client out.

use std::collections::HashMap;

use thiserror::Error;

use crate::error::ReplayError;
use crate::keys::ReplayId;

const STATE_HEADER: &str = "knock-replay-state v2";

/// Remembers, per key, the newest stamp it accepted.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window_ms: u64,
    /// The highest server time seen.
    floor_ms: u64,
    /// Rule 2: nothing stamped before it is accepted.
    horizon_ms: u64,
    /// Rule 3: nothing stamped at or before it is accepted (0: no state was
    /// lost, or the horizon has passed it).
    refused_through_ms: u64,
    /// The floor when the state was found lost: a window widened later
    /// moves `refused_through_ms` on (knocks accepted before the loss may
    /// have used it).
    lost_at_ms: u64,
    /// The latest stamp any knock could have been accepted with.
    ceiling_ms: u64,
    last: HashMap<ReplayId, u64>,
}

/// An authentic knock that the guard found fresh. Only [`ReplayGuard::check`]
/// makes one, and [`ReplayGuard::commit`] consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a fresh knock must be committed before it is honoured"]
pub struct FreshKnock {
    key: ReplayId,
    timestamp_ms: u64,
}

impl FreshKnock {
    pub fn key(&self) -> ReplayId {
        self.key
    }

    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
}

/// What [`ReplayGuard::commit`] remembered: the key and the stamp now
/// stored for it. [`ReplayGuard::encode_delta`] writes a batch of them, so
/// that making a grant durable costs the same with ten keys remembered or
/// with a hundred thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    pub key: ReplayId,
    pub stamp_ms: u64,
}

/// The state file could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StateDecodeError {
    #[error(
        "not a knock replay state file of this version (the first line is not `{STATE_HEADER}`)"
    )]
    Header,
    #[error("line {0}: expected `floor MS`, `horizon MS`, `ceiling MS`, `refused-through MS`, `lost-at MS` or `REPLAY-ID MS`")]
    Line(usize),
    #[error("it records no floor")]
    NoFloor,
}

/// What [`ReplayGuard::tick`] noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// The clock moved forward (or stood still).
    Forward,
    /// The clock is behind the floor by this much: knocks stamped before
    /// `floor - window` stay refused until it catches up.
    BehindFloor { by_ms: u64 },
}

impl ReplayGuard {
    /// The guard of a server that has never accepted a knock: what
    /// `knock-keygen` writes as the initial state, so that the first start
    /// pays no state-loss price.
    pub fn first_start(window_ms: u64, now_ms: u64) -> Self {
        Self {
            window_ms,
            floor_ms: now_ms,
            horizon_ms: now_ms.saturating_sub(window_ms),
            refused_through_ms: 0,
            lost_at_ms: 0,
            ceiling_ms: now_ms.saturating_add(window_ms),
            last: HashMap::new(),
        }
    }

    /// The guard of a server whose state was lost (missing, unreadable):
    /// nothing stamped up to one window after `now_ms` (or after
    /// `known_floor_ms`, if a floor survived elsewhere) is accepted.
    pub fn after_state_loss(window_ms: u64, now_ms: u64, known_floor_ms: Option<u64>) -> Self {
        let floor_ms = now_ms.max(known_floor_ms.unwrap_or(0));
        Self {
            window_ms,
            floor_ms,
            horizon_ms: floor_ms.saturating_sub(window_ms),
            refused_through_ms: floor_ms.saturating_add(window_ms),
            lost_at_ms: floor_ms,
            ceiling_ms: floor_ms.saturating_add(window_ms),
            last: HashMap::new(),
        }
    }

    /// A guard that remembers what an earlier process wrote with
    /// [`Self::encode`], at `now_ms`. `extra_floor_ms` is a floor recorded
    /// elsewhere since (it may be newer than the state's). The lines of a
    /// newer state may follow (without its header): every value is then the
    /// most restrictive of the two, so a journal can be read back after its
    /// snapshot.
    pub fn restore(
        window_ms: u64,
        now_ms: u64,
        encoded: &[u8],
        extra_floor_ms: Option<u64>,
    ) -> Result<Self, StateDecodeError> {
        let text = std::str::from_utf8(encoded).map_err(|_| StateDecodeError::Header)?;
        let mut lines = text.lines();
        if lines.next() != Some(STATE_HEADER) {
            return Err(StateDecodeError::Header);
        }
        let mut floor = None;
        let mut horizon = 0;
        let mut refused_through = 0;
        let mut ceiling = 0;
        let mut lost_at = 0;
        let mut last = HashMap::new();
        for (index, line) in lines.enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = || StateDecodeError::Line(index + 2);
            let (key, value) = line.split_once(' ').ok_or_else(bad)?;
            let value: u64 = value.parse().map_err(|_| bad())?;
            match key {
                // Repeated (a state and a newer one concatenated, as a
                // journal is read back): the most restrictive wins.
                "floor" => floor = Some(floor.unwrap_or(0).max(value)),
                "horizon" => horizon = horizon.max(value),
                "refused-through" => refused_through = refused_through.max(value),
                "ceiling" => ceiling = ceiling.max(value),
                "lost-at" => lost_at = lost_at.max(value),
                id => {
                    let id = ReplayId::from_hex(id).ok_or_else(bad)?;
                    let entry = last.entry(id).or_insert(value);
                    *entry = (*entry).max(value);
                }
            }
        }
        let floor_ms = floor
            .ok_or(StateDecodeError::NoFloor)?
            .max(now_ms)
            .max(extra_floor_ms.unwrap_or(0));
        let mut guard = Self {
            window_ms,
            floor_ms,
            horizon_ms: horizon.max(floor_ms.saturating_sub(window_ms)),
            refused_through_ms: refused_through,
            lost_at_ms: lost_at,
            ceiling_ms: ceiling.max(floor_ms.saturating_add(window_ms)),
            last,
        };
        let ceiling = guard.ceiling_ms;
        for stamp in guard.last.values_mut() {
            *stamp = (*stamp).min(ceiling);
        }
        guard.extend_refusal();
        guard.forget_old();
        Ok(guard)
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The highest server time seen.
    pub fn floor_ms(&self) -> u64 {
        self.floor_ms
    }

    /// Until when knocks are refused after a state loss (0 if none was lost).
    pub fn refused_through_ms(&self) -> u64 {
        self.refused_through_ms
    }

    /// Changes the freshness window (on reload) without forgetting anything:
    /// the horizon does not move back.
    pub fn set_window_ms(&mut self, window_ms: u64) {
        self.window_ms = window_ms;
        self.horizon_ms = self.horizon_ms.max(self.floor_ms.saturating_sub(window_ms));
        self.raise_ceiling();
        self.extend_refusal();
    }

    /// After a state loss, knocks accepted before it may have been stamped
    /// up to the widest window since; once the horizon has passed the
    /// refusal, rule 2 covers it and it is dropped.
    fn extend_refusal(&mut self) {
        if self.refused_through_ms == 0 {
            return;
        }
        if self.horizon_ms > self.refused_through_ms {
            self.refused_through_ms = 0;
            self.lost_at_ms = 0;
        } else {
            self.refused_through_ms = self
                .refused_through_ms
                .max(self.lost_at_ms.saturating_add(self.window_ms));
        }
    }

    fn raise_ceiling(&mut self) {
        self.ceiling_ms = self
            .ceiling_ms
            .max(self.floor_ms.saturating_add(self.window_ms));
    }

    /// Learns the time: raises the floor and the horizon, and forgets what
    /// the horizon has made useless. Call it regularly (the server does every
    /// half second) and before [`Self::encode`].
    pub fn tick(&mut self, now_ms: u64) -> Tick {
        let tick = self.learn_time(now_ms);
        self.forget_old();
        tick
    }

    /// [`Self::tick`] without forgetting: constant time, for every commit.
    /// Keys the horizon has passed stay until the next tick, harmlessly:
    /// rule 2 refuses everything they would.
    fn learn_time(&mut self, now_ms: u64) -> Tick {
        let tick = if now_ms < self.floor_ms {
            Tick::BehindFloor {
                by_ms: self.floor_ms - now_ms,
            }
        } else {
            Tick::Forward
        };
        self.floor_ms = self.floor_ms.max(now_ms);
        self.horizon_ms = self
            .horizon_ms
            .max(self.floor_ms.saturating_sub(self.window_ms));
        self.raise_ceiling();
        self.extend_refusal();
        tick
    }

    /// Is a knock sealed with the key `key`, stamped `timestamp_ms`, fresh at
    /// `now_ms`? Checking changes nothing: a knock that a later step refuses
    /// (a source mismatch, say) is not consumed.
    pub fn check(
        &self,
        key: ReplayId,
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
        if timestamp_ms < self.horizon_ms {
            // The clock stepped back, or the window widened, since the
            // floor was raised: the knock may have been accepted and
            // forgotten, or may have expired unused.
            return Err(ReplayError::BeforeFloor {
                floor_ms: self.floor_ms,
            });
        }
        if timestamp_ms <= self.refused_through_ms {
            return Err(ReplayError::StateLost {
                until_ms: self.refused_through_ms,
            });
        }
        if let Some(&last) = self.last.get(&key) {
            if timestamp_ms <= last {
                return Err(ReplayError::Replay);
            }
        }
        Ok(FreshKnock { key, timestamp_ms })
    }

    /// Consumes a fresh knock at `now_ms`: from now on it, and everything its
    /// key stamped before it, is a replay. Persist [`Self::encode`], or
    /// [`Self::encode_delta`] of what this returns after an earlier
    /// [`Self::encode`], before granting. Constant time.
    pub fn commit(&mut self, fresh: FreshKnock, now_ms: u64) -> Consumed {
        self.learn_time(now_ms);
        let stamp = fresh.timestamp_ms.min(self.ceiling_ms);
        let entry = self.last.entry(fresh.key).or_insert(stamp);
        *entry = (*entry).max(stamp);
        Consumed {
            key: fresh.key,
            stamp_ms: *entry,
        }
    }

    fn forget_old(&mut self) {
        let horizon = self.horizon_ms;
        self.last.retain(|_, &mut last| last >= horizon);
    }

    /// Number of keys remembered.
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
        entries.sort_unstable();
        let mut text = String::with_capacity(128 + entries.len() * (2 * 16 + 16));
        text.push_str(STATE_HEADER);
        text.push('\n');
        self.push_values(&mut text);
        for (id, &stamp) in entries {
            push_entry(&mut text, id, stamp);
        }
        text.into_bytes()
    }

    /// The lines that, read after a state [`Self::encode`] wrote earlier
    /// (as [`Self::restore`] reads them), give this guard's values and
    /// remember `consumed`: what a journal appends for a batch of grants.
    pub fn encode_delta(&self, consumed: &[Consumed]) -> Vec<u8> {
        let mut text = String::with_capacity(128 + consumed.len() * (2 * 16 + 16));
        self.push_values(&mut text);
        for c in consumed {
            push_entry(&mut text, &c.key, c.stamp_ms);
        }
        text.into_bytes()
    }

    /// The guard's values (everything but the keys), a line each.
    fn push_values(&self, text: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "floor {}\nhorizon {}\nceiling {}\n",
            self.floor_ms, self.horizon_ms, self.ceiling_ms
        );
        if self.refused_through_ms > 0 {
            let _ = write!(
                text,
                "refused-through {}\nlost-at {}\n",
                self.refused_through_ms, self.lost_at_ms
            );
        }
    }
}

fn push_entry(text: &mut String, id: &ReplayId, stamp_ms: u64) {
    use std::fmt::Write as _;
    id.push_hex(text);
    let _ = writeln!(text, " {stamp_ms}");
}
