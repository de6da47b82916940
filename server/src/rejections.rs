//! Refusals, counted by reason and summarised at most every 10 s, so that a
//! flood can never flood the journal.
//!
//! Datagrams the kernel dropped before we could read them (our receive queue
//! was full) are summarised in the same rhythm, on a line of their own: they
//! were never seen, let alone refused, so they are not part of the
//! `refused N datagrams` count that operators and scripts add up by reason.

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
    /// Since start, never reset: for `knock-server status`. One map update
    /// per refusal: the summaries are differences of it.
    totals: BTreeMap<&'static str, u64>,
    /// `totals` when the last summary was logged.
    summarised: BTreeMap<&'static str, u64>,
    detailed: u32,
    kernel_drops: u64,
    since: Instant,
}

impl Default for RejectionLog {
    fn default() -> Self {
        Self {
            totals: BTreeMap::new(),
            summarised: BTreeMap::new(),
            detailed: 0,
            kernel_drops: 0,
            since: Instant::now(),
        }
    }
}

impl RejectionLog {
    pub fn record(&mut self, rejection: &Rejection) {
        self.count(rejection.reason());
        if rejection.is_authentic() && self.detailed < DETAILED_REJECTIONS {
            self.detailed += 1;
            warn!("knock refused ({}): {rejection}", rejection.reason());
        }
    }

    pub fn record_other(&mut self, reason: &'static str) {
        self.count(reason);
    }

    fn count(&mut self, reason: &'static str) {
        *self.totals.entry(reason).or_default() += 1;
    }

    /// Refusals by reason since the last summary.
    fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.totals
            .iter()
            .map(|(reason, n)| {
                (
                    *reason,
                    n - self.summarised.get(reason).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Refusals since start, all reasons.
    pub fn total(&self) -> u64 {
        self.totals.values().sum()
    }

    /// Refusals by reason since start.
    pub fn totals(&self) -> &BTreeMap<&'static str, u64> {
        &self.totals
    }

    /// Counts datagrams the kernel dropped on the capture socket.
    pub fn record_kernel_drops(&mut self, drops: u64) {
        self.kernel_drops = self.kernel_drops.saturating_add(drops);
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
        if let Some(line) = self.drops_summary(now) {
            warn!("{line}");
        }
        self.summarised.clone_from(&self.totals);
        self.detailed = 0;
        self.kernel_drops = 0;
        self.since = now;
    }

    fn summary(&self, now: Instant) -> Option<String> {
        let counts = self.counts();
        if counts.is_empty() {
            return None;
        }
        let total: u64 = counts.values().sum();
        let detail: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(format!(
            "refused {total} datagrams in the last {}s: {}",
            now.duration_since(self.since).as_secs(),
            detail.join(" ")
        ))
    }

    fn drops_summary(&self, now: Instant) -> Option<String> {
        (self.kernel_drops > 0).then(|| {
            format!(
                "kernel dropped {} datagrams to the knock port in the last {}s: the capture's receive queue was full; knocks among them were not seen",
                self.kernel_drops,
                now.duration_since(self.since).as_secs()
            )
        })
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
        assert_eq!(log.counts().len(), 2, "not yet due");
        log.maybe_summarise(start + Duration::from_secs(10));
        assert!(log.counts().is_empty());
        log.record(&Rejection::UnknownClient);
        assert_eq!(
            log.totals()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>(),
            [("malformed-packet", 1), ("unknown-client", 3)],
            "totals count since start, across summaries"
        );
    }

    #[test]
    fn kernel_drops_have_their_own_line_and_reset() {
        let mut log = RejectionLog::default();
        let start = log.since;
        assert_eq!(log.drops_summary(start), None);
        log.record_kernel_drops(0);
        assert_eq!(log.drops_summary(start), None, "nothing dropped");
        log.record_kernel_drops(40);
        log.record_kernel_drops(2);
        log.record_other("malformed-packet");
        let later = start + Duration::from_secs(10);
        assert_eq!(
            log.summary(later).as_deref(),
            Some("refused 1 datagrams in the last 10s: malformed-packet=1"),
            "drops are not refusals"
        );
        assert!(log.drops_summary(later).is_some_and(
            |l| l.starts_with("kernel dropped 42 datagrams to the knock port in the last 10s")
        ));
        log.summarise(later);
        assert_eq!(log.drops_summary(later), None);
    }
}
