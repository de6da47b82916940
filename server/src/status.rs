//! The running daemon's own account of itself, for `knock-server status`
//! (another process): `<state_dir>/status`, a small TOML file that the
//! daemon rewrites atomically (a temporary file renamed over it) every
//! [`PUBLISH_EVERY`] and whenever its capture changes state, and removes
//! when it stops cleanly.
//!
//! Readers ignore keys they do not know and show every key in `--json`, so
//! later versions add keys (or `[tables]`) without breaking older readers;
//! `format` changes only if a key changes meaning. docs/OPERATIONS.md
//! documents the keys.
//!
//! The file is advisory: it is not fsynced (a crash may leave it stale or
//! empty, which readers report as such), and nothing on the knock path
//! waits for it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use toml::{Table, Value};

use crate::capture::Link;
use crate::state::{replace_file, Sync};

/// The file's name in the state directory.
pub const FILE_NAME: &str = "status";
/// How often the daemon rewrites the file when nothing changes.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(10);
/// A file older than this was not written by a running daemon: it missed
/// two rewrites.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// The version of the keys' meaning.
pub const FORMAT: i64 = 1;

/// What the daemon publishes. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub pid: u32,
    pub started_at: u64,
    pub written_at: u64,
    /// The `ready` line was logged (systemd notified).
    pub ready: bool,
    pub interface: String,
    pub capture: Link,
    /// When the capture entered its present state.
    pub capture_since: u64,
    /// Knock-port datagrams the kernel dropped on our full receive queue
    /// since start.
    pub kernel_drops: u64,
    /// Clients loaded.
    pub clients: usize,
    /// Of which public-key clients (the others are shared-key clients).
    pub public_key_clients: usize,
    /// Signature checks of public-key knocks since start.
    pub signature_checks: u64,
    /// Of which failed: knocks made by someone who holds this server's key
    /// or pair keys, not the client's identity.
    pub signature_failures: u64,
    /// Refusals by reason since start.
    pub refused: BTreeMap<String, u64>,
    /// The last reload, if there was one.
    pub last_reload: Option<LastReload>,
    /// Clients whose `expires` has passed, with it.
    pub expired: Vec<(String, String)>,
    /// After a lost replay state: every knock is refused until then (Unix
    /// seconds); 0 when not.
    pub refusing_until: u64,
    /// How far the clock is behind the latest time the server has seen, in
    /// seconds (it stepped back); 0 when not.
    pub clock_behind_s: u64,
}

/// When the server last reloaded and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    /// Unix seconds.
    pub at: u64,
    /// `Ok(summary)` when loaded, `Err(reason)` when refused.
    pub outcome: Result<String, String>,
}

impl Published {
    /// The file's text: a TOML table, in a fixed order, written by hand.
    pub fn render(&self) -> String {
        let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let fields = [
            ("format", Value::Integer(FORMAT)),
            ("pid", Value::Integer(i64::from(self.pid))),
            ("started_at", int(self.started_at)),
            ("written_at", int(self.written_at)),
            ("ready", Value::Boolean(self.ready)),
            ("interface", Value::String(self.interface.clone())),
            ("capture", Value::String(self.capture.name().to_owned())),
            ("capture_since", int(self.capture_since)),
            ("kernel_drops", int(self.kernel_drops)),
            (
                "clients",
                int(u64::try_from(self.clients).unwrap_or(u64::MAX)),
            ),
            (
                "public_key_clients",
                int(u64::try_from(self.public_key_clients).unwrap_or(u64::MAX)),
            ),
            ("signature_checks", int(self.signature_checks)),
            ("signature_failures", int(self.signature_failures)),
            ("refusing_until", int(self.refusing_until)),
            ("clock_behind_s", int(self.clock_behind_s)),
        ];
        let mut text = String::from(
            "# knock-server's status, rewritten every 10 s while it runs; see OPERATIONS.md\n",
        );
        for (key, value) in fields {
            // Value's Display quotes and escapes strings as TOML wants.
            let _ = writeln!(text, "{key} = {value}");
        }
        if let Some(reload) = &self.last_reload {
            let (outcome, message) = match &reload.outcome {
                Ok(summary) => ("loaded", summary),
                Err(reason) => ("refused", reason),
            };
            let _ = writeln!(text, "\n[last_reload]");
            let _ = writeln!(text, "at = {}", int(reload.at));
            let _ = writeln!(text, "outcome = {}", Value::String(outcome.to_owned()));
            let _ = writeln!(text, "message = {}", Value::String(message.clone()));
        }
        if !self.expired.is_empty() {
            let _ = writeln!(text, "\n[expired]");
            for (name, expires) in &self.expired {
                // A dot in a bare key would nest: client names are quoted.
                let _ = writeln!(
                    text,
                    "{} = {}",
                    Value::String(name.clone()),
                    Value::String(expires.clone())
                );
            }
        }
        // Keys are reasons (`bad-mac`, `replayed`, ...): bare TOML keys.
        let _ = writeln!(text, "\n[refused]");
        for (reason, count) in &self.refused {
            let _ = writeln!(text, "{reason} = {}", int(*count));
        }
        text
    }
}

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("no status file at {0}")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a status file: {message}")]
    Unreadable { path: PathBuf, message: String },
}

