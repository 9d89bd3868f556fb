//! Ingestion modes (DESIGN §1, row 2): when a stream fetches and at which priority its
//! records travel. Changing mode is a config change only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use tokio::time::{Interval, MissedTickBehavior};

use crate::buffer::BufferSettings;
use crate::config::{ModeKind, SourceConfig};
use crate::record::Priority;

/// When a stream fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Poll every `interval`; records keep their own priority.
    RealTime { interval: Duration },
    /// Fetch the whole window on a schedule; records are bulk (`low`).
    Batch { schedule: BatchSchedule },
    /// Push (MQTT) or poll every `interval`; records keep their own priority and are
    /// buffered on their way to the queue.
    ContinuousStreaming {
        interval: Duration,
        buffer: BufferSettings,
    },
    /// One fetch of the given input, as `firestream ingest` does; records are bulk.
    Once,
}

/// A batch source's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchSchedule {
    /// At start, then every period.
    Every(Duration),
    /// At each time the expression matches, in UTC.
    Cron(Box<Cron>),
}

/// The cron dialect of `schedule.cron`: the classic five fields (no seconds, no year), so an
/// expression means what crontab(5) says. An expression that never fires is refused too.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!("{expr:?} is not a cron expression ({e}); write five fields: minute hour day-of-month month day-of-week, e.g. \"0 */3 * * *\"")
        })?;
    if next_fire(&cron, Utc::now()).is_none() {
        return Err(format!("{expr:?} never fires"));
    }
    Ok(cron)
}

