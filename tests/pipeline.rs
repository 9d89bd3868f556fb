//! The pipeline as a whole: dedupe, routing (topic, key, partition, headers, timestamp),
//! modes and priorities, backpressure, and records on disk while a stream runs.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::DateTime;
use common::{envelopes, real, topic};
use firestream::manager::{IngestTarget, StreamManager};
use firestream::sinks::partition::partition_for_key;
use firestream::sources::SourceType;
use tokio_util::sync::CancellationToken;

const M6: &str = "firms/fire_nrt_M6_157509.csv";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_twice_in_one_ingest_emits_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let file = real(M6);
    let report = common::ingest(
        common::config(dir.path(), ""),
        IngestTarget::SourceType(SourceType::NasaFirms),
        &[file.clone(), file],
    )
    .await;
    let t = report.totals();
    assert_eq!(t.rows, 2 * 5_824);
    assert_eq!(t.records, 2 * 5_824);
    assert_eq!(t.duplicates, 5_824);
    assert_eq!(t.enqueued, 5_824);
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 5_824);
    assert_eq!(
        envelopes(&dir.path().join("log"), "wildfire-nasa-firms").len(),
        5_824
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_partition_headers_and_timestamp_follow_the_envelope() {
    let dir = tempfile::tempdir().unwrap();
    common::ingest(
        common::config(
            dir.path(),
            "topics: {wildfire-nasa-firms: {partitions: 3}}\nrouting: {geohash_key_precision: 3}",
        ),
        IngestTarget::SourceType(SourceType::NasaFirms),
        &[real(M6)],
    )
    .await;
    let lines = topic(&dir.path().join("log"), "wildfire-nasa-firms");
    assert_eq!(lines.len(), 5_824);
    let mut per_partition = [0u64; 3];
    for line in &lines {
        let value = &line["value"];
        let geohash = value["location"]["geohash"].as_str().unwrap();
        let key = line["key"].as_str().unwrap();
        assert_eq!(key, &geohash[..3]);
        let partition = line["partition"].as_u64().unwrap() as u32;
        assert_eq!(partition, partition_for_key(key.as_bytes(), 3));
        // Offsets are dense per partition, in write order.
        assert_eq!(
            line["offset"].as_u64().unwrap(),
            per_partition[partition as usize]
        );
        per_partition[partition as usize] += 1;
        let ingested =
            DateTime::parse_from_rfc3339(value["ingested_at"].as_str().unwrap()).unwrap();
        assert_eq!(
            line["timestamp"].as_i64().unwrap(),
            ingested.timestamp_millis()
        );
        let h = &line["headers"];
        assert_eq!(h["firestream-source-id"], "ingest_nasa_firms");
        assert_eq!(h["firestream-kind"], "fire_detection");
        assert_eq!(h["firestream-schema"], "firestream.record.v1");
        assert_eq!(h["firestream-id"], value["id"]);
        assert_eq!(h["content-type"], "application/json");
    }
    assert!(per_partition.iter().all(|&n| n > 0), "{per_partition:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_as_a_configured_source_uses_its_topic_and_priority() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        r#"
sources:
  firms_override:
    type: nasa_firms
    interval: 10m
    paths: ["never-read/*.csv"]
    topic: fires-by-source
    priority: high
  test_feed:
    type: nasa_firms
    interval: 10m
    paths: ["never-read/*.csv"]
routing:
  mappings: [{match: "test_*", topic: wildfire-test-data}]
"#,
    );
    let file = real("firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv");
    let report = common::ingest(
        config.clone(),
        IngestTarget::Source("firms_override".into()),
        std::slice::from_ref(&file),
    )
    .await;
    assert_eq!(report.topics["fires-by-source"].delivered, 40);
    let stored = envelopes(&dir.path().join("log"), "fires-by-source");
    assert!(
        stored
            .iter()
            .all(|e| e["priority"] == "high" && e["source_id"] == "firms_override")
    );

    let dir2 = tempfile::tempdir().unwrap();
    let mut config2 = config;
    config2.sink.log.dir = dir2.path().join("log");
    let report = common::ingest(config2, IngestTarget::Source("test_feed".into()), &[file]).await;
    assert_eq!(report.topics["wildfire-test-data"].delivered, 40);
    // No source priority: ingest is bulk, so low.
    assert!(
        envelopes(&dir2.path().join("log"), "wildfire-test-data")
            .iter()
            .all(|e| e["priority"] == "low")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = StreamManager::new(common::config(dir.path(), ""))
        .await
        .unwrap()
        .ingest(
            IngestTarget::Source("nope".into()),
            vec![real(M6)],
            CancellationToken::new(),
        )
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("unknown source `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_queue_blocks_the_source_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = common::ingest(
        common::config(dir.path(), "queue: {max_records: 7, critical_reserve: 1}"),
        IngestTarget::SourceType(SourceType::NasaFirms),
        &[real(M6)],
    )
    .await;
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 5_824);
    assert!(report.dead_letters.is_empty());
}

/// Waits until `topic` holds `n` records, failing after a generous bound.
async fn wait_for(log: &Path, name: &str, n: usize) {
    for _ in 0..600 {
        if topic(log, name).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{name} never reached {n} records (has {})",
        topic(log, name).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_streams_write_as_they_go_and_pick_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::copy(
        real("firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv"),
        inbox.join("a.csv"),
    )
    .unwrap();
    std::fs::copy(
        real("noaa/alerts_active_zone_ORZ004__2019-12-20.json"),
        inbox.join("alerts.json"),
    )
    .unwrap();
    let config = common::config(
        dir.path(),
        &format!(
            r#"
sources:
  live_firms:
    type: nasa_firms
    mode: real_time
    interval: 1s
    paths: [{firms}]
  archive:
    type: nasa_firms
    mode: batch
    schedule: {{every: 1h}}
    paths: [{archive}]
  alerts:
    type: nws_alerts
    interval: 1s
    paths: [{alerts}]
"#,
            firms = serde_json::to_string(&inbox.join("*.csv")).unwrap(),
            archive = serde_json::to_string(&real("firms/modis_2000_Colombia.csv")).unwrap(),
            alerts = serde_json::to_string(&inbox.join("*.json")).unwrap(),
        ),
    );
    let log = dir.path().join("log");
    let manager = StreamManager::new(config).await.unwrap();
    let stats = manager.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));

    // Records are on disk while the service runs, not only at shutdown.
    wait_for(&log, "wildfire-nasa-firms", 40 + 1_372).await;
    wait_for(&log, "wildfire-weather-alerts", 1).await;
    // A new file in the polled directory is read on the next poll.
    // Written elsewhere, then renamed into place, as the README advises for polled paths.
    std::fs::copy(real(M6), dir.path().join("b.tmp")).unwrap();
    std::fs::rename(dir.path().join("b.tmp"), inbox.join("b.csv")).unwrap();
    wait_for(&log, "wildfire-nasa-firms", 40 + 1_372 + 5_824).await;
    // A changed file is read again; what was already sent is deduplicated.
    let a = inbox.join("a.csv");
    let mut text = std::fs::read_to_string(&a).unwrap();
    text.push_str("28.5,96.5,330.1,0.45,0.47,2026-10-01,615,N21,VIIRS,h,2.0NRT,290.1,150.5,D\n");
    std::fs::write(dir.path().join("a.tmp"), text).unwrap();
    std::fs::rename(dir.path().join("a.tmp"), &a).unwrap();
    wait_for(&log, "wildfire-nasa-firms", 40 + 1_372 + 5_824 + 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    shutdown.cancel();
    let report = running.await.unwrap().unwrap();
    let stored = envelopes(&log, "wildfire-nasa-firms");
    assert_eq!(
        stored.len(),
        40 + 1_372 + 5_824 + 1,
        "nothing written twice"
    );
    assert_eq!(report.streams["live_firms"].duplicates, 40);
    let live = stats.stream("live_firms").snapshot();
    assert_eq!(live.enqueued, 40 + 5_824 + 1);
    // real_time keeps parser priorities; the new row is high-confidence with FRP ≥ 100.
    let new_row = stored
        .iter()
        .find(|e| e["location"]["lat"] == 28.5)
        .unwrap();
    assert_eq!(new_row["priority"], "high");
    let mut high = 0;
    for e in stored.iter().filter(|e| e["source_id"] == "live_firms") {
        let d = &e["data"];
        let is_high = d["confidence"] == "high" && d["frp_mw"].as_f64().unwrap() >= 100.0;
        high += usize::from(is_high);
        assert_eq!(
            e["priority"],
            if is_high { "high" } else { "normal" },
            "{e}"
        );
    }
    assert!(high > 1, "the M6 file has high-priority detections");
    // batch mode is bulk traffic: low.
    assert!(
        stored
            .iter()
            .filter(|e| e["source_id"] == "archive")
            .all(|e| e["priority"] == "low")
    );
    assert_eq!(
        stored
            .iter()
            .filter(|e| e["source_id"] == "archive")
            .count(),
        1_372
    );
}

/// A sink whose writer crashes: stands in for a bug in a sink, to check the pipeline's
/// reaction, not a product component.
struct CrashingSink;

#[async_trait::async_trait]
impl firestream::sinks::Sink for CrashingSink {
    fn name(&self) -> &'static str {
        "crashing"
    }
    async fn submit(&self, _: Vec<firestream::sinks::Message>) -> firestream::sinks::Pending {
        panic!("writer crashed");
    }
    fn readiness(&self) -> firestream::sinks::Readiness {
        firestream::sinks::Readiness {
            ready: true,
            detail: "crashes on the first batch".into(),
        }
    }
    async fn close(&self) -> Result<(), firestream::sinks::SinkError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_task_ends_the_ingest_with_an_error_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), "queue: {max_records: 10, critical_reserve: 1}");
    let manager = StreamManager::with_sink(config, std::sync::Arc::new(CrashingSink)).unwrap();
    // Liveness bound only: without the supervisor this waits forever on a full queue.
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        manager.ingest(
            IngestTarget::SourceType(SourceType::NasaFirms),
            vec![real(M6)],
            CancellationToken::new(),
        ),
    )
    .await
    .expect("ingest must not hang when delivery dies");
    let err = result.expect_err("ingest reports the failure");
    let text = err.to_string();
    assert!(text.starts_with("delivery stopped unexpectedly"), "{text}");
    assert!(text.contains("writer crashed"), "{text}");
}

