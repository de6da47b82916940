//! Confidential and stealthy: what an observer without the key can learn from
//! the bytes on the wire.
// Helpers outside #[test] fns assert with unwrap/panic too (clippy.toml only
// exempts the #[test] fns themselves).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use common::*;
use knock_proto::{
    Mode, PortSpec, Request, ServerId, Transport, MAX_KNOCK_LEN, MIN_KNOCK_LEN, SLOT_MS,
};

/// Nothing of the request, the stamp, the server or the client's public key
/// appears in the clear, over many knocks of both modes with random requests
/// and servers. The needles are the plaintext's own encodings (so a
/// cleartext field would be found), at least four bytes long (so chance
/// matches are negligible).
#[test]
fn sealed_bytes_hide_ports_address_time_server_and_identity() {
    let mut rng = SplitMix(1);
    for i in 0..2000 {
        let mode = MODES[i % 2];
        let mut server_bytes = [0u8; 16];
        rng.fill(&mut server_bytes);
        let server = Server::new(ServerId(server_bytes), rng.next_u64() as u8);
        let client = Client::new(mode, 7, &server);
        let count = 1 + rng.below(16) as usize;
        let ports: Vec<PortSpec> = (0..count)
            .map(|_| PortSpec {
                transport: if rng.below(2) == 0 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                },
                port: 1 + rng.below(65535) as u16,
            })
            .collect();
        let bound_addr: Option<IpAddr> = match i % 3 {
            0 => None,
            1 => Some(IpAddr::from((rng.next_u64() as u32).to_be_bytes())),
            _ => {
                let mut a = [0u8; 16];
                rng.fill(&mut a);
                Some(IpAddr::from(a))
            }
        };
        let request = Request {
            ports,
            duration_s: rng.next_u64() as u32,
            bound_addr,
        };
        let timestamp_ms = T0 + rng.below(1 << 40);
        let datagram = client
            .seal(&server, &request, timestamp_ms, &randomness(&mut rng))
            .unwrap();

        let mut port_block = vec![count as u8];
        for spec in &request.ports {
            port_block.push(spec.transport.ip_proto());
            port_block.extend_from_slice(&spec.port.to_be_bytes());
        }
        let mut needles: Vec<(&str, Vec<u8>)> = vec![
            ("port list", port_block.clone()),
            ("port list without count", port_block[1..].to_vec()),
            ("timestamp", timestamp_ms.to_be_bytes().to_vec()),
            (
                "timestamp low bytes",
                timestamp_ms.to_be_bytes()[2..].to_vec(),
            ),
            (
                "timestamp, little-endian",
                timestamp_ms.to_le_bytes()[..6].to_vec(),
            ),
            (
                "timestamp in seconds",
                ((timestamp_ms / 1000) as u32).to_be_bytes().to_vec(),
            ),
            ("server id", server.id.0.to_vec()),
            ("server id prefix", server.id.0[..6].to_vec()),
            ("server public key", server.public.0.to_vec()),
            ("duration", request.duration_s.to_be_bytes().to_vec()),
            ("fixed header", {
                let mut h = vec![2u8, datagram_flags(&request, mode)];
                h.extend_from_slice(&timestamp_ms.to_be_bytes()[..2]);
                h
            }),
        ];
        if let Some(public) = client.public {
            // No 4-byte run of either public key, anywhere.
            for key in [public.ed25519_bytes(), public.x25519_bytes()] {
                for run in key.windows(4) {
                    needles.push(("a run of the client's public key", run.to_vec()));
                }
            }
        }
        match request.bound_addr {
            Some(IpAddr::V4(a)) => needles.push(("IPv4 address", a.octets().to_vec())),
            Some(IpAddr::V6(a)) => {
                needles.push(("IPv6 address", a.octets().to_vec()));
                needles.push(("IPv6 address prefix", a.octets()[..6].to_vec()));
            }
            None => {}
        }
        for (what, needle) in &needles {
            if needle.len() >= 4 {
                assert!(
                    !contains(&datagram, needle),
                    "knock {i} ({mode}): {what} in the clear"
                );
            }
        }
    }
}

fn datagram_flags(request: &Request, mode: Mode) -> u8 {
    let signed = if mode == Mode::Public { 4 } else { 0 };
    signed
        | match request.bound_addr {
            None => 0,
            Some(IpAddr::V4(_)) => 1,
            Some(IpAddr::V6(_)) => 3,
        }
}

/// Many knocks of one client of `mode`, for one request, stamped in
/// different slots, with random nonces and padding.
fn knocks_of_one_client(mode: Mode, n: usize) -> Vec<Vec<u8>> {
    let mut rng = SplitMix(2);
    let server = server();
    let client = Client::new(mode, 9, &server);
    let first_slot_start = (T0 / SLOT_MS) * SLOT_MS;
    (0..n)
        .map(|i| {
            let stamp = first_slot_start + i as u64 * SLOT_MS + rng.below(SLOT_MS);
            client.seal_simple(&server, stamp, &mut rng)
        })
        .collect()
}

#[test]
fn no_byte_position_is_constant_across_knocks() {
    for mode in MODES {
        no_byte_position_is_constant(mode);
    }
}

