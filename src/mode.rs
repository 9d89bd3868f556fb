//! Ingestion modes (DESIGN §1, row 2): when a stream fetches and at which priority its
//! records travel. Changing mode is a config change only.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

use crate::config::{ModeKind, SourceConfig};
use crate::record::Priority;

/// When a stream fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Poll every `interval`; records keep their own priority.
    RealTime { interval: Duration },
    /// Fetch the whole window every `every`; records are bulk (`low`).
    Batch { every: Duration },
    /// One fetch of the given input, as `firestream ingest` does; records are bulk.
    Once,
}

impl Mode {
    /// The mode of a checked source config.
    pub fn of(source: &SourceConfig) -> Mode {
        match source.mode {
            ModeKind::RealTime => Mode::RealTime {
                interval: source.interval.map_or(Duration::from_secs(60), |d| d.0),
            },
            ModeKind::Batch => Mode::Batch {
                every: source
                    .schedule
                    .map_or(Duration::from_secs(3600), |s| s.every.0),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::RealTime { .. } => "real_time",
            Mode::Batch { .. } => "batch",
            Mode::Once => "once",
        }
    }

    /// Ticks at once, then every period. A fetch that overruns its period delays the next
    /// tick instead of causing a burst of catch-up fetches. `None` for [`Mode::Once`].
    pub fn ticker(self) -> Option<Interval> {
        let period = match self {
            Mode::RealTime { interval } => interval,
            Mode::Batch { every } => every,
            Mode::Once => return None,
        };
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(ticker)
    }

    /// Whether records of this mode are bulk traffic (DESIGN §3: batch and ingest → low).
    pub fn is_bulk(self) -> bool {
        !matches!(self, Mode::RealTime { .. })
    }
}

/// The priority rules of DESIGN §3, first match wins: the source's own setting; a critical
/// event stays critical; bulk modes are `low`; else what the parser decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityPolicy {
    pub source_override: Option<Priority>,
    pub bulk: bool,
}

impl PriorityPolicy {
    pub fn apply(self, parsed: Priority) -> Priority {
        match (self.source_override, parsed) {
            (Some(p), _) => p,
            (None, Priority::Critical) => Priority::Critical,
            (None, _) if self.bulk => Priority::Low,
            (None, p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_rules_in_order() {
        let live = PriorityPolicy {
            source_override: None,
            bulk: false,
        };
        let bulk = PriorityPolicy {
            source_override: None,
            bulk: true,
        };
        let pinned = PriorityPolicy {
            source_override: Some(Priority::Normal),
            bulk: true,
        };
        assert_eq!(live.apply(Priority::High), Priority::High);
        assert_eq!(bulk.apply(Priority::High), Priority::Low);
        assert_eq!(bulk.apply(Priority::Critical), Priority::Critical);
        assert_eq!(pinned.apply(Priority::Critical), Priority::Normal);
        assert_eq!(pinned.apply(Priority::Low), Priority::Normal);
    }

    #[test]
    fn batch_and_once_are_bulk() {
        assert!(
            !Mode::RealTime {
                interval: Duration::from_secs(1)
            }
            .is_bulk()
        );
        assert!(
            Mode::Batch {
                every: Duration::from_secs(1)
            }
            .is_bulk()
        );
        assert!(Mode::Once.is_bulk());
    }
}