/// A parser that crashes on every payload: stands in for a parser bug.
struct CrashingParser;

impl firestream::sources::Parser for CrashingParser {
    fn parse(
        &self,
        _: &mut dyn std::io::BufRead,
        _: &mut dyn FnMut(firestream::sources::Row) -> bool,
    ) -> Result<(), firestream::sources::PayloadError> {
        panic!("parser bug on this input");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parser_panic_dead_letters_the_file_and_the_stream_carries_on() {
    use firestream::queue::Queue;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.csv");
    std::fs::write(&file, "anything").unwrap();
    let queue = Arc::new(Queue::new(10, 1));
    let stats = Arc::new(firestream::stats::Stats::default());
    let mut stream = firestream::stream::Stream {
        id: Arc::from("s"),
        source_type: SourceType::NasaFirms,
        mode: firestream::mode::Mode::Once,
        transport: firestream::stream::Transport::File(
            firestream::transport::file::FileTransport::new(vec![
                file.to_string_lossy().into_owned(),
            ]),
        ),
        parser: Arc::new(CrashingParser),
        priority: firestream::mode::PriorityPolicy {
            source_override: None,
            bulk: true,
        },
        dedupe: Arc::new(firestream::dedupe::Dedupe::new(Duration::from_secs(60))),
        queue: queue.clone(),
        buffer: None,
        stats: stats.clone(),
        files: None,
    };
    let outcome = stream.poll_once(&CancellationToken::new()).await;
    assert_eq!((outcome.files, outcome.failed_files), (1, 1));
    let batch = queue.pop(firestream::queue::Lanes::Bulk, 10).await.unwrap();
    assert_eq!(batch.dead_letters.len(), 1);
    let dead = &batch.dead_letters[0];
    assert_eq!(dead.error_kind, "parser_panic");
    assert!(
        dead.reason.contains("parser bug on this input"),
        "{}",
        dead.reason
    );
    assert_eq!(stats.stream("s").snapshot().payload_errors, 1);
    // Dead-lettered once, not on every poll until the file changes.
    let again = stream.poll_once(&CancellationToken::new()).await;
    assert_eq!(again.files, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_cut_short_goes_to_the_dlq_and_does_not_shadow_the_complete_row() {
    // A file caught while being written: its last row is cut mid-field.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real(M6)).unwrap();
    let full: String = text.lines().take(11).map(|l| format!("{l}\n")).collect();
    let cut = dir.path().join("cut.csv");
    std::fs::write(&cut, &full[..full.len() - 30]).unwrap();
    let whole = dir.path().join("whole.csv");
    std::fs::write(&whole, &full).unwrap();
    let report = common::ingest(
        common::config(dir.path(), ""),
        IngestTarget::SourceType(SourceType::NasaFirms),
        &[cut, whole],
    )
    .await;
    let t = report.totals();
    assert_eq!(t.invalid, 1);
    assert_eq!(t.duplicates, 9);
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 10);
    let stored = envelopes(&dir.path().join("log"), "wildfire-nasa-firms");
    let last_row = common::csv_rows(&real(M6))[9].clone();
    let complete = stored
        .iter()
        .find(|e| e["location"]["lat"] == common::f64_of(&last_row["latitude"]))
        .expect("the complete row is delivered");
    assert_eq!(
        complete["data"]["frp_mw"],
        common::f64_of(&last_row["frp"]),
        "with its values, not the cut row's nulls"
    );
    let dlq = envelopes(&dir.path().join("log"), "firestream-dlq");
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("line 11: row has"),
        "{}",
        dlq[0]["reason"]
    );
}
