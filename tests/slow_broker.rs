//! A slow broker (librdkafka's mock cluster with a high round-trip time) behind a polled
//! FIRMS source (a local server replaying a real 4,000-row capture) and a small queue, so
//! the queue fills. Under `block` nothing is lost; under `drop_newest` and `drop_oldest`
//! every record dropped is in the DLQ; in every case a critical Red Flag Warning arriving
//! mid-backlog is delivered at once, and each id is stored exactly once.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::replay::{Replay, Reply};
use firestream::manager::StreamManager;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const CAPTURE: &str = "firms/MODIS_C6_South_America_24h__2020-10-03__first4000.csv";
const ALERTS: &str = "noaa/alerts_active_point_33.25_-112.30__2024-07-18.json";
const KEY: &str = "f1e2d3c4b5a6f1e2d3c4b5a6f1e2d3c4";
const PATH: &str = "/api/area/csv/f1e2d3c4b5a6f1e2d3c4b5a6f1e2d3c4/MODIS_NRT/-180,-90,180,90/1";
const RTT: Duration = Duration::from_millis(300);

type Mock = MockCluster<'static, DefaultProducerContext>;

struct Row {
    offered: u64,
    delivered: usize,
    dlq: usize,
    alert_after: Duration,
    /// FIRMS records stored when the alert was.
    firms_stored_then: u64,
}

async fn run(policy: &str) -> Row {
    let mock: Mock = MockCluster::new(3).unwrap();
    for (name, partitions) in [
        ("wildfire-nasa-firms", 4),
        ("wildfire-weather-alerts", 4),
        ("wildfire-critical-alerts", 4),
        ("firestream-dlq", 4),
        ("firestream-checkpoints", 1),
    ] {
        mock.create_topic(name, partitions, 1).unwrap();
    }
    for broker in 1..=3 {
        mock.broker_round_trip_time(broker, RTT).unwrap();
    }
    let bootstrap = mock.bootstrap_servers();
    let server = Replay::start().await;
    server.script(
        PATH,
        vec![Reply::csv(std::fs::read(common::real(CAPTURE)).unwrap())],
    );
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let config = common::kafka_config(
        dir.path(),
        &bootstrap,
        // A small producer queue: the broker's slowness reaches firestream's queue.
        "{queue.buffering.max.messages: 100}",
        &format!(
            "queue: {{max_records: 50, critical_reserve: 10, overflow: {policy}}}\nsources:\n  firms:\n    type: nasa_firms\n    interval: 1h\n    url: {}\n    map_key: {KEY}\n    product: MODIS_NRT\n    bbox: [-180, -90, 180, 90]\n    day_range: 1\n    retries: 0\n  alerts:\n    type: nws_alerts\n    interval: 1s\n    paths: [{}]\n",
            server.base,
            serde_json::to_string(&inbox.join("*.json")).unwrap(),
        ),
    );
    let manager = StreamManager::new(config).await.unwrap();
    let stats = manager.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(manager.run(stop.clone()));
    // The poll is well under way and the bulk backlog is building.
    wait(|| stats.stream("firms").snapshot().enqueued > 1_000).await;
    let text = std::fs::read_to_string(common::real(ALERTS)).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["features"][0]["properties"]["event"] = "Red Flag Warning".into();
    let temp = dir.path().join("alerts.json");
    std::fs::write(&temp, doc.to_string()).unwrap();
    let dropped_in = Instant::now();
    std::fs::rename(&temp, inbox.join("alerts.json")).unwrap();
    wait(|| {
        stats
            .topics()
            .get("wildfire-critical-alerts")
            .is_some_and(|t| t.delivered == 1)
    })
    .await;
    let alert_after = dropped_in.elapsed();
    let firms_stored_then = stats
        .topics()
        .get("wildfire-nasa-firms")
        .map_or(0, |t| t.delivered);
    wait(|| stats.stream("firms").snapshot().polls_ok == 1).await;
    stop.cancel();
    let report = running.await.unwrap().expect("run ends cleanly");
    let offered = report.streams["firms"].enqueued;
    let stored: Vec<String> = common::kafka::read_to_end(&bootstrap, "wildfire-nasa-firms")
        .into_iter()
        .map(|m| m.headers["firestream-id"].clone())
        .collect();
    let dlq: Vec<Value> = common::kafka::read_to_end(&bootstrap, "firestream-dlq")
        .into_iter()
        .map(|m| m.value)
        .collect();
    // Records of both sources may be dropped: drop_oldest evicts the oldest record of the
    // lowest lane, whoever sent it. Each source's records are accounted for separately.
    let mut ids: Vec<String> = stored.clone();
    let mut firms_dlq = 0;
    for d in &dlq {
        assert_eq!(d["stage"], "queue", "{d}");
        ids.push(d["record"]["id"].as_str().unwrap().to_owned());
        if d["source_id"] == "firms" {
            firms_dlq += 1;
        }
    }
    let alerts_stored = common::kafka::read_to_end(&bootstrap, "wildfire-weather-alerts").len();
    // offered = delivered + DLQ for each source; no id twice; no loss.
    assert_eq!(offered as usize, stored.len() + firms_dlq, "{policy}");
    assert_eq!(
        report.streams["alerts"].enqueued as usize,
        alerts_stored + (dlq.len() - firms_dlq),
        "{policy}"
    );
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{policy}: an id is stored twice");
    assert_eq!(report.lost, 0);
    let row = Row {
        offered,
        delivered: stored.len(),
        dlq: firms_dlq,
        alert_after,
        firms_stored_then,
    };
    eprintln!(
        "| slow broker (RTT {RTT:?}), overflow {policy} | mock cluster | {} | {} | {} | 0 | 0 | critical alert delivered {:?} after it arrived |",
        row.offered, row.delivered, row.dlq, row.alert_after
    );
    row
}

/// Waits (liveness bound 120 s) until `done` holds.
async fn wait(done: impl Fn() -> bool) {
    for _ in 0..2_400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_loses_nothing_and_a_critical_alert_overtakes_the_backlog() {
    let row = run("block").await;
    assert_eq!((row.offered, row.delivered, row.dlq), (4_000, 4_000, 0));
    assert!(
        row.firms_stored_then < 4_000,
        "the alert should overtake a bulk backlog"
    );
    // Liveness bound, generous: "at once" means within a few round trips, not after the
    // backlog (which takes many seconds at this RTT).
    assert!(
        row.alert_after < Duration::from_secs(10),
        "{:?}",
        row.alert_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_dead_letters_every_refused_record() {
    let row = run("drop_newest").await;
    assert_eq!(row.offered, 4_000);
    assert!(row.dlq > 0, "the queue never overflowed");
    assert!(
        row.alert_after < Duration::from_secs(10),
        "{:?}",
        row.alert_after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_dead_letters_every_evicted_record() {
    let row = run("drop_oldest").await;
    assert_eq!(row.offered, 4_000);
    assert!(row.dlq > 0, "the queue never overflowed");
    assert!(
        row.alert_after < Duration::from_secs(10),
        "{:?}",
        row.alert_after
    );
}
