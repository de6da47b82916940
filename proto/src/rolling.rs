//! The server's hint index at scale: one compact table of every client's
//! hints for a range of slots, that rolls forward one slot at a time in
//! small, bounded steps.
//!
//! [`crate::HintIndex`] builds every slot of every client at once, which is
//! right for a handful of clients and for tests. With 100,000 clients a slot
//! is 100,000 HMACs (tens of milliseconds): the server cannot stop reading
//! packets for that, so [`RollingIndex::advance`] does at most a given
//! amount of work per call and the caller spreads the calls out. Between
//! calls every lookup is answered: a slot that is half added finds the
//! clients already added, one that is half removed still finds the others.
//!
//! The table is open addressing with linear probing and no tombstones
//! (deletion shifts the rest of a cluster back), 12 bytes a hint. Hints are
//! HMAC outputs: uniform, and unknown to whoever sends junk, so their own
//! bits place them and no keyed hash is needed.

use crate::hint::{KeyHint, HINT_LEN};
use crate::keys::PairKeys;

/// The most clients one index holds: client numbers take 24 bits of a
/// table cell, and the highest marks a free one.
pub const MAX_CLIENTS: usize = (1 << 24) - 1;

/// A table cell: the hint's two halves, then the client number (24 bits)
/// and the low 8 bits of the slot.
type Cell = [u32; 3];

const FREE: u32 = u32::MAX;

/// The most slots an index may span: slot numbers are stored as their low
/// 8 bits, so every stored slot must be told apart from every other.
pub const MAX_SPAN: u64 = 250;

/// Cells scanned per unit of work when removing slots.
const CELLS_PER_UNIT: usize = 16;

fn halves(hint: &KeyHint) -> (u32, u32) {
    let mut lo = [0u8; 4];
    let mut hi = [0u8; 4];
    let (a, b) = hint.0.split_at(HINT_LEN / 2);
    lo.copy_from_slice(a);
    hi.copy_from_slice(b);
    (u32::from_le_bytes(lo), u32::from_le_bytes(hi))
}

/// hint → (client, slot), for up to a fixed number of hints.
#[derive(Debug, Clone)]
struct Table {
    cells: Vec<Cell>,
    len: usize,
}

impl Table {
    /// Room for `hints` hints at a load of at most 3/4.
    fn with_room_for(hints: usize) -> Self {
        let cells = (hints.saturating_mul(4) / 3).max(16);
        Self {
            cells: vec![[0, 0, FREE]; cells],
            len: 0,
        }
    }

    /// The home cell of a hint: its low half scaled to the table, so that
    /// any table size works (no power of two needed).
    fn home(&self, lo: u32, hi: u32) -> usize {
        let mixed = u64::from(lo) | (u64::from(hi) << 32);
        // (x * n) >> 64 maps a uniform 64-bit x onto 0..n uniformly.
        ((u128::from(mixed) * self.cells.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.cells.len() {
            0
        } else {
            i + 1
        }
    }

    fn find(&self, hint: &KeyHint) -> Option<usize> {
        let (lo, hi) = halves(hint);
        let mut i = self.home(lo, hi);
        // The table is never full (load <= 3/4 + 1 cell), so a free cell
        // ends every probe.
        for _ in 0..self.cells.len() {
            let cell = self.cells.get(i)?;
            if cell[2] == FREE {
                return None;
            }
            if cell[0] == lo && cell[1] == hi {
                return Some(i);
            }
            i = self.next(i);
        }
        None
    }

    fn get(&self, hint: &KeyHint) -> Option<u32> {
        self.find(hint)
            .and_then(|i| self.cells.get(i))
            .map(|c| c[2])
    }

    /// Inserts or replaces. Two clients sharing a 64-bit hint has
    /// probability ~2^-64 per pair; the later one is then found, and the
    /// earlier one's knock fails its MAC check until the next slot.
    fn insert(&mut self, hint: &KeyHint, value: u32) {
        if let Some(i) = self.find(hint) {
            if let Some(cell) = self.cells.get_mut(i) {
                cell[2] = value;
            }
            return;
        }
        if (self.len + 1) * 4 > self.cells.len() * 3 {
            self.grow();
        }
        let (lo, hi) = halves(hint);
        let mut i = self.home(lo, hi);
        while let Some(cell) = self.cells.get_mut(i) {
            if cell[2] == FREE {
                *cell = [lo, hi, value];
                self.len += 1;
                return;
            }
            i = self.next(i);
        }
    }

    /// Only reached if the caller sized the table too small.
    fn grow(&mut self) {
        let old = std::mem::replace(self, Self::with_room_for(self.cells.len() * 2));
        for cell in old.cells.into_iter().filter(|c| c[2] != FREE) {
            let mut hint = [0u8; HINT_LEN];
            let (lo, hi) = hint.split_at_mut(HINT_LEN / 2);
            lo.copy_from_slice(&cell[0].to_le_bytes());
            hi.copy_from_slice(&cell[1].to_le_bytes());
            self.insert(&KeyHint(hint), cell[2]);
        }
    }

    /// Empties cell `hole` and shifts back the cells after it in its
    /// cluster that may now sit closer to home. Only cell `hole` may
    /// receive a cell from elsewhere, which a scan re-examines.
    fn remove_at(&mut self, mut hole: usize) {
        let n = self.cells.len();
        if let Some(cell) = self.cells.get_mut(hole) {
            cell[2] = FREE;
            self.len -= 1;
        }
        let mut i = self.next(hole);
        loop {
            let Some(&cell) = self.cells.get(i) else {
                return;
            };
            if cell[2] == FREE {
                return;
            }
            let home = self.home(cell[0], cell[1]);
            // Distance from home to i and from home to the hole, cyclically:
            // the cell may move back to the hole if the hole is not before
            // its home.
            let to_i = (i + n - home) % n;
            let to_hole = (hole + n - home) % n;
            if to_hole <= to_i {
                if let Some(h) = self.cells.get_mut(hole) {
                    *h = cell;
                }
                if let Some(c) = self.cells.get_mut(i) {
                    c[2] = FREE;
                }
                hole = i;
            }
            i = self.next(i);
        }
    }
}

/// Work in progress, resumed by the next [`RollingIndex::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    /// Adding the hints of `slot` for clients `next..`.
    Add { slot: u64, next: usize },
    /// Removing every hint outside `keep`, scanning from cell `cursor`.
    Sweep { keep: (u64, u64), cursor: usize },
}

/// A sweep that keeps nothing.
const START_OVER: (u64, u64) = (u64::MAX, u64::MAX);

/// What [`RollingIndex::advance`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The index covers the range asked for, and nothing more.
    Done,
    /// Call again.
    More,
}

