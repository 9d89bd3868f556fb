//! A damaged line in a CSV file costs that line alone. A line of megabytes and a row whose
//! quote is never closed each become one dead letter naming the file and line, every row
//! after them is delivered, and a second run sends no record again — through `firestream
//! ingest` and through a `paths:` source that checkpoints the file as read.

mod common;

use common::firestream;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{envelopes, real, topic};
use firestream::manager::StreamManager;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SAMPLE: &str = "firms/MODIS_C6_1_USA_contiguous_and_Hawaii_24h__2025-03-25.csv";

/// The damage, always on line 12: after the header and ten good rows, before ten more.
#[derive(Clone, Copy)]
enum Damage {
    /// A 2 MB line (the limit is 1 MiB).
    HugeLine,
    /// The 11th row with `,"unterminated` after its last field.
    OpenQuote,
}

/// A damaged copy of the sample, and what it should give.
struct Case {
    file: PathBuf,
    /// The reason after `<file> line 12: `.
    reason: &'static str,
    raw_excerpt: String,
    /// Latitudes of the 20 rows that must be delivered.
    lats: BTreeSet<String>,
}

/// A damaged copy of the sample's rows from `first` on.
fn damaged(dir: &Path, damage: Damage, first: usize) -> Case {
    let text = std::fs::read_to_string(real(SAMPLE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (header, rows) = (lines[0], &lines[1 + first..]);
    let lat = |row: &str| row.split(',').next().unwrap().to_owned();
    let (bad, good, reason, raw_excerpt) = match damage {
        Damage::HugeLine => {
            let huge = format!("{},{}", rows[10], "9".repeat(2_000_000));
            let excerpt = huge[..200].to_owned();
            let good: Vec<&str> = rows[..20].to_vec();
            (
                huge,
                good,
                "line is 2000079 bytes, longer than the 1024 KiB a FIRMS row can be (rows are about 100 bytes); the line is skipped, the file continues",
                excerpt,
            )
        }
        Damage::OpenQuote => {
            let open = format!("{},\"unterminated", rows[10]);
            let good: Vec<&str> = rows[..10].iter().chain(&rows[11..21]).copied().collect();
            (
                open.clone(),
                good,
                "unterminated quote: a quoted field opens on this line and is not closed by its end (FIRMS rows never span lines); the next line is read as a new row",
                open,
            )
        }
    };
    let mut out = vec![header.to_owned()];
    out.extend(good[..10].iter().map(|r| r.to_string()));
    out.push(bad);
    out.extend(good[10..].iter().map(|r| r.to_string()));
    let name = match damage {
        Damage::HugeLine => "huge_line.csv",
        Damage::OpenQuote => "open_quote.csv",
    };
    let file = dir.join(name);
    std::fs::write(&file, out.join("\n") + "\n").unwrap();
    let lats: BTreeSet<String> = good.iter().map(|r| lat(r)).collect();
    assert_eq!(lats.len(), 20, "the rows kept are distinct detections");
    Case {
        file,
        reason,
        raw_excerpt,
        lats,
    }
}

fn ingest_json(dir: &Path, file: &Path) -> Value {
    let out = firestream(
        dir,
        &[
            "ingest",
            "-c",
            "config.yaml",
            "--source-type",
            "nasa_firms",
            "--json",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stored_lats(log: &Path) -> BTreeSet<String> {
    envelopes(log, "wildfire-nasa-firms")
        .iter()
        .map(|e| e["location"]["lat"].to_string())
        .collect()
}

/// Latitudes as the envelope prints them (numbers, so `20.10` would print as `20.1`).
fn as_numbers(lats: &BTreeSet<String>) -> BTreeSet<String> {
    lats.iter()
        .map(|l| serde_json::to_string(&l.parse::<f64>().unwrap()).unwrap())
        .collect()
}

#[test]
fn ingest_dead_letters_the_damaged_line_only_and_a_rerun_sends_no_record_again() {
    for damage in [Damage::HugeLine, Damage::OpenQuote] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            "sink: {type: log, log: {dir: out/log}}\n",
        )
        .unwrap();
        let case = damaged(dir.path(), damage, 0);
        let log = dir.path().join("out/log");

        let summary = ingest_json(dir.path(), &case.file);
        let s = &summary["streams"]["ingest_nasa_firms"];
        assert_eq!(
            [&s["rows"], &s["records"], &s["invalid"], &s["enqueued"]],
            [21, 20, 1, 20],
            "{summary}"
        );
        assert_eq!(s["payload_errors"], 0, "{summary}");
        assert_eq!(summary["topics"]["wildfire-nasa-firms"]["delivered"], 20);
        assert_eq!(summary["topics"]["firestream-dlq"]["delivered"], 1);
        assert_eq!(summary["dead_letters"], serde_json::json!({"validate": 1}));
        assert_eq!(summary["lost"], 0);
        assert_eq!(stored_lats(&log), as_numbers(&case.lats));

        let dlq = topic(&log, "firestream-dlq");
        assert_eq!(dlq.len(), 1);
        let d = &dlq[0]["value"];
        assert_eq!(d["stage"], "validate");
        assert_eq!(d["error_kind"], "invalid_row");
        assert_eq!(
            d["reason"],
            format!("{} line 12: {}", case.file.display(), case.reason)
        );
        assert_eq!(d["raw_excerpt"], case.raw_excerpt);

        // The rerun finds every record in the checkpoint. The damaged line is
        // dead-lettered again, like any invalid row `ingest` reads again (its dead letters
        // are not part of the checkpoint): one more dead letter, no record.
        let summary = ingest_json(dir.path(), &case.file);
        let s = &summary["streams"]["ingest_nasa_firms"];
        assert_eq!(
            [&s["rows"], &s["duplicates"], &s["invalid"], &s["enqueued"]],
            [21, 20, 1, 0],
            "{summary}"
        );
        assert!(
            summary["topics"]["wildfire-nasa-firms"].is_null(),
            "{summary}"
        );
        assert_eq!(topic(&log, "wildfire-nasa-firms").len(), 20);
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paths_source_reads_past_the_damage_checkpoints_the_files_and_a_restart_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let cases = [
        damaged(&inbox, Damage::HugeLine, 0),
        // Other rows: the same detection in both files would be sent once.
        damaged(&inbox, Damage::OpenQuote, 100),
    ];
    let config = || {
        common::config(
            dir.path(),
            &format!(
                "sources:\n  fires:\n    type: nasa_firms\n    interval: 1h\n    paths: [{}]\n",
                serde_json::to_string(&inbox.join("*.csv")).unwrap()
            ),
        )
    };
    let log = dir.path().join("log");

    let manager = StreamManager::new(config()).await.unwrap();
    let stats = manager.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));
    wait_until("the first poll", || {
        stats.stream("fires").snapshot().polls_ok >= 1
    })
    .await;
    shutdown.cancel();
    let report = running.await.unwrap().unwrap();
    let s = &report.streams["fires"];
    assert_eq!(
        (s.rows, s.records, s.invalid, s.enqueued, s.payload_errors),
        (42, 40, 2, 40, 0)
    );
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 40);
    assert_eq!(report.topics["firestream-dlq"].delivered, 2);
    // Both files' rows after the damage are there.
    let stored = stored_lats(&log);
    for case in &cases {
        assert!(as_numbers(&case.lats).is_subset(&stored));
    }
    let mut reasons: Vec<String> = envelopes(&log, "firestream-dlq")
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    let mut expected: Vec<String> = cases
        .iter()
        .map(|c| format!("{} line 12: {}", c.file.display(), c.reason))
        .collect();
    expected.sort();
    assert_eq!(reasons, expected);

    // Restarted: both files are checkpointed as read; nothing is read or sent again.
    let manager = StreamManager::new(config()).await.unwrap();
    let stats = manager.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));
    wait_until("the first poll after the restart", || {
        stats.stream("fires").snapshot().polls_ok >= 1
    })
    .await;
    shutdown.cancel();
    let report = running.await.unwrap().unwrap();
    let s = &report.streams["fires"];
    assert_eq!((s.rows, s.enqueued, s.invalid), (0, 0, 0));
    assert_eq!(topic(&log, "wildfire-nasa-firms").len(), 40);
    assert_eq!(topic(&log, "firestream-dlq").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_csv_source_dead_letters_the_open_quote_line_and_delivers_the_rows_after_it() {
    // The generic http source allows quoted line breaks, so the open quote swallows the
    // rest of the file into one row; that row fails (14 fields), so only its first line
    // is dead-lettered and the lines after it are read again.
    let dir = tempfile::tempdir().unwrap();
    let case = damaged(dir.path(), Damage::OpenQuote, 0);
    let config = common::config(
        dir.path(),
        &format!(
            "sources:\n  feed:\n    type: http\n    format: csv\n    interval: 1h\n    paths: [{}]\n    mapping: {{lat: latitude, lon: longitude}}\n    topic: wildfire-custom\n",
            serde_json::to_string(&case.file).unwrap()
        ),
    );
    let target = || firestream::manager::IngestTarget::Source("feed".into());
    let report = common::ingest(config.clone(), target(), std::slice::from_ref(&case.file)).await;
    let s = &report.streams["feed"];
    assert_eq!(
        (s.rows, s.records, s.invalid, s.enqueued, s.payload_errors),
        (21, 20, 1, 20, 0)
    );
    let log = dir.path().join("log");
    let lats: BTreeSet<String> = envelopes(&log, "wildfire-custom")
        .iter()
        .map(|e| e["location"]["lat"].to_string())
        .collect();
    assert_eq!(lats, as_numbers(&case.lats));
    let dlq = envelopes(&log, "firestream-dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0]["reason"],
        format!(
            "{} line 12: unterminated quote: a quoted field opens on this line and is still open at the end of the body, and the row fails: row has 14 field(s), the header has 13; this line is dead-lettered alone and the lines after it are read as rows",
            case.file.display()
        )
    );
    assert_eq!(dlq[0]["raw_excerpt"], case.raw_excerpt);

    // A rerun sends no record again.
    let report = common::ingest(config, target(), &[case.file]).await;
    let s = &report.streams["feed"];
    assert_eq!((s.rows, s.duplicates, s.enqueued), (21, 20, 0));
    assert_eq!(topic(&log, "wildfire-custom").len(), 20);
}
