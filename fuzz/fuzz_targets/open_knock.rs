//! The server's open path on arbitrary datagrams: length → key hint → one
//! AEAD → replay guard, for servers and clients taken from the test vectors
//! of docs/PROTOCOL.md (so the seeds, which are those vectors' knocks, open).
//!
//! Oracles beyond "no panic": whatever opens is exactly the canonical sealing
//! of what it says (so no second encoding of a request is accepted), and the
//! replay guard accepts it once, then never again, also after a save and
//! restore of its state.
#![no_main]

use knock_fuzz::{open_path, world, WINDOW_MS};
use knock_proto::{seal, ReplayError, ReplayGuard, SealRandomness};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|datagram: &[u8]| {
    let world = world();
    for server in &world.servers {
        let Some((client, opened)) = open_path(world, server, datagram) else {
            continue;
        };

        let nonce: [u8; 24] = datagram[8..32].try_into().unwrap();
        let unpadded = seal(
            &client.keys,
            &server.id,
            &opened.request,
            opened.timestamp_ms,
            &SealRandomness { nonce, padding: 0 },
        )
        .expect("an opened request seals");
        let padding = u8::try_from(datagram.len() - unpadded.len()).unwrap();
        let again = seal(
            &client.keys,
            &server.id,
            &opened.request,
            opened.timestamp_ms,
            &SealRandomness { nonce, padding },
        )
        .unwrap();
        assert_eq!(
            again, datagram,
            "an opened knock is not the canonical sealing of its request"
        );

        let now = server.now_ms;
        let key = client.keys.replay_id();
        let mut guard = ReplayGuard::first_start(WINDOW_MS, now - WINDOW_MS);
        if let Ok(fresh) = guard.check(key, opened.timestamp_ms, now) {
            guard.commit(fresh, now);
            assert_eq!(
                guard.check(key, opened.timestamp_ms, now),
                Err(ReplayError::Replay)
            );
            let restored = ReplayGuard::restore(WINDOW_MS, now, &guard.encode(), None).unwrap();
            assert!(restored.check(key, opened.timestamp_ms, now + 1).is_err());
            let lost = ReplayGuard::after_state_loss(WINDOW_MS, now + 1, None);
            assert!(lost.check(key, opened.timestamp_ms, now + 1).is_err());
        }
    }
});
