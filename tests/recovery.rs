//! Crash and stop faults of DESIGN §5 "Delivery guarantee", through the real binary: a
//! large ingest killed with SIGKILL (no chance to flush or checkpoint) or stopped with
//! SIGTERM, then run again. Every record must end up in the topic exactly once: the
//! restart restores the checkpoint and reads the topic's tail back, so what the first run
//! wrote is not written again and what it did not is sent.
//!
//! Input: the 13 real FIRMS captures, 79,885 distinct records.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const TOPIC: &str = "wildfire-nasa-firms";
const RECORDS: usize = 79_885;
/// Stored before the fault strikes: well into the ingest, well before its end.
const STRIKE_AFTER: usize = 10_000;

fn firms_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::repo("tests/data/real/firms"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 13);
    files
}

fn ingest(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_firestream"));
    command
        .args(["ingest", "-c"])
        .arg(config)
        .args(["--source-type", "nasa_firms", "--json"])
        .args(firms_files())
        .env_remove("RUST_LOG")
        .env_remove("FIRESTREAM_CONFIG");
    command
}

fn start(config: &Path) -> Child {
    ingest(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("firestream starts")
}

fn finish(config: &Path) -> Output {
    let out = ingest(config).output().expect("firestream runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits (liveness bound 120 s) until `stored()` reaches `n`, then returns it.
fn wait_stored(child: &mut Child, n: usize, stored: &dyn Fn() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = stored();
        if now >= n {
            return now;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the ingest ended ({status}) before {n} records were stored ({now})");
        }
        assert!(Instant::now() < deadline, "only {now} records stored");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Complete lines in the local log's segments of `topic` (counted as newlines: parsing them
/// would be slower than the ingest being watched).
fn log_count(log: &Path, topic: &str) -> usize {
    let Ok(partitions) = std::fs::read_dir(log.join(topic)) else {
        return 0;
    };
    let mut lines = 0;
    for partition in partitions.flatten() {
        if !partition.path().is_dir() || partition.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for segment in std::fs::read_dir(partition.path()).unwrap().flatten() {
            if segment.path().extension().is_some_and(|e| e == "jsonl") {
                let bytes = std::fs::read(segment.path()).unwrap_or_default();
                lines += bytes.iter().filter(|&&b| b == b'\n').count();
            }
        }
    }
    lines
}

/// Asserts the topic holds each record exactly once; returns (messages, distinct ids).
fn assert_once(ids: Vec<String>) -> (usize, usize) {
    let distinct: HashSet<&String> = ids.iter().collect();
    let counts = (ids.len(), distinct.len());
    assert_eq!(counts, (RECORDS, RECORDS), "messages, distinct ids");
    counts
}

fn log_ids(log: &Path) -> Vec<String> {
    common::topic(log, TOPIC)
        .iter()
        .map(|line| {
            line["headers"]["firestream-id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn log_config(dir: &Path) -> PathBuf {
    let config = dir.join("config.yaml");
    std::fs::write(&config, "sink: {type: log, log: {dir: log}}\n").unwrap();
    config
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn kill_9_during_a_large_ingest_into_the_log_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = log_config(dir.path());
    let log = dir.path().join("log");
    let mut child = start(&config);
    wait_stored(&mut child, STRIKE_AFTER, &|| log_count(&log, TOPIC));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = log_count(&log, TOPIC);
    assert!(before < RECORDS, "the kill came too late to test anything");

    let out = finish(&config);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delivered = summary["topics"][TOPIC]["delivered"].as_u64().unwrap() as usize;
    // The second run sent exactly what the first did not store.
    assert_eq!(before + delivered, RECORDS);
    assert_once(log_ids(&log));
    assert_eq!(log_count(&log, "firestream-dlq"), 0);
    eprintln!(
        "| kill -9 during ingest, restart | log | {RECORDS} | {before} + {delivered} | 0 | 0 | 0 |"
    );
}

#[test]
fn sigterm_during_a_large_ingest_stops_cleanly_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    // A small queue, so reading keeps pace with delivery and the stop finds files unread.
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "sink: {type: log, log: {dir: log}}\nqueue: {max_records: 2000}\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = start(&config);
    wait_stored(&mut child, STRIKE_AFTER, &|| log_count(&log, TOPIC));
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    // 130: stopped by a signal before reading every file; what was queued was delivered.
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !summary["not_read"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    assert_eq!(summary["lost"], 0);
    let stored = log_count(&log, TOPIC);
    let enqueued = summary["streams"]["ingest_nasa_firms"]["enqueued"]
        .as_u64()
        .unwrap() as usize;
    // Everything it took in before the stop is stored, none in the DLQ.
    assert_eq!(stored, enqueued);
    assert_eq!(log_count(&log, "firestream-dlq"), 0);

    let out = finish(&config);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delivered = summary["topics"][TOPIC]["delivered"].as_u64().unwrap() as usize;
    assert_eq!(stored + delivered, RECORDS);
    assert_once(log_ids(&log));
    eprintln!(
        "| SIGTERM during ingest, rerun | log | {RECORDS} | {stored} + {delivered} | 0 | 0 | 0 |"
    );
}

type Mock = MockCluster<'static, DefaultProducerContext>;

fn kafka_stored(bootstrap: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(5))
                .map_or(0, |(low, high)| (high - low) as usize)
        })
        .sum()
}

#[test]
fn kill_9_during_a_large_ingest_into_kafka_then_restart() {
    let mock: Mock = MockCluster::new(3).unwrap();
    for (name, partitions) in [
        (TOPIC, 4),
        ("wildfire-critical-alerts", 4),
        ("firestream-dlq", 4),
        ("firestream-checkpoints", 1),
    ] {
        mock.create_topic(name, partitions, 1).unwrap();
    }
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "sink: {{type: kafka, log: {{dir: log}}, kafka: {{bootstrap_servers: \"{bootstrap}\"}}}}\ntopics: {{{TOPIC}: {{partitions: 4}}}}\n"
        ),
    )
    .unwrap();
    let mut child = start(&config);
    wait_stored(&mut child, STRIKE_AFTER, &|| kafka_stored(&bootstrap));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = kafka_stored(&bootstrap);
    assert!(before < RECORDS, "the kill came too late to test anything");

    let out = finish(&config);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delivered = summary["topics"][TOPIC]["delivered"].as_u64().unwrap() as usize;
    assert_eq!(before + delivered, RECORDS);
    let ids = common::kafka::read_to_end(&bootstrap, TOPIC)
        .into_iter()
        .map(|m| m.headers["firestream-id"].clone())
        .collect();
    assert_once(ids);
    assert!(common::kafka::read_to_end(&bootstrap, "firestream-dlq").is_empty());
    eprintln!(
        "| kill -9 during ingest, restart | mock cluster | {RECORDS} | {before} + {delivered} | 0 | 0 | 0 |"
    );
}
