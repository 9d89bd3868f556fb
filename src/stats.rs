//! Counters every component moves, so each record's fate is accounted for: delivered,
//! deduplicated, or in the DLQ. The ingest summary and the HTTP API read them, and
//! [`crate::metrics`] exports them to Prometheus at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::dlq::Stage;
use crate::metrics::LatencyHistogram;
use crate::record::Priority;

/// Per-stream counters.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Rows the parser saw, valid or not.
    pub rows: AtomicU64,
    /// Valid records produced.
    pub records: AtomicU64,
    pub duplicates: AtomicU64,
    /// Rows that failed validation (sent to the DLQ).
    pub invalid: AtomicU64,
    /// Records handed to the queue.
    pub enqueued: AtomicU64,
    /// Of those, records the queue dropped (overflow `drop_oldest` / `drop_newest`); each is
    /// a DLQ record with `stage: queue`.
    pub dropped: AtomicU64,
    /// Payloads (files, responses) that could not be read or parsed at all.
    pub payload_errors: AtomicU64,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// Polls not made: circuit open, or the stream paused by upstream.
    pub polls_skipped: AtomicU64,
    /// Requests answered "nothing new" (304 or a fresh cached response).
    pub unchanged: AtomicU64,
    /// What an operator needs to see about the stream's upstream.
    pub status: Mutex<UpstreamStatus>,
    /// The newest `event_time` among the stream's delivered records: its data freshness.
    pub newest_event: NewestEvent,
    /// How long each poll took (fetch, parse and enqueue), polls skipped not included.
    pub poll_latency: LatencyHistogram,
}

/// The newest event time seen, in ms since the epoch; moved only forwards, without a lock.
#[derive(Debug)]
pub struct NewestEvent(AtomicI64);

impl Default for NewestEvent {
    fn default() -> Self {
        NewestEvent(AtomicI64::new(i64::MIN))
    }
}

impl NewestEvent {
    /// Keeps `ms` if it is newer than what is held.
    pub fn observe(&self, ms: i64) {
        self.0.fetch_max(ms, Ordering::Relaxed);
    }

    /// `None` until a record was delivered.
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&ms| ms != i64::MIN)
    }
}

/// The stream's view of its upstream (DESIGN §5 ApiClient; stream status).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamStatus {
    /// `closed`, `open` or `half_open`; `None` for sources without a breaker (files).
    pub circuit: Option<&'static str>,
    pub consecutive_failures: u32,
    /// The last failed fetch (URLs redacted), and its kind.
    pub last_error: Option<String>,
    pub last_error_kind: Option<&'static str>,
    /// Why the stream is not polling (payment required, budget used up), and until when.
    pub paused: Option<String>,
    pub last_poll: Option<String>,
    pub last_success: Option<String>,
}

/// A point-in-time copy of [`StreamStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamSnapshot {
    pub rows: u64,
    pub records: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub enqueued: u64,
    pub dropped: u64,
    pub payload_errors: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub polls_skipped: u64,
    pub unchanged: u64,
}

impl StreamStats {
    pub fn snapshot(&self) -> StreamSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamSnapshot {
            rows: get(&self.rows),
            records: get(&self.records),
            duplicates: get(&self.duplicates),
            invalid: get(&self.invalid),
            enqueued: get(&self.enqueued),
            dropped: get(&self.dropped),
            payload_errors: get(&self.payload_errors),
            polls_ok: get(&self.polls_ok),
            polls_failed: get(&self.polls_failed),
            polls_skipped: get(&self.polls_skipped),
            unchanged: get(&self.unchanged),
        }
    }

    pub fn status(&self) -> UpstreamStatus {
        self.status.lock().expect("status lock").clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut UpstreamStatus)) {
        f(&mut self.status.lock().expect("status lock"));
    }
}

/// Per-topic delivery counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TopicCounts {
    pub delivered: u64,
    /// Records that failed for good (their dead letters are in the DLQ).
    pub failed: u64,
    /// Records sent again after a retriable error.
    pub retries: u64,
}

