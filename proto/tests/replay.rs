//! The replay guard: every knock honoured at most once, ever: across
//! restarts, state loss, clocks that step either way and windows that change.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use common::*;
use knock_proto::{
    open, KnockBytes, Mode, ReplayError, ReplayGuard, ReplayId, StateDecodeError, Tick,
};
use proptest::prelude::*;

const START: u64 = T0;

fn id(n: u8) -> ReplayId {
    ReplayId([n; 16])
}

fn accept(guard: &mut ReplayGuard, key: ReplayId, stamp: u64, now: u64) {
    let fresh = guard.check(key, stamp, now).unwrap();
    assert_eq!((fresh.key(), fresh.timestamp_ms()), (key, stamp));
    guard.commit(fresh, now);
}

#[test]
fn accepts_a_knock_once() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let now = START + 60_000;
    accept(&mut guard, id(1), now - 1_000, now);
    assert_eq!(
        guard.check(id(1), now - 1_000, now),
        Err(ReplayError::Replay)
    );
    assert_eq!(
        guard.check(id(1), now - 1_000, now + 5_000),
        Err(ReplayError::Replay)
    );
    // Other keys are not affected.
    accept(&mut guard, id(2), now - 1_000, now);
}

#[test]
fn older_stamp_than_the_last_accepted_is_a_replay() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let now = START + 60_000;
    accept(&mut guard, id(1), now, now);
    assert_eq!(guard.check(id(1), now - 1, now), Err(ReplayError::Replay));
    assert_eq!(
        guard.check(id(1), now - 20_000, now + 1),
        Err(ReplayError::Replay)
    );
    accept(&mut guard, id(1), now + 1, now + 1);
}

#[test]
fn freshness_window_is_enforced_both_ways() {
    let guard = ReplayGuard::first_start(WINDOW_MS, START);
    let now = START + 100_000;
    assert!(guard.check(id(1), now - WINDOW_MS, now).is_ok());
    assert!(guard.check(id(1), now + WINDOW_MS, now).is_ok());
    assert_eq!(
        guard.check(id(1), now - WINDOW_MS - 1, now),
        Err(ReplayError::TooOld {
            age_ms: WINDOW_MS + 1
        })
    );
    assert_eq!(
        guard.check(id(1), now + WINDOW_MS + 1, now),
        Err(ReplayError::FromFuture {
            ahead_ms: WINDOW_MS + 1
        })
    );
    // Extremes do not overflow.
    assert!(matches!(
        guard.check(id(1), 0, u64::MAX),
        Err(ReplayError::TooOld { .. })
    ));
    assert!(matches!(
        guard.check(id(1), u64::MAX, 0),
        Err(ReplayError::FromFuture { .. })
    ));
    assert!(guard.check(id(1), u64::MAX, u64::MAX).is_ok());
}

/// A first start (the state knock-keygen writes) pays nothing: a knock
/// stamped right after it is welcome.
#[test]
fn a_first_start_accepts_at_once() {
    let guard = ReplayGuard::first_start(WINDOW_MS, START);
    assert!(guard.check(id(1), START - 5_000, START + 10).is_ok());
    let restored = ReplayGuard::restore(WINDOW_MS, START + 10, &guard.encode(), None).unwrap();
    assert!(restored.check(id(1), START, START + 20).is_ok());
    assert_eq!(restored.refused_through_ms(), 0);
}

#[test]
fn check_does_not_consume() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let now = START + 10_000;
    // A later step (a source-address mismatch, say) refuses the knock: it
    // was checked, never committed, and stays acceptable.
    let _refused_later = guard.check(id(1), now, now).unwrap();
    let _again = guard.check(id(1), now, now).unwrap();
    assert!(guard.is_empty());
    accept(&mut guard, id(1), now, now);
    assert_eq!(guard.len(), 1);
}

#[test]
fn commit_keeps_the_newest_stamp() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let now = START + 10_000;
    let older = guard.check(id(1), now - 5, now).unwrap();
    let newer = guard.check(id(1), now, now).unwrap();
    guard.commit(newer, now);
    guard.commit(older, now); // out of order: must not move `last` back
    assert_eq!(guard.check(id(1), now - 1, now), Err(ReplayError::Replay));
    assert_eq!(guard.check(id(1), now, now), Err(ReplayError::Replay));
}

