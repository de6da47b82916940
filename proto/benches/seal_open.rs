//! The cost of one knock on each path the server can take, per mode
//! (benches `shared-key/…` and `public-key/…`):
//!
//! * `reject_junk`: parse + hint lookup miss (random bytes of a knock's
//!   length): no cryptography;
//! * `reject_forged_hint`: parse + hint lookup hit + one failed AEAD (a live
//!   hint copied onto a junk body: the most a datagram without the keys can
//!   cost);
//! * `refuse_replay`: parse + hint + one AEAD + decode + the replay guard
//!   refuses (an already accepted knock sent again); never a signature;
//! * `open_valid`: parse + hint + one AEAD + decode + the replay guard
//!   accepts, and for a public-key client the signature check
//!   (`verify_strict`, with the decompression of the client's key): the
//!   whole cost of a knock the server honours, short of its own policy
//!   checks and the durable write;
//! * `seal`: what the client pays (public-key: including the signature);
//! * `pair_cold` (public-key only): the server computing one client's pair
//!   key from its enrolled public key (Ed25519 decompression and weak-key
//!   check, X25519, HKDF-Extract), as at a start without the pair-key cache;
//! * `pair_cached` (both): expanding a pair key into its subkeys and the
//!   hints of 3 slots, as at a start with the cache.
//!
//! The index holds 100 clients of each mode, as a busy mixed server might.
//! Run with `cargo bench -p knock-proto --bench seal_open`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use knock_proto::{
    open, seal, ClientIdentity, ClientPublicKey, ClientSecret, HintIndex, IdentitySeed, KeyHint,
    KnockBytes, Mode, OpenedKnock, PairKeys, PortSpec, ReplayGuard, Request, SealRandomness,
    Sealer, ServerId, ServerPublicKey, ServerSecretKey,
};

const NOW_MS: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 30_000;
const SERVER: ServerId = ServerId([0x5e; 16]);
const CLIENTS_PER_MODE: u8 = 100;

/// One entry of the server's `clients.d`, as the server holds it.
struct Entry {
    mode: Mode,
    keys: PairKeys,
    /// Public-key: the enrolled key (compressed, decompressed at verify).
    public: Option<ClientPublicKey>,
}

/// What the client holds.
struct Knocker {
    keys: PairKeys,
    identity: Option<ClientIdentity>,
}

struct Server {
    key: ServerSecretKey,
    public: ServerPublicKey,
    entries: Vec<Entry>,
    index: HintIndex<usize>,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Junk,
    UnknownHint,
    Refused,
    Replay,
    BadSignature,
    Honoured,
}

impl Server {
    fn new() -> Self {
        let key = ServerSecretKey::from_bytes([0x5e; 32]);
        let public = key.public();
        let mut entries = Vec::new();
        for seed in 0..CLIENTS_PER_MODE {
            let (_, entry) = client(Mode::Shared, seed, &key);
            entries.push(entry);
            let (_, entry) = client(Mode::Public, seed, &key);
            entries.push(entry);
        }
        let index = HintIndex::build(
            entries.iter().enumerate().map(|(i, e)| (i, &e.keys)),
            NOW_MS,
            WINDOW_MS,
        );
        Self {
            key,
            public,
            entries,
            index,
        }
    }

    /// What the server does with one datagram, in its order: length, hint,
    /// one AEAD and decode, the replay guard (checked, not committed), and
    /// for a public-key client, last, the signature.
    fn path(&self, guard: &ReplayGuard, datagram: &[u8]) -> Outcome {
        let Ok(knock) = KnockBytes::parse(datagram) else {
            return Outcome::Junk;
        };
        let Some(&i) = self.index.lookup(knock.hint()) else {
            return Outcome::UnknownHint;
        };
        let Some(entry) = self.entries.get(i) else {
            return Outcome::UnknownHint;
        };
        let Ok(opened) = open(&entry.keys, entry.mode, &knock) else {
            return Outcome::Refused;
        };
        if guard
            .check(entry.keys.replay_id(), opened.timestamp_ms, NOW_MS)
            .is_err()
        {
            return Outcome::Replay;
        }
        self.verify(entry, &opened)
    }

    fn verify(&self, entry: &Entry, opened: &OpenedKnock) -> Outcome {
        match (entry.mode, &entry.public) {
            (Mode::Shared, _) => Outcome::Honoured,
            (Mode::Public, Some(public)) => {
                match opened.verify_signature(public, &self.public, &SERVER) {
                    Ok(()) => Outcome::Honoured,
                    Err(_) => Outcome::BadSignature,
                }
            }
            (Mode::Public, None) => Outcome::BadSignature,
        }
    }
}

