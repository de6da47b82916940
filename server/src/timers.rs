//! The clocks the daemon reads: wall time for knocks, and periodic timers
//! for work between packets.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The current Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Something to do every `period`, looked at between packets.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    period: Duration,
    last: Instant,
}

impl Every {
    /// First due one `period` after `now`.
    pub fn new(period: Duration, now: Instant) -> Self {
        Self { period, last: now }
    }

    /// Is it time (and if so, the next period starts at `now`)?
    pub fn due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last) >= self.period {
            self.last = now;
            true
        } else {
            false
        }
    }
}

/// systemd's watchdog: half its timeout, when the unit asks for one.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_period() {
        let start = Instant::now();
        let mut every = Every::new(Duration::from_millis(500), start);
        assert!(!every.due(start));
        assert!(!every.due(start + Duration::from_millis(499)));
        assert!(every.due(start + Duration::from_millis(500)));
        assert!(!every.due(start + Duration::from_millis(900)));
        assert!(every.due(start + Duration::from_millis(1000)));
    }
}
