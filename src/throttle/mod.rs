//! Lag-driven backpressure (DESIGN §5 LagProbe + Throttle): every `throttle.interval` the
//! probe samples each topic's downstream lag; the average over `throttle.window` moves the
//! topic's level (see [`level`]); the level sets the rate of the topic's token bucket, which
//! bulk records wait on where they leave the queue. Critical records and dead letters never
//! wait. A sample that cannot be taken leaves the level as it is (and is shown in Stats).

mod bucket;
mod config;
pub mod lag;
pub mod level;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::bucket::{BURST_SECONDS, Bucket};
pub use self::config::{MIN_INTERVAL, ThrottleConfig, is_valid_group};
use self::lag::{LagError, LagProbe, TopicLag};
use self::level::{LevelState, Levels};
use crate::record::Priority;
use crate::sinks::{Message, Origin};
use crate::stats::{Stats, ThrottleStatus};

struct TopicState {
    level: LevelState,
    bucket: Bucket,
}

pub struct Throttle {
    config: ThrottleConfig,
    levels: Levels,
    topics: Mutex<HashMap<Arc<str>, TopicState>>,
    stats: Arc<Stats>,
}

impl Throttle {
    /// A throttle for `topics` (more join as bulk records for them arrive), all at level 0.
    pub fn new(config: ThrottleConfig, topics: &[Arc<str>], stats: Arc<Stats>) -> Self {
        let throttle = Throttle {
            levels: Levels::of(&config),
            config,
            topics: Mutex::new(HashMap::new()),
            stats,
        };
        for topic in topics {
            throttle.with_topic(topic, |_| {});
        }
        throttle
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    fn with_topic<T>(&self, topic: &Arc<str>, f: impl FnOnce(&mut TopicState) -> T) -> T {
        let mut topics = self.topics.lock().expect("throttle lock");
        let state = topics.entry(topic.clone()).or_insert_with(|| {
            self.stats.set_throttle(
                topic,
                ThrottleStatus {
                    level: 0,
                    max_level: self.config.max_level,
                    critical_lag: self.config.critical_lag,
                    rate: self.config.max_rate,
                    ..ThrottleStatus::default()
                },
            );
            TopicState {
                level: LevelState::new(self.levels),
                bucket: Bucket::new(self.config.max_rate, Instant::now()),
            }
        });
        f(state)
    }

    /// Adds a topic to be sampled (at level 0 until its first samples).
    pub fn watch(&self, topic: &Arc<str>) {
        self.with_topic(topic, |_| {});
    }

    /// Topics the throttle knows, in name order.
    pub fn topics(&self) -> Vec<Arc<str>> {
        let mut names: Vec<_> = self
            .topics
            .lock()
            .expect("throttle lock")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Waits until `n` records of `topic` may be sent at its current rate.
    pub async fn acquire(&self, topic: &Arc<str>, n: u64) {
        let wait = self.with_topic(topic, |s| s.bucket.take(n, Instant::now()));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for the tokens of every bulk record in `messages`, topic by topic; critical
    /// records and dead letters pass at once. Returns early when `stop` fires (shutdown:
    /// the records are sent, or given back by the sink, rather than held).
    pub async fn admit(&self, messages: &[Message], stop: &CancellationToken) {
        let mut counts: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for message in messages {
            if let Origin::Record { priority, .. } = &message.origin
                && *priority != Priority::Critical
            {
                *counts.entry(message.topic.clone()).or_default() += 1;
            }
        }
        for (topic, n) in counts {
            tokio::select! {
                _ = self.acquire(&topic, n) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// How many bulk records one batch may take: [`BURST_SECONDS`] of the slowest topic's
    /// rate, so a throttled batch is sent in small steps rather than one long wait.
    pub fn batch_limit(&self, max: usize) -> usize {
        let slowest = self
            .topics
            .lock()
            .expect("throttle lock")
            .values()
            .map(|s| s.bucket.rate())
            .fold(f64::INFINITY, f64::min);
        if slowest.is_infinite() {
            return max;
        }
        ((slowest * BURST_SECONDS).ceil() as usize).clamp(1, max)
    }

    /// Takes one sample's result for `topic`: a lag moves the level and the rate; an error
    /// leaves both as they are.
    pub fn record(&self, topic: &Arc<str>, sample: Result<TopicLag, LagError>) {
        let lag = match sample {
            Ok(lag) => lag,
            Err(e) => {
                let message = e.to_string();
                let mut new = false;
                self.stats.update_throttle(topic, |s| {
                    new = s.last_error.as_deref() != Some(message.as_str());
                    s.last_error = Some(message.clone());
                });
                // Once per distinct failure, not every interval.
                if new {
                    warn!(%topic, error = %message, "lag sample failed; the throttle level stays as it is");
                }
                return;
            }
        };
        let (before, level, average, rate) = self.with_topic(topic, |s| {
            let before = s.level.level();
            let level = s.level.observe(lag.lag);
            let rate = level::rate(&self.config, level);
            if level != before {
                s.bucket.set_rate(rate, Instant::now());
            }
            (before, level, s.level.average(), rate)
        });
        if level != before {
            info!(%topic, level, previous = before, rate, average_lag = average, "throttle level changed");
        }
        self.stats.update_throttle(topic, |s| {
            s.level = level;
            s.rate = rate;
            s.lag = Some(lag.lag);
            s.average_lag = average;
            s.groups = lag.groups;
            s.last_error = None;
        });
    }

    /// Samples every known topic each `interval` until `stop` fires.
    pub async fn run(self: Arc<Self>, probe: Arc<dyn LagProbe>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for topic in self.topics() {
                let sample = tokio::select! {
                    _ = stop.cancelled() => return,
                    sample = probe.lag(&topic) => sample,
                };
                self.record(&topic, sample);
            }
        }
    }
}

/// The bound on each probe request: the interval, within 1 s to 10 s.
pub fn probe_timeout(config: &ThrottleConfig) -> Duration {
    config
        .interval
        .0
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::dlq::Stage;
    use crate::record::RecordId;
    use crate::sources::SourceType;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            enabled: true,
            consumer_groups: vec!["g".into()],
            target_lag: 100,
            critical_lag: 500,
            max_rate: 1_000.0,
            min_rate: 50.0,
            factor: 2.0,
            max_level: 5,
            interval: Dur(Duration::from_millis(100)),
            window: Dur(Duration::from_millis(100)),
            recovery_samples: 2,
        }
    }

    fn lag(n: u64) -> Result<TopicLag, LagError> {
        Ok(TopicLag {
            lag: n,
            groups: [("g".to_owned(), Some(n))].into(),
        })
    }

    fn message(topic: &str, priority: Option<Priority>) -> Message {
        Message {
            topic: Arc::from(topic),
            key: "k".into(),
            timestamp_ms: 0,
            headers: vec![],
            payload: vec![],
            origin: match priority {
                Some(priority) => Origin::Record {
                    id: RecordId::from_natural_key(SourceType::Mqtt, &["1"]),
                    source_id: Arc::from("s"),
                    source_type: SourceType::Mqtt,
                    priority,
                    copy: false,
                    receipt: None,
                    event_time_ms: 0,
                    enqueued: None,
                },
                None => Origin::DeadLetter {
                    stage: Stage::Validate,
                    receipt: None,
                },
            },
        }
    }

    #[test]
    fn samples_move_level_rate_and_stats() {
        let stats = Arc::new(Stats::default());
        let t: Arc<str> = Arc::from("t");
        let throttle = Throttle::new(config(), std::slice::from_ref(&t), stats.clone());
        assert_eq!(stats.throttle()["t"].rate, 1_000.0);
        assert_eq!(throttle.batch_limit(2_000), 100);
        for _ in 0..3 {
            throttle.record(&t, lag(600));
        }
        let status = &stats.throttle()["t"];
        assert_eq!(
            (status.level, status.rate, status.lag),
            (3, 125.0, Some(600))
        );
        assert_eq!(status.groups["g"], Some(600));
        assert_eq!(throttle.batch_limit(2_000), 13);
        // A failed sample keeps the level and says why.
        throttle.record(
            &t,
            Err(LagError::UnknownTopic {
                topic: "t".into(),
                detail: "gone".into(),
            }),
        );
        let status = &stats.throttle()["t"];
        assert_eq!(status.level, 3);
        assert_eq!(
            status.last_error.as_deref(),
            Some("topic t: Kafka does not know it (gone)")
        );
        // Two samples below target per level down.
        let levels: Vec<u32> = (0..6)
            .map(|_| {
                throttle.record(&t, lag(0));
                stats.throttle()["t"].level
            })
            .collect();
        assert_eq!(levels, vec![3, 2, 2, 1, 1, 0]);
        assert_eq!(stats.throttle()["t"].rate, 1_000.0);
        assert_eq!(stats.throttle()["t"].last_error, None);
    }

    /// The bounds alerts compare against (`firestream_throttle_max_level`,
    /// `firestream_throttle_critical_lag_records`) come from the configuration, for the
    /// topics known at start and those that join later, and survive samples.
    #[test]
    fn the_status_carries_the_configured_bounds() {
        let stats = Arc::new(Stats::default());
        let t: Arc<str> = Arc::from("t");
        let config = ThrottleConfig {
            max_level: 7,
            critical_lag: 900,
            ..config()
        };
        let throttle = Throttle::new(config, std::slice::from_ref(&t), stats.clone());
        throttle.watch(&Arc::from("later"));
        throttle.record(&t, lag(2_000));
        for topic in ["t", "later"] {
            let status = &stats.throttle()[topic];
            assert_eq!((status.max_level, status.critical_lag), (7, 900), "{topic}");
        }
    }

    #[tokio::test]
    async fn only_bulk_records_wait_for_tokens() {
        let stats = Arc::new(Stats::default());
        let t: Arc<str> = Arc::from("t");
        let throttle = Throttle::new(config(), std::slice::from_ref(&t), stats);
        for _ in 0..5 {
            throttle.record(&t, lag(10_000));
        }
        // Level 5: 1000 / 32 < 50, so min_rate 50/s; the bucket holds 5 tokens (0.1 s).
        assert_eq!(throttle.stats.throttle()["t"].rate, 50.0);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let critical: Vec<Message> = (0..500)
            .map(|_| message("t", Some(Priority::Critical)))
            .chain((0..500).map(|_| message("t", None)))
            .collect();
        throttle.admit(&critical, &stop).await;
        // At 50/s these 1 000 would take 20 s.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "critical records and dead letters never wait"
        );
        // 5 saved + 20 more bulk records: 20 / 50 s = 0.4 s at least.
        let bulk: Vec<Message> = (0..25).map(|_| message("t", Some(Priority::Low))).collect();
        throttle.admit(&bulk, &stop).await;
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        // Shutdown cuts a wait short: 500 more would take 10 s.
        stop.cancel();
        let again = Instant::now();
        let many: Vec<Message> = (0..500)
            .map(|_| message("t", Some(Priority::Low)))
            .collect();
        throttle.admit(&many, &stop).await;
        assert!(again.elapsed() < Duration::from_secs(2));
    }
}