fn identity(seed: u8) -> ClientIdentity {
    ClientIdentity::from_seed(&IdentitySeed::from_bytes([seed; 32]))
}

fn client(mode: Mode, seed: u8, server: &ServerSecretKey) -> (Knocker, Entry) {
    match mode {
        Mode::Shared => {
            let secret = ClientSecret::from_bytes([seed; 32]);
            (
                Knocker {
                    keys: PairKeys::shared(&secret, &SERVER),
                    identity: None,
                },
                Entry {
                    mode,
                    keys: PairKeys::shared(&secret, &SERVER),
                    public: None,
                },
            )
        }
        Mode::Public => {
            let identity = identity(seed);
            let public = identity.public();
            let prk = server.pair_prk(&public, &SERVER).expect("a valid key");
            (
                Knocker {
                    keys: PairKeys::from_prk(&prk),
                    identity: Some(identity),
                },
                Entry {
                    mode,
                    keys: PairKeys::from_prk(&prk),
                    public: Some(public),
                },
            )
        }
    }
}

/// Bytes from a fixed xorshift stream.
fn junk(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let server = Server::new();
    let request = Request {
        ports: vec![PortSpec::tcp(22), PortSpec::tcp(4992)],
        duration_s: 0,
        bound_addr: None,
    };
    let randomness = SealRandomness {
        nonce: [7; 24],
        padding: 21,
    };
    let fresh_guard = ReplayGuard::first_start(WINDOW_MS, NOW_MS - WINDOW_MS);

    for mode in [Mode::Shared, Mode::Public] {
        let (knocker, _) = client(mode, 42, &server.key);
        let sealer = match &knocker.identity {
            None => Sealer::Shared,
            Some(identity) => Sealer::Public {
                identity,
                server: &server.public,
                server_id: &SERVER,
            },
        };
        let name = |bench: &str| format!("{mode}/{bench}");

        let valid = seal(&knocker.keys, &sealer, &request, NOW_MS, &randomness).expect("seal");

        let junk_bytes = junk(valid.len(), 0x2545_f491_4f6c_dd1d);
        assert_eq!(server.path(&fresh_guard, &junk_bytes), Outcome::UnknownHint);
        c.bench_function(&name("reject_junk"), |b| {
            b.iter(|| server.path(&fresh_guard, black_box(&junk_bytes)))
        });

        let mut forged = junk(valid.len(), 0x9e37_79b9_7f4a_7c15);
        forged[..8].copy_from_slice(&valid[..8]);
        assert_eq!(server.path(&fresh_guard, &forged), Outcome::Refused);
        c.bench_function(&name("reject_forged_hint"), |b| {
            b.iter(|| server.path(&fresh_guard, black_box(&forged)))
        });

        let mut used_guard = fresh_guard.clone();
        let entry = server
            .index
            .lookup(KnockBytes::parse(&valid).expect("parse").hint())
            .copied()
            .expect("indexed");
        let fresh = used_guard
            .check(server.entries[entry].keys.replay_id(), NOW_MS, NOW_MS)
            .expect("fresh");
        used_guard.commit(fresh, NOW_MS);
        assert_eq!(server.path(&used_guard, &valid), Outcome::Replay);
        c.bench_function(&name("refuse_replay"), |b| {
            b.iter(|| server.path(&used_guard, black_box(&valid)))
        });

        assert_eq!(server.path(&fresh_guard, &valid), Outcome::Honoured);
        c.bench_function(&name("open_valid"), |b| {
            b.iter(|| server.path(&fresh_guard, black_box(&valid)))
        });

        c.bench_function(&name("seal"), |b| {
            b.iter(|| {
                seal(
                    &knocker.keys,
                    &sealer,
                    black_box(&request),
                    NOW_MS,
                    black_box(&randomness),
                )
            })
        });

        let prk = match mode {
            Mode::Shared => {
                knock_proto::PairPrk::shared(&ClientSecret::from_bytes([42; 32]), &SERVER)
            }
            Mode::Public => {
                let public = identity(42).public();
                c.bench_function(&name("pair_cold"), |b| {
                    b.iter(|| server.key.pair_prk(black_box(&public), &SERVER))
                });
                server.key.pair_prk(&public, &SERVER).expect("a valid key")
            }
        };
        c.bench_function(&name("pair_cached"), |b| {
            b.iter(|| {
                let keys = PairKeys::from_prk(black_box(&prk));
                let hints = [
                    KeyHint::at(&keys, NOW_MS - WINDOW_MS),
                    KeyHint::at(&keys, NOW_MS),
                    KeyHint::at(&keys, NOW_MS + WINDOW_MS),
                ];
                (keys.replay_id(), hints)
            })
        });
    }
}

criterion_group!(seal_open, benches);
criterion_main!(seal_open);
