//! The fault matrix, Kafka half (issue #5): real records through `StreamManager::ingest` into
//! librdkafka's in-process mock cluster while a fault is injected, then every topic read back
//! by an independent consumer. Each row asserts offered = delivered + DLQ, nothing lost (every
//! offered id is in its topic or in a DLQ: Kafka's `firestream-dlq`, or the local log's
//! fallback) and nothing duplicated (distinct `firestream-id` headers = messages), and prints
//! its README table row.
//!
//! "Offered" is the set of ids the same files give through the local-log sink: what the
//! sources accepted (FIRMS rows that repeat an id are deduplicated there as here).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, Instant};

use common::kafka::read_to_end;
use firestream::config::Config;
use firestream::manager::{IngestTarget, Report, StreamManager};
use firestream::sources::SourceType;
use firestream::stats::Stats;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

type Mock = MockCluster<'static, DefaultProducerContext>;

const FIRMS: &str = "firms/fire_nrt_SV-C2_400448__first10000.csv";
const FIRMS_TOPIC: &str = "wildfire-nasa-firms";
const DLQ: &str = "firestream-dlq";

/// Small producer queue and message timeout: a fault fills the queue (backpressure) and
/// times records out (firestream's retries), within a test's time.
const PROPERTIES: &str =
    r#"{"message.timeout.ms": "4000", "queue.buffering.max.messages": "1000"}"#;

/// A small queue, so the source cannot run far ahead of delivery: a fault triggered after
/// N records were offered falls mid-stream.
const QUEUE: &str = "queue: {max_records: 500, critical_reserve: 100}";

