//! The `mqtt` source against a real Mosquitto broker started per test on a free port
//! (scripts/test installs the Debian package and exports FIRESTREAM_MOSQUITTO).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{envelopes, free_port};
use firestream::config::SourceConfig;
use firestream::dedupe::Dedupe;
use firestream::manager::{Report, StreamManager};
use firestream::mode::PriorityPolicy;
use firestream::queue::{Lanes, Queue};
use firestream::stats::Stats;
use firestream::transport::mqtt::{Intake, MqttTransport};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "wildfire-iot-sensors";

/// The mosquitto binary: FIRESTREAM_MOSQUITTO, else the Debian locations.
fn mosquitto_bin() -> PathBuf {
    if let Ok(path) = std::env::var("FIRESTREAM_MOSQUITTO") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "mosquitto not found: run scripts/test (it installs it), or `apt-get install -y mosquitto`, or set FIRESTREAM_MOSQUITTO to its path"
    );
}

/// A Mosquitto process on a local port, killed on drop.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(free_port(), "")
    }

    /// `extra`: more mosquitto.conf lines (e.g. a password file).
    fn start_with(port: u16, extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker {
            port,
            dir,
            child: None,
        };
        let anonymous = if extra.contains("password_file") {
            "false"
        } else {
            "true"
        };
        std::fs::write(
            broker.dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\n{extra}\n"
            ),
        )
        .unwrap();
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        // Ready when it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto did not listen on port {} within 5s", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test publisher; `publish` returns once the broker has acknowledged (QoS 1).
struct Publisher {
    client: AsyncClient,
    acked: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: JoinHandle<()>,
}

impl Publisher {
    async fn connect(port: u16, client_id: &str) -> Publisher {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, acked) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    let _ = tx.send(());
                }
            }
        });
        Publisher {
            client,
            acked,
            task,
        }
    }

    async fn publish(&mut self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.acked.recv())
            .await
            .expect("the broker acknowledges the publish within 5s")
            .expect("publisher connected");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mqtt_config(log_dir: &Path, broker: &str, extra: &str) -> firestream::config::Config {
    common::config(
        log_dir,
        &format!(
            r#"
sources:
  iot:
    type: mqtt
    broker: {broker}
    topics: ["sensors/+/data", "probe/#"]
    mapping: {{time: ts, device_topic_level: 1}}
{extra}"#
        ),
    )
}

/// A running manager and its log.
struct Running {
    log: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Report>,
    _dir: tempfile::TempDir,
}

async fn run(broker: &Broker, extra: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = mqtt_config(dir.path(), &broker.url(), extra);
    let manager = StreamManager::new(config).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { manager.run(shutdown).await.unwrap() })
    };
    Running {
        log: dir.path().join("log"),
        shutdown,
        task,
        _dir: dir,
    }
}

impl Running {
    fn records(&self) -> Vec<Value> {
        envelopes(&self.log, TOPIC)
    }

