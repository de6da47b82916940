//! A stolen server cannot forge a public-key client's knock.
//!
//! The thief holds everything in the server's configuration and state
//! directories: the server key (`server.key`), the server identity, every
//! client entry (public lines, and the secrets of shared-key clients), the
//! replay state and the pair-key cache (every public client's `pair_prk`,
//! hence its hint and AEAD keys). It also captured genuine knocks, at this
//! server and at another server the same identity is enrolled on (whose keys
//! it also stole). It builds knocks every way it can; each goes through the
//! server's path (length, hint, AEAD and mode, replay guard, signature; the
//! policy checks between the guard and the signature are the server crate's
//! and let everything through here) and none is honoured. Every refusal is
//! asserted by reason. Nothing is committed before the signature check, so
//! no forgery advances the client's replay state: the genuine client still
//! opens afterwards.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::*;
use knock_proto::{
    open, seal, ClientIdentity, ClientPublicKey, ClientSecret, HintIndex, IdentitySeed, KnockBytes,
    Mode, OpenError, PairKeys, PairPrk, PortSpec, ReplayError, ReplayGuard, Request,
    SealRandomness, Sealer, ServerId, ServerPublicKey, ServerSecretKey, SignatureError,
    REQUEST_LEN,
};
use proptest::prelude::*;

/// Why the server refused a datagram, or that it granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Granted(u8),
    BadLength,
    UnknownClient,
    Open(OpenError),
    Replay(ReplayError),
    Signature(SignatureError),
}

/// What the server holds for one client.
struct Entry {
    mode: Mode,
    keys: PairKeys,
    public: Option<ClientPublicKey>,
}

/// The server side, as `knock-server` runs it (minus policy and I/O).
struct Victim {
    id: ServerId,
    public: ServerPublicKey,
    entries: Vec<Entry>,
    guard: ReplayGuard,
    signature_checks: u32,
}

impl Victim {
    fn new(server: &Server, clients: &[Client]) -> Self {
        let entries = clients
            .iter()
            .map(|c| Entry {
                mode: c.mode,
                // The server derives public pairs from its own key.
                keys: match c.mode {
                    Mode::Shared => PairKeys::shared(c.secret.as_ref().unwrap(), &server.id),
                    Mode::Public => PairKeys::from_prk(
                        &server
                            .key
                            .pair_prk(c.public.as_ref().unwrap(), &server.id)
                            .unwrap(),
                    ),
                },
                public: c.public,
            })
            .collect();
        Self {
            id: server.id,
            public: server.public,
            entries,
            guard: ReplayGuard::first_start(WINDOW_MS, T0 - 60_000),
            signature_checks: 0,
        }
    }

    fn receive(&mut self, datagram: &[u8], now_ms: u64) -> Outcome {
        let Ok(knock) = KnockBytes::parse(datagram) else {
            return Outcome::BadLength;
        };
        let index = HintIndex::build(
            self.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (i as u8, &e.keys)),
            now_ms,
            WINDOW_MS,
        );
        let Some(&client) = index.lookup(knock.hint()) else {
            return Outcome::UnknownClient;
        };
        let entry = &self.entries[usize::from(client)];
        let opened = match open(&entry.keys, entry.mode, &knock) {
            Ok(opened) => opened,
            Err(e) => return Outcome::Open(e),
        };
        let fresh = match self
            .guard
            .check(entry.keys.replay_id(), opened.timestamp_ms, now_ms)
        {
            Ok(fresh) => fresh,
            Err(e) => return Outcome::Replay(e),
        };
        if let Some(public) = &entry.public {
            self.signature_checks += 1;
            if let Err(e) = opened.verify_signature(public, &self.public, &self.id) {
                return Outcome::Signature(e);
            }
        }
        self.guard.commit(fresh, now_ms);
        Outcome::Granted(client)
    }
}

/// Everything the thief took from the server's directories, and what it
/// captured on the wire.
struct Loot {
    server_secret: [u8; 32],
    server_id: ServerId,
    server_public: ServerPublicKey,
    /// The public line of every public entry (`clients.d`).
    public_lines: Vec<String>,
    /// The secret of every shared entry (`clients.d`).
    shared_secrets: Vec<[u8; 32]>,
    /// The pair-key cache: every public client's pair key.
    pair_cache: Vec<[u8; 32]>,
    /// The replay state file.
    replay_state: Vec<u8>,
}