/// Every client's hints for a range of slots, kept covering a moving
/// range by [`RollingIndex::advance`].
#[derive(Debug, Clone)]
pub struct RollingIndex {
    table: Table,
    /// Slots whose hints are in the table for every client (first, last).
    built: Option<(u64, u64)>,
    job: Option<Job>,
    clients: usize,
}

impl RollingIndex {
    /// An empty index for `clients` clients (at most [`MAX_CLIENTS`]),
    /// sized for `span` slots.
    pub fn new(clients: usize, span: u64) -> Self {
        let clients = clients.min(MAX_CLIENTS);
        let span = span.clamp(1, MAX_SPAN) as usize;
        Self {
            // One slot more than the span: a slot that is needed now is added
            // before the one that is no longer wanted is swept out.
            table: Table::with_room_for(clients.saturating_mul(span + 1)),
            built: None,
            job: None,
            clients,
        }
    }

    /// The slots for which every client's hint is in the index.
    pub fn built(&self) -> Option<(u64, u64)> {
        self.built
    }

    /// How many hints the index holds.
    pub fn len(&self) -> usize {
        self.table.len
    }

    pub fn is_empty(&self) -> bool {
        self.table.len == 0
    }

    /// The bytes the table takes.
    pub fn table_bytes(&self) -> usize {
        self.table.cells.len() * std::mem::size_of::<Cell>()
    }

    /// The client this hint can belong to, and the slot it is the hint of.
    pub fn lookup(&self, hint: &KeyHint) -> Option<(usize, u64)> {
        let value = self.table.get(hint)?;
        let client = (value >> 8) as usize;
        let low = (value & 0xff) as u8;
        // Every stored slot lies within MAX_SPAN + 1 of the first built
        // one (or of the slot being added): rebuild the full number.
        let base = self.lowest_stored()?;
        let slot = base + u64::from(low.wrapping_sub(base as u8));
        Some((client, slot))
    }