/// All counters of one process.
#[derive(Debug, Default)]
pub struct Stats {
    streams: Mutex<BTreeMap<String, Arc<StreamStats>>>,
    topics: Mutex<BTreeMap<String, TopicCounts>>,
    dlq: Mutex<BTreeMap<Stage, u64>>,
    /// Dead letters the sink could not store either: the only way a record is lost, so it is
    /// counted and logged loudly.
    pub dlq_write_failures: AtomicU64,
    /// Dead letters the sink refused that went to the local log's DLQ instead.
    pub dlq_fallback: AtomicU64,
    throttle: Mutex<BTreeMap<String, ThrottleStatus>>,
    /// Enqueue → sink acknowledgement per record, by priority (index = queue lane).
    pub delivery_latency: [LatencyHistogram; 4],
}

/// One topic's lag-driven throttle (DESIGN §5 LagProbe + Throttle), as last evaluated.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ThrottleStatus {
    /// 0 (full rate) to `max_level`.
    pub level: u32,
    /// `throttle.max_level`: exported beside the level so an alert can tell "at the
    /// slowest rate" without knowing the configuration.
    pub max_level: u32,
    /// `throttle.critical_lag`: the average lag from which the level keeps rising; exported
    /// for the same reason.
    pub critical_lag: u64,
    /// Records per second bulk delivery to the topic may send.
    pub rate: f64,
    /// The last sample: max over the consumer groups; `None` before the first.
    pub lag: Option<u64>,
    /// The average over `throttle.window` that sets the level.
    pub average_lag: u64,
    /// Each group's lag in the last sample; `None`: the group has no committed offset here.
    pub groups: BTreeMap<String, Option<u64>>,
    /// Why the last sample failed (the level was left as it was).
    pub last_error: Option<String>,
}

impl Stats {
    pub fn stream(&self, id: &str) -> Arc<StreamStats> {
        self.streams
            .lock()
            .expect("stats lock")
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    pub fn streams(&self) -> BTreeMap<String, StreamSnapshot> {
        self.streams
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.snapshot()))
            .collect()
    }

    /// Every stream's upstream status.
    pub fn upstream(&self) -> BTreeMap<String, UpstreamStatus> {
        self.streams
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.status()))
            .collect()
    }

    pub fn add_delivered(&self, topic: &str, n: u64) {
        self.topics
            .lock()
            .expect("stats lock")
            .entry(topic.to_owned())
            .or_default()
            .delivered += n;
    }

    pub fn add_failed(&self, topic: &str, n: u64) {
        self.topics
            .lock()
            .expect("stats lock")
            .entry(topic.to_owned())
            .or_default()
            .failed += n;
    }

    pub fn add_retries(&self, topic: &str, n: u64) {
        self.topics
            .lock()
            .expect("stats lock")
            .entry(topic.to_owned())
            .or_default()
            .retries += n;
    }

    pub fn topics(&self) -> BTreeMap<String, TopicCounts> {
        self.topics.lock().expect("stats lock").clone()
    }

    pub fn add_dead_letter(&self, stage: Stage) {
        *self
            .dlq
            .lock()
            .expect("stats lock")
            .entry(stage)
            .or_default() += 1;
    }

    pub fn set_throttle(&self, topic: &str, status: ThrottleStatus) {
        self.throttle
            .lock()
            .expect("stats lock")
            .insert(topic.to_owned(), status);
    }

    pub fn update_throttle(&self, topic: &str, f: impl FnOnce(&mut ThrottleStatus)) {
        f(self
            .throttle
            .lock()
            .expect("stats lock")
            .entry(topic.to_owned())
            .or_default());
    }

    /// Each throttled topic's level, rate and lag (empty when the throttle is off).
    pub fn throttle(&self) -> BTreeMap<String, ThrottleStatus> {
        self.throttle.lock().expect("stats lock").clone()
    }

    /// Records `elapsed` from enqueue to acknowledgement for a record of `priority`.
    pub fn delivered_after(&self, priority: Priority, elapsed: std::time::Duration) {
        self.delivery_latency[priority.lane()].observe(elapsed);
    }

    pub fn dead_letters(&self) -> BTreeMap<Stage, u64> {
        self.dlq.lock().expect("stats lock").clone()
    }
}
