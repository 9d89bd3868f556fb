//! `sink.kafka.transactional` on librdkafka's mock cluster: a real FIRMS file delivered in
//! transactions with its checkpoint beside it, a commit failure the sink aborts and retries,
//! and a fenced producer whose records go to the DLQ while nothing more is produced.
//!
//! The mock cluster runs the transaction API (InitProducerId, AddPartitionsToTxn, EndTxn) but
//! keeps aborted records visible to `read_committed` consumers, so these tests count what
//! was produced, not what a consumer would filter out.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::kafka::{Consumed, read_until_idle};
use common::real;
use firestream::config::Config;
use firestream::manager::{IngestTarget, Report};
use firestream::sinks::kafka::{FENCED_KIND, KafkaSink};
use firestream::sinks::{Message, Origin, Sink};
use firestream::sources::SourceType;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const M6: &str = "firms/fire_nrt_M6_157509.csv";
const M6_RECORDS: usize = 5_824;
const FIRMS: &str = "wildfire-nasa-firms";

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A three-broker mock cluster with every topic firestream writes (the mock has no
/// CreateTopics).
fn cluster() -> Mock {
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic("firestream-checkpoints", 1, 1).unwrap();
    for name in [FIRMS, "wildfire-critical-alerts", "firestream-dlq"] {
        mock.create_topic(name, 4, 1).unwrap();
    }
    mock
}

fn config(dir: &Path, bootstrap: &str, id: &str) -> Config {
    let yaml = format!(
        "sink: {{type: kafka, log: {{dir: {}}}, kafka: {{bootstrap_servers: \"{bootstrap}\", connect_timeout: 5s, transactional: true, transactional_id: {id}}}}}\n",
        serde_json::to_string(&dir.join("log")).unwrap()
    );
    let config = Config::parse(&yaml, Path::new("test.yaml")).expect("config parses");
    config.check().expect("config is valid");
    config
}

async fn ingest(config: Config) -> Report {
    common::ingest(
        config,
        IngestTarget::SourceType(SourceType::NasaFirms),
        &[real(M6)],
    )
    .await
}

fn read(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    read_until_idle(bootstrap, topic, Duration::from_secs(3))
}

fn distinct_ids(messages: &[Consumed]) -> usize {
    messages
        .iter()
        .map(|m| m.headers["firestream-id"].clone())
        .collect::<BTreeSet<_>>()
        .len()
}

fn dead_letters(report: &Report) -> u64 {
    report.dead_letters.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_file_is_delivered_in_transactions_with_its_checkpoint() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &bootstrap, "fs-a");

    let report = ingest(config.clone()).await;
    assert!(report.sink.ready, "{:?}", report.sink);
    assert_eq!(report.topics[FIRMS].delivered, M6_RECORDS as u64);
    assert_eq!(report.topics[FIRMS].failed, 0);
    assert_eq!(dead_letters(&report), 0);
    let firms = read(&bootstrap, FIRMS);
    assert_eq!(firms.len(), M6_RECORDS);
    assert_eq!(distinct_ids(&firms), M6_RECORDS);
    let checkpoints = read(&bootstrap, "firestream-checkpoints");
    let sources: BTreeSet<&str> = checkpoints.iter().map(|c| c.key.as_str()).collect();
    assert!(!sources.is_empty(), "no checkpoint committed");
    let last = &checkpoints.last().unwrap().value;
    assert_eq!(last["seen"].as_array().unwrap().len(), M6_RECORDS);

    // Again: recovery reads the checkpoint and the tails (committed, ending in commit
    // markers) and the file's records are all known, so nothing is produced twice.
    let again = ingest(config).await;
    assert_eq!(
        again.topics.get(FIRMS).map_or(0, |t| t.delivered),
        0,
        "{again:?}"
    );
    assert_eq!(read(&bootstrap, FIRMS).len(), M6_RECORDS);
    // Nothing went to the DLQ, and the local fallback was never opened.
    assert!(read(&bootstrap, "firestream-dlq").is_empty());
    assert!(!dir.path().join("log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abortable_commit_failure_is_aborted_and_produced_again() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // The first commit: a coordinator still loading (librdkafka retries the EndTxn itself),
    // then NOT_ENOUGH_REPLICAS, which librdkafka makes an abortable transaction error.
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let report = ingest(config(dir.path(), &bootstrap, "fs-b")).await;
    assert!(report.sink.ready, "{:?}", report.sink);
    assert_eq!(report.topics[FIRMS].delivered, M6_RECORDS as u64);
    assert_eq!(report.topics[FIRMS].failed, 0);
    assert_eq!(dead_letters(&report), 0);
    // The aborted transaction's records stay in the mock's log (it does not filter them for
    // read_committed), so the topic holds them and the committed copies: every id is there,
    // some twice.
    let firms = read(&bootstrap, FIRMS);
    assert_eq!(distinct_ids(&firms), M6_RECORDS);
    let aborted = firms.len() - M6_RECORDS;
    assert!(aborted > 0 && aborted <= 2_000, "{aborted} records aborted");
    eprintln!(
        "abortable commit failure: offered {M6_RECORDS}, delivered {}, DLQ {}, produced {} ({aborted} in the aborted transaction)",
        report.topics[FIRMS].delivered,
        dead_letters(&report),
        firms.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_stops_and_its_records_go_to_the_dlq() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let report = ingest(config(dir.path(), &bootstrap, "fs-c")).await;
    assert!(!report.sink.ready);
    assert!(
        report
            .sink
            .detail
            .starts_with("fenced: another replica uses transactional.id fs-c-bulk"),
        "{}",
        report.sink.detail
    );
    assert_eq!(report.topics[FIRMS].delivered, 0);
    assert_eq!(dead_letters(&report), M6_RECORDS as u64);
    assert_eq!(report.lost, 0);
    // The fenced producer refuses the dead letters too: they are in the local log's DLQ.
    assert_eq!(report.dlq_fallback, M6_RECORDS as u64);
    let dlq = common::topic(&dir.path().join("log"), "firestream-dlq");
    assert_eq!(dlq.len(), M6_RECORDS);
    assert!(
        dlq.iter().all(|d| d["value"]["error_kind"] == FENCED_KIND),
        "{}",
        dlq[0]
    );
    // Only the first transaction reached the broker; nothing was produced after it failed.
    let produced = read(&bootstrap, FIRMS).len();
    assert!(produced <= 2_000, "{produced} produced");
    eprintln!(
        "fenced producer: offered {M6_RECORDS}, delivered 0, DLQ {}, produced (uncommitted) {produced}",
        dlq.len()
    );
}

fn record(n: u32) -> Message {
    Message {
        topic: FIRMS.into(),
        key: format!("key-{n}"),
        timestamp_ms: 1_700_000_000_000 + i64::from(n),
        headers: vec![("firestream-id", format!("{n:064x}"))],
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        origin: Origin::DeadLetter {
            stage: firestream::dlq::Stage::Deliver,
            receipt: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_fenced_while_producing_stops_for_good() {
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let sink = KafkaSink::connect(&config(dir.path(), &bootstrap, "fs-d"))
        .await
        .expect("sink connects");
    let first = sink.send((0..10).map(record).collect()).await;
    assert!(first.iter().all(|(_, r)| r.is_ok()), "{first:?}");
    assert!(sink.readiness().ready);

    // The brokers answer the next produce requests as to a producer whose epoch another
    // instance with the same transactional.id has bumped. (The mock cluster does not fence
    // a producer when a second one initialises the same transactional.id, so a real second
    // producer cannot be used here.)
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH; 8],
    );
    let second = sink.send((10..20).map(record).collect()).await;
    for (_, outcome) in &second {
        let e = outcome
            .as_ref()
            .expect_err("a fenced producer delivers nothing");
        assert_eq!(e.kind, FENCED_KIND, "{e}");
    }
    let readiness = sink.readiness();
    assert!(!readiness.ready);
    assert!(
        readiness
            .detail
            .starts_with("fenced: another replica uses transactional.id fs-d-bulk"),
        "{}",
        readiness.detail
    );
    // Later batches fail at once, and nothing more reaches the broker.
    let third = sink.send((20..30).map(record).collect()).await;
    assert!(
        third
            .iter()
            .all(|(_, r)| matches!(r, Err(e) if e.kind == FENCED_KIND))
    );
    let ids: BTreeSet<u64> = read(&bootstrap, FIRMS)
        .iter()
        .map(|m| m.value["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..10).collect::<BTreeSet<u64>>());
    sink.close().await.ok();
}