    /// The lowest slot that may have hints in the table.
    fn lowest_stored(&self) -> Option<u64> {
        let built = self.built.map(|(first, _)| first);
        let adding = match self.job {
            Some(Job::Add { slot, .. }) => Some(slot),
            _ => None,
        };
        match (built, adding) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Does up to `budget` units of work (one unit: one hint computed, or
    /// 16 cells scanned) toward covering exactly the slots `want` (first,
    /// last), for the clients whose pair keys `keys(i)` gives, `i` in
    /// `0..clients`. The slots of `need` (within `want`: those a knock can
    /// be fresh in now) come before anything else; then the slots nearest
    /// them, so that an index answers current knocks before it answers for
    /// clocks minutes off.
    pub fn advance<'k>(
        &mut self,
        keys: impl Fn(usize) -> Option<&'k PairKeys>,
        want: (u64, u64),
        need: (u64, u64),
        mut budget: usize,
    ) -> Progress {
        let want = (want.0, want.1.min(want.0.saturating_add(MAX_SPAN - 1)));
        let need = (
            need.0.max(want.0),
            need.1.min(want.1).max(need.0.max(want.0)),
        );
        let centre = need.0 + (need.1 - need.0) / 2;
        while budget > 0 {
            let job = match self.job {
                Some(job) => job,
                None => match self.plan(want, need, centre) {
                    Some(job @ Job::Sweep { keep, .. }) if keep == START_OVER => {
                        // Nothing of it is wanted any more: stop answering
                        // for it at once.
                        self.built = None;
                        job
                    }
                    Some(job) => job,
                    None => return Progress::Done,
                },
            };
            self.job = Some(job);
            match job {
                Job::Add { slot, next } => {
                    let end = next.saturating_add(budget).min(self.clients);
                    for client in next..end {
                        if let Some(k) = keys(client) {
                            let hint = KeyHint::at(k, slot.saturating_mul(crate::SLOT_MS));
                            let value = ((client as u32) << 8) | u32::from(slot as u8);
                            self.table.insert(&hint, value);
                        }
                    }
                    budget -= end - next;
                    if end == self.clients {
                        self.job = None;
                        self.built = Some(match self.built {
                            Some((first, last)) => (first.min(slot), last.max(slot)),
                            None => (slot, slot),
                        });
                    } else {
                        self.job = Some(Job::Add { slot, next: end });
                    }
                }
                Job::Sweep { keep, cursor } => {
                    let cells = budget.saturating_mul(CELLS_PER_UNIT);
                    let end = cursor.saturating_add(cells).min(self.table.cells.len());
                    let mut i = cursor;
                    while i < end {
                        let stale = self.table.cells.get(i).is_some_and(|c| {
                            c[2] != FREE && {
                                let (_, slot) = self.decode(c[2]);
                                slot < keep.0 || slot > keep.1
                            }
                        });
                        if stale {
                            // The hole may be refilled from further on:
                            // look at it again.
                            self.table.remove_at(i);
                        } else {
                            i += 1;
                        }
                    }
                    budget = budget.saturating_sub((end - cursor).div_ceil(CELLS_PER_UNIT).max(1));
                    if end == self.table.cells.len() {
                        self.job = None;
                        self.built = self
                            .built
                            .map(|(first, last)| (first.max(keep.0), last.min(keep.1)))
                            .filter(|(first, last)| first <= last);
                    } else {
                        self.job = Some(Job::Sweep { keep, cursor: end });
                    }
                }
            }
        }
        if self.job.is_none() && self.plan(want, need, centre).is_none() {
            Progress::Done
        } else {
            Progress::More
        }
    }

    fn decode(&self, value: u32) -> (usize, u64) {
        let base = self.lowest_stored().unwrap_or(0);
        let low = (value & 0xff) as u8;
        (
            (value >> 8) as usize,
            base + u64::from(low.wrapping_sub(base as u8)),
        )
    }

    /// The next job toward `want`: first add what is needed now, then drop
    /// what lies outside `want` (so that the table holds no more than it
    /// was sized for), then add the missing slot nearest `centre`.
    fn plan(&self, want: (u64, u64), need: (u64, u64), centre: u64) -> Option<Job> {
        let Some((first, last)) = self.built else {
            if self.table.len > 0 {
                // Hints of slots that never completed (a clock step).
                return Some(Job::Sweep {
                    keep: START_OVER,
                    cursor: 0,
                });
            }
            let slot = centre.clamp(want.0, want.1);
            return Some(Job::Add { slot, next: 0 });
        };
        if last < want.0 || first > want.1 {
            // Nothing built is wanted any more (the clock stepped): start
            // over.
            return Some(Job::Sweep {
                keep: START_OVER,
                cursor: 0,
            });
        }
        if need.1 > last {
            return Some(Job::Add {
                slot: last + 1,
                next: 0,
            });
        }
        if need.0 < first {
            return Some(Job::Add {
                slot: first - 1,
                next: 0,
            });
        }
        if first < want.0 || last > want.1 {
            return Some(Job::Sweep {
                keep: (first.max(want.0), last.min(want.1)),
                cursor: 0,
            });
        }
        let below = (first > want.0).then(|| first - 1);
        let above = (last < want.1).then(|| last + 1);
        let slot = match (below, above) {
            (Some(b), Some(a)) => {
                if centre.abs_diff(a) <= centre.abs_diff(b) {
                    a
                } else {
                    b
                }
            }
            (b, a) => b.or(a)?,
        };
        Some(Job::Add { slot, next: 0 })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::{ClientSecret, ServerId, SLOT_MS};
    use std::collections::HashMap;

    fn keys(n: usize) -> Vec<PairKeys> {
        (0..n)
            .map(|i| {
                let mut secret = [0u8; 32];
                secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
                PairKeys::shared(&ClientSecret::from_bytes(secret), &ServerId([3; 16]))
            })
            .collect()
    }

    fn finish(index: &mut RollingIndex, k: &[PairKeys], want: (u64, u64), centre: u64) {
        while index.advance(|i| k.get(i), want, (centre, centre), 7) == Progress::More {}
    }

    fn hint(k: &PairKeys, slot: u64) -> KeyHint {
        KeyHint::at(k, slot * SLOT_MS)
    }

    #[test]
    fn finds_every_client_in_every_built_slot_and_nothing_else() {
        let k = keys(300);
        let mut index = RollingIndex::new(k.len(), 5);
        finish(&mut index, &k, (1000, 1004), 1002);
        assert_eq!(index.built(), Some((1000, 1004)));
        assert_eq!(index.len(), 1500);
        for (i, key) in k.iter().enumerate() {
            for slot in 1000..=1004 {
                assert_eq!(index.lookup(&hint(key, slot)), Some((i, slot)));
            }
            assert_eq!(index.lookup(&hint(key, 999)), None);
            assert_eq!(index.lookup(&hint(key, 1005)), None);
        }
    }

    #[test]
    fn rolls_forward_one_slot_at_a_time_within_its_size() {
        let k = keys(200);
        let mut index = RollingIndex::new(k.len(), 4);
        finish(&mut index, &k, (10, 13), 11);
        let bytes = index.table_bytes();
        for step in 1..=300u64 {
            let want = (10 + step, 13 + step);
            // Every call is bounded; between calls old slots still answer.
            let mut calls = 0;
            while index.advance(|i| k.get(i), want, (11 + step, 11 + step), 50) == Progress::More {
                calls += 1;
                assert!(index.lookup(&hint(&k[7], 12 + step)).is_some());
            }
            assert!(calls > 2, "the work was spread over several calls");
            assert_eq!(index.built(), Some(want));
            assert_eq!(index.len(), 800);
            assert_eq!(index.table_bytes(), bytes, "never grew");
            assert_eq!(index.lookup(&hint(&k[5], 13 + step)), Some((5, 13 + step)));
            assert_eq!(index.lookup(&hint(&k[5], 9 + step)), None);
        }
    }

    #[test]
    fn a_clock_step_starts_over_from_the_centre() {
        let k = keys(50);
        let mut index = RollingIndex::new(k.len(), 3);
        finish(&mut index, &k, (10, 12), 11);
        // The first call adds the centre slot before any other.
        index.advance(|i| k.get(i), (5000, 5002), (5001, 5001), 1_000_000);
        finish(&mut index, &k, (5000, 5002), 5001);
        assert_eq!(index.built(), Some((5000, 5002)));
        assert_eq!(index.len(), 150);
        assert_eq!(index.lookup(&hint(&k[3], 11)), None);
        assert_eq!(index.lookup(&hint(&k[3], 5001)), Some((3, 5001)));
        // And back.
        let mut index2 = index.clone();
        let mut first_calls = 0;
        loop {
            let p = index2.advance(|i| k.get(i), (20, 22), (21, 21), 10);
            first_calls += 1;
            if index2.built().is_some() {
                assert_eq!(index2.built(), Some((21, 21)), "centre first");
                break;
            }
            assert_eq!(p, Progress::More);
        }
        assert!(first_calls > 1);
    }

    #[test]
    fn deletion_keeps_clusters_reachable() {
        // A small table with many collisions: compare with a HashMap model
        // through random inserts and removals.
        let mut table = Table::with_room_for(60);
        let mut model = HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..5000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let h = KeyHint((x % 97).to_le_bytes());
            if round % 3 == 0 || model.len() >= 60 {
                if let Some(i) = table.find(&h) {
                    table.remove_at(i);
                }
                model.remove(&h.0);
            } else {
                table.insert(&h, round);
                model.insert(h.0, round);
            }
            assert_eq!(table.len, model.len());
        }
        for v in 0..97u64 {
            let h = KeyHint(v.to_le_bytes());
            assert_eq!(table.get(&h), model.get(&h.0).copied(), "{v}");
        }
    }
}
