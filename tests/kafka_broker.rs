//! End to end against a real broker process (DESIGN §11): `tansu`, a Kafka-compatible
//! broker, started on a free port. `firestream ingest` — the binary, with a config holding
//! only the sink and one topic — delivers the real FIRMS files; an independent consumer
//! reads every record back and checks ids and values against the local log's copy.
//!
//! tansu is installed once per machine by `scripts/install-tansu` (which `scripts/test`
//! runs); set `FIRESTREAM_TANSU` to use another binary. Its high watermark under-reports
//! the log end, so the consumer reads until the topic is idle.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::read_until_idle;
use common::{real, topic};
use firestream::manager::IngestTarget;
use firestream::sinks::partition::partition_for_key;
use firestream::sources::SourceType;
use serde_json::Value;

/// A tansu broker process with in-memory storage, killed when dropped.
struct Broker {
    child: Child,
    binary: PathBuf,
    bootstrap: String,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let binary: PathBuf = std::env::var_os("FIRESTREAM_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").expect("HOME");
                Path::new(&home).join(".cache/firestream/tools/tansu-0.6.0/bin/tansu")
            });
        assert!(
            binary.is_file(),
            "the tansu broker is not installed at {}: run scripts/install-tansu (scripts/test does), or set FIRESTREAM_TANSU",
            binary.display()
        );
        let port = common::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("tansu starts");
        let bootstrap = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while TcpStream::connect(&bootstrap).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not listen on {bootstrap} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            binary,
            bootstrap,
        }
    }

    /// Runs `firestream ingest --json` — the binary — with a config holding only this broker
    /// and the given `topics:` entries; returns its JSON summary and its log (stderr).
    fn ingest(
        &self,
        dir: &Path,
        topics: &str,
        source_type: &str,
        files: &[PathBuf],
    ) -> (Value, String) {
        let config = dir.join("kafka.yaml");
        std::fs::write(
            &config,
            format!(
                "sink: {{type: kafka, kafka: {{bootstrap_servers: \"{}\"}}}}\ntopics: {{{topics}}}\n",
                self.bootstrap
            ),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_firestream"))
            .arg("ingest")
            .arg("-c")
            .arg(&config)
            .args(["--source-type", source_type, "--json"])
            .args(files)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "ingest failed:\n{stderr}");
        (serde_json::from_slice(&output.stdout).unwrap(), stderr)
    }

    /// Creates a topic with tansu's own CLI, as an operator would.
    fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(&self.binary)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.bootstrap))
            .args(["--partitions", &partitions.to_string(), name])
            .status()
            .expect("tansu topic create runs");
        assert!(status.success(), "tansu topic create {name} failed");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every real FIRMS capture.
fn firms_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(real("firms/fire_nrt_M6_157509.csv").parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
    files.sort();
    assert_eq!(files.len(), 13);
    files
}

fn without_ingested_at(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("ingested_at");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestream_ingest_delivers_every_real_firms_record_to_a_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let files = firms_files();
    let (report, stderr) = broker.ingest(
        dir.path(),
        "wildfire-nasa-firms: {partitions: 4}",
        "nasa_firms",
        &files,
    );
    assert_eq!(report["sink"]["name"], "kafka");
    assert_eq!(report["sink"]["ready"], true);
    assert!(stderr.contains("created topic"), "{stderr}");

    // The reference: the same files through the local log.
    let reference_dir = tempfile::tempdir().unwrap();
    common::ingest(
        common::config(reference_dir.path(), ""),
        IngestTarget::SourceType(SourceType::NasaFirms),
        &files,
    )
    .await;
    let reference: HashMap<String, Value> =
        topic(&reference_dir.path().join("log"), "wildfire-nasa-firms")
            .into_iter()
            .map(|line| (line["value"]["id"].as_str().unwrap().to_owned(), line))
            .collect();
    assert_eq!(reference.len(), 79_885);
    assert_eq!(report["topics"]["wildfire-nasa-firms"]["delivered"], 79_885);

    let bootstrap = broker.bootstrap.clone();
    let consumed = tokio::task::spawn_blocking(move || {
        read_until_idle(&bootstrap, "wildfire-nasa-firms", Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert_eq!(consumed.len(), 79_885);
    let mut seen = HashSet::new();
    for message in &consumed {
        let id = message.value["id"].as_str().unwrap();
        assert!(seen.insert(id.to_owned()), "duplicate {id}");
        let line = &reference[id];
        assert_eq!(message.key, line["key"].as_str().unwrap());
        assert_eq!(
            message.partition as u32,
            partition_for_key(message.key.as_bytes(), 4),
            "{id}"
        );
        assert_eq!(message.headers["firestream-id"], id);
        assert_eq!(message.headers["firestream-kind"], "fire_detection");
        assert_eq!(
            without_ingested_at(message.value.clone()),
            without_ingested_at(line["value"].clone()),
            "{id}"
        );
    }
}

#[test]
fn a_present_topic_that_differs_from_its_declaration_is_a_warning_not_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    broker.create_topic("wildfire-weather-alerts", 2);
    let (report, stderr) = broker.ingest(
        dir.path(),
        "wildfire-weather-alerts: {partitions: 4}",
        "nws_alerts",
        &[real(
            "noaa/alerts_active_point_33.25_-112.30__2024-07-18.json",
        )],
    );
    assert!(
        stderr.contains("topic exists with a different partition count")
            && stderr.contains("actual=2")
            && stderr.contains("declared=4"),
        "{stderr}"
    );
    assert_eq!(report["topics"]["wildfire-weather-alerts"]["delivered"], 2);
    // Placed by the topic's real partition count.
    let consumed = read_until_idle(
        &broker.bootstrap,
        "wildfire-weather-alerts",
        Duration::from_secs(5),
    );
    assert_eq!(consumed.len(), 2);
    for message in &consumed {
        assert_eq!(
            message.partition as u32,
            partition_for_key(message.key.as_bytes(), 2)
        );
    }
}

/// Messages of `topic` counted the way the broker reports them (its high watermarks), which
/// tansu under-reports: good enough to know that an ingest is well under way.
fn reported_count(bootstrap: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..4)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(low, high)| high - low)
        })
        .sum()
}