/// The world of the test: server A (the victim, stolen), server B (also
/// stolen; the same identity is enrolled there), the victim client `alice`
/// (public-key, entry 0 at A), a shared-key client `bob` (entry 1), and
/// another public client `carol` (entry 2).
struct World {
    a: Server,
    b: Server,
    alice_at_a: Client,
    alice_at_b: Client,
    clients_at_a: Vec<Client>,
}

const ALICE: u8 = 0;

fn world() -> World {
    let a = server();
    let b = other_server();
    let clients_at_a = vec![
        Client::new(Mode::Public, 1, &a),
        Client::new(Mode::Shared, 2, &a),
        Client::new(Mode::Public, 3, &a),
    ];
    World {
        alice_at_a: Client::new(Mode::Public, 1, &a),
        alice_at_b: Client::new(Mode::Public, 1, &b),
        a,
        b,
        clients_at_a,
    }
}

fn loot(world: &World, victim: &Victim) -> Loot {
    let a = &world.a;
    Loot {
        server_secret: *a.key.expose(),
        server_id: a.id,
        server_public: a.public,
        public_lines: world
            .clients_at_a
            .iter()
            .filter_map(|c| c.public.map(|p| p.to_line()))
            .collect(),
        shared_secrets: world
            .clients_at_a
            .iter()
            .filter_map(|c| c.secret.as_ref().map(|s| *s.expose()))
            .collect(),
        pair_cache: world
            .clients_at_a
            .iter()
            .filter(|c| c.mode == Mode::Public)
            .map(|c| *c.pair_prk(a).expose())
            .collect(),
        replay_state: victim.guard.encode(),
    }
}

/// The thief's tools: alice's pair keys, recomputed from the stolen server
/// key and her public line (not taken from the test's own client).
struct Thief {
    server_id: ServerId,
    server_public: ServerPublicKey,
    alice: ClientPublicKey,
    prk: [u8; 32],
    hint_key: [u8; 32],
    aead_key: [u8; 32],
}

impl Thief {
    fn new(loot: &Loot) -> Self {
        let server_key = ServerSecretKey::from_bytes(loot.server_secret);
        assert_eq!(server_key.public(), loot.server_public);
        let alice = ClientPublicKey::parse_line(&loot.public_lines[0]).unwrap();
        let prk = *server_key
            .pair_prk(&alice, &loot.server_id)
            .unwrap()
            .expose();
        // The pair-key cache holds the same.
        assert_eq!(prk, loot.pair_cache[0]);
        let (hint_key, aead_key, _) = spec::subkeys(&prk);
        Self {
            server_id: loot.server_id,
            server_public: loot.server_public,
            alice,
            prk,
            hint_key,
            aead_key,
        }
    }

    fn keys(&self) -> PairKeys {
        PairKeys::from_prk(&PairPrk::from_bytes(self.prk))
    }

    /// An AEAD-valid knock for alice with the given plaintext parts.
    fn wrap(&self, stamp: u64, nonce: &[u8; 24], block: &[u8], auth: &[u8; 64]) -> Vec<u8> {
        let hint = spec::hint(&self.hint_key, stamp);
        spec::seal_plaintext(
            &self.aead_key,
            &hint,
            nonce,
            &spec::plaintext(block, auth, 5),
        )
    }

    /// A knock for alice signed by `identity` (not hers) with the crate's own
    /// sealer and alice's pair keys.
    fn signed_by(&self, identity: &ClientIdentity, stamp: u64, nonce: u8) -> Vec<u8> {
        seal(
            &self.keys(),
            &Sealer::Public {
                identity,
                server: &self.server_public,
                server_id: &self.server_id,
            },
            &simple_request(),
            stamp,
            &SealRandomness {
                nonce: [nonce; 24],
                padding: nonce,
            },
        )
        .unwrap()
    }

    /// A captured knock's plaintext: (request block, signature).
    fn decrypt(&self, captured: &[u8]) -> (Vec<u8>, [u8; 64]) {
        let plaintext = spec::open_plaintext(&self.aead_key, captured).unwrap();
        (
            plaintext[..REQUEST_LEN].to_vec(),
            plaintext[REQUEST_LEN..REQUEST_LEN + 64].try_into().unwrap(),
        )
    }
}

