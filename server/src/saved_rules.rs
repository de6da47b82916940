//! The firewall rules the server last installed, saved in its state
//! directory (`state_dir/rules`) so that `knock-server restore-rules`, run by
//! an early boot unit, closes the protected ports before the network is up,
//! whether or not the daemon ever becomes ready.
//!
//! The file holds the backend's settings and the policy that were in force,
//! not the configuration: at boot, what counts is what was installed last,
//! even if `server.toml` has been broken by an edit since. It is written
//! atomically (0600) after every successful install, by `run` and by the
//! rules keeper, and read by `restore-rules` and at the next start.
//!
//! ```text
//! # knock-server: the firewall rules it installed last. ...
//! format = 1
//! firewall = nftables
//! nft_table = knock
//! nft_priority = -150
//! knock_port = 62201
//! protected = tcp/22 udp/53
//! refuse = reject
//! ```
//!
//! (`firewall = iptables` has `iptables_cmd`, `ip6tables_cmd` and
//! `iptables_mark` instead of the `nft_` keys.) Keys are those of `server.toml`, so an operator reading
//! it recognises them; every key is required and nothing else is accepted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use knock_keys::config::{is_command_name, is_table_name, parse_mark};
use knock_proto::PortSpec;
use thiserror::Error;

use crate::firewall::{iptables, nftables, Policy, Refusal, Settings};
use crate::state::{replace_file, Sync};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "rules";
const FORMAT: &str = "1";

/// What was installed last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRules {
    pub settings: Settings,
    pub policy: Policy,
}

#[derive(Debug, Error)]
pub enum SavedRulesError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path}: permissions 0{mode:03o} are too open: it names the commands run as root to \
         restore the rules; run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "{path}: {problem}; knock-server writes this file after installing its rules: delete it, \
         and the next start of knock-server writes it anew"
    )]
    Invalid { path: PathBuf, problem: String },
}

/// The path of the saved rules in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Saves `settings` and `policy` as what was installed last, replacing the
/// file atomically: a crash leaves the previous rules or these, never a part.
pub fn save(state_dir: &Path, settings: &Settings, policy: &Policy) -> io::Result<()> {
    replace_file(
        state_dir,
        FILE_NAME,
        render(settings, policy).as_bytes(),
        Sync::Durable,
    )
}

/// The rules saved in `state_dir`, or `None` if nothing was ever saved there
/// (first boot, or the state directory was lost).
pub fn load(state_dir: &Path) -> Result<Option<SavedRules>, SavedRulesError> {
    let path = path(state_dir);
    let read = |source| SavedRulesError::Read {
        path: path.clone(),
        source,
    };
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(read(err)),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(SavedRulesError::TooOpen { path, mode });
    }
    let text = std::fs::read_to_string(&path).map_err(read)?;
    parse(&text)
        .map(Some)
        .map_err(|problem| SavedRulesError::Invalid { path, problem })
}

/// The file's text for `settings` and `policy`.
pub fn render(settings: &Settings, policy: &Policy) -> String {
    let mut text = String::from(
        "# knock-server: the firewall rules it installed last. `knock-server restore-rules`\n\
         # (knock-server-restore.service) installs them at boot, before the network is up.\n\
         # Written by knock-server after every install; do not edit.\n",
    );
    let _ = writeln!(text, "format = {FORMAT}");
    match settings {
        Settings::Nftables(nft) => {
            let _ = writeln!(text, "firewall = nftables");
            let _ = writeln!(text, "nft_table = {}", nft.table);
            let _ = writeln!(text, "nft_priority = {}", nft.priority);
        }
        Settings::Iptables(ipt) => {
            let _ = writeln!(text, "firewall = iptables");
            let _ = writeln!(text, "iptables_cmd = {}", ipt.iptables);
            let _ = writeln!(text, "ip6tables_cmd = {}", ipt.ip6tables);
            let _ = writeln!(text, "iptables_mark = {:#010x}", ipt.mark);
        }
    }
    let _ = writeln!(text, "knock_port = {}", policy.knock_port);
    let ports: Vec<String> = policy.protected().iter().map(ToString::to_string).collect();
    let _ = writeln!(text, "protected = {}", ports.join(" "));
    let _ = writeln!(text, "refuse = {}", policy.refusal.name());
    text
}