#[test]
fn kill_9_during_an_ingest_into_a_real_broker_then_restart_stores_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = dir.path().join("kafka.yaml");
    std::fs::write(
        &config,
        format!(
            "sink: {{type: kafka, kafka: {{bootstrap_servers: \"{}\"}}}}\ntopics: {{wildfire-nasa-firms: {{partitions: 4}}}}\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    let ingest = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_firestream"));
        command
            .args(["ingest", "-c"])
            .arg(&config)
            .args(["--source-type", "nasa_firms", "--json"])
            .args(firms_files());
        command
    };
    let mut child = ingest()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while reported_count(&broker.bootstrap, "wildfire-nasa-firms") < 10_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ingest ended before the kill"
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let output = ingest().output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let second = summary["topics"]["wildfire-nasa-firms"]["delivered"]
        .as_u64()
        .unwrap();
    let consumed = read_until_idle(
        &broker.bootstrap,
        "wildfire-nasa-firms",
        Duration::from_secs(5),
    );
    let ids: HashSet<&str> = consumed
        .iter()
        .map(|m| m.headers["firestream-id"].as_str())
        .collect();
    eprintln!(
        "| kill -9 during ingest, restart | tansu 0.6 | 79885 | {} + {second} | 0 | {} | {} |",
        consumed.len() as u64 - second,
        79_885 - ids.len(),
        consumed.len() - ids.len()
    );
    assert_eq!((consumed.len(), ids.len()), (79_885, 79_885));
}

/// The only broker unresponsive for 10 s mid-stream (SIGSTOP, then SIGCONT), with a short
/// request timeout so librdkafka gives up on the requests in flight, reconnects and sends
/// them again: the idempotent producer's sequence numbers let the broker discard what it
/// had already stored. Nothing lost, nothing stored twice, nothing dead-lettered.
#[test]
fn a_broker_frozen_for_10_s_mid_stream_stores_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let config = dir.path().join("kafka.yaml");
    std::fs::write(
        &config,
        format!(
            "sink: {{type: kafka, kafka: {{bootstrap_servers: \"{}\", properties: {{request.timeout.ms: \"2000\", socket.timeout.ms: \"2000\"}}}}}}\ntopics: {{wildfire-nasa-firms: {{partitions: 4}}}}\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["ingest", "-c"])
        .arg(&config)
        .args(["--source-type", "nasa_firms", "--json"])
        .args(firms_files())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut before = 0;
    while before < 10_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ingest ended before the freeze"
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
        before = reported_count(&broker.bootstrap, "wildfire-nasa-firms");
    }
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &broker.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(10));
    signal("-CONT");
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let consumed = read_until_idle(
        &broker.bootstrap,
        "wildfire-nasa-firms",
        Duration::from_secs(5),
    );
    let ids: HashSet<&str> = consumed
        .iter()
        .map(|m| m.headers["firestream-id"].as_str())
        .collect();
    let dlq = summary["dead_letters"]
        .as_object()
        .map_or(0, |d| d.values().filter_map(Value::as_u64).sum::<u64>());
    eprintln!(
        "| only broker frozen 10 s mid-stream (SIGSTOP/SIGCONT), idempotent producer | tansu 0.6 | 79885 | {} | {dlq} | {} | {} | {before} stored before; {} firestream retries |",
        consumed.len(),
        79_885 - ids.len(),
        consumed.len() - ids.len(),
        summary["topics"]["wildfire-nasa-firms"]["retries"]
    );
    assert_eq!(dlq, 0, "{summary}");
    assert_eq!((consumed.len(), ids.len()), (79_885, 79_885));
}
