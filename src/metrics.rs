//! Prometheus metrics (DESIGN §9), served at `GET /metrics` by the HTTP API.
//!
//! The counters live where the work happens ([`Stats`], the [`Queue`], the per-host
//! [`ApiClients`], the [`Control`]led streams); this module keeps no second set to keep in
//! step. A [`Collector`] reads them at scrape time and writes them as `firestream_*`
//! families. Only the two latency histograms are recorded at the event (a distribution
//! cannot be rebuilt from a total): [`LatencyHistogram`], held by [`Stats`].
//!
//! The client is `prometheus-client`, the Prometheus project's own Rust client: maintained
//! with the exposition formats, it writes both OpenMetrics text and the classic 0.0.4
//! text format (chosen by the scraper's `Accept` header), escapes label values, and its
//! [`Collector`] trait is made for exporting state that already exists, as here.
//!
//! Label values are bounded by configuration: stream ids, source types, topics, consumer
//! groups, upstream hosts (host and port only), priorities, stages and outcomes. Never a
//! record id, a URL or an error text.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::control::{Control, StreamState};
use crate::dlq::Stage;
use crate::http::ApiClients;
use crate::queue::Queue;
use crate::record::Priority;
use crate::sinks::Sink;
use crate::stats::Stats;

/// Bucket bounds in seconds shared by both histograms: 1 ms (a local-log write) to 10 min
/// (a poll of a large file behind a full queue, a delivery through many retries).
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// A latency histogram in seconds. Observing costs one uncontended lock and no allocation.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Histogram::new(LATENCY_BUCKETS))
    }
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// How many were observed.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.count()
    }

    /// Their total in seconds.
    #[cfg(test)]
    pub fn sum_seconds(&self) -> f64 {
        self.0.sum()
    }
}

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text: what Prometheus asks for first.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4: for anything else (curl, older scrapers).
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it, else the classic text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// What the metrics read, besides the streams' [`Control`]: handed out by
/// [`crate::manager::StreamManager::telemetry`].
#[derive(Clone)]
pub struct Telemetry {
    pub stats: Arc<Stats>,
    pub queue: Arc<Queue>,
    pub clients: Arc<ApiClients>,
    pub sink: Arc<dyn Sink>,
    /// When the service started: the start time and uptime gauges.
    pub started: SystemTime,
}

/// The registry `/metrics` renders.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(telemetry: Telemetry, control: Arc<Control>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot { telemetry, control }));
        Metrics { registry }
    }

    /// The page for one scrape.
    pub fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut page = String::with_capacity(16 * 1024);
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut page, &self.registry)?
            }
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut page, &self.registry)?
            }
        }
        Ok(page)
    }
}

/// Reads every source of truth at scrape time.
struct Snapshot {
    telemetry: Telemetry,
    control: Arc<Control>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

type Encoded = std::result::Result<(), std::fmt::Error>;

/// One family of constant samples.
fn family<S: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (S, M)>,
) -> Encoded {
    let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, u64)>,
) -> Encoded {
    let samples = samples
        .into_iter()
        .map(|(labels, v)| (labels, ConstCounter::new(v)));
    family(encoder, name, help, None, MetricType::Counter, samples)
}

fn gauges<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (S, f64)>,
) -> Encoded {
    let samples = samples
        .into_iter()
        .map(|(labels, v)| (labels, ConstGauge::new(v)));
    family(encoder, name, help, unit, MetricType::Gauge, samples)
}

