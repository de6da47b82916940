//! Bound to its server, and cheap to reject.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::*;
use knock_proto::{
    open, seal, HintIndex, KeyHint, KnockBytes, OpenError, ServerId, MAX_KNOCK_LEN, MIN_KNOCK_LEN,
    SLOT_MS,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A knock sealed for server X, opened by server Y that holds the same
    /// client secret: authentic, but refused as made for another server.
    #[test]
    fn knock_for_another_server_is_refused(
        x in any::<[u8; 16]>(),
        y in any::<[u8; 16]>(),
        request in request(),
        rand in seal_randomness(),
        seed in any::<u8>(),
    ) {
        prop_assume!(x != y);
        let k = keys(seed);
        let datagram = seal(&k, &ServerId(x), &request, T0, &rand).unwrap();
        let knock = KnockBytes::parse(&datagram).unwrap();
        prop_assert_eq!(open(&k, &ServerId(y), &knock), Err(OpenError::WrongServer));
        prop_assert_eq!(open(&k, &ServerId(x), &knock).unwrap().request, request);
    }
}

#[test]
fn server_ids_differing_in_one_bit_are_told_apart() {
    let k = keys(1);
    let mut rng = SplitMix(10);
    let datagram = seal_simple(&k, T0, &mut rng);
    let knock = KnockBytes::parse(&datagram).unwrap();
    for byte in 0..16 {
        for bit in 0..8 {
            let mut other = SERVER;
            other.0[byte] ^= 1 << bit;
            assert_eq!(open(&k, &other, &knock), Err(OpenError::WrongServer));
        }
    }
}

/// The index a server with `clients` clients builds at `now_ms`.
fn index(clients: u8, now_ms: u64, window_ms: u64) -> (Vec<knock_proto::KnockKeys>, HintIndex<u8>) {
    let all: Vec<_> = (0..clients).map(keys).collect();
    let index = HintIndex::build(
        (0..clients).map(|i| (i, &all[usize::from(i)])),
        now_ms,
        window_ms,
    );
    (all, index)
}

/// Junk of a length that parses, with random first bytes, finds no client: it
/// is dropped by one hash lookup, before any MAC is computed.
#[test]
fn junk_misses_the_hint_index() {
    let (_, index) = index(100, T0, WINDOW_MS);
    let mut rng = SplitMix(11);
    for _ in 0..100_000 {
        let len = MIN_KNOCK_LEN + rng.below((MAX_KNOCK_LEN - MIN_KNOCK_LEN + 1) as u64) as usize;
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        let knock = KnockBytes::parse(&junk).expect("junk of a valid length parses");
        assert!(index.lookup(knock.hint()).is_none());
    }
}

/// A hint names exactly one candidate: the client that made it.
#[test]
fn hint_names_the_one_client_that_made_it() {
    let (all, index) = index(100, T0, WINDOW_MS);
    let mut rng = SplitMix(12);
    for (i, k) in all.iter().enumerate() {
        let datagram = seal_simple(k, T0 - WINDOW_MS + rng.below(2 * WINDOW_MS), &mut rng);
        let knock = KnockBytes::parse(&datagram).unwrap();
        assert_eq!(index.lookup(knock.hint()), Some(&(i as u8)));
    }
}

fn slots_in_window(now_ms: u64, window_ms: u64) -> usize {
    ((now_ms.saturating_add(window_ms) / SLOT_MS) - (now_ms.saturating_sub(window_ms) / SLOT_MS)
        + 1) as usize
}

/// The index holds one entry per client and per slot of the window, whatever
/// the traffic: its size is set by the configuration alone.
#[test]
fn index_holds_clients_times_slots() {
    for (clients, now_ms, window_ms) in [
        (1u8, T0, WINDOW_MS),
        (50, T0, WINDOW_MS),
        (50, T0 + 1, 90_000),
        (7, (T0 / SLOT_MS) * SLOT_MS, WINDOW_MS),
        (7, (T0 / SLOT_MS) * SLOT_MS, 0),
        (3, 5, WINDOW_MS),
        (3, u64::MAX - 5, WINDOW_MS),
        (0, T0, WINDOW_MS),
    ] {
        let (_, index) = index(clients, now_ms, window_ms);
        let slots = slots_in_window(now_ms, window_ms);
        assert_eq!(
            index.len(),
            usize::from(clients) * slots,
            "{clients} clients at {now_ms}"
        );
        assert_eq!(index.is_empty(), clients == 0);
    }
    // The default ±30 s window always spans exactly three slots.
    let mut rng = SplitMix(13);
    for _ in 0..1000 {
        assert_eq!(slots_in_window(T0 + rng.below(1 << 40), WINDOW_MS), 3);
    }
}

/// Stamps at the edges of the window are in the index; a stamp in the slot
/// just before or just after the window's slots is not, so a stale or
/// far-future knock is also dropped without a MAC check.
#[test]
fn index_covers_exactly_the_window() {
    let now_ms = T0 + 12_345;
    let (all, index) = index(4, now_ms, WINDOW_MS);
    let k = &all[2];
    let hint_at = |t: u64| KeyHint::at(k, t);
    assert_eq!(index.lookup(&hint_at(now_ms - WINDOW_MS)), Some(&2));
    assert_eq!(index.lookup(&hint_at(now_ms)), Some(&2));
    assert_eq!(index.lookup(&hint_at(now_ms + WINDOW_MS)), Some(&2));
    let first_slot = (now_ms - WINDOW_MS) / SLOT_MS;
    let last_slot = (now_ms + WINDOW_MS) / SLOT_MS;
    assert_eq!(index.lookup(&hint_at(first_slot * SLOT_MS - 1)), None);
    assert_eq!(index.lookup(&hint_at((last_slot + 1) * SLOT_MS)), None);
    assert_eq!(index.lookup(&hint_at(now_ms - 10 * SLOT_MS)), None);

    // The index says when it must be rebuilt.
    assert!(index.is_current(now_ms, WINDOW_MS));
    assert!(index.is_current((now_ms / SLOT_MS) * SLOT_MS, WINDOW_MS));
    assert!(!index.is_current((now_ms / SLOT_MS + 1) * SLOT_MS, WINDOW_MS));
    assert!(!index.is_current(now_ms, 3 * WINDOW_MS));
}

/// A datagram that copies a valid hint but carries junk costs exactly one AEAD
/// check, which fails.
#[test]
fn valid_hint_with_junk_body_fails_one_mac_check() {
    let (all, index) = index(4, T0, WINDOW_MS);
    let mut rng = SplitMix(14);
    let real = seal_simple(&all[1], T0, &mut rng);
    let mut forged = vec![0u8; real.len()];
    rng.fill(&mut forged);
    forged[..8].copy_from_slice(&real[..8]);
    let knock = KnockBytes::parse(&forged).unwrap();
    let client = *index.lookup(knock.hint()).unwrap();
    assert_eq!(client, 1);
    assert_eq!(open(&all[1], &SERVER, &knock), Err(OpenError::BadMac));
}

/// Another client's keys cannot open a knock (the hint is not the only thing
/// that ties a knock to its client).
#[test]
fn another_clients_keys_do_not_open_a_knock() {
    let mut rng = SplitMix(15);
    let datagram = seal_simple(&keys(1), T0, &mut rng);
    let knock = KnockBytes::parse(&datagram).unwrap();
    assert_eq!(open(&keys(2), &SERVER, &knock), Err(OpenError::BadMac));
}