/// `<state_dir>/status`.
#[derive(Debug, Clone)]
pub struct StatusFile {
    dir: PathBuf,
    path: PathBuf,
}

impl StatusFile {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file: readers see the old text or the new, never half.
    /// On failure (a full disk) no temporary file is left behind.
    pub fn write(&self, published: &Published) -> io::Result<()> {
        replace_file(
            &self.dir,
            FILE_NAME,
            published.render().as_bytes(),
            Sync::Advisory,
        )
    }

    /// Removes the file (a clean stop): `status` then says "not running" at
    /// once instead of after [`STALE_AFTER`].
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    pub fn read(&self) -> Result<Snapshot, StatusError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StatusError::Missing(self.path.clone()))
            }
            Err(source) => {
                return Err(StatusError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        Snapshot::parse(&text).map_err(|message| StatusError::Unreadable {
            path: self.path.clone(),
            message,
        })
    }
}

/// A status file as read: every key, known or not.
#[derive(Debug, Clone)]
pub struct Snapshot {
    table: Table,
}

impl Snapshot {
    /// Parses the file's text; it must be TOML with a `written_at` time.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        let snapshot = Self { table };
        if snapshot.int("written_at").is_none() {
            return Err("it has no written_at time".into());
        }
        Ok(snapshot)
    }

    fn int(&self, key: &str) -> Option<u64> {
        self.table
            .get(key)
            .and_then(Value::as_integer)
            .and_then(|n| u64::try_from(n).ok())
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.table.get(key).and_then(Value::as_str)
    }

    /// Refusals by reason since start.
    fn refused(&self) -> Vec<(String, u64)> {
        let Some(table) = self.table.get("refused").and_then(Value::as_table) else {
            return Vec::new();
        };
        table
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u64::try_from(v.as_integer()?).ok()?)))
            .collect()
    }

    /// The last reload: when, whether it loaded, and its summary or reason.
    fn last_reload(&self) -> Option<(u64, bool, &str)> {
        let table = self.table.get("last_reload")?.as_table()?;
        let at = u64::try_from(table.get("at")?.as_integer()?).ok()?;
        let loaded = table.get("outcome")?.as_str()? == "loaded";
        let message = table.get("message").and_then(Value::as_str).unwrap_or("");
        Some((at, loaded, message))
    }

    /// Seconds since the daemon wrote the file (0 if its clock is ahead).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.int("written_at").unwrap_or(0))
    }
}

/// What `status` makes of the status file at time `now` (Unix seconds).
#[derive(Debug)]
pub enum Assessment {
    /// Written within [`STALE_AFTER`].
    Running(Snapshot),
    /// Written longer ago: the daemon is probably not running.
    Stale(Snapshot),
    /// No file, or one that cannot be read or parsed.
    Unknown(StatusError),
}

