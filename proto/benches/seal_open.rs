//! The cost of one knock on each path the server can take.
//!
//! * `seal`: what the client pays;
//! * `open_valid`: parse + hint lookup + one AEAD + decode (a knock the server
//!   accepts, before the replay guard);
//! * `reject_junk`: parse + hint lookup miss (random bytes of a knock's length);
//! * `reject_bad_tag`: parse + hint lookup hit + one failed AEAD (a valid hint
//!   with a corrupted tag: the most a junk datagram can cost).
//!
//! The index holds 100 clients, as a busy server might. Run with
//! `cargo bench -p knock-proto --bench seal_open`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use knock_proto::{
    open, seal, ClientSecret, HintIndex, KnockBytes, KnockKeys, PortSpec, Request, SealRandomness,
    ServerId,
};

const NOW_MS: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 30_000;
const SERVER: ServerId = ServerId([0x5e; 16]);

fn keys(seed: u8) -> KnockKeys {
    ClientSecret::from_bytes([seed; 32]).derive()
}

/// What the server does with one datagram up to the replay guard; `true` if
/// it opened.
fn server_path(index: &HintIndex<usize>, all: &[KnockKeys], datagram: &[u8]) -> bool {
    let Ok(knock) = KnockBytes::parse(datagram) else {
        return false;
    };
    let Some(&client) = index.lookup(knock.hint()) else {
        return false;
    };
    let Some(keys) = all.get(client) else {
        return false;
    };
    open(keys, &SERVER, &knock).is_ok()
}

fn benches(c: &mut Criterion) {
    let all: Vec<KnockKeys> = (0..100u8).map(keys).collect();
    let index = HintIndex::build(all.iter().enumerate(), NOW_MS, WINDOW_MS);
    let request = Request {
        ports: vec![PortSpec::tcp(22), PortSpec::tcp(4992)],
        duration_s: 0,
        bound_addr: None,
    };
    let randomness = SealRandomness {
        nonce: [7; 24],
        padding: 21,
    };
    let sealer = &all[42];

    c.bench_function("seal", |b| {
        b.iter(|| {
            seal(
                sealer,
                &SERVER,
                black_box(&request),
                NOW_MS,
                black_box(&randomness),
            )
        })
    });

    let valid = seal(sealer, &SERVER, &request, NOW_MS, &randomness).expect("seal");
    assert!(server_path(&index, &all, &valid));
    c.bench_function("open_valid", |b| {
        b.iter(|| server_path(&index, &all, black_box(&valid)))
    });

    // Same length, bytes from a fixed xorshift stream: no hint matches.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let junk: Vec<u8> = (0..valid.len())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert!(!server_path(&index, &all, &junk));
    c.bench_function("reject_junk", |b| {
        b.iter(|| server_path(&index, &all, black_box(&junk)))
    });

    let mut bad_tag = valid.clone();
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    assert!(!server_path(&index, &all, &bad_tag));
    c.bench_function("reject_bad_tag", |b| {
        b.iter(|| server_path(&index, &all, black_box(&bad_tag)))
    });
}

criterion_group!(seal_open, benches);
criterion_main!(seal_open);