/// The first `rows` rows of the real FIRMS capture, starting at row `skip`.
fn firms_rows(dir: &Path, name: &str, skip: usize, rows: usize) -> PathBuf {
    let text = std::fs::read_to_string(common::real(FIRMS)).unwrap();
    let mut lines = text.lines();
    let mut out = String::from(lines.next().unwrap());
    out.push('\n');
    for line in lines.skip(skip).take(rows) {
        out.push_str(line);
        out.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// A three-broker mock cluster with firestream's topics (the mock has no CreateTopics).
fn cluster(replication: i32) -> Mock {
    let mock = MockCluster::new(3).expect("mock cluster");
    for name in [
        FIRMS_TOPIC,
        "wildfire-air-quality",
        "wildfire-critical-alerts",
    ] {
        mock.create_topic(name, 4, replication).unwrap();
    }
    mock.create_topic(DLQ, 4, 1).unwrap();
    // Checkpoints live beside the records.
    mock.create_topic("firestream-checkpoints", 1, replication)
        .unwrap();
    mock
}

/// The ids the files give through the local-log sink, read from `topic`.
async fn offered(
    extra_yaml: &str,
    target: IngestTarget,
    paths: &[PathBuf],
    topic: &str,
) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    common::ingest(common::config(dir.path(), extra_yaml), target, paths).await;
    common::envelopes(&dir.path().join("log"), topic)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// What the topics and both DLQs hold, against what was offered.
#[derive(Debug)]
struct Tally {
    offered: usize,
    delivered: usize,
    dlq: usize,
    lost: usize,
    duplicated: usize,
    /// Dead letters by id.
    dead: Vec<Value>,
}

fn tally(bootstrap: &str, log_dir: &Path, topics: &[&str], offered: &BTreeSet<String>) -> Tally {
    let mut delivered = 0;
    let mut ids = BTreeSet::new();
    for topic in topics {
        for message in read_to_end(bootstrap, topic) {
            delivered += 1;
            ids.insert(message.headers["firestream-id"].clone());
        }
    }
    let mut dead: Vec<Value> = read_to_end(bootstrap, DLQ)
        .into_iter()
        .map(|m| m.value)
        .collect();
    dead.extend(common::envelopes(log_dir, DLQ));
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .map(|d| d["record"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.is_subset(offered), "a topic holds ids never offered");
    assert!(
        dead_ids.is_subset(offered),
        "the DLQ holds ids never offered"
    );
    assert!(
        ids.is_disjoint(&dead_ids),
        "a record both delivered and dead-lettered"
    );
    let lost = offered
        .iter()
        .filter(|id| !ids.contains(*id) && !dead_ids.contains(*id))
        .count();
    Tally {
        offered: offered.len(),
        delivered,
        dlq: dead.len(),
        lost,
        duplicated: (delivered - ids.len()) + (dead.len() - dead_ids.len()),
        dead,
    }
}

impl Tally {
    /// The README row, then the matrix's invariants.
    fn check(&self, fault: &str, notes: &str) {
        eprintln!(
            "| {fault} | librdkafka mock (3 brokers) | {} | {} | {} | {} | {} | {notes} |",
            self.offered, self.delivered, self.dlq, self.lost, self.duplicated
        );
        assert_eq!(self.offered, self.delivered + self.dlq, "{self:?}");
        assert_eq!(self.lost, 0);
        assert_eq!(self.duplicated, 0);
    }
}

/// Waits until delivery has accounted for its first records: the fault then falls
/// mid-stream, as the small queue keeps the source from offering everything before.
async fn first_delivered(stats: &Arc<Stats>, topic: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(stats, topic) < at_least {
        assert!(
            Instant::now() < deadline,
            "nothing was delivered to {topic}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn delivered(stats: &Stats, topic: &str) -> u64 {
    stats.topics().get(topic).map_or(0, |t| t.delivered)
}

fn retries(report: &Report, topic: &str) -> u64 {
    report.topics.get(topic).map_or(0, |t| t.retries)
}

/// Starts an ingest of FIRMS files in the background; the caller injects the fault.
async fn start_firms_ingest(
    config: Config,
    paths: Vec<PathBuf>,
) -> (Arc<Stats>, tokio::task::JoinHandle<Report>) {
    let manager = StreamManager::new(config).await.expect("sink opens");
    let stats = manager.stats();
    let task = tokio::spawn(async move {
        manager
            .ingest(
                IngestTarget::SourceType(SourceType::NasaFirms),
                paths,
                CancellationToken::new(),
            )
            .await
            .expect("ingest runs")
    });
    (stats, task)
}

/// The sink for the broker-loss rows. `transactional` matters here beyond transactions: the
/// mock cluster checks producer sequence numbers only for transactional producers
/// (`rd_kafka_mock_validate_records` returns early without a transactional id), so only then
/// does it discard librdkafka's resend of a batch it already stored, as every Kafka broker
/// does for an idempotent producer.
fn broker_loss_config(dir: &Path, mock: &Mock, properties: &str, transactional: bool) -> Config {
    let mut config = common::kafka_config(dir, &mock.bootstrap_servers(), properties, QUEUE);
    if transactional {
        let kafka = config.sink.kafka.as_mut().expect("kafka sink");
        kafka.transactional = true;
        kafka.transactional_id = "faults".into();
    }
    config
}

fn mode(transactional: bool) -> &'static str {
    if transactional {
        "transactional"
    } else {
        "idempotent"
    }
}

/// All brokers down for 10 s mid-stream, then up. Returns the tally and the number of
/// records delivered before the outage.
async fn all_brokers_down(transactional: bool) -> (Tally, u64) {
    let dir = tempfile::tempdir().unwrap();
    let file = firms_rows(dir.path(), "firms.csv", 0, 4_000);
    let target = || IngestTarget::SourceType(SourceType::NasaFirms);
    let offered = offered("", target(), std::slice::from_ref(&file), FIRMS_TOPIC).await;
    let mock = cluster(1);
    for broker in 1..=3 {
        mock.broker_round_trip_time(broker, Duration::from_millis(50))
            .unwrap();
    }
    // librdkafka's default message timeout (5 min) rides out the outage: records wait in its
    // queue (backpressure) and are sent when the brokers return. (A timeout shorter than the
    // outage would make records of requests in flight ambiguous — written or not — and a
    // retry could store such a record twice: see README, Delivery and retries.)
    let config = broker_loss_config(
        dir.path(),
        &mock,
        r#"{"queue.buffering.max.messages": "1000"}"#,
        transactional,
    );
    let (stats, ingest) = start_firms_ingest(config, vec![file]).await;

    first_delivered(&stats, FIRMS_TOPIC, 400).await;
    let before = delivered(&stats, FIRMS_TOPIC);
    for broker in 1..=3 {
        mock.broker_down(broker).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    for broker in 1..=3 {
        mock.broker_up(broker).unwrap();
    }
    let report = ingest.await.unwrap();

    let tally = tally(
        &mock.bootstrap_servers(),
        &dir.path().join("log"),
        &[FIRMS_TOPIC],
        &offered,
    );
    eprintln!(
        "| All brokers down 10 s mid-stream, then up ({}) | librdkafka mock (3 brokers) | {} | {} | {} | {} | {} | {before} delivered before the outage; {} firestream retries |",
        mode(transactional),
        tally.offered,
        tally.delivered,
        tally.dlq,
        tally.lost,
        tally.duplicated,
        retries(&report, FIRMS_TOPIC)
    );
    assert!(
        (before as usize) < tally.offered,
        "the outage began after the last delivery"
    );
    assert_eq!(tally.lost, 0);
    assert_eq!(tally.dlq, 0, "an outage of 10 s dead-letters nothing");
    assert_eq!(report.lost, 0);
    (tally, before)
}

/// One broker of three bounced for 3 s mid-stream, its partitions' leadership moved.
async fn one_broker_bounced(transactional: bool) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let file = firms_rows(dir.path(), "firms.csv", 0, 4_000);
    let target = || IngestTarget::SourceType(SourceType::NasaFirms);
    let offered = offered("", target(), std::slice::from_ref(&file), FIRMS_TOPIC).await;
    let mock = cluster(3);
    for broker in 1..=3 {
        mock.broker_round_trip_time(broker, Duration::from_millis(50))
            .unwrap();
    }
    // Broker 1 leads half of the partitions.
    for (partition, leader) in [(0, 1), (1, 1), (2, 2), (3, 3)] {
        mock.partition_leader(FIRMS_TOPIC, partition, Some(leader))
            .unwrap();
    }
    let config = broker_loss_config(dir.path(), &mock, PROPERTIES, transactional);
    let (stats, ingest) = start_firms_ingest(config, vec![file]).await;

    first_delivered(&stats, FIRMS_TOPIC, 400).await;
    let before = delivered(&stats, FIRMS_TOPIC);
    mock.broker_down(1).unwrap();
    // What a controller does with replication 3: the followers take over (the mock does
    // not elect leaders by itself).
    mock.partition_leader(FIRMS_TOPIC, 0, Some(2)).unwrap();
    mock.partition_leader(FIRMS_TOPIC, 1, Some(3)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).unwrap();
    let report = ingest.await.unwrap();

    let tally = tally(
        &mock.bootstrap_servers(),
        &dir.path().join("log"),
        &[FIRMS_TOPIC],
        &offered,
    );
    eprintln!(
        "| One broker bounced mid-stream (3 s), leadership moved ({}) | librdkafka mock (3 brokers) | {} | {} | {} | {} | {} | {before} delivered before; {} firestream retries |",
        mode(transactional),
        tally.offered,
        tally.delivered,
        tally.dlq,
        tally.lost,
        tally.duplicated,
        retries(&report, FIRMS_TOPIC)
    );
    assert!(before > 0 && (before as usize) < tally.offered);
    assert_eq!(tally.lost, 0);
    assert_eq!(tally.dlq, 0);
    assert_eq!(report.lost, 0);
    tally
}

/// On a broker that discards an idempotent producer's resent batches, nothing is stored
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_for_10_s_mid_stream_then_up() {
    let (tally, _) = all_brokers_down(true).await;
    assert_eq!(tally.duplicated, 0);
}

/// Without a transactional id the mock stores librdkafka's resend of the batches in flight
/// when the brokers dropped a second time (it keeps no idempotent-producer state for such
/// producers; a Kafka broker does). Nothing is lost; the count of doubles is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_on_a_mock_without_idempotence_loses_nothing() {
    all_brokers_down(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_bounced_mid_stream() {
    let tally = one_broker_bounced(true).await;
    assert_eq!(tally.duplicated, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_bounced_on_a_mock_without_idempotence_loses_nothing() {
    one_broker_bounced(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_for_partition_injected_3_times_on_produce() {
    let dir = tempfile::tempdir().unwrap();
    let file = firms_rows(dir.path(), "firms.csv", 0, 3_000);
    let target = || IngestTarget::SourceType(SourceType::NasaFirms);
    let offered = offered("", target(), std::slice::from_ref(&file), FIRMS_TOPIC).await;
    let mock = cluster(1);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );
    let config = common::kafka_config(dir.path(), &mock.bootstrap_servers(), PROPERTIES, QUEUE);
    let report = common::ingest(config, target(), &[file]).await;

    let tally = tally(
        &mock.bootstrap_servers(),
        &dir.path().join("log"),
        &[FIRMS_TOPIC],
        &offered,
    );
    tally.check(
        "NOT_LEADER_FOR_PARTITION ×3 on produce",
        &format!(
            "librdkafka refreshes metadata and retries inside the attempt (idempotent); {} firestream retries",
            retries(&report, FIRMS_TOPIC)
        ),
    );
    assert_eq!(tally.dlq, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mb_record_goes_to_the_dlq_at_once_and_its_neighbours_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    // Real AirNow observations through the generic http source, one of them carrying a
    // 2 MB field: over librdkafka's default message.max.bytes (1 000 000).
    let text = std::fs::read_to_string(common::real(
        "airnow/aq_data_bbox_EasternUS__2021-09-21__first3000.json",
    ))
    .unwrap();
    let mut rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.truncate(2_000);
    rows[1_000]["notes"] = Value::String("smoke ".repeat(350_000));
    let file = dir.path().join("airnow.json");
    std::fs::write(&file, serde_json::to_vec(&rows).unwrap()).unwrap();
    let source = format!(
        "sources:\n  aq_feed:\n    type: http\n    interval: 1h\n    paths: [{}]\n    mapping: {{lat: Latitude, lon: Longitude}}\n    topic: wildfire-air-quality\n",
        serde_json::to_string(&file).unwrap()
    );
    let target = || IngestTarget::Source("aq_feed".into());
    let offered = offered(
        &source,
        target(),
        std::slice::from_ref(&file),
        "wildfire-air-quality",
    )
    .await;
    let mock = cluster(1);
    let config = common::kafka_config(
        dir.path(),
        &mock.bootstrap_servers(),
        "{}",
        &format!("{source}{QUEUE}"),
    );
    let report = common::ingest(config, target(), &[file]).await;

    let tally = tally(
        &mock.bootstrap_servers(),
        &dir.path().join("log"),
        &["wildfire-air-quality"],
        &offered,
    );
    tally.check(
        "A 2 MB record, default max message size",
        "message_too_large is fatal: DLQ at once (attempts 1); its dead letter is too large for Kafka's DLQ too, so it lands in the local log's DLQ; neighbours delivered",
    );
    assert_eq!(tally.dlq, 1);
    let dead = &tally.dead[0];
    assert_eq!(dead["error_kind"], "message_too_large");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["stage"], "deliver");
    assert_eq!(report.dlq_fallback, 1);
    assert_eq!(retries(&report, "wildfire-air-quality"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_missing_topic_dead_letters_its_records_and_others_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let lost_route = firms_rows(dir.path(), "a.csv", 0, 1_000);
    let good_route = firms_rows(dir.path(), "b.csv", 1_000, 2_000);
    let sources = "sources:\n  firms_missing:\n    type: nasa_firms\n    interval: 10m\n    paths: [never-read.csv]\n    topic: wildfire-not-created\n  firms_ok:\n    type: nasa_firms\n    interval: 10m\n    paths: [never-read.csv]\n";
    let missing = || IngestTarget::Source("firms_missing".into());
    let ok = || IngestTarget::Source("firms_ok".into());
    let offered_missing = offered(
        sources,
        missing(),
        std::slice::from_ref(&lost_route),
        "wildfire-not-created",
    )
    .await;
    let mut all = offered_missing.clone();
    all.extend(
        offered(
            sources,
            ok(),
            std::slice::from_ref(&good_route),
            FIRMS_TOPIC,
        )
        .await,
    );
    let mock = cluster(1);
    let config = common::kafka_config(
        dir.path(),
        &mock.bootstrap_servers(),
        "{}",
        &format!("{sources}{QUEUE}"),
    );
    common::ingest(config.clone(), missing(), &[lost_route]).await;
    common::ingest(config, ok(), &[good_route]).await;

    let tally = tally(
        &mock.bootstrap_servers(),
        &dir.path().join("log"),
        &[FIRMS_TOPIC],
        &all,
    );
    tally.check(
        "Route to a missing topic, auto-create off",
        "every record of the route in the DLQ at once (unknown_topic, attempts 1); the other route delivered",
    );
    assert_eq!(tally.dlq, offered_missing.len());
    for dead in &tally.dead {
        assert_eq!(dead["error_kind"], "unknown_topic");
        assert_eq!(dead["attempts"], 1);
        assert_eq!(dead["topic"], "wildfire-not-created");
    }
}