impl Assessment {
    pub fn of(read: Result<Snapshot, StatusError>, now: u64) -> Self {
        match read {
            Ok(snapshot) if snapshot.age(now) > STALE_AFTER.as_secs() => Self::Stale(snapshot),
            Ok(snapshot) => Self::Running(snapshot),
            Err(err) => Self::Unknown(err),
        }
    }

    /// Lines for the text output of `status`: a label and its text.
    pub fn lines(&self, now: u64) -> Vec<(&'static str, String)> {
        let snapshot = match self {
            Self::Unknown(StatusError::Missing(path)) => {
                return vec![(
                    "daemon",
                    format!("not running (no status file at {})", path.display()),
                )]
            }
            Self::Unknown(err) => return vec![("daemon", format!("unknown: {err}"))],
            Self::Stale(snapshot) => {
                return vec![(
                    "daemon",
                    format!(
                        "not running? its status file was last written {} ago by pid {} (it is rewritten every {}s)",
                        duration(snapshot.age(now)),
                        snapshot.int("pid").unwrap_or(0),
                        PUBLISH_EVERY.as_secs()
                    ),
                )]
            }
            Self::Running(snapshot) => snapshot,
        };
        let ready = match snapshot.table.get("ready").and_then(Value::as_bool) {
            Some(true) => "ready",
            _ => "not ready yet",
        };
        let mut lines = vec![(
            "daemon",
            format!(
                "running, pid {}, {ready}, up {}; status written {} ago",
                snapshot.int("pid").unwrap_or(0),
                duration(now.saturating_sub(snapshot.int("started_at").unwrap_or(now))),
                duration(snapshot.age(now))
            ),
        )];
        let interface = snapshot.text("interface").unwrap_or("?");
        let since = duration(now.saturating_sub(snapshot.int("capture_since").unwrap_or(now)));
        let capture = match snapshot.text("capture") {
            Some("live") => format!("live on {interface} for {since}"),
            Some("waiting") => format!("waiting for interface {interface} to appear, for {since}"),
            Some("down") => format!("interface {interface} is down, for {since}"),
            Some(other) => format!("{other} on {interface} for {since}"),
            None => "unknown".to_owned(),
        };
        lines.push(("capture", capture));
        if let Some(drops) = snapshot.int("kernel_drops") {
            lines.push(("kernel drops", format!("{drops} since start")));
        }
        if let Some(clients) = snapshot.int("clients") {
            let public = snapshot.int("public_key_clients").unwrap_or(0);
            lines.push((
                "clients",
                if public == 0 {
                    format!("{clients} loaded")
                } else {
                    format!(
                        "{clients} loaded: {} shared-key, {public} public-key",
                        clients.saturating_sub(public)
                    )
                },
            ));
        }
        let checks = snapshot.int("signature_checks").unwrap_or(0);
        if checks > 0 {
            let failures = snapshot.int("signature_failures").unwrap_or(0);
            lines.push((
                "signatures",
                if failures == 0 {
                    format!("{checks} checked since start, none failed")
                } else {
                    format!(
                        "{checks} checked since start, {failures} FAILED: someone holds this server's key or pair keys; rotate server.key"
                    )
                },
            ));
        }
        let refused = snapshot.refused();
        let total: u64 = refused.iter().map(|(_, n)| n).sum();
        let detail: Vec<String> = refused.iter().map(|(k, n)| format!("{k}={n}")).collect();
        lines.push((
            "refused",
            if total == 0 {
                "nothing since start".to_owned()
            } else {
                format!("{total} since start: {}", detail.join(" "))
            },
        ));
        let reload = match snapshot.last_reload() {
            None => "none since start".to_owned(),
            Some((at, true, message)) => {
                format!("loaded {} ago: {message}", duration(now.saturating_sub(at)))
            }
            Some((at, false, message)) => format!(
                "REFUSED {} ago, still running the configuration before it: {message}",
                duration(now.saturating_sub(at))
            ),
        };
        lines.push(("last reload", reload));
        if let Some(table) = snapshot.table.get("expired").and_then(Value::as_table) {
            let names: Vec<String> = table
                .iter()
                .map(|(name, at)| format!("{name} ({})", at.as_str().unwrap_or("?")))
                .collect();
            if !names.is_empty() {
                lines.push((
                    "expired",
                    format!("{} (their knocks are refused)", names.join(", ")),
                ));
            }
        }
        if let Some(until) = snapshot.int("refusing_until").filter(|&u| u > now) {
            lines.push((
                "replay state",
                format!(
                    "lost: every knock is refused for {} more, so that none honoured before can be honoured again",
                    duration(until - now)
                ),
            ));
        }
        if let Some(behind) = snapshot.int("clock_behind_s").filter(|&b| b > 0) {
            lines.push((
                "clock",
                format!(
                    "{} behind the latest time this server has seen (it stepped back): knocks are refused until it catches up",
                    duration(behind)
                ),
            ));
        }
        lines
    }

