//! The per-client limit on grants: one key holder cannot make the server
//! spend its fsyncs and firewall transactions on it alone.
//!
//! Every grant costs the server a durable write of the replay state and a
//! firewall transaction, about a millisecond of work that other clients'
//! knocks wait behind. A knock reaches this limit only after every other
//! check has passed, so only the holder of a client's key (its own
//! machines) can spend that client's allowance, and a refused knock is not
//! consumed: it can be sent again a moment later.
//!
//! GCRA per client, keyed by its replay id (a renamed client keeps its
//! state): a burst of [`GRANT_BURST`] grants, then one per
//! [`GRANT_EVERY_MS`]. A person opening a few ports, or a script that
//! knocks before each of a handful of connections, never meets it; a
//! client knocking in a loop gets one grant a second, and everyone
//! else's knocks are not delayed by it.

use std::collections::HashMap;

use knock_proto::ReplayId;

/// Grants a client may have at once before it is limited.
pub const GRANT_BURST: u64 = 10;
/// After the burst, one grant per client per this long.
pub const GRANT_EVERY_MS: u64 = 1_000;

const TOLERANCE_MS: u64 = GRANT_EVERY_MS * (GRANT_BURST - 1);

/// Per client, the theoretical arrival time of its next grant (GCRA).
#[derive(Debug, Default)]
pub struct GrantLimiter {
    next_at: HashMap<ReplayId, u64>,
}

impl GrantLimiter {
    /// May `client` be granted at `now_ms`?
    pub fn allows(&self, client: ReplayId, now_ms: u64) -> bool {
        match self.next_at.get(&client) {
            None => true,
            Some(&at) => at <= now_ms.saturating_add(TOLERANCE_MS) || Self::stepped(at, now_ms),
        }
    }

    /// Charges a grant of `client` at `now_ms`.
    pub fn charge(&mut self, client: ReplayId, now_ms: u64) {
        let at = self.next_at.entry(client).or_insert(0);
        let base = if Self::stepped(*at, now_ms) {
            // The clock stepped back: do not hold the client down longer
            // than the limit itself would.
            now_ms
        } else {
            (*at).max(now_ms)
        };
        *at = base.saturating_add(GRANT_EVERY_MS);
    }

    /// Forgets the clients back to a full burst at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.next_at
            .retain(|_, &mut at| at > now_ms && !Self::stepped(at, now_ms));
    }

    /// Is `at` further ahead than any charge at `now_ms` could put it?
    fn stepped(at: u64, now_ms: u64) -> bool {
        at > now_ms.saturating_add(TOLERANCE_MS + GRANT_EVERY_MS)
    }

    /// Clients with limiter state.
    pub fn len(&self) -> usize {
        self.next_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.next_at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_every_interval() {
        let mut limit = GrantLimiter::default();
        let (a, b) = (ReplayId([1; 16]), ReplayId([2; 16]));
        let now = 1_000_000;
        for _ in 0..GRANT_BURST {
            assert!(limit.allows(a, now));
            limit.charge(a, now);
        }
        assert!(!limit.allows(a, now), "burst spent");
        assert!(limit.allows(b, now), "others are not limited");
        assert!(!limit.allows(a, now + GRANT_EVERY_MS - 1));
        assert!(limit.allows(a, now + GRANT_EVERY_MS));
        limit.charge(a, now + GRANT_EVERY_MS);
        assert!(!limit.allows(a, now + GRANT_EVERY_MS));
        // Idle long enough, the full burst is back and the state is gone.
        let later = now + GRANT_EVERY_MS * (GRANT_BURST + 2);
        limit.prune(later);
        assert!(limit.is_empty());
    }

    #[test]
    fn a_clock_stepping_back_does_not_hold_a_client_down() {
        let mut limit = GrantLimiter::default();
        let a = ReplayId([1; 16]);
        let now = 10_000_000;
        for _ in 0..GRANT_BURST {
            limit.charge(a, now);
        }
        assert!(!limit.allows(a, now));
        let back = now - 3_600_000;
        assert!(limit.allows(a, back));
        limit.charge(a, back);
        assert!(limit.allows(a, back), "charged from the new time");
    }
}