/// Every 32-byte secret the thief can derive from what it holds, each used
/// as an identity seed and as an Ed25519 signing key.
fn stolen_key_material(loot: &Loot, thief: &Thief) -> Vec<(String, [u8; 32])> {
    let mut material = vec![
        ("server.key".to_owned(), loot.server_secret),
        ("pair_prk".to_owned(), thief.prk),
        ("aead_key".to_owned(), thief.aead_key),
        ("hint_key".to_owned(), thief.hint_key),
        (
            "server.key's X25519 public key".to_owned(),
            loot.server_public.0,
        ),
        (
            "alice's X25519 agreement".to_owned(),
            spec::x25519(&loot.server_secret, thief.alice.x25519_bytes()),
        ),
        ("alice's ed_pk".to_owned(), *thief.alice.ed25519_bytes()),
        (
            "SHA-256 of the replay state".to_owned(),
            spec::sha256(&[&loot.replay_state]),
        ),
        (
            "SHA-256 of server.key || server.id".to_owned(),
            spec::sha256(&[&loot.server_secret, &loot.server_id.0]),
        ),
    ];
    for (i, line) in loot.public_lines.iter().enumerate() {
        material.push((
            format!("SHA-256 of public entry {i}"),
            spec::sha256(&[line.as_bytes()]),
        ));
    }
    for (i, secret) in loot.shared_secrets.iter().enumerate() {
        material.push((format!("shared secret {i}"), *secret));
    }
    for (i, prk) in loot.pair_cache.iter().enumerate() {
        material.push((format!("cached pair key {i}"), *prk));
        let (hint, aead, _) = spec::subkeys(prk);
        material.push((format!("cached hint key {i}"), hint));
        material.push((format!("cached aead key {i}"), aead));
    }
    material
}

/// A genuine knock of alice to A at `stamp` (captured by the thief).
fn genuine(world: &World, request: &Request, stamp: u64, nonce: u8) -> Vec<u8> {
    world
        .alice_at_a
        .seal(
            &world.a,
            request,
            stamp,
            &SealRandomness {
                nonce: [nonce; 24],
                padding: nonce,
            },
        )
        .unwrap()
}

