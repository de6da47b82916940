//! The server's open path on arbitrary datagrams: length → key hint → one
//! AEAD in the mode of the entry the hint names → replay guard → signature
//! (public-key), for servers and clients of both modes taken from the test
//! vectors of docs/PROTOCOL.md (so the seeds, which are those vectors'
//! knocks, open).
//!
//! Oracles beyond "no panic": whatever opens is in its entry's mode; whatever
//! opens and passes the signature check is exactly the canonical sealing of
//! what it says by its client (so no second encoding of a request, and no
//! second signature, is accepted); and the replay guard accepts it once,
//! then never again, also after a save and restore of its state.
#![no_main]

use knock_fuzz::{open_path, world, WINDOW_MS};
use knock_proto::{seal, Mode, ReplayError, ReplayGuard, SealRandomness, Sealer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|datagram: &[u8]| {
    let world = world();
    for server in &world.servers {
        let Some(opened) = open_path(world, server, datagram) else {
            continue;
        };
        let client = opened.client;
        assert_eq!(opened.knock.mode(), client.mode);
        if opened.signature.is_err() {
            // Only a holder of the pair keys gets here; the server refuses it.
            continue;
        }

        let sealer = match (&client.identity, client.mode) {
            (Some(identity), Mode::Public) => Sealer::Public {
                identity,
                server: &server.public,
                server_id: &server.id,
            },
            _ => Sealer::Shared,
        };
        let nonce: [u8; 24] = datagram[8..32].try_into().unwrap();
        let unpadded = seal(
            opened.keys,
            &sealer,
            &opened.knock.request,
            opened.knock.timestamp_ms,
            &SealRandomness { nonce, padding: 0 },
        )
        .expect("an opened request seals");
        let padding = u8::try_from(datagram.len() - unpadded.len()).unwrap();
        let again = seal(
            opened.keys,
            &sealer,
            &opened.knock.request,
            opened.knock.timestamp_ms,
            &SealRandomness { nonce, padding },
        )
        .unwrap();
        assert_eq!(
            again, datagram,
            "an honoured knock is not the canonical sealing of its request"
        );

        let now = server.now_ms;
        let key = opened.keys.replay_id();
        let stamp = opened.knock.timestamp_ms;
        let mut guard = ReplayGuard::first_start(WINDOW_MS, now - WINDOW_MS);
        if let Ok(fresh) = guard.check(key, stamp, now) {
            guard.commit(fresh, now);
            assert_eq!(guard.check(key, stamp, now), Err(ReplayError::Replay));
            let restored = ReplayGuard::restore(WINDOW_MS, now, &guard.encode(), None).unwrap();
            assert!(restored.check(key, stamp, now + 1).is_err());
            let lost = ReplayGuard::after_state_loss(WINDOW_MS, now + 1, None);
            assert!(lost.check(key, stamp, now + 1).is_err());
        }
    }
});