#[test]
fn encode_restore_round_trip() {
    let mut guard = ReplayGuard::after_state_loss(WINDOW_MS, START, None);
    let now = START + WINDOW_MS + 10_000;
    for n in [9u8, 1, 5, 3] {
        accept(&mut guard, id(n), now + u64::from(n), now + u64::from(n));
    }
    let encoded = guard.encode();
    let text = String::from_utf8(encoded.clone()).unwrap();
    assert_eq!(
        text.lines().take(5).collect::<Vec<_>>(),
        [
            "knock-replay-state v2",
            &format!("floor {}", now + 9),
            &format!("horizon {}", now + 9 - WINDOW_MS),
            &format!("ceiling {}", now + 9 + WINDOW_MS),
            &format!("refused-through {}", START + WINDOW_MS),
        ],
        "{text}"
    );
    assert_eq!(text.lines().count(), 10);
    assert!(text.contains(&format!("{} {}\n", id(1).to_hex(), now + 1)));
    let restored = ReplayGuard::restore(WINDOW_MS, now + 9, &encoded, None).unwrap();
    assert_eq!(restored.encode(), encoded);
    for n in [9u8, 1, 5, 3] {
        let stamp = now + u64::from(n);
        assert_eq!(
            restored.check(id(n), stamp, now + 10),
            Err(ReplayError::Replay)
        );
        assert!(restored.check(id(n), stamp + 1, now + 10).is_ok());
    }
    // Equal states encode to equal bytes, whatever the order of commits.
    let mut other = ReplayGuard::after_state_loss(WINDOW_MS, START, None);
    for n in [3u8, 5, 1, 9] {
        accept(&mut other, id(n), now + u64::from(n), now + u64::from(n));
    }
    other.tick(now + 9);
    assert_eq!(other.encode(), encoded);
}

#[test]
fn restore_rejects_garbage() {
    let header = "knock-replay-state v2\nfloor 1000\n";
    for (input, expected) in [
        (&b""[..], StateDecodeError::Header),
        (b"\xff\xfe", StateDecodeError::Header),
        (
            b"knock-replay-state v1\nalice 1\n",
            StateDecodeError::Header,
        ),
        (b"floor 1\n", StateDecodeError::Header),
        (b" knock-replay-state v2\n", StateDecodeError::Header),
        (b"knock-replay-state v2\n", StateDecodeError::NoFloor),
        (
            b"knock-replay-state v2\nhorizon 5\n",
            StateDecodeError::NoFloor,
        ),
    ] {
        assert_eq!(
            ReplayGuard::restore(WINDOW_MS, START, input, None).unwrap_err(),
            expected
        );
    }
    let hex = id(7).to_hex();
    for (body, line) in [
        ("alice 1\n".to_owned(), 3),
        (format!("{hex}\n"), 3),
        (format!("{hex} 1\nbob\n"), 4),
        (format!("{hex} -1\n"), 3),
        (format!("{hex} 1.5\n"), 3),
        (format!("{hex} 18446744073709551616\n"), 3),
        (format!("{hex}  1\n"), 3),
        (format!("{hex} 1 2\n"), 3),
        (format!("{} 1\n", &hex[1..]), 3),
        (format!("+{} 1\n", &hex[1..]), 3),
        (format!("{hex}0 1\n"), 3),
        ("floor x\n".to_owned(), 3),
        (" 1\n".to_owned(), 3),
        (format!("{hex} 0x10\n"), 3),
    ] {
        let input = format!("{header}{body}");
        assert_eq!(
            ReplayGuard::restore(WINDOW_MS, START, input.as_bytes(), None).unwrap_err(),
            StateDecodeError::Line(line),
            "{body:?}"
        );
    }
    // Blank lines are tolerated; duplicates keep the newest stamp.
    let ok = format!("{header}\n{hex} 1005\n{hex} 1009\n\n{hex} 1007\n");
    let guard = ReplayGuard::restore(WINDOW_MS, 1_000, ok.as_bytes(), None).unwrap();
    assert_eq!(guard.len(), 1);
    assert_eq!(guard.check(id(7), 1_009, 1_010), Err(ReplayError::Replay));
    assert!(guard.check(id(7), 1_010, 1_010).is_ok());
}

#[test]
fn tick_forgets_only_what_the_horizon_refuses() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let now = START + 100_000;
    accept(&mut guard, id(1), now - 60_000, now - 60_000);
    accept(&mut guard, id(2), now - WINDOW_MS, now - WINDOW_MS);
    accept(&mut guard, id(3), now, now);
    assert_eq!(guard.tick(now), Tick::Forward);
    assert_eq!(guard.len(), 2);
    let kept = String::from_utf8(guard.encode()).unwrap();
    assert!(
        kept.contains(&id(2).to_hex())
            && kept.contains(&id(3).to_hex())
            && !kept.contains(&id(1).to_hex()),
        "{kept}"
    );
    // The forgotten entry could only refuse knocks that are too old anyway.
    assert!(matches!(
        guard.check(id(1), now - 60_000, now),
        Err(ReplayError::TooOld { .. })
    ));
    assert_eq!(
        guard.check(id(2), now - WINDOW_MS, now),
        Err(ReplayError::Replay)
    );
}

