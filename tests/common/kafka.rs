//! Reading topics back from a Kafka cluster (the mock cluster or a real broker), as an
//! independent consumer would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub timestamp: i64,
    pub value: Value,
}

fn consumer(bootstrap: &str, topic: &str) -> (BaseConsumer, Vec<i32>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("firestream-test-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    (consumer, partitions)
}

fn decode(message: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    let mut headers = BTreeMap::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            headers.insert(
                header.key.to_owned(),
                String::from_utf8(header.value.unwrap_or_default().to_vec()).unwrap(),
            );
        }
    }
    Consumed {
        partition: message.partition(),
        offset: message.offset(),
        key: String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap(),
        headers,
        timestamp: message.timestamp().to_millis().expect("message timestamp"),
        value: serde_json::from_slice(message.payload().expect("payload")).expect("JSON value"),
    }
}

/// Every message of `topic`, read from the beginning up to each partition's high watermark
/// (exact on the mock cluster).
pub fn read_to_end(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    let (consumer, partitions) = consumer(bootstrap, topic);
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .unwrap();
        ends.insert(*p, high);
    }
    let mut positions: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while positions.iter().any(|(p, pos)| *pos < ends[p]) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} back took over 60 s"
        );
        // Errors are transient client events (a broker down in a fault test): keep reading.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            positions.insert(message.partition(), message.offset() + 1);
            out.push(decode(&message));
        }
    }
    out
}

/// Messages of `topic` read from the beginning until none arrived for `idle`, for brokers
/// whose high watermark cannot be trusted (tansu).
pub fn read_until_idle(bootstrap: &str, topic: &str, idle: Duration) -> Vec<Consumed> {
    let (consumer, _) = consumer(bootstrap, topic);
    let mut out = Vec::new();
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while last.elapsed() < idle {
        assert!(
            Instant::now() < deadline,
            "reading {topic} back took over 120 s"
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            out.push(decode(&message));
            last = Instant::now();
        }
    }
    out
}
