//! Lag-driven throttle (DESIGN §5 LagProbe + Throttle), end to end on librdkafka's mock
//! cluster: a downstream consumer group far behind drives bulk delivery down to the rate
//! the formula gives, a critical alert still goes through at once, and when the group
//! catches up the level falls and the rate recovers. Nothing is lost or duplicated.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::kafka::read_to_end;
use common::real;
use firestream::manager::StreamManager;
use firestream::stats::Stats;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const M6: &str = "firms/fire_nrt_M6_157509.csv";
const M6_RECORDS: u64 = 5_824;
const ALERTS: &str = "noaa/alerts_active_point_33.25_-112.30__2024-07-18.json";
const FIRMS: &str = "wildfire-nasa-firms";
const GROUP: &str = "fire-analytics";
const PARTITIONS: i32 = 4;
/// Records already in the topic that the group has not read: lag far above critical_lag.
const SEEDED: i64 = 3_000;

type Mock = MockCluster<'static, DefaultProducerContext>;

/// Rates of the test's settings: max_rate 1000 / 2^L, floored at min_rate 40.
const LEVEL_RATES: [f64; 6] = [1_000.0, 500.0, 250.0, 125.0, 62.5, 40.0];

fn throttle_yaml() -> String {
    format!(
        "throttle: {{enabled: true, consumer_groups: [{GROUP}], target_lag: 300, critical_lag: 1000, max_rate: 1000, min_rate: 40, factor: 2, max_level: 5, interval: 200ms, window: 200ms, recovery_samples: 2}}\n"
    )
}

