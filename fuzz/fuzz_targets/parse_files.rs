//! The files knock reads: the server configuration, the client profile, the
//! replay state, and a client's public line (as `knock-keygen --public-key`
//! and a public-key entry read it), on arbitrary text.
//!
//! Oracles beyond "no panic": a profile that parses writes itself back
//! (`to_toml`) to text that parses to the same profile; a replay state that
//! restores encodes to a state that restores to the same encoding; a public
//! line that parses is the one line of its key (the same token, which parses
//! back to the same key), and checking its curve points never panics.
#![no_main]

use std::path::Path;

use knock_keys::config::ServerConfig;
use knock_keys::profile::ClientProfile;
use knock_proto::{ClientPublicKey, ReplayGuard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);

    let _ = ServerConfig::parse(Path::new("/etc/knock/server.toml"), &text);

    let path = Path::new("/home/u/.config/knock/fuzz.knock");
    if let Ok(profile) = ClientProfile::parse(path, &text) {
        let written = profile.to_toml();
        let again = ClientProfile::parse(path, &written).unwrap_or_else(|e| {
            panic!(
                "a profile does not read back its own file: {e}\n{}",
                *written
            )
        });
        assert_eq!(again.name, profile.name);
        assert_eq!(again.host, profile.host);
        assert_eq!(again.aliases, profile.aliases);
        assert_eq!(again.knock_port, profile.knock_port);
        assert_eq!(again.server_id, profile.server_id);
        assert_eq!(again.key, profile.key);
        assert_eq!(again.ports, profile.ports);
    }

    for line in text.lines() {
        if let Ok(key) = ClientPublicKey::parse_line(line) {
            let canonical = key.to_line();
            assert_eq!(
                line.split_whitespace().next(),
                Some(canonical.as_str()),
                "a key has a second public line"
            );
            assert_eq!(ClientPublicKey::parse_line(&canonical), Ok(key));
            let _ = key.validate();
        }
    }

    if let Ok(guard) = ReplayGuard::restore(30_000, 0, bytes, None) {
        let encoded = guard.encode();
        let again = ReplayGuard::restore(30_000, 0, &encoded, None).expect("own encoding restores");
        assert_eq!(again.encode(), encoded);
    }
});
