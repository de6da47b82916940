//! A stolen server cannot forge public-key knocks (issue 13).
//!
//! The thief copies everything in the server's configuration and state
//! directories (`server.id`, `server.key`, `clients.d`, the replay state, the
//! pair-key cache) and captures genuine knocks on the wire. With those only,
//! `knock-forge` builds every knock it can for the public-key client alice:
//! sealed with her real pair keys as if shared (`wrong-mode`), signed by
//! fresh identities and by identities derived from every stolen byte
//! (`bad-signature`, then `sig-limited`), stolen keys used as a shared-key
//! secret or a made-up identity (`unknown-client`), captured knocks replayed
//! (`replay`). The attacker sends them all, from its own address and spoofed
//! as alice's. None is honoured; the genuine client is slowed at most as
//! designed (her knocks are `sig-limited` for 20 s after a failed signature,
//! then open), and the other clients, shared-key and public-key, are not
//! slowed at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use knock_tests::*;

const KNOCK_PORT: u16 = 62201;

#[test]
fn a_stolen_server_configuration_forges_nothing() {
    let mut lab = Lab::new();
    let hosts = lab.standard();
    let setup = Setup::new(&lab, "server", "nftables", &["tcp/4992"], "");
    set_config_key(&setup.config, "open_for", "\"3s\"");
    // alice: public-key, from the client's namespace (her identity is the
    // default one of the setup directory, which `client` uses).
    let alice = setup.enrol("alice", SERVER_V4, Some("tcp/4992"), Mode::Public);
    // carol: shared-key, dave: public-key (his own identity), both from the
    // attacker's namespace (its address is theirs as well).
    let carol = setup.keygen("carol", SERVER_FOR_ATTACKER_V4, Some("tcp/4992"));
    let dave_home = lab.dir.join("dave");
    let dave_line = identity_line(&dave_home);
    let dave = setup.keygen_public("dave", SERVER_FOR_ATTACKER_V4, Some("tcp/4992"), &dave_line);
    let dave_identity = dave_home.join("identity");
    start_echo(&lab, &hosts.server, 4992);
    let server = Server::start(&hosts.server, &setup.config);
    server.wait_for_log("ready: 3 clients", Duration::from_secs(2));

    // Positive control, and the knock the thief captures: alice's genuine
    // knock opens.
    let captured = intercept_knock(&hosts.client, &alice, KNOCK_PORT, &["4992"], &[]);
    send_udp(&hosts.client, ip(SERVER_V4), KNOCK_PORT, &captured);
    server.wait_for_log(
        &format!("granted tcp/4992 to {CLIENT_V4}"),
        Duration::from_secs(3),
    );
    setup.wait_no_grants(&hosts.server);

    // The theft: both directories, as they are on disk.
    let stolen = lab.dir.join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(setup.dir.join("server.id"))
        .arg(setup.dir.join("server.key"))
        .arg(setup.dir.join("clients.d"))
        .arg(setup.dir.join("state"))
        .arg(&stolen));
    let state: Vec<String> = std::fs::read_dir(stolen.join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        state.iter().any(|n| n.contains("pair")),
        "no pair-key cache was stolen: {state:?}"
    );

    let out = sh(std::process::Command::new(bin("knock-forge"))
        .arg(&stolen)
        .args(["alice", "4992"])
        .arg(hex(&captured)));
    let forged: Vec<(String, Vec<u8>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (case, knock) = line.split_once(' ').unwrap();
            (case.to_owned(), unhex(knock).unwrap())
        })
        .collect();
    let mut cases: BTreeMap<String, u64> = BTreeMap::new();
    for (case, _) in &forged {
        let reason = case.split(':').next().unwrap();
        *cases.entry(reason.to_owned()).or_default() += 1;
    }
    for reason in ["wrong-mode", "bad-signature", "replay", "unknown-client"] {
        assert!(cases.contains_key(reason), "no {reason} case: {cases:?}");
    }
    assert!(cases["bad-signature"] >= 8, "{cases:?}");

    // Every forgery, from the attacker's address and spoofed as alice's.
    let before = setup.refused(&hosts.server);
    let mut packets = Vec::new();
    for (_, knock) in &forged {
        packets.push(RawPacket::new(
            ip(ATTACKER_V4),
            ip(SERVER_FOR_ATTACKER_V4),
            KNOCK_PORT,
            knock,
        ));
        packets.push(RawPacket::new(
            ip(CLIENT_V4),
            ip(SERVER_FOR_ATTACKER_V4),
            KNOCK_PORT,
            knock,
        ));
    }
    let sent = packets.len() as u64;
    let attack_started = Instant::now();
    send_raw(&hosts.attacker, &packets);
    // alice is slowed as designed: within 20 s of the failed signature her
    // genuine knock is sig-limited (refused unchecked).
    let (code, _, _) = client(
        &hosts.client,
        &alice,
        &["open", SERVER_V4, "4992", "--timeout", "1s"],
    );
    assert_eq!(
        code,
        1,
        "alice opened within the 20 s limit\n{}",
        server.log()
    );
    let sent = sent + 1;
    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    let before_total = total(&before);
    assert!(
        eventually(Duration::from_secs(12), || total(
            &setup.refused(&hosts.server)
        ) >= before_total + sent),
        "not every forgery was refused:\n{}\n{}",
        setup.status(&hosts.server),
        server.log()
    );
    let after = setup.refused(&hosts.server);
    let delta = |reason: &str| {
        after.get(reason).copied().unwrap_or(0) - before.get(reason).copied().unwrap_or(0)
    };
    // Nothing was honoured.
    assert_eq!(server.count_log("granted"), 1, "{}", server.log());
    assert!(
        setup.status(&hosts.server).contains("no live grants"),
        "{}",
        setup.status(&hosts.server)
    );
    assert!(!hosts
        .attacker
        .tcp_connects(ip(SERVER_FOR_ATTACKER_V4), 4992));
    assert!(!hosts.client.tcp_connects(ip(SERVER_V4), 4992));
    // Each refused for its reason: only the first failed signature is
    // checked, the rest of alice's forgeries are sig-limited unchecked, and
    // so is her own knock.
    let report = format!(
        "{after:?} (before {before:?}), cases {cases:?}\n{}",
        server.log()
    );
    assert_eq!(delta("wrong-mode"), 2 * cases["wrong-mode"], "{report}");
    assert_eq!(
        delta("unknown-client"),
        2 * cases["unknown-client"],
        "{report}"
    );
    assert_eq!(delta("replay"), 2 * cases["replay"], "{report}");
    assert_eq!(delta("bad-signature"), 1, "{report}");
    assert_eq!(
        delta("sig-limited"),
        2 * cases["bad-signature"] - 1 + 1,
        "{report}"
    );
    assert_eq!(
        total(&after) - before_total,
        sent,
        "refusals for reasons not expected: {report}"
    );
    let status = setup.status(&hosts.server);
    assert!(status.contains("1 FAILED"), "{status}");
    assert!(server.alive());

    // The other clients are not slowed: carol (shared) and dave (public).
    let (code, out, err) = client(
        &hosts.attacker,
        &carol,
        &["open", SERVER_FOR_ATTACKER_V4, "4992", "--timeout", "4s"],
    );
    assert_eq!(code, 0, "carol: {out}{err}\n{}", server.log());
    let (code, out, err) = client(
        &hosts.attacker,
        &dave,
        &[
            "open",
            SERVER_FOR_ATTACKER_V4,
            "4992",
            "--timeout",
            "4s",
            "--identity",
            dave_identity.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "dave: {out}{err}\n{}", server.log());

    // alice opens once the 20 s have passed.
    std::thread::sleep(Duration::from_secs(21).saturating_sub(attack_started.elapsed()));
    let (code, out, err) = client(
        &hosts.client,
        &alice,
        &["open", SERVER_V4, "4992", "--timeout", "4s"],
    );
    assert_eq!(code, 0, "alice after 20 s: {out}{err}\n{}", server.log());
    assert!(server.alive());
}