/// Reads the text `render` writes; the error names the line or key at fault.
pub fn parse(text: &str) -> Result<SavedRules, String> {
    let mut fields = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected `key = value`", number + 1));
        };
        let key = key.trim();
        if fields.insert(key, value.trim()).is_some() {
            return Err(format!("line {}: `{key}` given twice", number + 1));
        }
    }
    let mut take = |key: &'static str| {
        fields
            .remove(key)
            .ok_or_else(|| format!("`{key}` is missing"))
    };
    if take("format")? != FORMAT {
        return Err(format!(
            "`format` is not {FORMAT}: written by another version of knock-server"
        ));
    }
    let settings = match take("firewall")? {
        "nftables" => {
            let table = take("nft_table")?;
            if !is_table_name(table) {
                return Err(format!("`nft_table` {table:?} is not a table name"));
            }
            let priority = take("nft_priority")?;
            let priority = priority
                .parse()
                .map_err(|_| format!("`nft_priority` {priority:?} is not a number"))?;
            Settings::Nftables(nftables::Settings {
                table: table.to_owned(),
                priority,
            })
        }
        "iptables" => {
            let iptables = command(take("iptables_cmd")?, "iptables_cmd")?;
            let ip6tables = command(take("ip6tables_cmd")?, "ip6tables_cmd")?;
            let mark = take("iptables_mark")?;
            let mark = parse_mark(mark)
                .ok_or_else(|| format!("`iptables_mark` {mark:?} is not one bit in hexadecimal"))?;
            Settings::Iptables(iptables::Settings {
                iptables,
                ip6tables,
                mark,
            })
        }
        other => return Err(format!("`firewall` {other:?} is not nftables or iptables")),
    };
    let knock_port = take("knock_port")?;
    let knock_port = knock_port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("`knock_port` {knock_port:?} is not a port"))?;
    let protected = take("protected")?
        .split_whitespace()
        .map(|port| {
            port.parse::<PortSpec>()
                .map_err(|e| format!("`protected`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if protected.is_empty() {
        return Err("`protected` is empty".into());
    }
    let refusal = take("refuse")?;
    let refusal = Refusal::from_name(refusal)
        .ok_or_else(|| format!("`refuse` {refusal:?} is not reject or drop"))?;
    if let Some(key) = fields.keys().next() {
        return Err(format!("unknown key `{key}`"));
    }
    Ok(SavedRules {
        settings,
        policy: Policy::new(knock_port, &protected).refusing(refusal),
    })
}

/// A command name as `server.toml` accepts it.
fn command(text: &str, key: &str) -> Result<String, String> {
    if !is_command_name(text) {
        return Err(format!("`{key}` {text:?} is not a command name"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::example_policy;

    fn nft() -> Settings {
        Settings::Nftables(nftables::Settings {
            table: "knock".into(),
            priority: -10,
        })
    }

    fn ipt() -> Settings {
        Settings::Iptables(iptables::Settings {
            iptables: "iptables-legacy".into(),
            ip6tables: "/usr/sbin/ip6tables-legacy".into(),
            mark: 0x0020_0000,
        })
    }

    #[test]
    fn both_backends_round_trip() {
        for settings in [nft(), ipt()] {
            for policy in [example_policy(), example_policy().refusing(Refusal::Drop)] {
                let text = render(&settings, &policy);
                let back = parse(&text).expect(&text);
                assert_eq!(back.settings, settings);
                assert_eq!(back.policy, policy);
            }
        }
        assert!(render(&nft(), &example_policy()).contains("\nprotected = tcp/4992 udp/53\n"));
    }

    #[test]
    fn damaged_files_are_refused_naming_the_key() {
        let good = render(&nft(), &example_policy());
        for (damage, needle) in [
            (good.replace("format = 1", "format = 2"), "`format`"),
            (good.replace("nftables", "pf"), "`firewall`"),
            (
                good.replace("nft_table = knock", ""),
                "`nft_table` is missing",
            ),
            (good.replace("= knock\n", "= kn ock\n"), "`nft_table`"),
            (good.replace("-10", "low"), "`nft_priority`"),
            (good.replace("62201", "0"), "`knock_port`"),
            (good.replace("62201", "70000"), "`knock_port`"),
            (good.replace("tcp/4992 udp/53", ""), "`protected` is empty"),
            (good.replace("udp/53", "sctp/53"), "`protected`"),
            (good.clone() + "protected = tcp/1\n", "given twice"),
            (good.clone() + "iptables_cmd = iptables\n", "unknown key"),
            (good.clone() + "just words\n", "expected `key = value`"),
            (
                good.replace("refuse = reject", "refuse = ignore"),
                "`refuse`",
            ),
            (
                render(&ipt(), &example_policy()).replace("0x00200000", "0x3"),
                "`iptables_mark`",
            ),
            (
                render(&ipt(), &example_policy()).replace("iptables-legacy\n", "rm -rf\n"),
                "`iptables_cmd`",
            ),
            (String::new(), "`format` is missing"),
        ] {
            let err = parse(&damage).expect_err(&damage);
            assert!(err.contains(needle), "{damage:?} gave {err}");
        }
    }

    #[test]
    fn saved_private_loaded_back_and_refused_when_writable_by_others() {
        let dir = std::env::temp_dir().join(format!("knock-saved-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None, "nothing saved yet");
        save(&dir, &nft(), &example_policy()).unwrap();
        let file = path(&dir);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let saved = load(&dir).unwrap().expect("saved");
        assert_eq!((saved.settings, saved.policy), (nft(), example_policy()));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("0620") && err.contains(&file.display().to_string()),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, "format = 1\n").unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("`firewall` is missing"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
