//! Queue overflow policies end to end: `firestream run` with a polled FIRMS source (a local
//! server replaying a real 4,000-row capture), a tiny queue, and the real local log made slow,
//! so the queue overflows. Whatever the policy, every record offered to the queue ends in the
//! topic or in the DLQ (`stage: queue`), exactly once.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::replay::{Replay, Reply};
use firestream::manager::{Report, StreamManager};
use firestream::sinks::log::LogSink;
use firestream::sinks::{Message, Pending, Readiness, Sink, SinkError};
use tokio_util::sync::CancellationToken;

const CAPTURE: &str = "firms/MODIS_C6_South_America_24h__2020-10-03__first4000.csv";
const KEY: &str = "f1e2d3c4b5a6f1e2d3c4b5a6f1e2d3c4";
const PATH: &str = "/api/area/csv/f1e2d3c4b5a6f1e2d3c4b5a6f1e2d3c4/MODIS_NRT/-180,-90,180,90/1";

/// The real log sink, taking `delay` before it accepts each batch: a sink slower than the
/// source, so the queue fills.
struct SlowLog {
    inner: LogSink,
    delay: Duration,
}

#[async_trait]
impl Sink for SlowLog {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn submit(&self, batch: Vec<Message>) -> Pending {
        tokio::time::sleep(self.delay).await;
        self.inner.submit(batch).await
    }

    fn readiness(&self) -> Readiness {
        self.inner.readiness()
    }

    fn abort_pending(&self) {
        self.inner.abort_pending()
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.inner.close().await
    }
}

struct Outcome {
    report: Report,
    offered: u64,
    delivered: Vec<String>,
    dropped: Vec<String>,
}

/// One poll of the capture through a 50-record queue (plus `queue_yaml` settings, and
/// `source_yaml` lines for the source), then a stop.
async fn run(queue_yaml: &str, source_yaml: &str) -> Outcome {
    let server = Replay::start().await;
    server.script(
        PATH,
        vec![Reply::csv(std::fs::read(common::real(CAPTURE)).unwrap())],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        &format!(
            "queue: {{max_records: 50, critical_reserve: 1{queue_yaml}}}\nsources:\n  firms:\n    type: nasa_firms\n    interval: 1h\n    url: {}\n    map_key: {KEY}\n    product: MODIS_NRT\n    bbox: [-180, -90, 180, 90]\n    day_range: 1\n    retries: 0\n{source_yaml}",
            server.base
        ),
    );
    let sink = SlowLog {
        inner: LogSink::open(&config).unwrap(),
        delay: Duration::from_millis(20),
    };
    let manager = StreamManager::with_sink(config, Arc::new(sink)).unwrap();
    let stats = manager.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(manager.run(stop.clone()));
    let start = Instant::now();
    while stats.stream("firms").snapshot().polls_ok == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the poll never finished: {:?}",
            stats.streams()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let report = running.await.unwrap().expect("run ends cleanly");
    let log = dir.path().join("log");
    let delivered = common::envelopes(&log, "wildfire-nasa-firms")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let dead = common::envelopes(&log, "firestream-dlq");
    let dropped = dead
        .iter()
        .map(|d| {
            assert_eq!(d["stage"], "queue", "{d}");
            assert_eq!(d["error_kind"], "queue_full", "{d}");
            assert_eq!(d["source_id"], "firms");
            assert_eq!(d["topic"], "wildfire-nasa-firms");
            assert_eq!(d["attempts"], 0);
            d["record"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    Outcome {
        offered: report.streams["firms"].enqueued,
        report,
        delivered,
        dropped,
    }
}

/// offered = delivered + DLQ, and each id exactly once across both.
fn assert_accounted(o: &Outcome) {
    eprintln!(
        "offered {} delivered {} dlq {}",
        o.offered,
        o.delivered.len(),
        o.dropped.len()
    );
    let total = o.delivered.len() + o.dropped.len();
    assert_eq!(o.offered as usize, total);
    let distinct: BTreeSet<&String> = o.delivered.iter().chain(&o.dropped).collect();
    assert_eq!(distinct.len(), total, "an id appears twice");
    let s = o.report.streams["firms"];
    assert_eq!(s.dropped as usize, o.dropped.len());
    let queue_dead = o.report.dead_letters.get("queue").copied().unwrap_or(0);
    assert_eq!(queue_dead as usize, o.dropped.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_puts_every_refused_record_in_the_dlq() {
    let o = run("", "    overflow: drop_newest\n").await;
    assert_accounted(&o);
    assert!(o.offered > 3_000, "{}", o.offered);
    assert!(!o.dropped.is_empty(), "the queue never overflowed");
    assert!(!o.delivered.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_puts_every_evicted_record_in_the_dlq() {
    // The queue-wide default applies to the polled source.
    let o = run(", overflow: drop_oldest", "").await;
    assert_accounted(&o);
    assert!(o.offered > 3_000, "{}", o.offered);
    assert!(!o.dropped.is_empty(), "the queue never overflowed");
    assert!(!o.delivered.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_makes_the_source_wait_and_drops_nothing() {
    let o = run("", "").await;
    assert_accounted(&o);
    assert!(o.dropped.is_empty());
    assert_eq!(o.delivered.len() as u64, o.offered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_continuous_streaming_source_delivers_everything_through_its_buffer() {
    // 4,000 rows through a 150-record buffer into the 50-record queue: the buffer's
    // flushes wait for room (block), and what is held at the end is flushed at stop.
    let o = run(
        "",
        "    mode: continuous_streaming\n    buffer_size: 150\n    buffer_flush_interval: 10s\n",
    )
    .await;
    assert_accounted(&o);
    assert_eq!(o.offered, 4_000);
    assert_eq!(o.delivered.len(), 4_000);
}
