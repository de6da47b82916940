//! `knock-forge DIR CLIENT PORT [CAPTURED_HEX...]`: every knock for the
//! public-key client CLIENT that a thief can build from a copy of a server's
//! files (DIR holds `server.id`, `server.key`, `clients.d/`, and the state
//! directory `state/`), plus knocks captured on the wire. One line per knock
//! on stdout: `CASE HEX`. CASE names what was tried and the refusal the
//! server must give:
//!
//! * `wrong-mode:shared-style`: sealed with the real pair keys (derived from
//!   `server.key` and the client's public key), flag clear, as if shared;
//! * `bad-signature:fresh-identity-N`: AEAD-valid, signed by a random identity;
//! * `bad-signature:derived-*`: signed by identities derived from what was
//!   stolen (`server.key` as a seed, the pair key, `server.id`, every shared
//!   secret in `clients.d`, the files' bytes);
//! * `replay:captured-N`: a captured genuine knock, byte for byte;
//! * `unknown-client:*`: the pair key (or `server.key`) used as a shared-key
//!   secret, and shared-style knocks under identities the thief made up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use knock_keys::entry::{ClientEntry, Credential};
use knock_proto::{
    seal, ClientIdentity, ClientSecret, IdentitySeed, PairKeys, PortSpec, Request, SealRandomness,
    Sealer,
};

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
    std::io::Read::read_exact(&mut f, &mut out).expect("urandom");
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from any stolen bytes (repeated or cut).
fn seed_from(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if !bytes.is_empty() {
        for (i, b) in out.iter_mut().enumerate() {
            *b = bytes[i % bytes.len()];
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: knock-forge DIR CLIENT PORT [CAPTURED_HEX...]");
        return ExitCode::from(2);
    }
    let dir = Path::new(&args[0]);
    let name = &args[1];
    let port: u16 = args[2].parse().expect("port");
    let server_id = knock_keys::identity::load(&dir.join("server.id")).expect("server.id");
    let server_key =
        knock_keys::identity::load_server_key(&dir.join("server.key")).expect("server.key");
    let server_pk = server_key.public();
    let entry = ClientEntry::load_unvalidated(&dir.join(format!("clients.d/{name}.toml")))
        .expect("entry")
        .0;
    let Credential::Public(client_pk) = entry.credential else {
        panic!("{name} is not a public-key client");
    };
    let prk = server_key
        .pair_prk(&client_pk, &server_id)
        .expect("pair key");
    let pair = PairKeys::from_prk(&prk);
    let request = Request {
        ports: vec![PortSpec::tcp(port)],
        duration_s: 0,
        bound_addr: None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut stamp = now;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut emit = |case: String, keys: &PairKeys, sealer: &Sealer<'_>| {
        stamp += 1;
        let randomness = SealRandomness {
            nonce: random(),
            padding: random::<1>()[0],
        };
        let knock = seal(keys, sealer, &request, stamp, &randomness).expect("seal");
        out.push((case, knock));
    };

    // Flag clear, with the real pair keys.
    emit("wrong-mode:shared-style".into(), &pair, &Sealer::Shared);

    // Signed by fresh identities.
    for i in 0..3 {
        let forger = ClientIdentity::from_seed(&IdentitySeed::from_bytes(random()));
        let sealer = Sealer::Public {
            identity: &forger,
            server: &server_pk,
            server_id: &server_id,
        };
        emit(format!("bad-signature:fresh-identity-{i}"), &pair, &sealer);
    }

    // Signed by identities derived from everything stolen.
    let mut stolen: Vec<(String, Vec<u8>)> = vec![
        ("server-key".into(), server_key.expose().to_vec()),
        ("pair-key".into(), prk.expose().to_vec()),
        ("server-id".into(), server_id.0.to_vec()),
        ("server-public-key".into(), server_pk.as_bytes().to_vec()),
        ("client-ed25519".into(), client_pk.ed25519_bytes().to_vec()),
        ("client-x25519".into(), client_pk.x25519_bytes().to_vec()),
    ];
    let mut files = vec![dir.join("server.key"), dir.join("server.id")];
    for sub in ["clients.d", "state"] {
        if let Ok(read) = std::fs::read_dir(dir.join(sub)) {
            let mut names: Vec<_> = read.flatten().map(|e| e.path()).collect();
            names.sort();
            files.extend(names);
        }
    }
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        let label = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Ok((other, _)) = ClientEntry::load_unvalidated(file) {
            if let Credential::Shared(secret) = &other.credential {
                stolen.push((format!("secret-of-{label}"), secret.expose().to_vec()));
            }
        }
        stolen.push((format!("file-{label}"), bytes));
    }
    for (label, bytes) in &stolen {
        let forger = ClientIdentity::from_seed(&IdentitySeed::from_bytes(seed_from(bytes)));
        let sealer = Sealer::Public {
            identity: &forger,
            server: &server_pk,
            server_id: &server_id,
        };
        emit(format!("bad-signature:derived-{label}"), &pair, &sealer);
    }

    // Stolen keys used as a shared-key secret.
    for (label, bytes) in [
        ("pair-key", prk.expose().to_vec()),
        ("server-key", server_key.expose().to_vec()),
    ] {
        let secret = ClientSecret::from_bytes(seed_from(&bytes));
        let keys = PairKeys::shared(&secret, &server_id);
        emit(
            format!("unknown-client:{label}-as-secret"),
            &keys,
            &Sealer::Shared,
        );
    }
    // The pair key of an identity the thief made up, sealed public-style.
    let made_up = ClientIdentity::from_seed(&IdentitySeed::from_bytes(random()));
    let made_up_keys = PairKeys::from_prk(
        &server_key
            .pair_prk(&made_up.public(), &server_id)
            .expect("pair key"),
    );
    let sealer = Sealer::Public {
        identity: &made_up,
        server: &server_pk,
        server_id: &server_id,
    };
    emit(
        "unknown-client:made-up-identity".into(),
        &made_up_keys,
        &sealer,
    );

    for (i, captured) in args[3..].iter().enumerate() {
        let bytes: Vec<u8> = (0..captured.len() / 2)
            .map(|k| u8::from_str_radix(&captured[2 * k..2 * k + 2], 16).expect("hex"))
            .collect();
        out.push((format!("replay:captured-{i}"), bytes));
    }
    for (case, knock) in out {
        println!("{case} {}", hex(&knock));
    }
    ExitCode::SUCCESS
}