    /// Records not from the probe topic.
    fn readings(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| !r["data"]["topic"].as_str().unwrap().starts_with("probe/"))
            .collect()
    }

    async fn wait_for(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        for _ in 0..300 {
            if ok(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}; the log has {:#?}",
            self.records()
        );
    }

    /// Publishes probes until one arrives: the stream is then connected and subscribed.
    async fn wait_subscribed(&self, publisher: &mut Publisher) {
        let before = self.records().len();
        for n in 0..100 {
            publisher
                .publish(&format!("probe/{n}"), &format!("{n}"), false)
                .await;
            for _ in 0..4 {
                if self.records().len() > before {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("the mqtt stream never subscribed");
    }

    async fn stop(self) -> Report {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the service stops within 20s")
            .unwrap()
    }
}

fn reading(ts: &str, temp: f64) -> String {
    format!(r#"{{"ts": "{ts}", "temperature_c": {temp}, "rh_pct": 11.5}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_with_the_mapped_values() {
    let broker = Broker::start();
    let running = run(&broker, "").await;
    let mut publisher = Publisher::connect(broker.port, "test-pub").await;
    running.wait_subscribed(&mut publisher).await;

    publisher
        .publish(
            "sensors/tower-7/data",
            &reading("2026-08-01T20:15:00-07:00", 38.5),
            false,
        )
        .await;
    publisher
        .publish("sensors/tower-8/data", "not a reading", false)
        .await;
    // A topic outside the filters is never seen.
    publisher.publish("other/tower-9/data", "1", false).await;
    running
        .wait_for("the reading", |r| r.readings().len() == 1)
        .await;
    running
        .wait_for("the dead letter", |r| {
            !envelopes(&r.log, "firestream-dlq").is_empty()
        })
        .await;
    let record = &running.readings()[0];
    assert_eq!(record["source_id"], "iot");
    assert_eq!(record["source_type"], "mqtt");
    assert_eq!(record["kind"], "sensor_reading");
    assert_eq!(record["event_time"], "2026-08-02T03:15:00Z");
    assert_eq!(record["location"], Value::Null);
    assert_eq!(record["priority"], "normal");
    assert_eq!(record["data"]["device_id"], "tower-7");
    assert_eq!(record["data"]["topic"], "sensors/tower-7/data");
    assert_eq!(record["data"]["retained"], false);
    assert_eq!(
        record["data"]["measurements"],
        serde_json::json!({"temperature_c": 38.5, "rh_pct": 11.5})
    );
    let dead = envelopes(&running.log, "firestream-dlq");
    let report = running.stop().await;
    let s = &report.streams["iot"];
    assert_eq!(s.invalid, 1);
    assert_eq!(s.rows, s.records + 1);
    assert_eq!(report.dead_letters["validate"], 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["stage"], "validate");
    assert_eq!(dead[0]["source_id"], "iot");
    assert_eq!(dead[0]["raw_excerpt"], "not a reading");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("topic sensors/tower-8/data: payload is neither JSON"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes_after_the_broker_restarts() {
    let mut broker = Broker::start();
    let running = run(&broker, "").await;
    {
        let mut publisher = Publisher::connect(broker.port, "test-pub-1").await;
        running.wait_subscribed(&mut publisher).await;
        for n in 0..5 {
            let ts = format!("2026-08-01T10:00:0{n}Z");
            publisher
                .publish("sensors/a/data", &reading(&ts, f64::from(n)), false)
                .await;
        }
        running
            .wait_for("5 readings before the restart", |r| r.readings().len() == 5)
            .await;
    }
    // Same port, fresh broker (no persistence: the session and subscriptions are gone).
    broker.restart();
    let mut publisher = Publisher::connect(broker.port, "test-pub-2").await;
    running.wait_subscribed(&mut publisher).await;
    for n in 0..5 {
        let ts = format!("2026-08-01T11:00:0{n}Z");
        publisher
            .publish("sensors/b/data", &reading(&ts, f64::from(n)), false)
            .await;
    }
    running
        .wait_for("5 readings after the restart", |r| r.readings().len() == 10)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readings = running.readings();
    assert_eq!(readings.len(), 10, "no loss, no duplicates");
    let after: Vec<f64> = readings
        .iter()
        .filter(|r| r["data"]["device_id"] == "b")
        .map(|r| r["data"]["measurements"]["temperature_c"].as_f64().unwrap())
        .collect();
    let mut sorted = after.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(sorted, [0.0, 1.0, 2.0, 3.0, 4.0]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_is_delivered_once_and_flagged() {
    let broker = Broker::start();
    let mut publisher = Publisher::connect(broker.port, "test-pub").await;
    // Retained before the service subscribes; no timestamp, so keyed by payload hash.
    publisher
        .publish("sensors/hill/data", r#"{"temperature_c": 31.25}"#, true)
        .await;
    let running = run(&broker, "").await;
    running
        .wait_for("the retained reading", |r| r.readings().len() == 1)
        .await;
    let first = running.readings()[0].clone();
    assert_eq!(first["data"]["retained"], true);
    assert_eq!(first["data"]["device_id"], "hill");
    assert_eq!(first["data"]["measurements"]["temperature_c"], 31.25);

    // Another client takes over the session's client id: the broker drops our
    // connection, we reconnect and subscribe again, and the broker re-sends the retained
    // message.
    {
        let mut options = MqttOptions::new("firestream-iot", "127.0.0.1", broker.port);
        options.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
                    break;
                }
            }
        })
        .await
        .expect("the takeover client connects");
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
    // Reconnected: a live reading arrives after the re-sent retained one.
    running.wait_subscribed(&mut publisher).await;
    publisher
        .publish("sensors/hill/data", r#"{"temperature_c": 30.5}"#, false)
        .await;
    running
        .wait_for("the live reading", |r| r.readings().len() == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readings = running.readings();
    assert_eq!(readings.len(), 2, "the retained message was not re-emitted");
    let retained: Vec<&Value> = readings
        .iter()
        .filter(|r| r["data"]["retained"] == true)
        .collect();
    assert_eq!(retained.len(), 1);
    assert_eq!(retained[0]["id"], first["id"]);
    let report = running.stop().await;
    let s = &report.streams["iot"];
    assert!(
        s.duplicates >= 1,
        "the re-sent retained message was seen and deduplicated: {s:?}"
    );
}

/// Runs the transport alone into a queue, for checks of the connection itself.
struct Direct {
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    status: Arc<firestream::transport::mqtt::MqttStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn direct(yaml: &str) -> Direct {
    let source: SourceConfig = yaml_serde::from_str(yaml).unwrap();
    let transport = MqttTransport::new(Arc::from("iot"), &source, Duration::from_millis(500));
    let status = transport.status();
    let queue = Arc::new(Queue::new(100, 10));
    let stats = Arc::new(Stats::default());
    let intake = Intake {
        stream_id: Arc::from("iot"),
        priority: PriorityPolicy {
            source_override: None,
            bulk: false,
        },
        dedupe: Arc::new(Dedupe::new(Duration::from_secs(60))),
        queue: queue.clone(),
        buffer: None,
        stats: stats.clone(),
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(transport.run(intake, cancel.clone()));
    Direct {
        queue,
        stats,
        status,
        cancel,
        task,
    }
}

impl Direct {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the transport stops within 10s")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_are_checked_by_the_broker() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    // From the same package: beside mosquitto in /usr/bin, or on PATH.
    let passwd_tool = ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mosquitto_passwd");
    let status = Command::new(passwd_tool)
        .arg("-b")
        .arg("-c")
        .arg(&passwords)
        .args(["sensor-gw", "right-horse-battery"])
        .status()
        .expect("mosquitto_passwd runs (it comes with the mosquitto package)");
    assert!(status.success());
    let broker = Broker::start_with(port, &format!("password_file {}", passwords.display()));

    // The wrong password: refused, said clearly, and never echoed.
    let wrong = direct(&format!(
        "type: mqtt\nbroker: {}\ntopics: [sensors/#]\nusername: sensor-gw\npassword: wrong-staple",
        broker.url()
    ));
    let mut error = None;
    for _ in 0..100 {
        error = wrong.status.last_error();
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = error.expect("the refusal is reported");
    assert_eq!(
        error,
        "the broker refused the connection: not authorized (check `username` and `password`, and the broker's ACL)"
    );
    assert!(!error.contains("wrong-staple"));
    assert!(!wrong.status.is_connected());
    assert_eq!(wrong.status.connections(), 0);
    wrong.stop().await;

    // The right one: connected, subscribed, and a message arrives.
    let right = direct(&format!(
        "type: mqtt\nbroker: {}\ntopics: [sensors/#]\nusername: sensor-gw\npassword: right-horse-battery",
        broker.url()
    ));
    let mut options = MqttOptions::new("test-pub", "127.0.0.1", port);
    options.set_credentials("sensor-gw", "right-horse-battery");
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut got = None;
    for _ in 0..100 {
        client
            .publish("sensors/x/data", QoS::AtLeastOnce, false, b"17.5".to_vec())
            .await
            .unwrap();
        if let Ok(Some(batch)) =
            tokio::time::timeout(Duration::from_millis(100), right.queue.pop(Lanes::Bulk, 10)).await
        {
            got = Some(batch);
            break;
        }
    }
    pump.abort();
    let batch = got.expect("a message arrives with the right password");
    let record = serde_json::to_value(&batch.records[0]).unwrap();
    assert_eq!(record["data"]["measurements"]["data"], 17.5);
    assert!(right.status.is_connected());
    assert!(right.stats.stream("iot").snapshot().records >= 1);
    drop(batch);
    right.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_acked_only_after_its_record_is_settled() {
    let broker = Broker::start();
    let mut publisher = Publisher::connect(broker.port, "test-pub").await;
    let yaml = format!(
        "type: mqtt\nbroker: {}\ntopics: [sensors/#]\nclient_id: ack-test",
        broker.url()
    );

    // The record reaches the queue, but nothing delivers it: no ack goes to the broker.
    let first = direct(&yaml);
    for _ in 0..100 {
        if first.status.connections() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher.publish("sensors/a/data", "1.5", false).await;
    let held = tokio::time::timeout(Duration::from_secs(5), first.queue.pop(Lanes::Bulk, 10))
        .await
        .expect("the record is queued")
        .unwrap();
    assert_eq!(held.records.len(), 1);
    // Stopped while the record is still held (the drain waits 500ms, then gives up).
    first.stop().await;

    // Same client id, same session: the broker redelivers the unacked message.
    let second = direct(&yaml);
    let again = tokio::time::timeout(Duration::from_secs(5), second.queue.pop(Lanes::Bulk, 10))
        .await
        .expect("the unacked message is redelivered")
        .unwrap();
    assert_eq!(again.records[0].id, held.records[0].id);
    drop(held);
    // Settled now: dropping the batch releases the receipt, and the broker gets the ack.
    drop(again);
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.stop().await;

    // A third session gets nothing: the message was acknowledged.
    let third = direct(&yaml);
    let nothing =
        tokio::time::timeout(Duration::from_secs(1), third.queue.pop(Lanes::Bulk, 10)).await;
    assert!(nothing.is_err(), "an acked message must not come back");
    assert!(third.status.connections() > 0);
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_dead_lettered_and_does_not_wedge_the_source() {
    let broker = Broker::start();
    let running = run(&broker, "").await;
    let mut publisher = Publisher::connect(broker.port, "test-pub").await;
    running.wait_subscribed(&mut publisher).await;
    let big = format!(
        "{{\"pad\": \"{}\", \"temperature_c\": 1}}",
        "x".repeat(2 << 20)
    );
    publisher.publish("sensors/big/data", &big, false).await;
    publisher
        .publish(
            "sensors/tower-7/data",
            &reading("2026-08-01T20:15:00-07:00", 38.5),
            false,
        )
        .await;
    running
        .wait_for("the reading after the big one", |r| r.readings().len() == 1)
        .await;
    running
        .wait_for("the dead letter", |r| {
            !envelopes(&r.log, "firestream-dlq").is_empty()
        })
        .await;
    let dead = envelopes(&running.log, "firestream-dlq");
    let report = running.stop().await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(reason.contains("larger than the 1048576 bytes"), "{reason}");
    assert_eq!(report.streams["iot"].invalid, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_streaming_holds_readings_until_the_flush_interval() {
    let broker = Broker::start();
    let running = run(
        &broker,
        "    mode: continuous_streaming\n    buffer_size: 1000\n    buffer_flush_interval: 1s\n",
    )
    .await;
    let mut publisher = Publisher::connect(broker.port, "test-pub").await;
    running.wait_subscribed(&mut publisher).await;
    // Probes still held reach the log within their interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (n, ts) in [
        "2026-08-01T20:15:00Z",
        "2026-08-01T20:16:00Z",
        "2026-08-01T20:17:00Z",
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .publish(
                &format!("sensors/tower-{n}/data"),
                &reading(ts, 30.0 + n as f64),
                false,
            )
            .await;
    }
    // Held in the buffer: nothing can reach the log before the interval has passed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running.readings().is_empty(), "{:?}", running.readings());
    running
        .wait_for("the buffered readings", |r| r.readings().len() == 3)
        .await;
    let report = running.stop().await;
    let s = &report.streams["iot"];
    assert_eq!(s.enqueued, s.records);
    assert_eq!(s.dropped, 0);
}
