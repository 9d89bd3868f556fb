//! The Kafka sink against librdkafka's in-process mock cluster: real FIRMS and NWS files
//! ingested and read back by an independent consumer, compared record by record with what
//! the local log stores for the same files; the critical path; the DLQ topic; a missing
//! topic; a cluster that cannot be reached.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kafka::{Consumed, read_to_end};
use common::{envelopes, real, topic};
use firestream::config::Config;
use firestream::manager::{IngestTarget, Report, StreamManager};
use firestream::sinks::partition::partition_for_key;
use firestream::sources::SourceType;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const M6: &str = "firms/fire_nrt_M6_157509.csv";
const OBS: &str = "noaa/stations_KFLL_observations_latest__2022-03-02.json";
const ALERTS: &str = "noaa/alerts_active_point_33.25_-112.30__2024-07-18.json";

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A three-broker mock cluster with firestream's topics (the mock has no CreateTopics).
fn cluster(topics: &[(&str, i32)]) -> Mock {
    let mock = MockCluster::new(3).expect("mock cluster");
    // Checkpoints live beside the records.
    mock.create_topic("firestream-checkpoints", 1, 1)
        .expect("create topic");
    for (name, partitions) in topics {
        mock.create_topic(name, *partitions, 1)
            .expect("create topic");
    }
    mock
}

const ALL_TOPICS: &[(&str, i32)] = &[
    ("wildfire-nasa-firms", 4),
    ("wildfire-weather-data", 4),
    ("wildfire-weather-alerts", 4),
    ("wildfire-critical-alerts", 4),
    ("firestream-dlq", 4),
];

async fn ingest(config: Config, t: SourceType, paths: &[PathBuf]) -> Report {
    common::ingest(config, IngestTarget::SourceType(t), paths).await
}

/// The same file through the log sink: the reference the Kafka copy must match.
async fn log_reference(t: SourceType, path: &Path, topic_name: &str) -> HashMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    ingest(
        common::config(dir.path(), "topics: {wildfire-nasa-firms: {partitions: 4}}"),
        t,
        &[path.to_owned()],
    )
    .await;
    topic(&dir.path().join("log"), topic_name)
        .into_iter()
        .map(|line| (line["value"]["id"].as_str().unwrap().to_owned(), line))
        .collect()
}

fn without_ingested_at(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("ingested_at");
    v
}