/// Widening the window (on reload) after a tick must not bring back a knock
/// that the forgotten entry used to refuse.
#[test]
fn widening_the_window_does_not_reopen_replays() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let stamp = START + 10_000;
    accept(&mut guard, id(1), stamp, stamp);
    let now = stamp + WINDOW_MS + 1;
    guard.tick(now);
    assert!(guard.is_empty());
    guard.set_window_ms(4 * WINDOW_MS);
    assert_eq!(guard.window_ms(), 4 * WINDOW_MS);
    assert!(matches!(
        guard.check(id(1), stamp, now),
        Err(ReplayError::BeforeFloor { .. })
    ));
    // Knocks newer than anything forgotten are still accepted.
    assert!(guard.check(id(1), now, now).is_ok());
}

/// The clock steps back within one process: a knock accepted and forgotten,
/// and one an eavesdropper held back until it expired unused, both stay
/// refused; the tick says how far behind the floor the clock is.
#[test]
fn a_clock_stepping_back_reopens_nothing() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let accepted = START + 10_000;
    accept(&mut guard, id(1), accepted, accepted);
    let held = START + 12_000; // sealed, never delivered
    let later = held + WINDOW_MS + 5_000;
    assert_eq!(guard.tick(later), Tick::Forward);
    let stepped = held + 1_000; // both stamps fresh again by the clock alone
    assert_eq!(
        guard.tick(stepped),
        Tick::BehindFloor {
            by_ms: later - stepped
        }
    );
    for (key, stamp) in [(id(1), accepted), (id(2), held)] {
        assert_eq!(
            guard.check(key, stamp, stepped),
            Err(ReplayError::BeforeFloor { floor_ms: later })
        );
    }
    // The price: knocks stamped by the stepped clock wait for it to catch up.
    assert!(guard.check(id(3), stepped, stepped).is_err());
    assert!(guard
        .check(id(3), later - WINDOW_MS, later - WINDOW_MS)
        .is_ok());
}

/// The same across a restart: the floor is in the state.
#[test]
fn a_clock_stepped_back_across_a_restart_reopens_nothing() {
    let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
    let accepted = START + 10_000;
    accept(&mut guard, id(1), accepted, accepted);
    let later = accepted + WINDOW_MS + 5_000;
    guard.tick(later);
    let state = guard.encode();
    let restart = accepted + 1_000;
    let restored = ReplayGuard::restore(WINDOW_MS, restart, &state, None).unwrap();
    assert_eq!(
        restored.floor_ms(),
        later,
        "the floor is the later of the two"
    );
    assert!(matches!(
        restored.check(id(1), accepted, restart),
        Err(ReplayError::BeforeFloor { .. })
    ));
    // A floor recorded elsewhere after the state was written counts too.
    let newer = later + 60_000;
    let restored = ReplayGuard::restore(WINDOW_MS, restart, &state, Some(newer)).unwrap();
    assert_eq!(restored.floor_ms(), newer);
}

/// The state file is lost and the server restarts: a knock accepted by the
/// previous process is refused by the new one, even from a client whose
/// clock ran ahead by up to the window; fresh knocks are welcome again one
/// window later.
#[test]
fn knocks_accepted_before_a_state_loss_are_refused_after_it() {
    let k = keys(3);
    let mut rng = SplitMix(20);
    let server_now = START + 5_000;
    let mut first = ReplayGuard::first_start(WINDOW_MS, START);
    let mut accepted = Vec::new();
    // On time, and from a client whose clock runs a whole window ahead.
    for stamp in [server_now, server_now + WINDOW_MS] {
        let datagram = seal_simple(&k, stamp, &mut rng);
        let opened = open(&k, Mode::Shared, &KnockBytes::parse(&datagram).unwrap()).unwrap();
        accept(&mut first, k.replay_id(), opened.timestamp_ms, server_now);
        accepted.push(opened.timestamp_ms);
    }
    // The state directory is wiped; the server restarts a second later.
    let restart = server_now + 1_000;
    let second = ReplayGuard::after_state_loss(WINDOW_MS, restart, None);
    assert!(second.is_empty());
    for &stamp in &accepted {
        for now in [restart, stamp] {
            assert_eq!(
                second.check(k.replay_id(), stamp, now),
                Err(ReplayError::StateLost {
                    until_ms: restart + WINDOW_MS
                }),
                "stamp {stamp} at {now}"
            );
        }
    }
    // With the state file kept, the restored guard refuses them as replays.
    let restored = ReplayGuard::restore(WINDOW_MS, restart, &first.encode(), None).unwrap();
    for &stamp in &accepted {
        assert_eq!(
            restored.check(k.replay_id(), stamp, restart),
            Err(ReplayError::Replay)
        );
    }
    // One window later, new knocks pass.
    let later = restart + WINDOW_MS + 1;
    let fresh = seal_simple(&k, later, &mut rng);
    let fresh = open(&k, Mode::Shared, &KnockBytes::parse(&fresh).unwrap()).unwrap();
    assert!(second
        .check(k.replay_id(), fresh.timestamp_ms, later)
        .is_ok());
}