    /// The Prometheus text format, for node-exporter's textfile collector.
    /// `rules` is what the kernel says: whether our rules are in place, and
    /// how many grants are live.
    pub fn prometheus(&self, rules: Option<usize>) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP knock_{name} {help}");
            let _ = writeln!(out, "# TYPE knock_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "knock_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        metric(
            "rules_installed",
            "gauge",
            "Whether knock's firewall rules are in place (1) or not (0).",
            &one(u64::from(rules.is_some())),
        );
        metric(
            "live_grants",
            "gauge",
            "Grants live in the kernel (source and port pairs).",
            &one(rules.unwrap_or(0) as u64),
        );
        let snapshot = match self {
            Self::Running(snapshot) => Some(snapshot),
            Self::Stale(_) | Self::Unknown(_) => None,
        };
        metric(
            "up",
            "gauge",
            "Whether knock-server runs (its status file is fresh).",
            &one(u64::from(snapshot.is_some())),
        );
        let Some(snapshot) = snapshot else {
            return out;
        };
        let flag =
            |key: &str| u64::from(snapshot.table.get(key).and_then(Value::as_bool) == Some(true));
        metric(
            "ready",
            "gauge",
            "Whether knock-server said ready.",
            &one(flag("ready")),
        );
        metric(
            "capture_live",
            "gauge",
            "Whether capture on the knock interface is live.",
            &one(u64::from(snapshot.text("capture") == Some("live"))),
        );
        metric(
            "start_time_seconds",
            "gauge",
            "When knock-server started, Unix seconds.",
            &one(snapshot.int("started_at").unwrap_or(0)),
        );
        metric(
            "clients",
            "gauge",
            "Clients loaded.",
            &one(snapshot.int("clients").unwrap_or(0)),
        );
        metric(
            "public_key_clients",
            "gauge",
            "Public-key clients loaded (included in knock_clients).",
            &one(snapshot.int("public_key_clients").unwrap_or(0)),
        );
        metric(
            "signature_checks_total",
            "counter",
            "Signature checks of public-key knocks.",
            &one(snapshot.int("signature_checks").unwrap_or(0)),
        );
        metric(
            "signature_failures_total",
            "counter",
            "Signature checks that failed (someone holds this server's key or pair keys).",
            &one(snapshot.int("signature_failures").unwrap_or(0)),
        );
        metric(
            "kernel_drops_total",
            "counter",
            "Knock-port datagrams the kernel dropped on the capture socket's full queue.",
            &one(snapshot.int("kernel_drops").unwrap_or(0)),
        );
        let refused: Vec<(String, u64)> = snapshot
            .refused()
            .into_iter()
            .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), n))
            .collect();
        metric(
            "refused_total",
            "counter",
            "Datagrams to the knock port refused, by reason.",
            &refused,
        );
        if let Some((at, loaded, _)) = snapshot.last_reload() {
            metric(
                "last_reload_timestamp_seconds",
                "gauge",
                "When knock-server last reloaded, Unix seconds.",
                &one(at),
            );
            metric(
                "last_reload_success",
                "gauge",
                "Whether the last reload loaded (1) or was refused (0).",
                &one(u64::from(loaded)),
            );
        }
        out
    }

    /// One JSON object: `state` (`running`, `stale` or `unknown`), `age_s`,
    /// and every key of the file; or, without a file, `reason`.
    pub fn json(&self, now: u64) -> String {
        let (state, snapshot) = match self {
            Self::Running(snapshot) => ("running", snapshot),
            Self::Stale(snapshot) => ("stale", snapshot),
            Self::Unknown(err) => {
                let state = match err {
                    StatusError::Missing(_) => "not-running",
                    _ => "unknown",
                };
                return format!(
                    "{{\"state\":{},\"reason\":{}}}",
                    json_string(state),
                    json_string(&err.to_string())
                );
            }
        };
        let mut out = format!(
            "{{\"state\":{},\"age_s\":{}",
            json_string(state),
            snapshot.age(now)
        );
        for (key, value) in &snapshot.table {
            let _ = write!(out, ",{}:{}", json_string(key), json_value(value));
        }
        out.push('}');
        out
    }
}