fn seed(bootstrap: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for n in 0..SEEDED {
        let key = n.to_string();
        let payload = format!("{{\"seed\":{n}}}");
        producer
            .send(BaseRecord::to(FIRMS).key(&key).payload(&payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn group_consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Commits the group's offsets: `at(partition)` for each partition.
fn commit(consumer: &BaseConsumer, at: impl Fn(i32) -> i64) {
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(FIRMS, p, Offset::Offset(at(p)))
            .unwrap();
    }
    consumer.commit(&list, CommitMode::Sync).unwrap();
}

/// The real Phoenix alerts with the first one turned into a Red Flag Warning (critical).
fn red_flag_alerts(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(real(ALERTS)).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["features"][0]["properties"]["event"] = "Red Flag Warning".into();
    let path = dir.join("alerts.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn delivered(stats: &Stats, topic: &str) -> u64 {
    stats.topics().get(topic).map_or(0, |t| t.delivered)
}

fn level(stats: &Stats) -> Option<u32> {
    stats.throttle().get(FIRMS).map(|t| t.level)
}

/// Waits (liveness bound) until `done` holds.
async fn wait(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delivered records per second to FIRMS over `span`.
async fn measure(stats: &Stats, span: Duration) -> (u64, f64) {
    let (d0, t0) = (delivered(stats, FIRMS), Instant::now());
    tokio::time::sleep(span).await;
    let n = delivered(stats, FIRMS) - d0;
    (n, n as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_lag_is_summed_over_partitions_and_maxed_over_groups() {
    use firestream::throttle::lag::{KafkaLagProbe, LagProbe};
    let mock: Mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.create_topic(FIRMS, PARTITIONS, 1).unwrap();
    let b = bootstrap.clone();
    let ends = tokio::task::spawn_blocking(move || {
        seed(&b);
        let consumer = group_consumer(&b);
        let ends: Vec<i64> = (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(FIRMS, p, Duration::from_secs(5))
                    .unwrap()
                    .1
            })
            .collect();
        // fire-analytics: 10 behind on partition 0, caught up elsewhere.
        commit(&consumer, |p| {
            if p == 0 {
                ends[0] - 10
            } else {
                ends[p as usize]
            }
        });
        ends
    })
    .await
    .unwrap();
    assert_eq!(ends.iter().sum::<i64>(), SEEDED);
    let dir = tempfile::tempdir().unwrap();
    let config = common::kafka_config(
        dir.path(),
        &bootstrap,
        "{linger.ms: 5}",
        "throttle: {enabled: true, consumer_groups: [fire-analytics, new-reader]}\n",
    );
    let groups = config.throttle.consumer_groups.clone();
    let probe = KafkaLagProbe::new(&config, &groups, Duration::from_secs(5)).unwrap();
    let lag = probe.lag(FIRMS).await.unwrap();
    assert_eq!(lag.groups[GROUP], Some(10));
    // A group that never committed on the topic does not read it.
    assert_eq!(lag.groups["new-reader"], None);
    assert_eq!(lag.lag, 10);
    // Once new-reader commits partition 1 only, the other partitions count from the start.
    let b = bootstrap.clone();
    let end1 = ends[1];
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "new-reader")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(FIRMS, 1, Offset::Offset(end1))
            .unwrap();
        consumer.commit(&list, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
    let lag = probe.lag(FIRMS).await.unwrap();
    assert_eq!(lag.groups["new-reader"], Some((SEEDED - ends[1]) as u64));
    assert_eq!(lag.lag, (SEEDED - ends[1]) as u64);
    // The probe never moved the group's offsets.
    assert_eq!(probe.lag(FIRMS).await.unwrap().groups[GROUP], Some(10));
    // A topic the cluster does not have is an error that names it (the level stays).
    let err = probe.lag("no-such-topic").await.unwrap_err().to_string();
    assert!(
        err.starts_with("topic no-such-topic: Kafka does not know it"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_above_critical_slows_bulk_delivery_while_a_critical_alert_goes_through() {
    let mock: Mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    for (name, partitions) in [
        (FIRMS, PARTITIONS),
        ("wildfire-weather-alerts", 4),
        ("wildfire-critical-alerts", 4),
        ("firestream-dlq", 4),
        ("firestream-checkpoints", 1),
    ] {
        mock.create_topic(name, partitions, 1).unwrap();
    }
    // The downstream group has read nothing of what is already there.
    let b = bootstrap.clone();
    let group = tokio::task::spawn_blocking(move || {
        seed(&b);
        let consumer = group_consumer(&b);
        commit(&consumer, |_| 0);
        consumer
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let config = common::kafka_config(
        dir.path(),
        &bootstrap,
        "{}",
        &format!(
            "{}sources:\n  firms:\n    type: nasa_firms\n    interval: 1h\n    paths: [{}]\n  alerts:\n    type: nws_alerts\n    interval: 1s\n    paths: [{}]\n",
            throttle_yaml(),
            serde_json::to_string(&real(M6)).unwrap(),
            serde_json::to_string(&inbox.join("*.json")).unwrap(),
        ),
    );
    let manager = StreamManager::new(config).await.unwrap();
    let stats = manager.stats();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(manager.run(shutdown.clone()));

    // Lag ≥ critical_lag: one level up per 200 ms evaluation, to the maximum.
    let seen = std::sync::Mutex::new(Vec::new());
    wait("level 5", Duration::from_secs(30), || {
        let l = level(&stats);
        let mut seen = seen.lock().unwrap();
        if let Some(l) = l
            && seen.last() != Some(&l)
        {
            seen.push(l);
        }
        l == Some(5)
    })
    .await;
    let ramp = started.elapsed();
    // Only ever up, one level at a time (a level may pass between two looks).
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let status = stats.throttle()[FIRMS].clone();
    assert_eq!(status.rate, LEVEL_RATES[5]);
    assert!(status.lag.unwrap() >= SEEDED as u64, "{status:?}");
    assert_eq!(status.groups[GROUP], status.lag);

    // At level 5 the bulk rate is min_rate, 40/s: measured over 3 s, within a generous bound.
    let (throttled_n, throttled_rate) = measure(&stats, Duration::from_secs(3)).await;
    assert_eq!(level(&stats), Some(5), "the group is still far behind");
    assert!(
        (20.0..=60.0).contains(&throttled_rate),
        "delivered {throttled_n} in 3 s: {throttled_rate:.1}/s, expected about 40/s"
    );
    assert!(
        delivered(&stats, FIRMS) < M6_RECORDS / 2,
        "bulk is held back"
    );

    // A critical alert arrives now: it does not wait for the throttled bulk traffic.
    let alert_at = Instant::now();
    std::fs::rename(red_flag_alerts(dir.path()), inbox.join("alerts.json")).unwrap();
    wait("the critical alert", Duration::from_secs(10), || {
        delivered(&stats, "wildfire-critical-alerts") == 1
    })
    .await;
    let alert_latency = alert_at.elapsed();
    // The source polls its inbox every second; the delivery itself does not wait.
    assert!(alert_latency < Duration::from_secs(5), "{alert_latency:?}");
    let still_queued = M6_RECORDS - delivered(&stats, FIRMS);
    assert!(
        still_queued > 4_000,
        "bulk was still throttled: {still_queued} queued"
    );

    // The group catches up and keeps up: committing the log end every 100 ms.
    let keep_up = Arc::new(AtomicBool::new(true));
    let committer = {
        let keep_up = keep_up.clone();
        std::thread::spawn(move || {
            while keep_up.load(Ordering::Relaxed) {
                let ends: Vec<i64> = (0..PARTITIONS)
                    .map(|p| {
                        group
                            .fetch_watermarks(FIRMS, p, Duration::from_secs(5))
                            .unwrap()
                            .1
                    })
                    .collect();
                commit(&group, |p| ends[p as usize]);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let recovering = Instant::now();
    wait("level 0", Duration::from_secs(30), || {
        level(&stats) == Some(0)
    })
    .await;
    let recovery = recovering.elapsed();
    assert_eq!(stats.throttle()[FIRMS].rate, LEVEL_RATES[0]);
    let (recovered_n, recovered_rate) = measure(&stats, Duration::from_secs(1)).await;
    assert!(
        recovered_rate > 3.0 * LEVEL_RATES[5],
        "the rate recovered: {recovered_n} in 1 s ({recovered_rate:.1}/s) against {throttled_rate:.1}/s throttled"
    );

    wait("every FIRMS record", Duration::from_secs(60), || {
        delivered(&stats, FIRMS) == M6_RECORDS
    })
    .await;
    shutdown.cancel();
    let report = running.await.unwrap().unwrap();
    keep_up.store(false, Ordering::Relaxed);
    committer.join().unwrap();

    // The fault-matrix row: offered = delivered + DLQ, lost 0, duplicated 0.
    let offered = report.streams["firms"].enqueued;
    let dlq: u64 = report.dead_letters.values().sum();
    let b = bootstrap.clone();
    let (in_topic, dlq_topic) = tokio::task::spawn_blocking(move || {
        (read_to_end(&b, FIRMS), read_to_end(&b, "firestream-dlq"))
    })
    .await
    .unwrap();
    let ours: Vec<_> = in_topic
        .iter()
        .filter(|m| m.headers.contains_key("firestream-id"))
        .collect();
    let ids: HashSet<&str> = ours
        .iter()
        .map(|m| m.headers["firestream-id"].as_str())
        .collect();
    let duplicated = ours.len() - ids.len();
    let lost = offered - ids.len() as u64 - dlq;
    eprintln!(
        "throttle row: offered {offered}, delivered {}, DLQ {dlq}, lost {lost}, duplicated {duplicated}; ramp to level 5 {ramp:?}; throttled {throttled_n} in 3 s ({throttled_rate:.1}/s, formula 40/s); critical alert after {alert_latency:?} with {still_queued} bulk records queued; levels seen {seen:?}; recovery to level 0 in {recovery:?}; recovered {recovered_rate:.1}/s (formula 1000/s)",
        ids.len()
    );
    assert_eq!(offered, M6_RECORDS);
    assert_eq!(report.topics[FIRMS].delivered, M6_RECORDS);
    assert_eq!((dlq, dlq_topic.len()), (0, 0));
    assert_eq!((lost, duplicated, report.lost), (0, 0, 0));
    assert_eq!(in_topic.len() as u64, SEEDED as u64 + M6_RECORDS);
    assert_eq!(report.throttle[FIRMS].level, 0);
}

/// The same throttle on the local log: `firestream tail --group` commits the group's
/// offsets, the probe reads them next to the segments, and an ingest slows while the group
/// is behind.
mod local_log {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::{Command, Output};
    use std::time::{Duration, Instant};

    use firestream::sinks::log::groups;
    use firestream::throttle::lag::LogLagProbe;
    use serde_json::Value;

    use super::{FIRMS, GROUP, M6, M6_RECORDS, real};

    const USA: &str = "firms/MODIS_C6_1_USA_contiguous_and_Hawaii_24h__2025-03-25.csv";

    fn firestream(cwd: &Path, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
            .current_dir(cwd)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "firestream {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ingest(dir: &Path, file: &str) -> (Value, Duration) {
        let started = Instant::now();
        let out = firestream(
            dir,
            &[
                "ingest",
                "-c",
                "config.yaml",
                "--source-type",
                "nasa_firms",
                "--json",
                real(file).to_str().unwrap(),
            ],
        );
        (
            serde_json::from_slice(&out.stdout).unwrap(),
            started.elapsed(),
        )
    }

    /// (partition, offset) of each line `tail --group` printed.
    fn tail_group(dir: &Path, n: Option<usize>) -> Vec<(u64, u64)> {
        let n = n.map(|n| n.to_string());
        let mut args = vec!["tail", "-c", "config.yaml", FIRMS, "--group", GROUP];
        if let Some(n) = &n {
            args.extend(["-n", n]);
        }
        let out = firestream(dir, &args);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["partition"].as_u64().unwrap(),
                    v["offset"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_group_behind_on_the_local_log_slows_ingest_and_tail_group_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Level 1 divides the rate by 5: 1000/s → 200/s.
        std::fs::write(
            d.join("config.yaml"),
            format!(
                "sink: {{type: log, log: {{dir: log}}}}\nthrottle: {{enabled: true, consumer_groups: [{GROUP}], target_lag: 300, critical_lag: 1000, max_rate: 1000, min_rate: 200, factor: 5, max_level: 1, interval: 100ms, window: 100ms, recovery_samples: 2}}\n"
            ),
        )
        .unwrap();
        let log = d.join("log");

        // No group file: the group does not read the topic, so nothing is throttled.
        let (report, _) = ingest(d, M6);
        assert_eq!(report["topics"][FIRMS]["delivered"], M6_RECORDS);
        let t = &report["throttle"][FIRMS];
        assert_eq!(
            (t["level"].as_u64(), t["rate"].as_f64()),
            (Some(0), Some(1000.0))
        );
        assert_eq!(t["groups"][GROUP], Value::Null);

        // The group reads 100, then 50 more: each run starts where the last committed.
        let first = tail_group(d, Some(100));
        let second = tail_group(d, Some(50));
        assert_eq!((first.len(), second.len()), (100, 50));
        let committed = groups::read_group(&log, FIRMS, GROUP).unwrap().unwrap();
        assert_eq!(committed.values().sum::<u64>(), 150);
        let probe = LogLagProbe::new(log.clone(), vec![GROUP.to_owned()]);
        assert_eq!(probe.lag_now(FIRMS).unwrap().lag, M6_RECORDS - 150);

        // Lag ≥ critical_lag: the next ingest runs at level 1, 200/s, from the first sample.
        let (report, elapsed) = ingest(d, USA);
        let offered = report["streams"]["ingest_nasa_firms"]["enqueued"]
            .as_u64()
            .unwrap();
        assert!(offered > 1_000, "{offered}");
        assert_eq!(report["topics"][FIRMS]["delivered"], offered);
        let t = &report["throttle"][FIRMS];
        assert_eq!(
            (t["level"].as_u64(), t["rate"].as_f64()),
            (Some(1), Some(200.0))
        );
        assert!(t["lag"].as_u64().unwrap() >= M6_RECORDS - 150, "{t}");
        // At most 100 saved tokens and 1000/s until the first sample, then 200/s: over
        // 1 000 records cannot take under 3 s. (Unthrottled, the first ingest of 5 824
        // took a fraction of that.)
        assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");

        // The group reads everything that is left: lag 0, and it printed each record once.
        let rest = tail_group(d, None);
        let all: BTreeSet<(u64, u64)> = first.iter().chain(&second).chain(&rest).copied().collect();
        assert_eq!(
            all.len(),
            first.len() + second.len() + rest.len(),
            "no record twice"
        );
        assert_eq!(all.len() as u64, M6_RECORDS + offered);
        assert_eq!(probe.lag_now(FIRMS).unwrap().lag, 0);
        assert!(tail_group(d, None).is_empty());
    }
}
