//! The `firestream` binary end to end: ingest, tail, validate, and the demo config run
//! until SIGTERM.

mod common;

use common::firestream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{real, repo, topic};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a usage or configuration error: exit code 2 and `message` on stderr.
fn assert_usage_error(out: &Output, message: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert!(stderr(out).contains(message), "{}", stderr(out));
}

fn sink_only_config(dir: &Path) -> PathBuf {
    let config = dir.join("config.yaml");
    std::fs::write(&config, "sink: {type: log, log: {dir: out/log}}\n").unwrap();
    config
}

#[test]
fn ingest_from_another_directory_then_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = sink_only_config(dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    // PATH relative to the working directory; log dir relative to the config file.
    let data = elsewhere.path().join("fires.csv");
    std::fs::copy(real("firms/fire_nrt_M6_157509.csv"), &data).unwrap();
    let out = firestream(
        elsewhere.path(),
        &[
            "ingest",
            "-c",
            config.to_str().unwrap(),
            "--source-type",
            "nasa_firms",
            "fires.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "rows read              5824",
        "records emitted        5824",
        "duplicates                0",
        "invalid → DLQ             0",
        "wildfire-nasa-firms                5824",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let log = dir.path().join("out/log");
    assert_eq!(topic(&log, "wildfire-nasa-firms").len(), 5_824);
    assert!(!elsewhere.path().join("out").exists());

    let cfg = config.to_str().unwrap();
    let out = firestream(
        elsewhere.path(),
        &["tail", "-c", cfg, "wildfire-nasa-firms", "-n", "3"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["topic"], "wildfire-nasa-firms");
        assert!(line["partition"].as_u64().unwrap() < 4);
        assert_eq!(line["value"]["kind"], "fire_detection");
    }
    let out = firestream(
        elsewhere.path(),
        &["tail", "-c", cfg, "wildfire-nasa-firms", "--from-beginning"],
    );
    assert_eq!(stdout(&out).lines().count(), 5_824);
    // Merged by timestamp, then partition and offset.
    let order: Vec<(i64, u64, u64)> = stdout(&out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["timestamp"].as_i64().unwrap(),
                v["partition"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]));
    let out = firestream(
        elsewhere.path(),
        &[
            "tail",
            "-c",
            cfg,
            "wildfire-nasa-firms",
            "--from-beginning",
            "-n",
            "2",
        ],
    );
    assert_eq!(stdout(&out).lines().count(), 2);

    let out = firestream(elsewhere.path(), &["tail", "-c", cfg, "no-such-topic"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("topic no-such-topic not found")
            && stderr(&out).contains("wildfire-nasa-firms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ingest_summary_adds_up_when_a_file_is_given_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = sink_only_config(dir.path());
    let file = real("firms/fire_nrt_M6_157509.csv");
    let file = file.to_str().unwrap();
    let cfg = config.to_str().unwrap();
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            cfg,
            "--source-type",
            "nasa_firms",
            file,
            file,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // rows read = records emitted + duplicates + invalid.
    let text = stdout(&out);
    for expected in [
        "rows read             11648",
        "records emitted        5824",
        "duplicates             5824",
        "invalid → DLQ             0",
        "wildfire-nasa-firms                5824",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(
        topic(&dir.path().join("out/log"), "wildfire-nasa-firms").len(),
        5_824
    );
}

#[test]
fn ingest_json_summary_and_dlq_for_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    sink_only_config(dir.path());
    let text = std::fs::read_to_string(real(
        "firms/area_api_VIIRS_NOAA20_SP__2026-04-04__first40_transcribed.csv",
    ))
    .unwrap();
    // Row 2's latitude out of range.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (_, rest) = lines[2].split_once(',').unwrap();
    lines[2] = format!("95.1,{rest}");
    std::fs::write(dir.path().join("bad.csv"), lines.join("\n")).unwrap();
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            "config.yaml",
            "--source-type",
            "nasa_firms",
            "--json",
            "bad.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let s = &summary["streams"]["ingest_nasa_firms"];
    assert_eq!(s["rows"], 40);
    assert_eq!(s["records"], 39);
    assert_eq!(s["invalid"], 1);
    assert_eq!(summary["topics"]["wildfire-nasa-firms"]["delivered"], 39);
    assert_eq!(summary["topics"]["firestream-dlq"]["delivered"], 1);
    assert_eq!(summary["dead_letters"]["validate"], 1);
    assert_eq!(summary["lost"], 0);
    let out = firestream(dir.path(), &["tail", "-c", "config.yaml", "firestream-dlq"]);
    let dlq: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(
        dlq["value"]["reason"]
            .as_str()
            .unwrap()
            .ends_with("bad.csv line 3: latitude 95.1 is outside -90..90"),
        "{dlq}"
    );

    // A second run finds the first run's records in its checkpoint: none is sent again. The
    // same bad row read twice in one run is dead-lettered once, the repeat counted as a
    // duplicate like a repeated record: rows = records emitted + duplicates + invalid.
    std::fs::copy(dir.path().join("bad.csv"), dir.path().join("again.csv")).unwrap();
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            "config.yaml",
            "--source-type",
            "nasa_firms",
            "--json",
            "bad.csv",
            "again.csv",
        ],
    );
    let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let s = &summary["streams"]["ingest_nasa_firms"];
    assert_eq!(
        (s["rows"].as_u64(), s["enqueued"].as_u64()),
        (Some(80), Some(0))
    );
    assert_eq!(
        (s["duplicates"].as_u64(), s["invalid"].as_u64()),
        (Some(79), Some(1))
    );
    assert!(
        summary["topics"]["wildfire-nasa-firms"].is_null(),
        "{summary}"
    );
    assert_eq!(summary["dead_letters"]["validate"], 1);

    // The log deleted, the checkpoints kept: they cover offsets the log no longer has, so
    // they are ignored and the records are delivered again rather than lost.
    std::fs::remove_dir_all(dir.path().join("out/log")).unwrap();
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            "config.yaml",
            "--source-type",
            "nasa_firms",
            "--json",
            "bad.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["topics"]["wildfire-nasa-firms"]["delivered"], 39);
    assert!(
        stderr(&out).contains("the checkpoint covers records the topic no longer has"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_and_config_errors_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = sink_only_config(dir.path());
    let cfg = config.to_str().unwrap();
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            cfg,
            "--source-type",
            "nasa_firms",
            "missing.csv",
        ],
    );
    assert_usage_error(&out, "missing.csv: no such file");

    // A device is not a file to backfill: refused, not read as zero rows.
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            cfg,
            "--source-type",
            "nasa_firms",
            "/dev/null",
        ],
    );
    assert_usage_error(&out, "/dev/null is not a regular file");

    let out = firestream(
        dir.path(),
        &["ingest", "-c", cfg, "--source-type", "firms", "x.csv"],
    );
    assert_usage_error(&out, "known types: nasa_firms");

    let out = firestream(dir.path(), &["ingest", "-c", cfg, "x.csv"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--source-type or --source is required"
    );

    std::fs::write(dir.path().join("data.csv"), "x").unwrap();
    let out = firestream(
        dir.path(),
        &["ingest", "-c", cfg, "--source", "nope", "data.csv"],
    );
    assert_usage_error(&out, "unknown source `nope`");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "sink:\n  type: log\nsourcs: {}\n").unwrap();
    let out = firestream(dir.path(), &["validate", "-c", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("bad.yaml:3:1") && err.contains("unknown field `sourcs`"),
        "{err}"
    );

    let out = firestream(dir.path(), &["run", "-c", "nowhere.yaml"]);
    assert_usage_error(&out, "config file nowhere.yaml not found");

    let out = firestream(dir.path(), &["run", "-c", cfg]);
    assert_usage_error(&out, "no sources configured");

    let out = firestream(&repo("."), &["validate", "-c", "config/demo.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A generic http file needs a configured source for its mapping and topic.
    let out = firestream(
        dir.path(),
        &["ingest", "-c", cfg, "--source-type", "http", "data.json"],
    );
    assert_usage_error(&out, "configure a source of type http and use --source ID");

    // An unknown source is refused before the sink is opened, naming what exists.
    let out = firestream(
        dir.path(),
        &["ingest", "-c", cfg, "--source", "nope", "data.csv"],
    );
    assert!(
        stderr(&out).contains("configured sources: (none)"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("sink ready"), "{}", stderr(&out));
    assert!(!dir.path().join("out/log").exists());

    // A sink-only config is valid, but `run` would need a source: validate says so.
    let out = firestream(dir.path(), &["validate", "-c", cfg]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("note: no sources configured"),
        "{}",
        stdout(&out)
    );

    // A log directory that is a file is a config problem, found by validate.
    std::fs::write(dir.path().join("taken"), "x").unwrap();
    std::fs::write(
        dir.path().join("file-dir.yaml"),
        "sink: {log: {dir: taken}}\n",
    )
    .unwrap();
    let out = firestream(dir.path(), &["validate", "-c", "file-dir.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("sink.log.dir") && stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );

    // Topic names are Kafka's: no paths.
    for bad in ["..", "wildfire-nasa-firms/0", "a b"] {
        let out = firestream(dir.path(), &["tail", "-c", cfg, bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&out).contains("is not a topic name"),
            "{}",
            stderr(&out)
        );
    }
    // An empty DLQ is good news, not an error.
    let out = firestream(dir.path(), &["tail", "-c", cfg, "firestream-dlq"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no dead letters"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn an_interrupted_ingest_exits_130_and_names_the_files_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = sink_only_config(dir.path());
    // Many copies of a real file, so the signal lands mid-ingest.
    let mut args: Vec<String> = [
        "ingest",
        "-c",
        config.to_str().unwrap(),
        "--source-type",
        "nasa_firms",
        "--json",
    ]
    .map(str::to_owned)
    .to_vec();
    for i in 0..200 {
        let copy = dir.path().join(format!("copy{i:03}.csv"));
        std::fs::copy(
            real("firms/SUOMI_VIIRS_C2_USA_contiguous_and_Hawaii_7d__2025-11.csv"),
            &copy,
        )
        .unwrap();
        args.push(copy.to_string_lossy().into_owned());
    }
    let child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(&args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is reading, then interrupt.
    let log = dir.path().join("out/log");
    for _ in 0..600 {
        if log.join("wildfire-nasa-firms").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let not_read = report["not_read"].as_array().unwrap();
    assert!(!not_read.is_empty());
    assert!(
        not_read
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with("copy199.csv")
    );
    // Whatever was read is accounted for: every record read was delivered or a duplicate.
    let stream = &report["streams"]["ingest_nasa_firms"];
    let delivered = topic(&log, "wildfire-nasa-firms").len() as u64;
    assert_eq!(
        report["topics"]["wildfire-nasa-firms"]["delivered"],
        delivered
    );
    assert_eq!(stream["rows"], stream["records"]);
    assert_eq!(
        stream["records"].as_u64().unwrap(),
        delivered + stream["duplicates"].as_u64().unwrap()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn demo_config_runs_writes_as_it_goes_and_stops_cleanly_on_sigterm() {
    // A copy of the repository's demo layout, so the test never writes into the checkout.
    let root = tempfile::tempdir().unwrap();
    copy_dir(&repo("samples"), &root.path().join("samples"));
    std::fs::create_dir(root.path().join("config")).unwrap();
    // The demo's API port may be taken on a test machine: any free one will do here.
    let demo = std::fs::read_to_string(repo("config/demo.yaml")).unwrap();
    assert!(
        !demo.contains("\napi:"),
        "the demo config sets api: adjust this test"
    );
    std::fs::write(
        root.path().join("config/demo.yaml"),
        format!("{demo}\napi: {{bind: \"127.0.0.1:0\"}}\n"),
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c"])
        .arg(root.path().join("config/demo.yaml"))
        .current_dir(elsewhere.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = root.path().join("data/log");
    let counts = || {
        (
            topic(&log, "wildfire-nasa-firms").len(),
            topic(&log, "wildfire-weather-data").len(),
            topic(&log, "wildfire-weather-alerts").len(),
            topic(&log, "wildfire-air-quality").len(),
            topic(&log, "wildfire-incidents").len(),
        )
    };
    let expected = (2_189, 1, 3, 9 + 1_463, 166);
    let mut seen = (0, 0, 0, 0, 0);
    for _ in 0..600 {
        seen = counts();
        if seen == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // On disk while still running.
    assert_eq!(seen, expected);
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let log_text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log_text}");
    assert!(log_text.contains("stopped"), "{log_text}");
    assert_eq!(
        counts(),
        expected,
        "nothing more, nothing less after shutdown"
    );
    // The gzip sample and the archive backfill came through with their own stream ids.
    let firms = common::envelopes(&log, "wildfire-nasa-firms");
    let by = |id: &str| firms.iter().filter(|e| e["source_id"] == id).count();
    assert_eq!(by("firms_modis_usa"), 1_049);
    assert_eq!(by("firms_viirs"), 40 + 300 + 500);
    assert_eq!(by("firms_archive_backfill"), 300);
}

#[test]
fn live_example_config_validates_with_its_keys_and_names_a_missing_one() {
    let keys = [
        ("FIRMS_MAP_KEY", "0123456789abcdef0123456789abcdef"),
        ("PURPLEAIR_API_KEY", "PA-READ-0123456789"),
        ("AIRNOW_API_KEY", "AN-0123456789"),
        ("COUNTY_API_TOKEN", "tok-0123456789"),
    ];
    let run = |skip: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_firestream"));
        cmd.args(["validate", "-c", "config/live.example.yaml"])
            .current_dir(repo("."))
            .env_remove("RUST_LOG");
        for (name, value) in keys {
            if Some(name) == skip {
                cmd.env_remove(name);
            } else {
                cmd.env(name, value);
            }
        }
        cmd.output().expect("firestream runs")
    };
    let out = run(None);
    assert!(out.status.success(), "{}", stderr(&out));
    for (_, value) in keys {
        assert!(!stdout(&out).contains(value) && !stderr(&out).contains(value));
    }
    let out = run(Some("FIRMS_MAP_KEY"));
    assert_usage_error(&out, "environment variable FIRMS_MAP_KEY is not set");
    assert!(
        stderr(&out).contains("live.example.yaml:"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["validate", "-c", "config/mqtt.example.yaml"])
        .current_dir(repo("."))
        .env("MQTT_PASSWORD", "mqtt-secret-0123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("mqtt-secret-0123"));
}

/// A log deleted and refilled by another source past a checkpoint's offsets: the offsets
/// exist again but hold other records, so the checkpoint must not be trusted (the records it
/// names are gone), and its source delivers its records again instead of none.
#[test]
fn a_checkpoint_of_a_deleted_and_refilled_log_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        real("firms/fire_nrt_M6_157509.csv"),
        dir.path().join("a.csv"),
    )
    .unwrap();
    std::fs::copy(
        real("firms/fire_nrt_SV-C2_400448__first10000.csv"),
        dir.path().join("b.csv"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n\
         sources:\n  other: {type: nasa_firms, interval: 1h, paths: [unused.csv]}\n",
    )
    .unwrap();
    let ingest = |args: &[&str]| {
        let mut all = vec!["ingest", "-c", "config.yaml", "--json"];
        all.extend_from_slice(args);
        let out = firestream(dir.path(), &all);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
        (summary, stderr(&out))
    };
    let delivered =
        |summary: &Value| summary["topics"]["wildfire-nasa-firms"]["delivered"].as_u64();
    let (first, _) = ingest(&["--source-type", "nasa_firms", "a.csv"]);
    let n = delivered(&first).unwrap();
    assert!(n > 0);

    // The log is deleted and another source fills the topic well past those offsets.
    std::fs::remove_dir_all(dir.path().join("out/log")).unwrap();
    let (refill, _) = ingest(&["--source", "other", "b.csv"]);
    assert!(delivered(&refill).unwrap() > n);

    let (again, log) = ingest(&["--source-type", "nasa_firms", "a.csv"]);
    assert_eq!(delivered(&again), Some(n), "{log}");
    assert!(
        log.contains("the checkpoint covers records the topic no longer has"),
        "{log}"
    );
    // Now the checkpoint is right again: a fourth run sends nothing.
    let (fourth, log) = ingest(&["--source-type", "nasa_firms", "a.csv"]);
    assert_eq!(delivered(&fourth), None, "{log}");
    assert!(!log.contains("no longer has"), "{log}");
}

/// One damaged checkpoint stops its own source only, and the error names its file.
#[test]
fn a_damaged_checkpoint_names_its_file_and_leaves_other_sources_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        real("firms/fire_nrt_M6_157509.csv"),
        dir.path().join("a.csv"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n\
         sources:\n  other: {type: nasa_firms, interval: 1h, paths: [unused.csv]}\n",
    )
    .unwrap();
    let ingest = |args: &[&str]| {
        let mut all = vec!["ingest", "-c", "config.yaml", "--json"];
        all.extend_from_slice(args);
        firestream(dir.path(), &all)
    };
    assert!(
        ingest(&["--source-type", "nasa_firms", "a.csv"])
            .status
            .success()
    );
    let damaged = dir.path().join("out/checkpoints/ingest_nasa_firms.json");
    assert!(
        damaged.is_file(),
        "checkpoint file expected at {}",
        damaged.display()
    );
    std::fs::write(&damaged, "{\"version\": 1, \"source_id\": \"ingest_nasa_f").unwrap();

    // Another source is not held back by it.
    let out = ingest(&["--source", "other", "a.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Its own source refuses to start, naming the file and what to do.
    let out = ingest(&["--source-type", "nasa_firms", "a.csv"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ingest_nasa_firms.json"), "{err}");
    assert!(
        err.contains("delete it to start that source without one"),
        "{err}"
    );
}