/// The first time strictly after `now` that `cron` matches, evaluated in UTC.
pub fn next_fire(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

/// Default poll interval of a `continuous_streaming` source without one (MQTT never polls).
const CONTINUOUS_INTERVAL: Duration = Duration::from_secs(5);

impl Mode {
    /// The mode of a checked source config.
    pub fn of(source: &SourceConfig) -> Mode {
        match source.mode {
            ModeKind::RealTime => Mode::RealTime {
                interval: source.interval.map_or(Duration::from_secs(60), |d| d.0),
            },
            ModeKind::Batch => {
                let schedule = source.schedule.as_ref();
                let cron = schedule
                    .and_then(|s| s.cron.as_deref())
                    .and_then(|c| parse_cron(c).ok());
                Mode::Batch {
                    schedule: match cron {
                        Some(cron) => BatchSchedule::Cron(Box::new(cron)),
                        None => BatchSchedule::Every(
                            schedule
                                .and_then(|s| s.every)
                                .map_or(Duration::from_secs(3600), |d| d.0),
                        ),
                    },
                }
            }
            ModeKind::ContinuousStreaming => Mode::ContinuousStreaming {
                interval: source.interval.map_or(CONTINUOUS_INTERVAL, |d| d.0),
                buffer: BufferSettings::of(source),
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mode::RealTime { .. } => "real_time",
            Mode::Batch { .. } => "batch",
            Mode::ContinuousStreaming { .. } => "continuous_streaming",
            Mode::Once => "once",
        }
    }

    /// When the stream fetches: at once and then every period, or at each cron time.
    /// `None` for [`Mode::Once`].
    pub fn ticker(&self) -> Option<Ticker> {
        let period = match self {
            Mode::RealTime { interval } | Mode::ContinuousStreaming { interval, .. } => *interval,
            Mode::Batch {
                schedule: BatchSchedule::Every(every),
            } => *every,
            Mode::Batch {
                schedule: BatchSchedule::Cron(cron),
            } => return Some(Ticker::Cron(cron.clone())),
            Mode::Once => return None,
        };
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(Ticker::Every(ticker))
    }

    /// The buffer between the stream and the queue, for `continuous_streaming`.
    pub fn buffer(&self) -> Option<BufferSettings> {
        match self {
            Mode::ContinuousStreaming { buffer, .. } => Some(*buffer),
            _ => None,
        }
    }

    /// Whether records of this mode are bulk traffic (DESIGN §3: batch and ingest → low;
    /// real_time and continuous_streaming keep their own priority).
    pub fn is_bulk(&self) -> bool {
        matches!(self, Mode::Batch { .. } | Mode::Once)
    }
}

/// Fires when a stream should fetch. A fetch that overruns its period or a cron time delays
/// the next fetch instead of causing a burst of catch-up fetches.
#[derive(Debug)]
pub enum Ticker {
    Every(Interval),
    Cron(Box<Cron>),
}

impl Ticker {
    pub async fn tick(&mut self) {
        match self {
            Ticker::Every(interval) => {
                interval.tick().await;
            }
            Ticker::Cron(cron) => {
                let now = Utc::now();
                match next_fire(cron, now) {
                    Some(at) => {
                        let wait = (at - now).to_std().unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    // Checked at load time; a schedule with no future time never fires.
                    None => std::future::pending().await,
                }
            }
        }
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
                schedule: BatchSchedule::Every(Duration::from_secs(1))
            }
            .is_bulk()
        );
        assert!(Mode::Once.is_bulk());
        assert!(
            !Mode::ContinuousStreaming {
                interval: Duration::from_secs(5),
                buffer: BufferSettings::default(),
            }
            .is_bulk()
        );
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn cron_next_fire_is_the_next_match_after_now_in_utc() {
        let cron = parse_cron("0 */3 * * *").unwrap();
        assert_eq!(
            next_fire(&cron, utc("2026-12-04T10:15:00Z")),
            Some(utc("2026-12-04T12:00:00Z"))
        );
        // Strictly after: a fetch at the fire time waits for the next one.
        assert_eq!(
            next_fire(&cron, utc("2026-12-04T12:00:00Z")),
            Some(utc("2026-12-04T15:00:00Z"))
        );
        assert_eq!(
            next_fire(&cron, utc("2026-12-04T22:59:59Z")),
            Some(utc("2026-12-05T00:00:00Z"))
        );
        let weekly = parse_cron("30 6 * * MON").unwrap();
        // 2026-12-04 is a Friday.
        assert_eq!(
            next_fire(&weekly, utc("2026-12-04T10:00:00Z")),
            Some(utc("2026-12-07T06:30:00Z"))
        );
    }

    #[test]
    fn cron_rejects_bad_and_never_firing_expressions() {
        let e = parse_cron("0 */3 * *").unwrap_err();
        assert!(
            e.starts_with("\"0 */3 * *\" is not a cron expression"),
            "{e}"
        );
        assert!(parse_cron("61 * * * *").is_err());
        // Seconds are not part of the dialect.
        assert!(parse_cron("0 0 */3 * * *").is_err());
        assert_eq!(
            parse_cron("0 0 30 2 *").unwrap_err(),
            "\"0 0 30 2 *\" never fires"
        );
    }

    #[test]
    fn mode_of_reads_every_and_cron_schedules() {
        let every = SourceConfig {
            mode: ModeKind::Batch,
            schedule: Some(crate::config::Schedule {
                every: Some(crate::config::Dur(Duration::from_secs(7200))),
                cron: None,
            }),
            ..SourceConfig::default()
        };
        assert_eq!(
            Mode::of(&every),
            Mode::Batch {
                schedule: BatchSchedule::Every(Duration::from_secs(7200))
            }
        );
        let cron = SourceConfig {
            mode: ModeKind::Batch,
            schedule: Some(crate::config::Schedule {
                every: None,
                cron: Some("0 */3 * * *".into()),
            }),
            ..SourceConfig::default()
        };
        let Mode::Batch {
            schedule: BatchSchedule::Cron(c),
        } = Mode::of(&cron)
        else {
            panic!("a cron schedule");
        };
        assert_eq!(c.as_str(), "0 */3 * * *");
        let streaming = SourceConfig {
            mode: ModeKind::ContinuousStreaming,
            interval: Some(crate::config::Dur(Duration::from_secs(5))),
            buffer_size: Some(100),
            ..SourceConfig::default()
        };
        assert_eq!(
            Mode::of(&streaming),
            Mode::ContinuousStreaming {
                interval: Duration::from_secs(5),
                buffer: BufferSettings {
                    size: 100,
                    flush_interval: Duration::from_secs(1)
                },
            }
        );
    }
}