/// A stamp far in the future in the state (a damaged file, a server clock
/// that was far ahead) is clamped to the latest any accepted knock can have:
/// it does not lock its key out until real time catches up.
#[test]
fn stored_stamps_are_clamped() {
    let state = format!(
        "knock-replay-state v2\nfloor {START}\n{} {}\n",
        id(1).to_hex(),
        START + 365 * 86_400_000
    );
    let guard = ReplayGuard::restore(WINDOW_MS, START, state.as_bytes(), None).unwrap();
    let clamp = START + WINDOW_MS;
    assert_eq!(guard.check(id(1), clamp, START), Err(ReplayError::Replay));
    let later = clamp + 1;
    assert!(guard.check(id(1), later, later).is_ok());
}

/// In either mode: sealed, opened, found fresh, signature checked (public
/// mode), committed; the same bytes again are a replay.
#[test]
fn a_knock_seals_and_passes_the_guard_once_end_to_end() {
    let server = server();
    for mode in MODES {
        let client = Client::new(mode, 4, &server);
        let mut rng = SplitMix(21);
        let mut guard = ReplayGuard::first_start(WINDOW_MS, START);
        let stamp = START + 42_000;
        let datagram = client
            .seal(&server, &simple_request(), stamp, &randomness(&mut rng))
            .unwrap();
        for attempt in 0..3 {
            let opened = open(&client.keys, mode, &KnockBytes::parse(&datagram).unwrap()).unwrap();
            let now = stamp + 100 + attempt;
            let verdict = guard.check(client.keys.replay_id(), opened.timestamp_ms, now);
            if attempt == 0 {
                if let Some(public) = &client.public {
                    opened
                        .verify_signature(public, &server.public, &server.id)
                        .unwrap();
                }
                guard.commit(verdict.unwrap(), now);
            } else {
                assert_eq!(verdict, Err(ReplayError::Replay), "{mode}");
            }
        }
    }
}

