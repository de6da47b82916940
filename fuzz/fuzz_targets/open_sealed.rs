//! The server's open path on authentic knocks with arbitrary plaintexts: the
//! input is sealed as a client holding the key would seal it (docs/PROTOCOL.md,
//! reimplemented in this crate), so the fuzzer explores the decoding of the
//! plaintext, which random datagrams never reach past the MAC.
//!
//! Input: byte 0 picks the client, byte 1 the server (both among the test
//! vectors), bytes 2..26 are the nonce, the rest is the plaintext.
//!
//! Oracles beyond "no panic": a correctly sealed knock never fails as BadMac;
//! whatever opens is the canonical plaintext of what it says; the replay guard
//! accepts it at most once.
#![no_main]

use knock_fuzz::{derive, hint, open_path, plaintext, seal_plaintext, world, WINDOW_MS};
use knock_proto::{open, KnockBytes, OpenError, ReplayError, ReplayGuard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 26 {
        return;
    }
    let world = world();
    let client = &world.clients[usize::from(input[0]) % world.clients.len()];
    let server = &world.servers[usize::from(input[1]) % world.servers.len()];
    let nonce: [u8; 24] = input[2..26].try_into().unwrap();
    let body = &input[26..];

    let (aead_key, hint_key) = derive(&client.secret);
    let datagram = seal_plaintext(&aead_key, &hint(&hint_key, server.now_ms), &nonce, body);
    let Ok(knock) = KnockBytes::parse(&datagram) else {
        return;
    };
    if let Err(e) = open(&client.keys, &server.id, &knock) {
        assert_ne!(e, OpenError::BadMac, "an authentic knock failed its MAC");
        return;
    }
    let (found, opened) = open_path(world, server, &datagram).expect("opens on the server path");
    assert_eq!(found.name, client.name);

    let unpadded = plaintext(&opened.request, &server.id, opened.timestamp_ms, 0);
    let canonical = plaintext(
        &opened.request,
        &server.id,
        opened.timestamp_ms,
        body.len().saturating_sub(unpadded.len()),
    );
    assert_eq!(canonical, body, "accepted a non-canonical plaintext");

    let now = server.now_ms;
    let key = client.keys.replay_id();
    let mut guard = ReplayGuard::first_start(WINDOW_MS, now.saturating_sub(WINDOW_MS));
    for when in [now, opened.timestamp_ms, u64::MAX, 0] {
        if let Ok(fresh) = guard.check(key, opened.timestamp_ms, when) {
            guard.commit(fresh, when);
            assert_eq!(
                guard.check(key, opened.timestamp_ms, when),
                Err(ReplayError::Replay)
            );
        }
    }
});
