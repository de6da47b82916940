//! The server's open path on authentic knocks with arbitrary plaintexts, in
//! both modes: the input is sealed as a holder of the pair keys would seal it
//! (docs/PROTOCOL.md, reimplemented in this crate), so the fuzzer explores
//! the decoding of the plaintext (flags, mode, ports, padding, the `auth`
//! field) and the signature check, which random datagrams never reach past
//! the MAC. For a public-key client this is exactly what a thief holding the
//! server's key can send.
//!
//! Input: byte 0 picks the client, byte 1 the server (both among the test
//! vectors), bytes 2..26 are the nonce, the rest is the plaintext.
//!
//! Oracles beyond "no panic": a correctly sealed knock never fails as BadMac;
//! whatever opens is in its entry's mode and has the canonical request block,
//! padding and (shared-key) zero `auth`; a knock that passes the signature
//! check (public-key) and is stamped in the server's slot is byte for byte
//! its client's own sealing (the fuzzer cannot make a signature, only keep a
//! seed's); the replay guard accepts at most once.
#![no_main]

use knock_fuzz::{hint, open_path, request_block, seal_plaintext, subkeys, world, WINDOW_MS};
use knock_proto::{
    open, seal, KnockBytes, Mode, OpenError, ReplayError, ReplayGuard, SealRandomness, Sealer,
    REQUEST_LEN, SIGNATURE_LEN, SLOT_MS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 26 {
        return;
    }
    let world = world();
    let index = usize::from(input[0]) % world.clients.len();
    let client = &world.clients[index];
    let server = &world.servers[usize::from(input[1]) % world.servers.len()];
    let nonce: [u8; 24] = input[2..26].try_into().unwrap();
    let body = &input[26..];

    let (aead_key, hint_key) = subkeys(&server.pairs[index]);
    let datagram = seal_plaintext(&aead_key, &hint(&hint_key, server.now_ms), &nonce, body);
    let Ok(knock) = KnockBytes::parse(&datagram) else {
        return;
    };
    if let Err(e) = open(&server.keys[index], client.mode, &knock) {
        assert_ne!(e, OpenError::BadMac, "an authentic knock failed its MAC");
        return;
    }
    let opened = open_path(world, server, &datagram).expect("opens on the server path");
    assert_eq!(opened.index, index, "the hint named another client");
    assert_eq!(opened.knock.mode(), client.mode);

    let signed = client.mode == Mode::Public;
    let block = request_block(&opened.knock.request, signed, opened.knock.timestamp_ms);
    assert_eq!(
        &body[..REQUEST_LEN],
        &block[..],
        "accepted a non-canonical request block"
    );
    let auth = &body[REQUEST_LEN..REQUEST_LEN + SIGNATURE_LEN];
    let padding = &body[REQUEST_LEN + SIGNATURE_LEN..];
    assert!(padding.iter().all(|&b| b == 0), "accepted non-zero padding");
    if !signed {
        assert!(auth.iter().all(|&b| b == 0), "accepted a shared-key auth");
    }

    // The target sealed under the hint of the server's slot; the client's
    // own sealing uses the hint of the knock's stamp. They are comparable
    // when the two are in one slot.
    let same_slot = opened.knock.timestamp_ms / SLOT_MS == server.now_ms / SLOT_MS;
    if opened.signature.is_ok() && same_slot {
        let sealer = match &client.identity {
            Some(identity) => Sealer::Public {
                identity,
                server: &server.public,
                server_id: &server.id,
            },
            None => Sealer::Shared,
        };
        let canonical = seal(
            opened.keys,
            &sealer,
            &opened.knock.request,
            opened.knock.timestamp_ms,
            &SealRandomness {
                nonce,
                padding: padding.len() as u8,
            },
        )
        .unwrap();
        assert_eq!(
            canonical, datagram,
            "honoured a knock that is not its client's own sealing"
        );
    }

    let now = server.now_ms;
    let key = opened.keys.replay_id();
    let stamp = opened.knock.timestamp_ms;
    let mut guard = ReplayGuard::first_start(WINDOW_MS, now.saturating_sub(WINDOW_MS));
    for when in [now, stamp, u64::MAX, 0] {
        if let Ok(fresh) = guard.check(key, stamp, when) {
            guard.commit(fresh, when);
            assert_eq!(guard.check(key, stamp, when), Err(ReplayError::Replay));
        }
    }
});
