//! `firestream dlq list|replay` on real dead letters: a cut-off gzip of a real FIRMS file
//! (a `parse` dead letter for the file, its readable rows become records) ingested while
//! the records' topic cannot be written (a file stands where its directory belongs), so
//! every record is a `deliver` dead letter carrying its envelope.

mod common;

use common::firestream;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Output;

use common::{real, topic};
use serde_json::Value;

const TOPIC: &str = "wildfire-nasa-firms";

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first 20 KB of the real file gzipped: whole rows, then a broken deflate stream.
fn cut_gzip(to: &Path) {
    let text = std::fs::read(real("firms/fire_nrt_M6_157509.csv")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(to, &bytes[..20_000]).unwrap();
}

fn ingest(dir: &Path) -> Value {
    let out = firestream(
        dir,
        &[
            "ingest",
            "-c",
            "config.yaml",
            "--source-type",
            "nasa_firms",
            "--json",
            "cut.csv.gz",
        ],
    );
    serde_json::from_str(&ok(&out)).unwrap()
}

/// (id, partition, key, headers) of every record in the topic, by id.
fn placement(log: &Path) -> BTreeMap<String, (u64, String, Value)> {
    topic(log, TOPIC)
        .into_iter()
        .map(|line| {
            (
                line["value"]["id"].as_str().unwrap().to_owned(),
                (
                    line["partition"].as_u64().unwrap(),
                    line["key"].as_str().unwrap().to_owned(),
                    line["headers"].clone(),
                ),
            )
        })
        .collect()
}

#[test]
fn list_shows_dead_letters_by_stage_and_replay_delivers_envelopes_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("config.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n",
    )
    .unwrap();
    cut_gzip(&d.join("cut.csv.gz"));
    let log = d.join("out/log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join(TOPIC), "").unwrap();

    let summary = ingest(d);
    let records = summary["streams"]["ingest_nasa_firms"]["records"]
        .as_u64()
        .unwrap();
    assert!(records > 100, "{summary}");
    assert_eq!(summary["dead_letters"]["parse"], 1, "{summary}");
    assert_eq!(summary["dead_letters"]["deliver"], records, "{summary}");
    assert_eq!(summary["lost"], 0);

    // list --stage parse: the one damaged file, with its reason.
    let text = ok(&firestream(
        d,
        &["dlq", "list", "-c", "config.yaml", "--stage", "parse"],
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("FAILED_AT"), "{text}");
    assert!(lines[1].contains(" parse "), "{text}");
    assert!(lines[1].contains("corrupt_payload"), "{text}");
    assert!(lines[1].contains("ingest_nasa_firms"), "{text}");
    assert!(lines[1].contains("cut.csv.gz"), "{text}");
    assert_eq!(
        lines[2],
        "1 dead letter(s) match (1 shown); by stage: parse 1"
    );

    // Counts cover every letter; -n limits the rows; JSON lines carry the stored shape.
    let out = firestream(
        d,
        &["dlq", "list", "-c", "config.yaml", "-n", "3", "--json"],
    );
    let text = ok(&out);
    let letters: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 3);
    for letter in &letters {
        for field in [
            "dlq_id",
            "failed_at",
            "stage",
            "error_kind",
            "reason",
            "attempts",
        ] {
            assert!(letter.get(field).is_some(), "{field} missing in {letter}");
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} dead letter(s) match (3 shown); by stage: deliver {records}, parse 1",
            records + 1
        )),
        "{stderr}"
    );

    // Replay while the cause persists: every envelope fails again into the DLQ.
    let text = ok(&firestream(d, &["dlq", "replay", "-c", "config.yaml"]));
    assert!(
        text.contains(&format!("{} dead letter(s) considered", records + 1)),
        "{text}"
    );
    assert!(text.contains("  replayed                      0"), "{text}");
    assert!(text.contains("  not replayable                1"), "{text}");
    assert!(text.contains("only a raw_excerpt"), "{text}");
    assert!(
        text.contains(&format!("  failed again → DLQ     {records:>8}")),
        "{text}"
    );

    // A sink that is not ready (here: less free space than min_free_bytes) replays nothing.
    std::fs::remove_file(log.join(TOPIC)).unwrap();
    std::fs::write(
        d.join("full.yaml"),
        "sink: {type: log, log: {dir: out/log, min_free_bytes: 1000PiB}}\n",
    )
    .unwrap();
    let group_file = log.join("firestream-dlq/.groups/firestream-dlq-replay.json");
    let before = std::fs::read_to_string(&group_file).unwrap();
    let out = firestream(d, &["dlq", "replay", "-c", "full.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the log sink is not ready (disk full at ")
            && stderr.contains("nothing was replayed"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&group_file).unwrap(), before);

    // Fixed: a dry run shows the plan and changes nothing.
    let text = ok(&firestream(
        d,
        &[
            "dlq",
            "replay",
            "-c",
            "config.yaml",
            "--dry-run",
            "--stage",
            "deliver",
        ],
    ));
    assert!(
        text.contains(&format!("  would replay           {records:>8}")),
        "{text}"
    );
    assert!(topic(&log, TOPIC).is_empty());

    // Replay delivers each envelope once, then there is nothing left to replay.
    let text = ok(&firestream(d, &["dlq", "replay", "-c", "config.yaml"]));
    assert!(
        text.contains(&format!("{records} dead letter(s) considered")),
        "{text}"
    );
    assert!(
        text.contains(&format!("  replayed               {records:>8}")),
        "{text}"
    );
    assert!(text.contains("  not replayable                0"), "{text}");
    assert!(text.contains("  failed again → DLQ            0"), "{text}");
    let replayed = placement(&log);
    assert_eq!(replayed.len() as u64, records);
    assert_eq!(topic(&log, TOPIC).len() as u64, records);
    let text = ok(&firestream(d, &["dlq", "replay", "-c", "config.yaml"]));
    assert!(text.contains("0 dead letter(s) considered"), "{text}");
    assert!(text.contains("  replayed                      0"), "{text}");
    assert_eq!(topic(&log, TOPIC).len() as u64, records);
    let group: Value = serde_json::from_str(
        &std::fs::read_to_string(log.join("firestream-dlq/.groups/firestream-dlq-replay.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(group["group"], "firestream-dlq-replay");

    // The replayed records sit where a direct ingest puts them: same partition, key and
    // headers.
    let direct = tempfile::tempdir().unwrap();
    std::fs::copy(d.join("config.yaml"), direct.path().join("config.yaml")).unwrap();
    std::fs::copy(d.join("cut.csv.gz"), direct.path().join("cut.csv.gz")).unwrap();
    ingest(direct.path());
    assert_eq!(placement(&direct.path().join("out/log")), replayed);
}

#[test]
fn list_on_an_empty_log_and_a_filter_that_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n",
    )
    .unwrap();
    let text = ok(&firestream(
        dir.path(),
        &["dlq", "list", "-c", "config.yaml"],
    ));
    assert!(
        text.ends_with("0 dead letter(s) match (0 shown)\n"),
        "{text}"
    );
    let text = ok(&firestream(
        dir.path(),
        &["dlq", "replay", "-c", "config.yaml"],
    ));
    assert!(text.contains("0 dead letter(s) considered"), "{text}");
    let out = firestream(
        dir.path(),
        &["dlq", "list", "-c", "config.yaml", "--stage", "nope"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values: fetch, parse"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reading the local log needs no source's keys: `dlq list` and `tail` work with the
/// production config when its `${VAR}` secrets are not set; `run` still refuses.
#[test]
fn reading_the_log_does_not_need_the_sources_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "sink: {type: log, log: {dir: log}}\n\
         sources:\n  firms: {type: nasa_firms, interval: 1h, map_key: \"${FS_TEST_UNSET_KEY}\"}\n",
    )
    .unwrap();
    let out = firestream(dir.path(), &["dlq", "list", "-c", "c.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The config loads; the log simply has no such topic yet.
    let out = firestream(dir.path(), &["tail", "-c", "c.yaml", "wildfire-nasa-firms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("topic wildfire-nasa-firms not found"), "{err}");
    let out = firestream(dir.path(), &["validate", "-c", "c.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FS_TEST_UNSET_KEY is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
