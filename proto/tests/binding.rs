//! Bound to its server, in both modes, unlinkable across servers, and cheap
//! to reject.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::*;
use knock_proto::{
    open, HintIndex, KeyHint, KnockBytes, OpenError, PairKeys, ServerId, MAX_KNOCK_LEN,
    MIN_KNOCK_LEN, SLOT_MS,
};
use proptest::prelude::*;

/// A server with one client entry, `client`, looks up and opens `datagram`
/// as it would: `Ok` only if the hint names the client and the knock opens.
fn at_server(client: &Client, datagram: &[u8], now_ms: u64) -> Result<(), &'static str> {
    let index = HintIndex::build([((), &client.keys)], now_ms, WINDOW_MS);
    let knock = KnockBytes::parse(datagram).map_err(|_| "parse")?;
    index.lookup(knock.hint()).ok_or("unknown-client")?;
    open(&client.keys, client.mode, &knock)
        .map(|_| ())
        .map_err(|_| "open")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// One client (a shared secret, or an identity) enrolled on servers X
    /// and Y: a knock sealed for X is a hint miss at Y and, even given X's
    /// hint, a bad MAC under Y's keys. X opens it.
    #[test]
    fn knock_for_another_server_is_junk(
        mode in mode(),
        x in any::<[u8; 16]>(),
        y in any::<[u8; 16]>(),
        same_server_key in any::<bool>(),
        request in request(),
        rand in seal_randomness(),
        seed in any::<u8>(),
    ) {
        prop_assume!(x != y);
        let server_x = Server::new(ServerId(x), 1);
        // In public mode, two servers differ in key and identity; a server
        // that kept its key but changed its identity is covered too.
        let server_y = Server::new(ServerId(y), if same_server_key { 1 } else { 2 });
        let at_x = Client::new(mode, seed, &server_x);
        let at_y = Client::new(mode, seed, &server_y);
        let datagram = at_x.seal(&server_x, &request, T0, &rand).unwrap();
        let knock = KnockBytes::parse(&datagram).unwrap();
        prop_assert_eq!(at_server(&at_y, &datagram, T0), Err("unknown-client"));
        prop_assert_eq!(open(&at_y.keys, mode, &knock), Err(OpenError::BadMac));
        prop_assert_eq!(at_server(&at_x, &datagram, T0), Ok(()));
    }

    /// The pair keys computed by the client and by the server agree, for
    /// any identity, server key and server identity.
    #[test]
    fn both_sides_compute_the_same_pair_key(
        identity_seed in any::<[u8; 32]>(),
        server_secret in any::<[u8; 32]>(),
        server_id in any::<[u8; 16]>(),
    ) {
        let identity = knock_proto::ClientIdentity::from_seed(
            &knock_proto::IdentitySeed::from_bytes(identity_seed),
        );
        let server = knock_proto::ServerSecretKey::from_bytes(server_secret);
        let id = ServerId(server_id);
        let client_side = identity.pair_prk(&server.public(), &id).unwrap();
        let server_side = server.pair_prk(&identity.public(), &id).unwrap();
        prop_assert_eq!(client_side.expose(), server_side.expose());
        // And they are what the specification says.
        let (_, x_sk, ed_pk, x_pk) = spec::identity(&identity_seed);
        let s_pk = server.public().0;
        let dh = spec::x25519(&x_sk, &s_pk);
        prop_assert_eq!(
            client_side.expose(),
            &spec::public_pair_prk(&dh, &ed_pk, &x_pk, &s_pk, &server_id)
        );
    }
}

/// Server ids differing in one bit give unrelated pair keys: a knock for one
/// is junk at the other.
#[test]
fn server_ids_differing_in_one_bit_are_told_apart() {
    let mut rng = SplitMix(10);
    let base = server();
    for mode in MODES {
        let client = Client::new(mode, 1, &base);
        let datagram = client.seal_simple(&base, T0, &mut rng);
        let knock = KnockBytes::parse(&datagram).unwrap();
        for byte in 0..16 {
            for bit in 0..8 {
                let mut other = base.clone();
                other.id.0[byte] ^= 1 << bit;
                let there = Client::new(mode, 1, &other);
                assert_ne!(there.keys.replay_id(), client.keys.replay_id());
                assert_eq!(at_server(&there, &datagram, T0), Err("unknown-client"));
                assert_eq!(open(&there.keys, mode, &knock), Err(OpenError::BadMac));
            }
        }
    }
}