#[test]
fn a_stolen_server_cannot_forge_a_public_clients_knock() {
    let world = world();
    let mut victim = Victim::new(&world.a, &world.clients_at_a);
    let now = T0;

    // Alice knocks once; the thief (on path) captures it. Then she knocks
    // again, and that one the thief holds back (it never arrives).
    let first = genuine(&world, &simple_request(), now - 1_000, 1);
    assert_eq!(victim.receive(&first, now - 900), Outcome::Granted(ALICE));
    let held_back = genuine(&world, &simple_request(), now - 500, 2);
    // And at server B, which the thief also owns.
    let at_b = world
        .alice_at_b
        .seal(
            &world.b,
            &simple_request(),
            now - 400,
            &SealRandomness {
                nonce: [3; 24],
                padding: 3,
            },
        )
        .unwrap();

    // The break-in.
    let loot = loot(&world, &victim);
    let thief = Thief::new(&loot);
    let checks_before = victim.signature_checks;
    let mut attempts = 0u32;
    let mut expect = |victim: &mut Victim, what: &str, datagram: &[u8], expected: Outcome| {
        attempts += 1;
        let got = victim.receive(datagram, now);
        assert_eq!(got, expected, "{what}");
    };
    let bad_signature = Outcome::Signature(SignatureError::BadSignature);
    let stamp = now + 1;
    let nonce = [0x77; 24];
    let request_block = spec::request_block(&simple_request(), true, stamp);

    // (a) AEAD-valid, flag set, zero auth.
    expect(
        &mut victim,
        "(a) zero auth",
        &thief.wrap(stamp, &nonce, &request_block, &[0; 64]),
        bad_signature,
    );
    // ... and random auth.
    expect(
        &mut victim,
        "(a) random auth",
        &thief.wrap(stamp, &nonce, &request_block, &[0x5a; 64]),
        bad_signature,
    );

    // (b) flag clear: a shared-key-style knock for a public client, made
    // with the crate's own sealer and with the specification.
    let shared_style = seal(
        &thief.keys(),
        &Sealer::Shared,
        &simple_request(),
        stamp,
        &SealRandomness { nonce, padding: 0 },
    )
    .unwrap();
    expect(
        &mut victim,
        "(b) shared-style",
        &shared_style,
        Outcome::Open(OpenError::WrongMode),
    );
    let unsigned_block = spec::request_block(&simple_request(), false, stamp);
    expect(
        &mut victim,
        "(b) flag clear, by hand",
        &thief.wrap(stamp, &nonce, &unsigned_block, &[0; 64]),
        Outcome::Open(OpenError::WrongMode),
    );
    // A captured genuine knock with its flag cleared.
    let (captured_block, captured_sig) = thief.decrypt(&first);
    let mut flag_cleared = captured_block.clone();
    flag_cleared[1] &= !4;
    expect(
        &mut victim,
        "(b) captured, flag cleared",
        &thief.wrap(
            now - 1_000,
            &first[8..32].try_into().unwrap(),
            &flag_cleared,
            &captured_sig,
        ),
        Outcome::Open(OpenError::WrongMode),
    );

    // (c) signed by a fresh identity.
    let mut rng = SplitMix(0x5eed);
    for _ in 0..8 {
        let stranger = ClientIdentity::from_seed(&IdentitySeed::from_bytes(rng.bytes32()));
        expect(
            &mut victim,
            "(c) fresh identity",
            &thief.signed_by(&stranger, stamp, rng.next_u64() as u8),
            bad_signature,
        );
    }
    // ... and a raw Ed25519 signature of the right message by a fresh key.
    let hint = spec::hint(&thief.hint_key, stamp);
    let message = spec::signed_message(
        &loot.server_public.0,
        &loot.server_id.0,
        &hint,
        &nonce,
        &request_block,
    );
    let forged = spec::sign(&rng.bytes32(), &message);
    expect(
        &mut victim,
        "(c) fresh Ed25519 key",
        &thief.wrap(stamp, &nonce, &request_block, &forged),
        bad_signature,
    );

    // (d) signed with keys derived from anything stolen, as identity seeds
    // and as raw Ed25519 seeds.
    for (what, material) in stolen_key_material(&loot, &thief) {
        let identity = ClientIdentity::from_seed(&IdentitySeed::from_bytes(material));
        expect(
            &mut victim,
            &format!("(d) identity from {what}"),
            &thief.signed_by(&identity, stamp, 9),
            bad_signature,
        );
        expect(
            &mut victim,
            &format!("(d) Ed25519 key {what}"),
            &thief.wrap(
                stamp,
                &nonce,
                &request_block,
                &spec::sign(&material, &message),
            ),
            bad_signature,
        );
    }

    // (e) the captured genuine knock, byte for byte.
    expect(
        &mut victim,
        "(e) replay",
        &first,
        Outcome::Replay(ReplayError::Replay),
    );

    // (f) the captured signature re-wrapped under a new nonce.
    let captured_stamp = now - 1_000;
    expect(
        &mut victim,
        "(f) new nonce",
        &thief.wrap(captured_stamp, &nonce, &captured_block, &captured_sig),
        // Same stamp as the accepted knock: the guard refuses it first.
        Outcome::Replay(ReplayError::Replay),
    );
    // The held-back knock's signature (its stamp is still fresh) under a
    // new nonce: the signature fails.
    let (held_block, held_sig) = thief.decrypt(&held_back);
    expect(
        &mut victim,
        "(f) new nonce, held-back signature",
        &thief.wrap(now - 500, &nonce, &held_block, &held_sig),
        bad_signature,
    );

    // (g) the same with a new stamp (newer than anything accepted).
    let mut new_stamp = captured_block.clone();
    new_stamp[2..10].copy_from_slice(&stamp.to_be_bytes());
    expect(
        &mut victim,
        "(g) new stamp",
        &thief.wrap(
            stamp,
            &first[8..32].try_into().unwrap(),
            &new_stamp,
            &captured_sig,
        ),
        bad_signature,
    );

    // (h) the same with other ports, another duration, or a bound address.
    let other_requests = [
        Request {
            ports: vec![PortSpec::tcp(22)],
            ..simple_request()
        },
        Request {
            ports: vec![PortSpec::tcp(4992), PortSpec::tcp(22)],
            ..simple_request()
        },
        Request {
            duration_s: 86_400,
            ..simple_request()
        },
        Request {
            bound_addr: Some("198.51.100.9".parse().unwrap()),
            ..simple_request()
        },
        Request {
            bound_addr: Some("2001:db8::66".parse().unwrap()),
            ..simple_request()
        },
    ];
    for request in &other_requests {
        let block = spec::request_block(request, true, now - 500);
        expect(
            &mut victim,
            &format!("(h) {request:?} under the held-back signature"),
            &thief.wrap(
                now - 500,
                &held_back[8..32].try_into().unwrap(),
                &block,
                &held_sig,
            ),
            bad_signature,
        );
    }

    // (i) a signature captured at server B, moved to A: B's keys are stolen
    // too, so the thief reads it; its request is fresh at A.
    let b_prk = world.b.key.pair_prk(&thief.alice, &world.b.id).unwrap();
    let (_, b_aead, _) = spec::subkeys(b_prk.expose());
    let b_plaintext = spec::open_plaintext(&b_aead, &at_b).unwrap();
    let (b_block, b_rest) = b_plaintext.split_at(REQUEST_LEN);
    let b_sig: [u8; 64] = b_rest[..64].try_into().unwrap();
    expect(
        &mut victim,
        "(i) signature from server B",
        &thief.wrap(now - 400, &at_b[8..32].try_into().unwrap(), b_block, &b_sig),
        bad_signature,
    );

    // (j) the pair keys used as a shared-key secret: nobody's hint.
    for (what, material) in stolen_key_material(&loot, &thief) {
        let keys = PairKeys::shared(&ClientSecret::from_bytes(material), &loot.server_id);
        let datagram = seal(
            &keys,
            &Sealer::Shared,
            &simple_request(),
            stamp,
            &SealRandomness { nonce, padding: 1 },
        )
        .unwrap();
        let expected = if loot.shared_secrets.contains(&material) {
            // Bob's own secret: a knock as bob, who is a shared-key client
            // (v1's residual, by design), not as alice.
            Outcome::Granted(1)
        } else {
            Outcome::UnknownClient
        };
        expect(
            &mut victim,
            &format!("(j) shared with {what}"),
            &datagram,
            expected,
        );
    }

    // Every forgery was refused; each refused signature cost one check, and
    // the rest none (replays and wrong modes are refused before).
    assert!(attempts > 60, "{attempts} attempts");
    assert!(victim.signature_checks - checks_before > 40);

    // Nothing the thief did advanced alice's replay state: the held-back
    // genuine knock and a fresh one are still honoured.
    assert_eq!(victim.receive(&held_back, now), Outcome::Granted(ALICE));
    let fresh = genuine(&world, &simple_request(), now + 2, 4);
    assert_eq!(victim.receive(&fresh, now + 100), Outcome::Granted(ALICE));
    // Carol was never touched either.
    let carol = world.clients_at_a[2]
        .seal(
            &world.a,
            &simple_request(),
            now,
            &SealRandomness {
                nonce: [5; 24],
                padding: 5,
            },
        )
        .unwrap();
    assert_eq!(victim.receive(&carol, now + 100), Outcome::Granted(2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// (k) Random requests, stamps and signing keys, with alice's pair keys:
    /// never granted, always refused at the signature (or, for a stamp the
    /// guard refuses, before it).
    #[test]
    fn random_forgeries_are_refused(
        request in request(),
        offset in 0..=2 * WINDOW_MS,
        signer in any::<[u8; 32]>(),
        rand in seal_randomness(),
        as_identity in any::<bool>(),
    ) {
        let world = world();
        let mut victim = Victim::new(&world.a, &world.clients_at_a);
        let thief = Thief::new(&loot(&world, &victim));
        let stamp = T0 - WINDOW_MS + offset;
        let datagram = if as_identity {
            let identity = ClientIdentity::from_seed(&IdentitySeed::from_bytes(signer));
            seal(
                &thief.keys(),
                &Sealer::Public { identity: &identity, server: &thief.server_public, server_id: &thief.server_id },
                &request,
                stamp,
                &rand,
            ).unwrap()
        } else {
            let block = spec::request_block(&request, true, stamp);
            let hint = spec::hint(&thief.hint_key, stamp);
            let message = spec::signed_message(&thief.server_public.0, &thief.server_id.0, &hint, &rand.nonce, &block);
            thief.wrap(stamp, &rand.nonce, &block, &spec::sign(&signer, &message))
        };
        prop_assert_eq!(
            victim.receive(&datagram, T0),
            Outcome::Signature(SignatureError::BadSignature)
        );
    }
}
