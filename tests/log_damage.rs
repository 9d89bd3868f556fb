//! A damaged line in a segment of the local log (a hand edit, disk damage): the tester's
//! repros, through the binary. Line 11 of a FIRMS partition replaced by `this is not json`
//! or by bytes that are not UTF-8, and garbage at the end of a segment. Every reader skips
//! the line and reads the records around it, one warning names the file and line, and
//! recovery, `tail`, `ingest` and `run` carry on.

mod common;

use common::firestream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{real, topic};
use serde_json::Value;

const TOPIC: &str = "wildfire-nasa-firms";
const M6_ROWS: usize = 5_824;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A log with the 5,824 records of a real FIRMS file, ingested by the binary.
struct Log {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Log {
    fn ingested() -> Log {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "sink: {type: log, log: {dir: out/log}}\n").unwrap();
        let log = Log { dir, config };
        let out = log.ingest(&real("firms/fire_nrt_M6_157509.csv"));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(topic(&log.log(), TOPIC).len(), M6_ROWS);
        log
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("out/log")
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn ingest(&self, file: &Path) -> Output {
        firestream(
            self.dir.path(),
            &[
                "ingest",
                "-c",
                self.cfg(),
                "--source-type",
                "nasa_firms",
                file.to_str().unwrap(),
            ],
        )
    }

    /// Partition 0's only segment.
    fn segment(&self) -> PathBuf {
        let p0 = self.log().join(TOPIC).join("0");
        let segments = firestream::sinks::log::list_segments(&p0).unwrap();
        assert_eq!(segments, vec![0]);
        p0.join(firestream::sinks::log::segment_name(0))
    }

    /// Puts `damage` as line 11 of partition 0's segment.
    fn damage_line_11(&self, damage: &[u8]) {
        let path = self.segment();
        let text = std::fs::read(&path).unwrap();
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        assert!(lines.len() > 12, "partition 0 holds {} lines", lines.len());
        let mut out = lines[..10].concat();
        out.extend_from_slice(damage);
        out.push(b'\n');
        out.extend(lines[10..].concat());
        std::fs::write(&path, out).unwrap();
    }