/// Every message read back equals the log sink's line for the same record: key, partition,
/// headers, value (but `ingested_at`), and the timestamp is `ingested_at`.
fn assert_same_as_log(consumed: &[Consumed], reference: &HashMap<String, Value>) {
    assert_eq!(consumed.len(), reference.len());
    let mut seen = std::collections::HashSet::new();
    for message in consumed {
        let id = message.value["id"].as_str().unwrap();
        assert!(seen.insert(id.to_owned()), "duplicate {id}");
        let line = &reference[id];
        assert_eq!(message.key, line["key"].as_str().unwrap(), "{id}");
        assert_eq!(
            message.partition as u64,
            line["partition"].as_u64().unwrap(),
            "{id}"
        );
        assert_eq!(
            message.partition as u32,
            partition_for_key(message.key.as_bytes(), 4)
        );
        let headers: HashMap<String, String> = line["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(message.headers.len(), headers.len(), "{id}");
        for (k, v) in &message.headers {
            assert_eq!(headers.get(k), Some(v), "{id} header {k}");
        }
        let ingested =
            chrono::DateTime::parse_from_rfc3339(message.value["ingested_at"].as_str().unwrap())
                .unwrap();
        assert_eq!(message.timestamp, ingested.timestamp_millis(), "{id}");
        assert_eq!(
            without_ingested_at(message.value.clone()),
            without_ingested_at(line["value"].clone()),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_files_arrive_in_kafka_exactly_as_in_the_local_log() {
    let mock = cluster(ALL_TOPICS);
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = common::kafka_config(dir.path(), &bootstrap, "{}", "");

    let report = ingest(config.clone(), SourceType::NasaFirms, &[real(M6)]).await;
    assert!(report.sink.ready, "{:?}", report.sink);
    assert_eq!(report.sink.name, "kafka");
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 5_824);
    assert_eq!(report.topics["wildfire-nasa-firms"].failed, 0);
    let firms = read_to_end(&bootstrap, "wildfire-nasa-firms");
    assert_same_as_log(
        &firms,
        &log_reference(SourceType::NasaFirms, &real(M6), "wildfire-nasa-firms").await,
    );
    // Several partitions are used: the keys spread.
    let used: std::collections::BTreeSet<i32> = firms.iter().map(|m| m.partition).collect();
    assert_eq!(used.len(), 4);

    ingest(config.clone(), SourceType::NwsObservations, &[real(OBS)]).await;
    let obs = read_to_end(&bootstrap, "wildfire-weather-data");
    assert_same_as_log(
        &obs,
        &log_reference(
            SourceType::NwsObservations,
            &real(OBS),
            "wildfire-weather-data",
        )
        .await,
    );
    assert_eq!(obs[0].value["data"]["station_id"], "KFLL");
    assert_eq!(obs[0].value["data"]["temperature_c"], 22.8);

    ingest(config, SourceType::NwsAlerts, &[real(ALERTS)]).await;
    let alerts = read_to_end(&bootstrap, "wildfire-weather-alerts");
    assert_same_as_log(
        &alerts,
        &log_reference(
            SourceType::NwsAlerts,
            &real(ALERTS),
            "wildfire-weather-alerts",
        )
        .await,
    );
    // Nothing went to the DLQ, and the local fallback was never opened.
    assert!(read_to_end(&bootstrap, "firestream-dlq").is_empty());
    assert!(!dir.path().join("log").exists());
}

/// The real Phoenix alerts with the first one turned into a Red Flag Warning.
fn red_flag_alerts(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(real(ALERTS)).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["features"][0]["properties"]["event"] = "Red Flag Warning".into();
    let path = dir.join("alerts.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_alert_is_copied_and_is_not_held_back_by_stalled_bulk_traffic() {
    // FIRMS lives on broker 1 alone; the alert topics on broker 2.
    let mock = cluster(ALL_TOPICS);
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic("wildfire-bulk", 1, 1).unwrap();
    mock.partition_leader("wildfire-bulk", 0, Some(1)).unwrap();
    // Checkpoints stay readable: only the bulk topic's broker goes away.
    mock.partition_leader("firestream-checkpoints", 0, Some(3))
        .unwrap();
    for name in ["wildfire-weather-alerts", "wildfire-critical-alerts"] {
        for p in 0..4 {
            mock.partition_leader(name, p, Some(2)).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let config = common::kafka_config(
        dir.path(),
        &bootstrap,
        // A small producer queue, so stalled bulk traffic fills it and blocks its consumer.
        "{queue.buffering.max.messages: 200, message.timeout.ms: 120000}",
        &format!(
            "sources:\n  firms:\n    type: nasa_firms\n    interval: 1s\n    topic: wildfire-bulk\n    paths: [{}]\n  alerts:\n    type: nws_alerts\n    interval: 1s\n    paths: [{}]\n",
            serde_json::to_string(&inbox.join("*.csv")).unwrap(),
            serde_json::to_string(&inbox.join("*.json")).unwrap(),
        ),
    );
    let manager = StreamManager::new(config).await.unwrap();
    let stats = manager.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));
    // Both sources read their topics back before they start: wait until they poll.
    wait(|| {
        ["firms", "alerts"]
            .iter()
            .all(|s| stats.stream(s).status().last_poll.is_some())
    })
    .await;
    // Broker 1 goes away before anything is sent: bulk records cannot leave.
    mock.broker_down(1).unwrap();
    std::fs::copy(real(M6), inbox.join("fires.csv")).unwrap();
    // Wait until the bulk path is stuck: the FIRMS stream has queued records it cannot send.
    wait(|| stats.stream("firms").snapshot().enqueued > 2_000).await;
    std::fs::rename(red_flag_alerts(dir.path()), inbox.join("alerts.json")).unwrap();

    // The critical alert arrives in both topics while not one bulk record has been sent.
    let copies = poll_topic(&bootstrap, "wildfire-critical-alerts", 1).await;
    assert_eq!(copies[0].value["data"]["event"], "Red Flag Warning");
    assert_eq!(copies[0].value["priority"], "critical");
    // The file's other alert is not critical: it waits with the bulk traffic.
    let alerts = poll_topic(&bootstrap, "wildfire-weather-alerts", 1).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].value, copies[0].value,
        "the copy is the same record"
    );
    assert_eq!(
        stats
            .topics()
            .get("wildfire-bulk")
            .map_or(0, |t| t.delivered),
        0
    );

    // The broker returns; the bulk backlog drains, nothing lost, nothing duplicated.
    mock.broker_up(1).unwrap();
    wait(|| {
        stats
            .topics()
            .get("wildfire-bulk")
            .map_or(0, |t| t.delivered)
            == 5_824
    })
    .await;
    shutdown.cancel();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.topics["wildfire-bulk"].failed, 0);
    assert_eq!(report.topics["wildfire-weather-alerts"].delivered, 2);
    assert_eq!(read_to_end(&bootstrap, "wildfire-weather-alerts").len(), 2);
    let bulk = read_to_end(&bootstrap, "wildfire-bulk");
    let ids: std::collections::HashSet<_> = bulk.iter().map(|m| m.value["id"].clone()).collect();
    assert_eq!((bulk.len(), ids.len()), (5_824, 5_824));
}

/// Waits (liveness bound 120 s) until `done` holds.
async fn wait(done: impl Fn() -> bool) {
    for _ in 0..1_200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached within 120 s");
}

/// Reads `topic` until it holds `n` messages (liveness bound 60 s).
async fn poll_topic(bootstrap: &str, topic: &str, n: usize) -> Vec<Consumed> {
    for _ in 0..300 {
        let bootstrap = bootstrap.to_owned();
        let name = topic.to_owned();
        let got = tokio::task::spawn_blocking(move || read_to_end(&bootstrap, &name))
            .await
            .unwrap();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{topic} did not reach {n} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_land_in_the_kafka_dlq_topic() {
    let mock = cluster(ALL_TOPICS);
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // A real row with its latitude emptied.
    let text = std::fs::read_to_string(real(M6)).unwrap();
    let mut lines: Vec<String> = text.lines().take(11).map(str::to_owned).collect();
    let row = lines[3].clone();
    let (_, rest) = row.split_once(',').unwrap();
    lines[3] = format!(",{rest}");
    let file = dir.path().join("broken.csv");
    std::fs::write(&file, lines.join("\n")).unwrap();

    let report = ingest(
        common::kafka_config(dir.path(), &bootstrap, "{}", ""),
        SourceType::NasaFirms,
        &[file],
    )
    .await;
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 9);
    assert_eq!(report.dead_letters["validate"], 1);
    let dlq = read_to_end(&bootstrap, "firestream-dlq");
    assert_eq!(dlq.len(), 1);
    let dead = &dlq[0];
    assert_eq!(dead.value["stage"], "validate");
    assert_eq!(dead.value["error_kind"], "invalid_row");
    assert!(
        dead.value["reason"]
            .as_str()
            .unwrap()
            .contains("line 4: latitude is empty"),
        "{}",
        dead.value["reason"]
    );
    assert_eq!(dead.value["raw_excerpt"], format!(",{rest}"));
    assert_eq!(dead.headers["firestream-dlq-stage"], "validate");
    assert_eq!(dead.headers["firestream-source-id"], "ingest_nasa_firms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_undeclared_topic_dead_letters_each_record_at_once() {
    // No FIRMS topic on the cluster, none declared, auto-create off (firestream's default).
    let mock = cluster(&[("firestream-dlq", 2)]);
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // Liveness bound only: without the topic check this waits for message.timeout.ms (5 min).
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        ingest(
            common::kafka_config(dir.path(), &bootstrap, "{}", ""),
            SourceType::NasaFirms,
            &[real(M6)],
        ),
    )
    .await
    .expect("no five-minute hang");
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 0);
    assert_eq!(report.topics["wildfire-nasa-firms"].failed, 5_824);
    assert_eq!(report.dead_letters["deliver"], 5_824);
    assert_eq!(report.lost, 0);
    let dlq = read_to_end(&bootstrap, "firestream-dlq");
    assert_eq!(dlq.len(), 5_824);
    let dead = &dlq[0].value;
    assert_eq!(dead["stage"], "deliver");
    assert_eq!(dead["error_kind"], "unknown_topic");
    assert_eq!(dead["topic"], "wildfire-nasa-firms");
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("topic `wildfire-nasa-firms` does not exist on the Kafka cluster and is not declared under `topics:`"),
        "{}",
        dead["reason"]
    );
    // The dead letter carries the whole envelope, ready for a replay.
    assert_eq!(dead["record"]["kind"], "fire_detection");
    assert!(!dir.path().join("log").exists(), "no fallback needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_kafka_refuses_go_to_the_local_log() {
    // Neither the data topic nor the DLQ topic exists, and the mock cannot create topics.
    let mock = cluster(&[]);
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let report = ingest(
        common::kafka_config(dir.path(), &bootstrap, "{}", ""),
        SourceType::NwsAlerts,
        &[real(ALERTS)],
    )
    .await;
    assert_eq!(report.dead_letters["deliver"], 2);
    assert_eq!(report.dlq_fallback, 2);
    assert_eq!(report.lost, 0);
    let fallback = envelopes(&dir.path().join("log"), "firestream-dlq");
    assert_eq!(fallback.len(), 2);
    assert!(fallback.iter().all(|d| d["error_kind"] == "unknown_topic"));
    assert!(
        fallback
            .iter()
            .all(|d| d["record"]["kind"] == "weather_alert")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_no_reachable_broker_fails_fast_and_says_so() {
    // A port nothing listens on.
    let port = common::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::kafka_config(dir.path(), &bootstrap, "{}", "");
    config.sink.kafka.as_mut().unwrap().connect_timeout =
        firestream::config::Dur(Duration::from_secs(2));
    let manager = StreamManager::new(config).await.unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        manager.ingest(
            IngestTarget::SourceType(SourceType::NasaFirms),
            vec![real(M6)],
            CancellationToken::new(),
        ),
    )
    .await
    .expect("fails within the connect timeout, not librdkafka's message timeout")
    .expect_err("nothing can be delivered");
    let text = err.to_string();
    assert!(
        text.contains(&format!("no Kafka broker reachable at {bootstrap}")),
        "{text}"
    );
    assert!(text.contains("nothing was ingested"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cluster_is_waited_for_when_nobody_asked_ingest_to_stop() {
    // Every broker answers after 1.5 s; shutdown_timeout is 1 s. The timeout bounds a
    // requested stop only: an ingest that ends by itself waits for every acknowledgement.
    let mock = cluster(ALL_TOPICS);
    for broker in 1..=3 {
        mock.broker_round_trip_time(broker, Duration::from_millis(1_500))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::kafka_config(
        dir.path(),
        &mock.bootstrap_servers(),
        "{}",
        "delivery: {shutdown_timeout: 1s}",
    );
    let report = ingest(config, SourceType::NasaFirms, &[real(M6)]).await;
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 5_824);
    assert_eq!(report.topics["wildfire-nasa-firms"].failed, 0);
    assert!(
        report.dead_letters.values().all(|n| *n == 0),
        "{:?}",
        report.dead_letters
    );
    assert_eq!(
        read_to_end(&mock.bootstrap_servers(), "wildfire-nasa-firms").len(),
        5_824
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_no_reachable_broker_ends_within_shutdown_timeout() {
    // Every broker goes away once the stream runs: records wait in the producer. A stop must
    // end them within shutdown_timeout (not message.timeout.ms, 5 min), as dead letters in
    // the local log.
    let mock = cluster(ALL_TOPICS);
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::kafka_config(
        dir.path(),
        &bootstrap,
        "{}",
        &format!(
            "delivery: {{shutdown_timeout: 2s}}\nsources:\n  firms:\n    type: nasa_firms\n    interval: 1h\n    paths: [{}]\n",
            serde_json::to_string(&real(M6)).unwrap()
        ),
    );
    config.sink.kafka.as_mut().unwrap().connect_timeout =
        firestream::config::Dur(Duration::from_secs(1));
    let manager = StreamManager::new(config).await.unwrap();
    let stats = manager.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));
    // Recovered (it reads the topics back first) and reading its file.
    wait(|| stats.stream("firms").snapshot().rows > 0).await;
    for broker in 1..=3 {
        mock.broker_down(broker).unwrap();
    }
    wait(|| stats.stream("firms").snapshot().enqueued == 5_824).await;
    shutdown.cancel();
    // Liveness bound only; without the purge of in-flight requests this takes 5 minutes.
    let report = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the stop ends within the shutdown timeout, not message.timeout.ms")
        .unwrap()
        .unwrap();
    assert!(!report.sink.ready, "{:?}", report.sink);
    // Some may have left before the brokers went; every other one is a dead letter.
    let delivered = report
        .topics
        .get("wildfire-nasa-firms")
        .map_or(0, |t| t.delivered);
    let dead = report.dead_letters["shutdown"];
    assert!(dead > 0, "{report:?}");
    assert_eq!(delivered + dead, 5_824);
    assert_eq!(report.dlq_fallback, dead);
    assert_eq!(report.lost, 0);
    let fallback = envelopes(&dir.path().join("log"), "firestream-dlq");
    assert_eq!(fallback.len() as u64, dead);
    assert!(fallback.iter().all(|d| d["stage"] == "shutdown"));
}