/// A gauge without labels.
fn scalar(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: f64,
) -> Encoded {
    let family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

/// A counter without labels.
fn total(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Encoded {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

fn seconds_since_epoch(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An RFC 3339 time of the stream status, in seconds since the epoch.
fn status_time(text: Option<&str>) -> Option<f64> {
    let time = chrono::DateTime::parse_from_rfc3339(text?).ok()?;
    Some(time.timestamp_millis() as f64 / 1000.0)
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

const CIRCUIT_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Encoded {
        let e = &mut encoder;
        self.process(e)?;
        self.streams(e)?;
        self.queue(e)?;
        self.delivery(e)?;
        self.throttle(e)?;
        self.upstream(e)
    }
}

impl Snapshot {
    fn process(&self, e: &mut DescriptorEncoder) -> Encoded {
        let t = &self.telemetry;
        let family = e.encode_descriptor(
            "firestream_build",
            "The running build: its version.",
            None,
            MetricType::Info,
        )?;
        let mut family = family;
        family.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        scalar(
            e,
            "firestream_start_time",
            "When the service started, in seconds since the Unix epoch.",
            Some(Unit::Seconds),
            seconds_since_epoch(t.started),
        )?;
        scalar(
            e,
            "firestream_uptime",
            "Seconds since the service started.",
            Some(Unit::Seconds),
            SystemTime::now()
                .duration_since(t.started)
                .map_or(0.0, |d| d.as_secs_f64()),
        )?;
        let readiness = t.sink.readiness();
        gauges(
            e,
            "firestream_sink_ready",
            "1 while the sink can deliver (what /ready reports), else 0.",
            None,
            [([("sink", t.sink.name())], flag(readiness.ready))],
        )?;
        total(
            e,
            "firestream_log_damaged_lines",
            "Lines of the local log found not to be records (skipped by every reader, kept on disk).",
            crate::sinks::log::damaged_lines(),
        )
    }

    fn streams(&self, e: &mut DescriptorEncoder) -> Encoded {
        let stats = &self.telemetry.stats;
        let views = self.control.views();
        let rows: Vec<_> = views
            .iter()
            .map(|v| {
                let labels = [
                    ("stream", v.id.as_str()),
                    ("source_type", v.source_type.as_str()),
                ];
                (labels, v, stats.stream(&v.id))
            })
            .collect();
        type Pick = fn(&crate::stats::StreamSnapshot) -> u64;
        let per_stream: [(&str, &str, Pick); 7] = [
            (
                "firestream_stream_rows_fetched",
                "Rows the stream's parser read, valid or not (records fetched).",
                |c| c.rows,
            ),
            (
                "firestream_stream_records_emitted",
                "Valid records the parser produced.",
                |c| c.records,
            ),
            (
                "firestream_stream_records_deduplicated",
                "Records already seen within the dedupe window (or older than what upstream gave before): counted, not sent.",
                |c| c.duplicates,
            ),
            (
                "firestream_stream_records_invalid",
                "Rows that failed validation; each is a dead letter (stage validate).",
                |c| c.invalid,
            ),
            (
                "firestream_stream_records_enqueued",
                "Records handed to the priority queue.",
                |c| c.enqueued,
            ),
            (
                "firestream_stream_records_dropped",
                "Queued records an overflow policy dropped; each is a dead letter (stage queue).",
                |c| c.dropped,
            ),
            (
                "firestream_stream_payload_errors",
                "Payloads (files, responses) that could not be fetched, read or parsed at all.",
                |c| c.payload_errors,
            ),
        ];
        for (name, help, pick) in per_stream {
            counters(
                e,
                name,
                help,
                rows.iter().map(|(l, v, _)| (*l, pick(&v.counters))),
            )?;
        }
        counters(
            e,
            "firestream_stream_polls",
            "Polls by outcome: ok, failed (a payload failed), skipped (circuit open or paused by upstream).",
            rows.iter().flat_map(|(l, v, _)| {
                let c = &v.counters;
                [
                    ("ok", c.polls_ok),
                    ("failed", c.polls_failed),
                    ("skipped", c.polls_skipped),
                ]
                .map(|(outcome, n)| ((*l, [("outcome", outcome)]), n))
            }),
        )?;
        counters(
            e,
            "firestream_stream_unchanged_responses",
            "Requests upstream answered with nothing new (304 Not Modified or a fresh cached response).",
            rows.iter().map(|(l, v, _)| (*l, v.counters.unchanged)),
        )?;
        gauges(
            e,
            "firestream_stream_last_poll_timestamp",
            "When the stream last polled, in seconds since the Unix epoch.",
            Some(Unit::Seconds),
            rows.iter()
                .filter_map(|(l, v, _)| Some((*l, status_time(v.upstream.last_poll.as_deref())?))),
        )?;
        gauges(
            e,
            "firestream_stream_last_success_timestamp",
            "When a poll of the stream last succeeded, in seconds since the Unix epoch.",
            Some(Unit::Seconds),
            rows.iter().filter_map(|(l, v, _)| {
                Some((*l, status_time(v.upstream.last_success.as_deref())?))
            }),
        )?;
        gauges(
            e,
            "firestream_stream_circuit_state",
            "The stream's circuit breaker: 1 for its current state (closed, open, half_open), 0 for the others. Absent for streams without one (files).",
            None,
            rows.iter().flat_map(|(l, v, _)| {
                let current = v.upstream.circuit;
                CIRCUIT_STATES
                    .into_iter()
                    .filter(move |_| current.is_some())
                    .map(move |state| ((*l, [("state", state)]), flag(current == Some(state))))
            }),
        )?;
        gauges(
            e,
            "firestream_stream_consecutive_failures",
            "Failed polls in a row (what opens the circuit).",
            None,
            rows.iter()
                .filter(|(_, v, _)| v.upstream.circuit.is_some())
                .map(|(l, v, _)| (*l, f64::from(v.upstream.consecutive_failures))),
        )?;
        gauges(
            e,
            "firestream_stream_paused",
            "1 while upstream has paused the stream (payment required, budget used up).",
            None,
            rows.iter()
                .map(|(l, v, _)| (*l, flag(v.upstream.paused.is_some()))),
        )?;
        gauges(
            e,
            "firestream_stream_state",
            "1 for the stream's current state (recovering, running, stopping, stopped, finished, failed), 0 for the others.",
            None,
            rows.iter().flat_map(|(l, v, _)| {
                StreamState::ALL
                    .into_iter()
                    .map(move |s| ((*l, [("state", s.as_str())]), flag(v.state == s)))
            }),
        )?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        gauges(
            e,
            "firestream_stream_newest_event_timestamp",
            "The newest event_time among the stream's delivered records, in seconds since the Unix epoch.",
            Some(Unit::Seconds),
            rows.iter()
                .filter_map(|(l, _, s)| Some((*l, s.newest_event.get()? as f64 / 1000.0))),
        )?;
        gauges(
            e,
            "firestream_stream_data_age",
            "Data freshness: seconds from the newest delivered event_time to now (negative when upstream's clock is ahead).",
            Some(Unit::Seconds),
            rows.iter().filter_map(|(l, _, s)| {
                Some((*l, (now_ms - s.newest_event.get()?) as f64 / 1000.0))
            }),
        )?;
        family(
            e,
            "firestream_stream_poll_duration",
            "How long each poll took: fetch, parse, dedupe and enqueue (skipped polls not included).",
            Some(Unit::Seconds),
            MetricType::Histogram,
            rows.iter().map(|(l, _, s)| (*l, s.poll_latency.0.clone())),
        )
    }

    fn queue(&self, e: &mut DescriptorEncoder) -> Encoded {
        let queue = &self.telemetry.queue;
        let depth = queue.depth();
        let settings = queue.settings();
        gauges(
            e,
            "firestream_queue_records",
            "Records waiting in the priority queue, by priority.",
            None,
            Priority::ALL.map(|p| {
                (
                    [("priority", p.as_str())],
                    depth.by_priority[p.lane()] as f64,
                )
            }),
        )?;
        gauges(
            e,
            "firestream_queue",
            "Estimated size of the records waiting in the queue, by priority.",
            Some(Unit::Bytes),
            Priority::ALL.map(|p| {
                (
                    [("priority", p.as_str())],
                    depth.bytes_by_priority[p.lane()] as f64,
                )
            }),
        )?;
        scalar(
            e,
            "firestream_queue_dead_letters",
            "Dead letters waiting in the queue for the DLQ writer.",
            None,
            depth.dead_letters as f64,
        )?;
        scalar(
            e,
            "firestream_queue_capacity_records",
            "queue.max_records: the bound shared by the high, normal and low lanes.",
            None,
            settings.max_records as f64,
        )?;
        scalar(
            e,
            "firestream_queue_capacity",
            "queue.max_bytes: the estimated-size bound of the high, normal and low lanes.",
            Some(Unit::Bytes),
            settings.max_bytes as f64,
        )
    }

    fn delivery(&self, e: &mut DescriptorEncoder) -> Encoded {
        let stats = &self.telemetry.stats;
        let topics = stats.topics();
        counters(
            e,
            "firestream_delivery_records",
            "Records by topic and outcome: delivered (acknowledged by the sink; the DLQ topic counts stored dead letters) or failed (for good: a dead letter).",
            topics.iter().flat_map(|(topic, c)| {
                [("delivered", c.delivered), ("failed", c.failed)]
                    .map(|(outcome, n)| ([("topic", topic.as_str()), ("outcome", outcome)], n))
            }),
        )?;
        counters(
            e,
            "firestream_delivery_retries",
            "Records sent again after a retriable error, by topic.",
            topics
                .iter()
                .map(|(topic, c)| ([("topic", topic.as_str())], c.retries)),
        )?;
        family(
            e,
            "firestream_delivery_latency",
            "Time from entering the queue to the sink's acknowledgement, by priority (retries included).",
            Some(Unit::Seconds),
            MetricType::Histogram,
            Priority::ALL.map(|p| {
                (
                    [("priority", p.as_str())],
                    stats.delivery_latency[p.lane()].0.clone(),
                )
            }),
        )?;
        let dead = stats.dead_letters();
        counters(
            e,
            "firestream_dlq_records",
            "Dead letters by the stage where the record failed (fetch, parse, validate, queue, deliver, shutdown).",
            Stage::ALL.map(|s| ([("stage", s.as_str())], dead.get(&s).copied().unwrap_or(0))),
        )?;
        total(
            e,
            "firestream_dlq_write_failures",
            "Dead letters no sink would store: the only way a record is lost (each is in the error log).",
            stats
                .dlq_write_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        total(
            e,
            "firestream_dlq_fallback_records",
            "Dead letters the sink refused that went to the local log's DLQ instead.",
            stats
                .dlq_fallback
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn throttle(&self, e: &mut DescriptorEncoder) -> Encoded {
        let throttle = self.telemetry.stats.throttle();
        gauges(
            e,
            "firestream_throttle_level",
            "The lag-driven throttle level per topic: 0 is full rate, up to throttle.max_level.",
            None,
            throttle
                .iter()
                .map(|(topic, t)| ([("topic", topic.as_str())], f64::from(t.level))),
        )?;
        gauges(
            e,
            "firestream_throttle_max_level",
            "throttle.max_level: the level at which bulk delivery to the topic is slowest.",
            None,
            throttle
                .iter()
                .map(|(topic, t)| ([("topic", topic.as_str())], f64::from(t.max_level))),
        )?;
        gauges(
            e,
            "firestream_throttle_critical_lag_records",
            "throttle.critical_lag: the average lag from which the topic's level keeps rising.",
            None,
            throttle
                .iter()
                .map(|(topic, t)| ([("topic", topic.as_str())], t.critical_lag as f64)),
        )?;
        gauges(
            e,
            "firestream_throttle_rate_records_per_second",
            "Records per second bulk delivery to the topic may send at its level (critical records bypass it).",
            None,
            throttle
                .iter()
                .map(|(topic, t)| ([("topic", topic.as_str())], t.rate)),
        )?;
        gauges(
            e,
            "firestream_throttle_lag_records",
            "The topic's last consumer-lag sample: the maximum over its consumer groups.",
            None,
            throttle
                .iter()
                .filter_map(|(topic, t)| Some(([("topic", topic.as_str())], t.lag? as f64))),
        )?;
        gauges(
            e,
            "firestream_throttle_average_lag_records",
            "The topic's lag averaged over throttle.window: what sets the level.",
            None,
            throttle
                .iter()
                .map(|(topic, t)| ([("topic", topic.as_str())], t.average_lag as f64)),
        )?;
        gauges(
            e,
            "firestream_throttle_consumer_lag_records",
            "Each consumer group's lag on the topic in the last sample (absent while the group has no committed offset).",
            None,
            throttle.iter().flat_map(|(topic, t)| {
                t.groups.iter().filter_map(move |(group, lag)| {
                    Some((
                        [("topic", topic.as_str()), ("group", group.as_str())],
                        (*lag)? as f64,
                    ))
                })
            }),
        )
    }

    fn upstream(&self, e: &mut DescriptorEncoder) -> Encoded {
        let hosts = self.telemetry.clients.snapshots();
        let host = |h: &crate::http::HostSnapshot| [("host", h.host.clone())];
        counters(
            e,
            "firestream_upstream_requests",
            "Requests sent to the upstream host (retries included).",
            hosts.iter().map(|h| (host(h), h.requests)),
        )?;
        counters(
            e,
            "firestream_upstream_responses",
            "Answers from the upstream host by status class (2xx, 3xx, 4xx, 5xx), or transport_error when none came.",
            hosts.iter().flat_map(|h| {
                [
                    ("2xx", h.responses_2xx),
                    ("3xx", h.responses_3xx),
                    ("4xx", h.responses_4xx),
                    ("5xx", h.responses_5xx),
                    ("transport_error", h.transport_errors),
                ]
                .map(|(outcome, n)| ((host(h), [("outcome", outcome)]), n))
            }),
        )?;
        counters(
            e,
            "firestream_upstream_retries",
            "Requests to the host sent again after a retriable failure.",
            hosts.iter().map(|h| (host(h), h.retries)),
        )?;
        counters(
            e,
            "firestream_upstream_not_modified",
            "304 Not Modified answers from the host.",
            hosts.iter().map(|h| (host(h), h.not_modified)),
        )?;
        counters(
            e,
            "firestream_upstream_cache_hits",
            "Requests answered from the response cache instead of the host.",
            hosts.iter().map(|h| (host(h), h.cache_hits)),
        )?;
        counters(
            e,
            "firestream_upstream_rate_limited_waits",
            "Times a request waited for the host's rate limit, budget or Retry-After pause.",
            hosts.iter().map(|h| (host(h), h.rate_limited_waits)),
        )?;
        gauges(
            e,
            "firestream_upstream_budget_remaining",
            "Requests left in the host's budget window (hosts with a budget, such as FIRMS).",
            None,
            hosts
                .iter()
                .filter_map(|h| Some((host(h), f64::from(h.budget_remaining?)))),
        )?;
        gauges(
            e,
            "firestream_upstream_pause_remaining",
            "Seconds until the host's Retry-After / 429 pause ends (0 when none).",
            Some(Unit::Seconds),
            hosts
                .iter()
                .map(|h| (host(h), h.paused_for_s.unwrap_or(0) as f64)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::config::Config;
    use crate::stats::ThrottleStatus;

    /// A page parsed back with a Prometheus text-format parser.
    struct Page(prometheus_parse::Scrape);

    impl Page {
        fn parse(text: &str) -> Page {
            let lines = text.lines().map(|l| Ok(l.to_owned()));
            Page(prometheus_parse::Scrape::parse(lines).expect("a text-format page"))
        }

        /// The value of the one sample of `name` whose labels include `labels`.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let found: Vec<_> = self
                .0
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
                .collect();
            assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
            found.first().map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
        }
    }

    /// A manager's real parts over a log sink, and a [`Control`] over one configured
    /// stream that is never started (the test moves the counters itself).
    fn metrics(dir: &Path) -> (Metrics, Telemetry) {
        let yaml = format!(
            "sink: {{type: log, log: {{dir: \"{}\"}}}}\n\
             sources:\n  firms_ca: {{type: nasa_firms, interval: 1h, paths: [\"x/*.csv\"]}}\n",
            dir.join("log").display()
        );
        let config = Config::parse(&yaml, &dir.join("c.yaml")).unwrap();
        let sink = Arc::new(crate::sinks::log::LogSink::open(&config).unwrap());
        let router = crate::router::Router::new(&config);
        let control_config = config.clone();
        let manager = crate::manager::StreamManager::with_sink(config, sink).unwrap();
        let telemetry = manager.telemetry();
        let control = Control::new(
            &control_config,
            Box::new(|id: &str, _: &crate::config::SourceConfig| {
                Err(format!("{id} is not started in this test"))
            }),
            Box::new(|_: &str, _: &crate::config::SourceConfig| {
                unreachable!("nothing is pushed in this test")
            }),
            None,
            telemetry.stats.clone(),
            router,
        );
        (
            Metrics::new(telemetry.clone(), Arc::new(control)),
            telemetry,
        )
    }

    #[tokio::test]
    async fn the_page_exports_what_the_components_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, t) = metrics(dir.path());
        let stream = t.stats.stream("firms_ca");
        stream.rows.fetch_add(7, Relaxed);
        stream.records.fetch_add(6, Relaxed);
        stream.invalid.fetch_add(1, Relaxed);
        stream.duplicates.fetch_add(2, Relaxed);
        stream.enqueued.fetch_add(4, Relaxed);
        stream.polls_ok.fetch_add(3, Relaxed);
        stream.polls_skipped.fetch_add(1, Relaxed);
        stream.update_status(|s| {
            s.circuit = Some("half_open");
            s.last_success = Some("2026-12-03T19:47:13Z".into());
        });
        stream.poll_latency.observe(Duration::from_millis(300));
        let event = chrono::Utc::now() - chrono::Duration::seconds(90);
        stream.newest_event.observe(event.timestamp_millis());
        t.stats.add_delivered("wildfire-nasa-firms", 4);
        t.stats.add_failed("wildfire-nasa-firms", 1);
        t.stats.add_retries("wildfire-nasa-firms", 2);
        t.stats.add_dead_letter(Stage::Validate);
        t.stats
            .delivered_after(Priority::High, Duration::from_millis(40));
        t.stats.set_throttle(
            "wildfire-nasa-firms",
            ThrottleStatus {
                level: 2,
                max_level: 5,
                critical_lag: 5_000,
                rate: 22.5,
                lag: Some(1_500),
                average_lag: 1_200,
                groups: BTreeMap::from([
                    ("fire-analytics".into(), Some(1_500)),
                    ("idle".into(), None),
                ]),
                last_error: None,
            },
        );
        t.queue
            .push(crate::queue::tests::record(1, Priority::Low))
            .await
            .unwrap();
        // A URL with a key in its path: only its host may become a label.
        let url = url::Url::parse(
            "https://firms.modaps.eosdis.nasa.gov/api/area/csv/SECRETKEY123/VIIRS_SNPP_NRT/world/1",
        )
        .unwrap();
        t.clients.for_url(&url);

        let text = metrics.render(Format::Text).unwrap();
        let page = Page::parse(&text);
        let s = [("stream", "firms_ca"), ("source_type", "nasa_firms")];
        let v = |name: &str, extra: &[(&str, &str)]| {
            let labels: Vec<_> = s.iter().chain(extra).copied().collect();
            page.value(name, &labels)
        };
        assert_eq!(v("firestream_stream_rows_fetched_total", &[]), Some(7.0));
        assert_eq!(v("firestream_stream_records_emitted_total", &[]), Some(6.0));
        assert_eq!(v("firestream_stream_records_invalid_total", &[]), Some(1.0));
        assert_eq!(
            v("firestream_stream_records_deduplicated_total", &[]),
            Some(2.0)
        );
        assert_eq!(
            v("firestream_stream_records_enqueued_total", &[]),
            Some(4.0)
        );
        assert_eq!(
            v("firestream_stream_polls_total", &[("outcome", "ok")]),
            Some(3.0)
        );
        assert_eq!(
            v("firestream_stream_polls_total", &[("outcome", "skipped")]),
            Some(1.0)
        );
        assert_eq!(
            v("firestream_stream_polls_total", &[("outcome", "failed")]),
            Some(0.0)
        );
        let half_open = v("firestream_stream_circuit_state", &[("state", "half_open")]);
        assert_eq!(half_open, Some(1.0));
        assert_eq!(
            v("firestream_stream_circuit_state", &[("state", "open")]),
            Some(0.0)
        );
        assert_eq!(
            v("firestream_stream_state", &[("state", "stopped")]),
            Some(1.0)
        );
        assert_eq!(
            v("firestream_stream_state", &[("state", "running")]),
            Some(0.0)
        );
        assert_eq!(
            v("firestream_stream_last_success_timestamp_seconds", &[]),
            Some(1_796_327_233.0)
        );
        let age = v("firestream_stream_data_age_seconds", &[]).unwrap();
        assert!((90.0..100.0).contains(&age), "{age}");
        assert_eq!(
            v("firestream_stream_poll_duration_seconds_count", &[]),
            Some(1.0)
        );
        assert_eq!(
            v("firestream_stream_poll_duration_seconds_sum", &[]),
            Some(0.3)
        );

        assert_eq!(
            page.value("firestream_queue_records", &[("priority", "low")]),
            Some(1.0)
        );
        assert_eq!(
            page.value("firestream_queue_records", &[("priority", "high")]),
            Some(0.0)
        );
        assert!(
            page.value("firestream_queue_bytes", &[("priority", "low")])
                .unwrap()
                > 300.0
        );
        assert_eq!(
            page.value("firestream_queue_capacity_records", &[]),
            Some(100_000.0)
        );

        let topic = ("topic", "wildfire-nasa-firms");
        let delivered = page.value(
            "firestream_delivery_records_total",
            &[topic, ("outcome", "delivered")],
        );
        assert_eq!(delivered, Some(4.0));
        let failed = page.value(
            "firestream_delivery_records_total",
            &[topic, ("outcome", "failed")],
        );
        assert_eq!(failed, Some(1.0));
        assert_eq!(
            page.value("firestream_delivery_retries_total", &[topic]),
            Some(2.0)
        );
        let high = [("priority", "high")];
        assert_eq!(
            page.value("firestream_delivery_latency_seconds_count", &high),
            Some(1.0)
        );
        let critical = [("priority", "critical")];
        assert_eq!(
            page.value("firestream_delivery_latency_seconds_count", &critical),
            Some(0.0)
        );
        for stage in Stage::ALL {
            let n = page.value("firestream_dlq_records_total", &[("stage", stage.as_str())]);
            assert_eq!(
                n,
                Some(if stage == Stage::Validate { 1.0 } else { 0.0 }),
                "{stage:?}"
            );
        }

        assert_eq!(page.value("firestream_throttle_level", &[topic]), Some(2.0));
        assert_eq!(
            page.value("firestream_throttle_max_level", &[topic]),
            Some(5.0)
        );
        assert_eq!(
            page.value("firestream_throttle_critical_lag_records", &[topic]),
            Some(5_000.0)
        );
        assert_eq!(
            page.value("firestream_throttle_rate_records_per_second", &[topic]),
            Some(22.5)
        );
        assert_eq!(
            page.value("firestream_throttle_lag_records", &[topic]),
            Some(1_500.0)
        );
        let group = ("group", "fire-analytics");
        assert_eq!(
            page.value("firestream_throttle_consumer_lag_records", &[topic, group]),
            Some(1_500.0)
        );
        // A group without a committed offset has no lag to show.
        assert_eq!(
            page.value(
                "firestream_throttle_consumer_lag_records",
                &[topic, ("group", "idle")]
            ),
            None
        );

        let host = [("host", "firms.modaps.eosdis.nasa.gov")];
        assert_eq!(
            page.value("firestream_upstream_requests_total", &host),
            Some(0.0)
        );
        assert!(!text.contains("SECRETKEY123"), "{text}");
        assert!(!text.contains("https://"), "{text}");
        assert_eq!(
            page.value(
                "firestream_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
        assert!(page.value("firestream_uptime_seconds", &[]).unwrap() >= 0.0);
        assert_eq!(
            page.value("firestream_sink_ready", &[("sink", "log")]),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn the_openmetrics_page_ends_with_eof_and_names_counters_with_total() {
        let dir = tempfile::tempdir().unwrap();
        let (metrics, t) = metrics(dir.path());
        t.stats.stream("firms_ca").rows.fetch_add(5, Relaxed);
        let page = metrics.render(Format::OpenMetrics).unwrap();
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert!(
            page.contains("# TYPE firestream_stream_rows_fetched counter\n"),
            "{page}"
        );
        assert!(
            page.contains(
                "firestream_stream_rows_fetched_total{stream=\"firms_ca\",source_type=\"nasa_firms\"} 5\n"
            ),
            "{page}"
        );
        assert!(
            page.contains("# UNIT firestream_stream_data_age_seconds seconds\n"),
            "{page}"
        );
    }

    #[test]
    fn the_scraper_chooses_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn a_latency_lands_in_its_bucket_in_seconds() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(2));
        let mut registry = Registry::default();
        registry.register_with_unit("t", "t", Unit::Seconds, h.0.clone());
        let mut page = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut page, &registry).unwrap();
        assert!(
            page.contains("t_seconds_bucket{le=\"0.025\"} 0\n"),
            "{page}"
        );
        assert!(page.contains("t_seconds_bucket{le=\"0.05\"} 1\n"), "{page}");
        assert!(page.contains("t_seconds_bucket{le=\"2.5\"} 2\n"), "{page}");
        assert!(page.contains("t_seconds_count 2\n"), "{page}");
        assert!(page.contains("t_seconds_sum 2.03"), "{page}");
    }
}