    /// Partition 0's records as (offset, record id), read by `tail --from-beginning`.
    fn tail_all(&self) -> (Vec<(u64, String)>, usize, String) {
        let out = firestream(
            self.dir.path(),
            &["tail", "-c", self.cfg(), TOPIC, "--from-beginning"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<Value> = String::from_utf8(out.stdout.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let p0 = lines
            .iter()
            .filter(|l| l["partition"] == 0)
            .map(|l| {
                (
                    l["offset"].as_u64().unwrap(),
                    l["headers"]["firestream-id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (p0, lines.len(), stderr(&out))
    }
}

/// The warning for line `line` of `segment`: exactly one, naming the file and the line.
fn assert_one_warning(log_text: &str, segment: &Path, line: u64, why: &str) {
    let named = format!("({}:{line})", segment.display());
    let warnings: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("skipping a damaged line"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log_text}");
    let warning = warnings[0];
    for expected in [
        "WARN",
        named.as_str(),
        "byte_offset=",
        why,
        "kept on disk for inspection",
    ] {
        assert!(
            warning.contains(expected),
            "{expected:?} missing in {warning}"
        );
    }
}

/// Offsets 0.. of partition 0 with no gap, and the records that were lines 10 and 12 there.
fn assert_records_around_the_damage(before: &[(u64, String)], after: &[(u64, String)]) {
    assert_eq!(after, before);
    assert!(
        after
            .iter()
            .enumerate()
            .all(|(i, (offset, _))| *offset == i as u64)
    );
    assert!(after.len() > 11);
}

fn repro(damage: &[u8], why: &str) {
    let log = Log::ingested();
    let (before, total, _) = log.tail_all();
    assert_eq!(total, M6_ROWS);
    log.damage_line_11(damage);
    let segment = log.segment();

    // `tail -n 3` reads the whole topic for the newest three: it used to fail (exit 1).
    let out = firestream(log.dir.path(), &["tail", "-c", log.cfg(), TOPIC, "-n", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert_one_warning(&stderr(&out), &segment, 11, why);

    // Every record is still read, at its offset: offsets 9 and 10 were lines 10 and 12.
    let (after, total, log_text) = log.tail_all();
    assert_eq!(total, M6_ROWS);
    assert_records_around_the_damage(&before, &after);
    assert_one_warning(&log_text, &segment, 11, why);

    // A consumer group passes the damage too, and commits past it.
    let out = firestream(
        log.dir.path(),
        &["tail", "-c", log.cfg(), TOPIC, "--group", "g"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        M6_ROWS
    );
    let offsets = firestream::sinks::log::groups::read_group(&log.log(), TOPIC, "g")
        .unwrap()
        .unwrap();
    assert_eq!(offsets[&0], before.len() as u64);

    // Recovery without a checkpoint reads the whole topic back (it used to wait, or fail an
    // ingest, on the damaged line): the ingest runs, its records follow the damage.
    std::fs::remove_dir_all(log.dir.path().join("out/checkpoints")).unwrap();
    let out = log.ingest(&real(
        "firms/area_api_VIIRS_NOAA20_SP__2026-04-04__first40_transcribed.csv",
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_one_warning(&stderr(&out), &segment, 11, why);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("DAMAGED LOG LINES: 1 line(s)"),
        "{summary}"
    );
    let (grown, total, _) = log.tail_all();
    assert!(total > M6_ROWS);
    assert_eq!(grown[..before.len()], before[..]);
    assert!(grown.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
    // The damaged line is still there for inspection.
    let text = std::fs::read(&segment).unwrap();
    let line_11 = text.split(|&b| b == b'\n').nth(10).unwrap();
    assert_eq!(line_11, damage);
}

#[test]
fn a_line_that_is_not_json_is_skipped_and_named() {
    repro(
        b"this is not json",
        "not a log record: expected ident (column 2)",
    );
}

#[test]
fn a_line_that_is_not_utf8_is_skipped_and_named() {
    repro(
        b"\xff\xfe\x00 not text",
        "not UTF-8 (invalid bytes at column 1)",
    );
}

#[test]
fn garbage_at_the_end_of_a_segment_lets_ingest_continue_after_the_last_record() {
    let log = Log::ingested();
    let segment = log.segment();
    let (before, _, _) = log.tail_all();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut file, b"this is not json\n").unwrap();
    drop(file);
    let damaged_line = std::fs::read(&segment)
        .unwrap()
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64;
    // Used to exit 1: "ends with a line that is not a log record".
    let out = log.ingest(&real("firms/fire_nrt_SV-C2_400448__first10000.csv"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_one_warning(
        &stderr(&out),
        &segment,
        damaged_line,
        "not a log record: expected ident (column 2)",
    );
    // Partition 0 continues at the offset after its last record; the line stays in place.
    let (after, _, _) = log.tail_all();
    assert!(after.len() > before.len(), "nothing new in partition 0");
    assert_eq!(after[..before.len()], before[..]);
    assert!(after.iter().enumerate().all(|(i, (o, _))| *o == i as u64));
    let text = std::fs::read(&segment).unwrap();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    assert_eq!(lines[damaged_line as usize - 1], b"this is not json");
    let next: Value = serde_json::from_slice(lines[damaged_line as usize]).unwrap();
    assert_eq!(next["offset"], before.len() as u64);
}

#[test]
fn run_recovers_past_a_damaged_line_instead_of_waiting() {
    let log = Log::ingested();
    log.damage_line_11(b"this is not json");
    let segment = log.segment();
    // No checkpoint: recovery reads the topic back from the start of its dedupe window.
    std::fs::remove_dir_all(log.dir.path().join("out/checkpoints")).unwrap();
    let data = log.dir.path().join("feed");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(
        real("firms/area_api_VIIRS_NOAA20_SP__2026-04-04__first40_transcribed.csv"),
        data.join("viirs.csv"),
    )
    .unwrap();
    let config = log.dir.path().join("run.yaml");
    std::fs::write(
        &config,
        "sink: {type: log, log: {dir: out/log}}\napi: {enabled: false}\n\
         sources:\n  firms_feed:\n    type: nasa_firms\n    mode: real_time\n    interval: 30s\n    paths: [\"feed/*.csv\"]\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c"])
        .arg(&config)
        .current_dir(log.dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The feed's records arrive: the source recovered and ran.
    let mut total = 0;
    for _ in 0..300 {
        total = topic(&log.log(), TOPIC).len();
        if total > M6_ROWS {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let log_text = stderr(&out);
    assert!(total > M6_ROWS, "the source never delivered:\n{log_text}");
    assert_eq!(out.status.code(), Some(0), "{log_text}");
    assert!(!log_text.contains("cannot recover yet"), "{log_text}");
    assert!(
        log_text.contains("recovered from the checkpoint"),
        "{log_text}"
    );
    assert_one_warning(
        &log_text,
        &segment,
        11,
        "not a log record: expected ident (column 2)",
    );
}