fn no_byte_position_is_constant(mode: Mode) {
    let knocks = knocks_of_one_client(mode, 2000);
    let shortest = knocks.iter().map(Vec::len).min().unwrap();
    for position in 0..shortest {
        let values: HashSet<u8> = knocks.iter().map(|k| k[position]).collect();
        // 2000 uniform draws cover nearly all 256 values; a cleartext version,
        // type or length byte would show one or a few.
        assert!(
            values.len() > 200,
            "{mode} position {position}: only {} values",
            values.len()
        );
    }
    // The same from the end (the tag, and whatever precedes it).
    for back in 1..=shortest {
        let values: HashSet<u8> = knocks.iter().map(|k| k[k.len() - back]).collect();
        assert!(
            values.len() > 200,
            "{mode} position -{back}: only {} values",
            values.len()
        );
    }
}

#[test]
fn knock_lengths_vary_within_the_bounds() {
    for mode in MODES {
        let knocks = knocks_of_one_client(mode, 2000);
        let lengths: BTreeSet<usize> = knocks.iter().map(Vec::len).collect();
        // One request, so all variation is padding: 0..=63 bytes.
        assert_eq!(lengths.len(), 64, "{mode}: {lengths:?}");
        assert_eq!(*lengths.first().unwrap(), MIN_KNOCK_LEN);
        assert_eq!(*lengths.last().unwrap(), MAX_KNOCK_LEN);
    }
}

/// Chi-square of all bytes against uniform (255 degrees of freedom), and of
/// each position's high nibble against uniform (15 degrees of freedom). The
/// generator is seeded, so the result is the same on every run; the bounds
/// are far in the tail (p < 1e-6) of the uniform distribution.
#[test]
fn byte_frequencies_look_uniform() {
    for mode in MODES {
        byte_frequencies_look_uniform_in(mode);
    }
}

fn byte_frequencies_look_uniform_in(mode: Mode) {
    let knocks = knocks_of_one_client(mode, 2000);
    let mut counts = [0u64; 256];
    for k in &knocks {
        for &b in k {
            counts[usize::from(b)] += 1;
        }
    }
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / 256.0;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    assert!(
        chi2 < 380.0,
        "{mode}, all bytes: chi-square {chi2:.1} with 255 df"
    );

    let shortest = knocks.iter().map(Vec::len).min().unwrap();
    for position in 0..shortest {
        let mut nibbles = [0u64; 16];
        for k in &knocks {
            nibbles[usize::from(k[position] >> 4)] += 1;
        }
        let expected = knocks.len() as f64 / 16.0;
        let chi2: f64 = nibbles
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(
            chi2 < 60.0,
            "{mode} position {position}: chi-square {chi2:.1} with 15 df"
        );
    }
}

/// Two knocks of one client stamped in different slots share no hint and no
/// run of 4 bytes anywhere, and agree at a position no more often than two
/// random strings do (1 in 256).
#[test]
fn knocks_in_different_slots_share_nothing() {
    for mode in MODES {
        knocks_in_different_slots_share_nothing_in(mode);
    }
}

fn knocks_in_different_slots_share_nothing_in(mode: Mode) {
    let knocks = knocks_of_one_client(mode, 400);
    let mut equal_positions = 0u64;
    let mut compared = 0u64;
    for pair in knocks.chunks(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_ne!(a[..8], b[..8], "same hint in different slots");
        for w in a.windows(4) {
            assert!(!contains(b, w), "shared 4-byte run {}", hex(w));
        }
        for (x, y) in a.iter().zip(b.iter()) {
            compared += 1;
            equal_positions += u64::from(x == y);
        }
    }
    let rate = equal_positions as f64 / compared as f64;
    assert!(
        (0.5 / 256.0..2.0 / 256.0).contains(&rate),
        "equal-position rate {rate}"
    );

    // Slot by slot, the hints of one client are all different.
    let server = server();
    let client = Client::new(mode, 9, &server);
    let hints: HashSet<[u8; 8]> = (0..10_000u64)
        .map(|slot| knock_proto::KeyHint::at(&client.keys, slot * SLOT_MS).0)
        .collect();
    assert_eq!(hints.len(), 10_000);
}

/// The residual, stated as a test so the documentation stays true: within one
/// 30 s slot, a client's knocks carry the same hint, so an observer can tell
/// that they come from one client (but not which client, nor what they ask).
#[test]
fn knocks_in_the_same_slot_share_the_hint_and_nothing_else() {
    let server = server();
    for mode in MODES {
        let client = Client::new(mode, 9, &server);
        let mut rng = SplitMix(4);
        let slot_start = (T0 / SLOT_MS) * SLOT_MS;
        let a = client.seal_simple(&server, slot_start, &mut rng);
        let b = client.seal_simple(&server, slot_start + SLOT_MS - 1, &mut rng);
        assert_eq!(a[..8], b[..8]);
        assert!(a[8..].iter().zip(&b[8..]).filter(|(x, y)| x == y).count() < 8);
        assert!(!share_a_run(&a[8..], &b[8..], 4));
    }
}
