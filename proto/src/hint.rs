//! The rotating key hint: how the server finds the one client a knock may be
//! from without trying every key.
//!
//! `hint = HMAC-SHA256(hint_key, "knock/v2 slot" || u64_be(slot))[..8]`, where
//! `slot = timestamp_ms / SLOT_MS`. Without the hint key the 8 bytes look
//! random, and they change every slot, so knocks from one client in different
//! minutes share no bytes. The server keeps a map from each client's hints for
//! the slots its freshness window can reach to that client.

use std::collections::HashMap;

use ring::hmac;

use crate::keys::PairKeys;

/// Length of one slot of the rotating hint.
pub const SLOT_MS: u64 = 30_000;

/// Length of the hint in bytes.
pub const HINT_LEN: usize = 8;

/// The first bytes of every knock: which client, for this time slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHint(pub [u8; HINT_LEN]);

impl KeyHint {
    /// The hint of `keys` for the slot that holds `timestamp_ms`.
    pub fn at(keys: &PairKeys, timestamp_ms: u64) -> Self {
        Self::for_slot(&keys.hint_key(), timestamp_ms / SLOT_MS)
    }

    fn for_slot(hint_key: &hmac::Key, slot: u64) -> Self {
        let mut ctx = hmac::Context::with_key(hint_key);
        ctx.update(b"knock/v2 slot");
        ctx.update(&slot.to_be_bytes());
        let tag = ctx.sign();
        let mut hint = [0u8; HINT_LEN];
        for (out, byte) in hint.iter_mut().zip(tag.as_ref()) {
            *out = *byte;
        }
        Self(hint)
    }
}

/// Maps the hints that can be valid now to the client they belong to.
///
/// Size: clients × slots in the window (3 for the default ±30 s), bounded by
/// the number of configured clients, never by traffic.
#[derive(Debug)]
pub struct HintIndex<T> {
    first_slot: u64,
    last_slot: u64,
    by_hint: HashMap<KeyHint, (T, u64)>,
}

impl<T: Clone> HintIndex<T> {
    /// Builds the index of every slot that a knock stamped within `window_ms`
    /// of `now_ms` can fall in.
    pub fn build<'k>(
        clients: impl IntoIterator<Item = (T, &'k PairKeys)>,
        now_ms: u64,
        window_ms: u64,
    ) -> Self {
        let (first_slot, last_slot) = slot_range(now_ms, window_ms);
        let mut by_hint = HashMap::new();
        for (client, keys) in clients {
            let hint_key = keys.hint_key();
            for slot in first_slot..=last_slot {
                // Two clients sharing a 64-bit hint has probability ~2^-64 per
                // pair; the later one would then be looked up, and the earlier
                // one's knock would fail its MAC check and be retried by the
                // client in the next slot.
                by_hint.insert(KeyHint::for_slot(&hint_key, slot), (client.clone(), slot));
            }
        }
        Self {
            first_slot,
            last_slot,
            by_hint,
        }
    }

    /// Does this index still cover every slot reachable from `now_ms`? When
    /// not, build a new one.
    pub fn is_current(&self, now_ms: u64, window_ms: u64) -> bool {
        slot_range(now_ms, window_ms) == (self.first_slot, self.last_slot)
    }

    /// The only client this hint can belong to, if any.
    pub fn lookup(&self, hint: &KeyHint) -> Option<&T> {
        self.by_hint.get(hint).map(|(client, _)| client)
    }

    /// The only client this hint can belong to, and the slot it is the hint
    /// of.
    pub fn lookup_with_slot(&self, hint: &KeyHint) -> Option<(&T, u64)> {
        self.by_hint.get(hint).map(|(client, slot)| (client, *slot))
    }

    pub fn len(&self) -> usize {
        self.by_hint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hint.is_empty()
    }
}

/// The first and last slot a knock stamped within `window_ms` of `now_ms`
/// can fall in.
pub fn slot_range(now_ms: u64, window_ms: u64) -> (u64, u64) {
    (
        now_ms.saturating_sub(window_ms) / SLOT_MS,
        now_ms.saturating_add(window_ms) / SLOT_MS,
    )
}
