//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod kafka;
pub mod replay;
pub mod service;

use std::path::{Path, PathBuf};

use firestream::config::Config;
use firestream::manager::{IngestTarget, Report, StreamManager};
use firestream::sinks::log::reader::TopicReader;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Runs the `firestream` binary in `cwd`, without the caller's `RUST_LOG` or
/// `FIRESTREAM_CONFIG`.
pub fn firestream(cwd: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("FIRESTREAM_CONFIG")
        .output()
        .expect("firestream runs")
}

/// A file of the real captures vendored under `tests/data/real`.
pub fn real(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/real")
        .join(relative);
    assert!(path.is_file(), "missing real capture {}", path.display());
    path
}

pub fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A config for a fresh log under `dir`, plus extra YAML.
pub fn config(dir: &Path, extra_yaml: &str) -> Config {
    checked(&format!(
        "sink: {{type: log, log: {{dir: {}}}}}\n{extra_yaml}",
        serde_json::to_string(&dir.join("log")).unwrap()
    ))
}

fn checked(yaml: &str) -> Config {
    let config = Config::parse(yaml, Path::new("test.yaml")).expect("test config parses");
    config.check().expect("test config is valid");
    config
}

/// A local port nothing listens on (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config delivering to Kafka at `bootstrap` with librdkafka `properties` (a YAML flow
/// map), the local log (the DLQ fallback) under `dir`, plus extra YAML.
pub fn kafka_config(dir: &Path, bootstrap: &str, properties: &str, extra_yaml: &str) -> Config {
    checked(&format!(
        "sink: {{type: kafka, log: {{dir: {}}}, kafka: {{bootstrap_servers: \"{bootstrap}\", connect_timeout: 5s, properties: {properties}}}}}\n{extra_yaml}",
        serde_json::to_string(&dir.join("log")).unwrap()
    ))
}

/// Runs `firestream ingest` in-process.
pub async fn ingest(config: Config, target: IngestTarget, paths: &[PathBuf]) -> Report {
    StreamManager::new(config)
        .await
        .expect("sink opens")
        .ingest(target, paths.to_vec(), CancellationToken::new())
        .await
        .expect("ingest runs")
}

/// Every stored line of a topic, parsed, in merged order.
pub fn topic(log_dir: &Path, topic: &str) -> Vec<Value> {
    if !log_dir.join(topic).exists() {
        return Vec::new();
    }
    let mut reader = TopicReader::open(log_dir, topic).expect("topic readable");
    let mut out = Vec::new();
    while let Some(entry) = reader.next_entry().expect("entry readable") {
        let mut v: Value = serde_json::from_str(&entry.line).expect("line is JSON");
        v["partition"] = entry.partition.into();
        out.push(v);
    }
    out
}

/// The envelopes of a topic.
pub fn envelopes(log_dir: &Path, name: &str) -> Vec<Value> {
    topic(log_dir, name)
        .into_iter()
        .map(|mut line| line["value"].take())
        .collect()
}

/// Rows of a CSV file as header → value maps (the test's own reading of the file).
pub fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

pub fn f64_of(text: &str) -> f64 {
    text.trim().parse().unwrap()
}
