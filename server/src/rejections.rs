//! Refusals, counted by reason and summarised at most every 10 s, so that a
//! flood can never flood the journal.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::verify::Rejection;

/// Rejection summaries are logged at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// At most this many individual lines for authentic rejections per summary
/// period; the rest are only counted.
const DETAILED_REJECTIONS: u32 = 20;

#[derive(Debug)]
pub struct RejectionLog {
    counts: BTreeMap<&'static str, u64>,
    detailed: u32,
    since: Instant,
}

impl Default for RejectionLog {
    fn default() -> Self {
        Self {
            counts: BTreeMap::new(),
            detailed: 0,
            since: Instant::now(),
        }
    }
}

impl RejectionLog {
    pub fn record(&mut self, rejection: &Rejection) {
        *self.counts.entry(rejection.reason()).or_default() += 1;
        if rejection.is_authentic() && self.detailed < DETAILED_REJECTIONS {
            self.detailed += 1;
            warn!("knock refused ({}): {rejection}", rejection.reason());
        }
    }

    pub fn record_other(&mut self, reason: &'static str) {
        *self.counts.entry(reason).or_default() += 1;
    }

    /// Logs and resets the counters if the period is over.
    pub fn maybe_summarise(&mut self, now: Instant) {
        if now.duration_since(self.since) >= SUMMARY_EVERY {
            self.summarise(now);
        }
    }

    /// Logs and resets the counters now (at shutdown, so that the summaries
    /// add up to every refusal since start).
    pub fn summarise(&mut self, now: Instant) {
        if let Some(line) = self.summary(now) {
            info!("{line}");
        }
        self.counts.clear();
        self.detailed = 0;
        self.since = now;
    }

    fn summary(&self, now: Instant) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        let total: u64 = self.counts.values().sum();
        let detail: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Some(format!(
            "refused {total} datagrams in the last {}s: {}",
            now.duration_since(self.since).as_secs(),
            detail.join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_by_reason_then_resets() {
        let mut log = RejectionLog::default();
        let start = log.since;
        assert_eq!(log.summary(start), None);
        log.record(&Rejection::UnknownClient);
        log.record(&Rejection::UnknownClient);
        log.record_other("malformed-packet");
        assert_eq!(
            log.summary(start + Duration::from_secs(10)).as_deref(),
            Some("refused 3 datagrams in the last 10s: malformed-packet=1 unknown-client=2")
        );
        log.maybe_summarise(start + Duration::from_secs(9));
        assert_eq!(log.counts.len(), 2, "not yet due");
        log.maybe_summarise(start + Duration::from_secs(10));
        assert!(log.counts.is_empty());
    }
}