/// Replay ids come from the pair key: equal for equal pairs, different for
/// different clients, servers or modes, and equal to the specification's.
#[test]
fn replay_ids_follow_the_key_and_read_back() {
    assert_eq!(keys(1).replay_id(), keys(1).replay_id());
    assert_ne!(keys(1).replay_id(), keys(2).replay_id());
    let (a, b) = (server(), other_server());
    let mut seen = std::collections::HashSet::new();
    for mode in MODES {
        for seed in 0..4 {
            for s in [&a, &b] {
                let client = Client::new(mode, seed, s);
                let (_, _, spec_id) = spec::subkeys(client.pair_prk(s).expose());
                assert_eq!(client.keys.replay_id().0, spec_id);
                assert!(seen.insert(client.keys.replay_id()), "{mode} {seed}");
            }
        }
    }
    let id = keys(1).replay_id();
    assert_eq!(ReplayId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(ReplayId::from_hex(&id.to_hex().to_uppercase()), Some(id));
    for bad in [
        "",
        "00",
        &"g".repeat(32),
        &"0".repeat(33),
        &format!("+{}", "0".repeat(31)),
    ] {
        assert_eq!(ReplayId::from_hex(bad), None, "{bad:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A knock with key `k` stamped `now + offset - window`.
    Knock { k: u8, offset: u64 },
    /// A replay of the `i`-th knock accepted so far.
    Replay { i: prop::sample::Index },
    /// Time moves forward.
    Forward { ms: u64 },
    /// The clock steps back.
    Back { ms: u64 },
    /// A reload with another window.
    Window { ms: u64 },
    /// A restart with the state kept: the last snapshot, and the journal
    /// of every grant's delta after it (and before it: old records stay).
    Restart,
    /// The state is written whole (beside the loop).
    Snapshot,
    /// A restart with the replay state lost: the whole state directory, or
    /// only `replay.state`, with the floor kept beside it.
    StateLost { floor_kept: bool },
    /// The server learns the time.
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u8, 0..=2 * WINDOW_MS).prop_map(|(k, offset)| Op::Knock { k, offset }),
        4 => any::<prop::sample::Index>().prop_map(|i| Op::Replay { i }),
        3 => (0..=45_000u64).prop_map(|ms| Op::Forward { ms }),
        1 => (0..=90_000u64).prop_map(|ms| Op::Back { ms }),
        1 => (1_000..=120_000u64).prop_map(|ms| Op::Window { ms }),
        1 => Just(Op::Restart),
        1 => Just(Op::Snapshot),
        1 => any::<bool>().prop_map(|floor_kept| Op::StateLost { floor_kept }),
        2 => Just(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No knock is ever accepted twice, whatever happens between: ticks that
    /// forget, reloads that change the window, a clock that steps either
    /// way, restarts with the state kept or lost. A knock accepted before a
    /// state loss may have been stamped up to one window ahead of the
    /// server's clock at the time.
    ///
    /// Two cases are out of reach and left out (docs/PROTOCOL.md): the whole
    /// state directory lost while the clock is behind the highest time it
    /// had seen, and lost while the window is narrower than one used within
    /// the last window. Nothing then remembers how far ahead it had been, or
    /// how wide the window was: the model loses the state with the widest
    /// window it used.
    #[test]
    fn no_knock_is_accepted_twice(ops in proptest::collection::vec(op(), 1..100)) {
        let mut now = START + 200_000;
        let mut highest = now;
        let mut window = WINDOW_MS;
        let mut widest = window;
        let mut guard = ReplayGuard::first_start(window, now);
        let mut snapshot = guard.encode();
        let mut journal: Vec<Vec<u8>> = Vec::new();
        let mut accepted: Vec<(u8, u64)> = Vec::new();
        let mut newest: HashMap<u8, u64> = HashMap::new();
        for op in ops {
            let candidate = match op {
                Op::Knock { k, offset } => Some((k, (now + offset).saturating_sub(window))),
                Op::Replay { i } if !accepted.is_empty() => Some(accepted[i.index(accepted.len())]),
                Op::Replay { .. } => None,
                Op::Forward { ms } => { now += ms; highest = highest.max(now); None }
                Op::Back { ms } => { now -= ms; None }
                Op::Window { ms } => {
                    window = ms;
                    widest = widest.max(ms);
                    guard.set_window_ms(ms);
                    None
                }
                Op::Restart => {
                    let mut stored = snapshot.clone();
                    for delta in &journal {
                        stored.push(b'\n');
                        stored.extend_from_slice(delta);
                    }
                    guard = ReplayGuard::restore(window, now, &stored, None).unwrap();
                    snapshot = guard.encode();
                    None
                }
                Op::Snapshot => { snapshot = guard.encode(); None }
                Op::StateLost { floor_kept } => {
                    let floor = (floor_kept || now < highest).then(|| guard.floor_ms());
                    guard = ReplayGuard::after_state_loss(widest, now, floor);
                    guard.set_window_ms(window);
                    snapshot = guard.encode();
                    // Only replay.state lost: the journal's records stay.
                    if !floor_kept {
                        journal.clear();
                    }
                    None
                }
                Op::Tick => { guard.tick(now); None }
            };
            if let Some((k, stamp)) = candidate {
                if let Ok(fresh) = guard.check(id(k), stamp, now) {
                    prop_assert!(!accepted.contains(&(k, stamp)), "accepted twice");
                    prop_assert!(newest.get(&k).is_none_or(|&n| stamp > n), "not newer");
                    accepted.push((k, stamp));
                    newest.insert(k, stamp);
                    let consumed = guard.commit(fresh, now);
                    journal.push(guard.encode_delta(&[consumed]));
                }
            }
        }
    }

    /// Restore never panics, whatever the file holds, and what it accepts
    /// re-encodes to itself.
    #[test]
    fn restore_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), with_header in any::<bool>()) {
        let mut input = if with_header { b"knock-replay-state v2\nfloor 5\n".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        if let Ok(guard) = ReplayGuard::restore(WINDOW_MS, START, &input, None) {
            let again = ReplayGuard::restore(WINDOW_MS, START, &guard.encode(), None).unwrap();
            prop_assert_eq!(again.encode(), guard.encode());
        }
    }
}