/// One identity on two servers, knocking at both in the same slot (the
/// moment an observer who sees both links is most tempted to link them):
/// different hints, no common run of 4 bytes, and no more positional
/// agreement than unrelated random strings (~0.75 of 191 expected; a
/// binomial bound of 8). The same for a shared secret copied to two servers.
#[test]
fn knocks_to_two_servers_in_one_slot_share_nothing() {
    let (a, b) = (server(), other_server());
    let mut rng = SplitMix(30);
    let slot_start = (T0 / SLOT_MS) * SLOT_MS;
    let mut total_agreement = 0usize;
    let mut compared = 0usize;
    for mode in MODES {
        for seed in 0..50u8 {
            let (at_a, at_b) = (Client::new(mode, seed, &a), Client::new(mode, seed, &b));
            let stamp = slot_start + rng.below(SLOT_MS);
            let ka = at_a.seal_simple(&a, stamp, &mut rng);
            let kb = at_b.seal_simple(
                &b,
                stamp + rng.below(slot_start + SLOT_MS - stamp),
                &mut rng,
            );
            assert_ne!(ka[..8], kb[..8], "{mode}: same hint at two servers");
            assert!(
                !share_a_run(&ka, &kb, 4),
                "{mode} seed {seed}: a shared 4-byte run"
            );
            let agreement = ka.iter().zip(&kb).filter(|(x, y)| x == y).count();
            assert!(
                agreement <= 8,
                "{mode} seed {seed}: {agreement} equal positions"
            );
            total_agreement += agreement;
            compared += ka.len().min(kb.len());
        }
    }
    let rate = total_agreement as f64 / compared as f64;
    assert!(rate < 2.0 / 256.0, "equal-position rate {rate}");
}

/// The index a server with `clients` shared-key clients builds at `now_ms`.
fn index(clients: u8, now_ms: u64, window_ms: u64) -> (Vec<PairKeys>, HintIndex<u8>) {
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
    let s = server();
    let (_, index) = mixed_clients(100, &s, T0);
    let mut rng = SplitMix(11);
    for _ in 0..100_000 {
        let len = MIN_KNOCK_LEN + rng.below((MAX_KNOCK_LEN - MIN_KNOCK_LEN + 1) as u64) as usize;
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        let knock = KnockBytes::parse(&junk).expect("junk of a valid length parses");
        assert!(index.lookup(knock.hint()).is_none());
    }
}

/// A hint names exactly one candidate, in either mode: the client that made
/// it.
#[test]
fn hint_names_the_one_client_that_made_it() {
    let s = server();
    let (all, index) = mixed_clients(100, &s, T0);
    let mut rng = SplitMix(12);
    for (i, client) in all.iter().enumerate() {
        let datagram = client.seal_simple(&s, T0 - WINDOW_MS + rng.below(2 * WINDOW_MS), &mut rng);
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
/// check, which fails, in either mode.
#[test]
fn valid_hint_with_junk_body_fails_one_mac_check() {
    let s = server();
    let (all, index) = mixed_clients(4, &s, T0);
    let mut rng = SplitMix(14);
    for i in [0u8, 1] {
        let real = all[usize::from(i)].seal_simple(&s, T0, &mut rng);
        let mut forged = vec![0u8; real.len()];
        rng.fill(&mut forged);
        forged[..8].copy_from_slice(&real[..8]);
        let knock = KnockBytes::parse(&forged).unwrap();
        let client = *index.lookup(knock.hint()).unwrap();
        assert_eq!(client, i);
        let entry = &all[usize::from(i)];
        assert_eq!(
            open(&entry.keys, entry.mode, &knock),
            Err(OpenError::BadMac)
        );
    }
}

/// Another client's keys cannot open a knock (the hint is not the only thing
/// that ties a knock to its client), whatever the two modes.
#[test]
fn another_clients_keys_do_not_open_a_knock() {
    let s = server();
    let mut rng = SplitMix(15);
    for mode in MODES {
        let datagram = Client::new(mode, 1, &s).seal_simple(&s, T0, &mut rng);
        let knock = KnockBytes::parse(&datagram).unwrap();
        for other_mode in MODES {
            let other = Client::new(other_mode, 2, &s);
            assert_eq!(
                open(&other.keys, other_mode, &knock),
                Err(OpenError::BadMac)
            );
        }
    }
    // A shared secret equal to the bytes of an identity seed gives unrelated
    // keys: the two modes' key schedules are separated by their labels.
    let seed = [9u8; 32];
    let shared = PairKeys::shared(&knock_proto::ClientSecret::from_bytes(seed), &SERVER);
    let public = PairKeys::from_prk(
        &knock_proto::ClientIdentity::from_seed(&knock_proto::IdentitySeed::from_bytes(seed))
            .pair_prk(&s.public, &SERVER)
            .unwrap(),
    );
    assert_ne!(shared.replay_id(), public.replay_id());
}
