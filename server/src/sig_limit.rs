//! The per-client limit on failed signature checks (public-key clients).
//!
//! A public-key knock reaches its signature check only once it has passed
//! the AEAD, the replay guard and the client's policy. Only two kinds of
//! sender get that far: the client itself, whose signature always verifies
//! (a wrong identity fails the AEAD already, because its key agreement
//! differs), and someone who holds this server's key or pair keys (a stolen
//! `server.key` or pair-key cache) and can make AEAD-valid knocks but no
//! signature. So a failed check is charged to the client the knock names,
//! and only failures are charged:
//!
//! * GCRA with an emission interval of [`SIG_FAILURE_EVERY_MS`] and a burst
//!   of one: after a failed check, that client's knocks are refused
//!   (`sig-limited`, without a signature check) for 20 s;
//! * successes are never charged, so honest use never meets the limit;
//! * there is no global cap: one would let a single thief deny every
//!   client. Impersonating every client of 100,000 costs the thief one
//!   signature check each per 20 s (5,000 a second, about a quarter of one
//!   core), and holds down only the clients it impersonates.
//!
//! The state is sparse: one `u64` per client that failed within the last
//! 20 s, keyed by its replay id (so a renamed client keeps its limit), and
//! pruned on every tick.

use std::collections::HashMap;

use knock_proto::ReplayId;

/// At most one failed signature check per client per this long.
pub const SIG_FAILURE_EVERY_MS: u64 = 20_000;

/// The failed-signature limiter: per client, the theoretical arrival time
/// (GCRA) of its next permitted check.
#[derive(Debug, Default)]
pub struct SigLimiter {
    next_allowed: HashMap<ReplayId, u64>,
}

impl SigLimiter {
    /// May a knock of `client` have its signature checked at `now_ms`?
    pub fn allows(&self, client: ReplayId, now_ms: u64) -> bool {
        match self.next_allowed.get(&client) {
            None => true,
            // A clock that stepped back must not hold a client down for
            // longer than one interval.
            Some(&at) => now_ms >= at || at > now_ms.saturating_add(SIG_FAILURE_EVERY_MS),
        }
    }

    /// Charges a failed check of `client` at `now_ms`.
    pub fn charge(&mut self, client: ReplayId, now_ms: u64) {
        let at = self.next_allowed.entry(client).or_insert(0);
        let base = if *at > now_ms.saturating_add(SIG_FAILURE_EVERY_MS) {
            now_ms
        } else {
            (*at).max(now_ms)
        };
        *at = base.saturating_add(SIG_FAILURE_EVERY_MS);
    }

    /// Forgets the clients whose limit has run out.
    pub fn prune(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_add(SIG_FAILURE_EVERY_MS);
        self.next_allowed
            .retain(|_, &mut at| at > now_ms && at <= horizon);
    }

    /// Clients held down now.
    pub fn len(&self) -> usize {
        self.next_allowed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.next_allowed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ReplayId = ReplayId([1; 16]);
    const B: ReplayId = ReplayId([2; 16]);

    #[test]
    fn one_failure_per_client_per_interval() {
        let mut limit = SigLimiter::default();
        let t = 1_000_000;
        assert!(limit.allows(A, t));
        limit.charge(A, t);
        assert!(!limit.allows(A, t));
        assert!(!limit.allows(A, t + SIG_FAILURE_EVERY_MS - 1));
        assert!(limit.allows(B, t), "only the charged client is held down");
        assert!(limit.allows(A, t + SIG_FAILURE_EVERY_MS));
    }

    #[test]
    fn pruned_once_run_out() {
        let mut limit = SigLimiter::default();
        limit.charge(A, 1_000);
        limit.charge(B, 5_000);
        limit.prune(1_000 + SIG_FAILURE_EVERY_MS);
        assert_eq!(limit.len(), 1);
        limit.prune(5_000 + SIG_FAILURE_EVERY_MS);
        assert!(limit.is_empty());
    }

    #[test]
    fn a_clock_stepped_back_holds_no_one_longer_than_an_interval() {
        let mut limit = SigLimiter::default();
        limit.charge(A, 10_000_000);
        // The clock steps back an hour.
        let back = 10_000_000 - 3_600_000;
        assert!(limit.allows(A, back));
        limit.charge(A, back);
        assert!(!limit.allows(A, back + 1));
        assert!(limit.allows(A, back + SIG_FAILURE_EVERY_MS));
    }
}