/// `95s`, `5m 2s`, `3h 4m`, `2d 3h`.
fn duration(seconds: u64) -> String {
    let (m, s) = (seconds / 60, seconds % 60);
    let (h, m) = (m / 60, m % 60);
    let (d, h) = (h / 24, h % 24);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn json_value(value: &Value) -> String {
    match value {
        Value::String(s) => json_string(s),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) if f.is_finite() => f.to_string(),
        Value::Float(_) => "null".to_owned(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => json_string(&d.to_string()),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(json_value).collect();
            format!("[{}]", items.join(","))
        }
        Value::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), json_value(v)))
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Published {
        Published {
            pid: 4321,
            started_at: 1_700_000_000,
            written_at: 1_700_000_100,
            ready: true,
            interface: "we\"ird0".into(),
            capture: Link::Missing,
            capture_since: 1_700_000_040,
            kernel_drops: 17,
            clients: 3,
            public_key_clients: 1,
            signature_checks: 4,
            signature_failures: 1,
            refused: [("bad-mac".to_owned(), 5), ("replayed".to_owned(), 2)]
                .into_iter()
                .collect(),
            last_reload: Some(LastReload {
                at: 1_700_000_090,
                outcome: Err("alice.toml: readable by others".into()),
            }),
            expired: vec![("carol.old".into(), "2020-01-01".into())],
            refusing_until: 1_700_000_125,
            clock_behind_s: 0,
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        let snapshot = Snapshot::parse(&published().render()).expect("parses");
        assert_eq!(snapshot.int("kernel_drops"), Some(17));
        assert_eq!(snapshot.text("interface"), Some("we\"ird0"));
        assert_eq!(snapshot.text("capture"), Some("waiting"));
        let now = 1_700_000_105;
        let status = Assessment::of(Ok(snapshot), now);
        let lines = status.lines(now);
        assert_eq!(
            lines,
            vec![
                (
                    "daemon",
                    "running, pid 4321, ready, up 1m 45s; status written 5s ago".to_owned()
                ),
                (
                    "capture",
                    "waiting for interface we\"ird0 to appear, for 1m 5s".to_owned()
                ),
                ("kernel drops", "17 since start".to_owned()),
                (
                    "clients",
                    "3 loaded: 2 shared-key, 1 public-key".to_owned()
                ),
                (
                    "signatures",
                    "4 checked since start, 1 FAILED: someone holds this server's key or pair keys; rotate server.key".to_owned()
                ),
                ("refused", "7 since start: bad-mac=5 replayed=2".to_owned()),
                (
                    "last reload",
                    "REFUSED 15s ago, still running the configuration before it: alice.toml: readable by others"
                        .to_owned()
                ),
                (
                    "expired",
                    "carol.old (2020-01-01) (their knocks are refused)".to_owned()
                ),
                (
                    "replay state",
                    "lost: every knock is refused for 20s more, so that none honoured before can be honoured again".to_owned()
                ),
            ]
        );
        let metrics = status.prometheus(Some(2));
        for line in [
            "knock_up 1",
            "knock_ready 1",
            "knock_rules_installed 1",
            "knock_live_grants 2",
            "knock_capture_live 0",
            "knock_clients 3",
            "knock_public_key_clients 1",
            "knock_signature_checks_total 4",
            "knock_signature_failures_total 1",
            "knock_kernel_drops_total 17",
            "# TYPE knock_refused_total counter",
            "knock_refused_total{reason=\"bad-mac\"} 5",
            "knock_refused_total{reason=\"replayed\"} 2",
            "knock_last_reload_timestamp_seconds 1700000090",
            "knock_last_reload_success 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line:?} in\n{metrics}");
        }
        let json = status.json(now);
        assert!(
            json.starts_with("{\"state\":\"running\",\"age_s\":5,"),
            "{json}"
        );
        assert!(json.contains("\"interface\":\"we\\\"ird0\""), "{json}");
        assert!(json.contains("\"kernel_drops\":17"), "{json}");
    }

    #[test]
    fn old_missing_and_broken_files_are_reported_not_fatal() {
        let snapshot = Snapshot::parse(&published().render()).expect("parses");
        let late = 1_700_000_100 + STALE_AFTER.as_secs() + 1;
        let stale = Assessment::of(Ok(snapshot), late);
        assert!(matches!(stale, Assessment::Stale(_)));
        assert!(stale.lines(late)[0].1.starts_with("not running?"));
        assert!(stale.json(late).starts_with("{\"state\":\"stale\""));

        assert!(stale.prometheus(None).contains("\nknock_up 0\n"));
        assert!(stale
            .prometheus(None)
            .contains("\nknock_rules_installed 0\n"));
        let missing = Assessment::of(Err(StatusError::Missing("/x/status".into())), late);
        assert_eq!(
            missing.lines(late),
            vec![(
                "daemon",
                "not running (no status file at /x/status)".to_owned()
            )]
        );
        assert_eq!(
            missing.json(late),
            "{\"state\":\"not-running\",\"reason\":\"no status file at /x/status\"}"
        );

        for junk in [
            "",
            "pid = 1\n",
            "written_at = \"soon\"\n",
            "\u{0}\u{ff}=[",
            "a = [1,",
        ] {
            assert!(Snapshot::parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn unknown_keys_are_kept_for_json() {
        let text = format!(
            "future = 3\n{}[future_table]\nx = 2\n",
            published().render()
        );
        let snapshot = Snapshot::parse(&text).expect("parses");
        let json = Assessment::of(Ok(snapshot), 1_700_000_100).json(1_700_000_100);
        assert!(json.contains("\"future\":3"), "{json}");
        assert!(json.contains("\"future_table\":{\"x\":2}"), "{json}");
        assert!(
            json.contains("\"refused\":{\"bad-mac\":5,\"replayed\":2}"),
            "{json}"
        );
    }

    #[test]
    fn written_atomically_removed_cleanly_and_no_temporary_file_left() {
        let dir = std::env::temp_dir().join(format!("knock-status-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // `status` is a non-empty directory: the rename fails.
        fs::create_dir_all(dir.join(FILE_NAME).join("x")).unwrap();
        let file = StatusFile::in_dir(&dir);
        let temp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        assert!(file.write(&published()).is_err());
        assert!(!temp.exists(), "a failed write left its temporary file");
        fs::remove_dir_all(dir.join(FILE_NAME)).unwrap();
        file.write(&published()).unwrap();
        assert!(!temp.exists());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "only the status file is left");
        assert!(file.read().is_ok());
        file.remove().unwrap();
        assert!(matches!(file.read(), Err(StatusError::Missing(_))));
        file.remove().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(3 * 3600 + 4 * 60 + 5), "3h 4m");
        assert_eq!(duration(2 * 86400 + 3 * 3600), "2d 3h");
    }
}
