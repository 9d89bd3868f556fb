//! Broken configs, one mistake each, through `firestream validate` (issue #6): each exits 2
//! with a message that names the file, where (line, path) and what to write instead.

use std::process::Command;

/// (config text, what the message must say)
const CASES: [(&str, &str); 14] = [
    (
        "sink: {type: log}\nsourcs: {}\n",
        "c.yaml:2:1: sourcs: unknown field `sourcs`, expected one of `sink`, `sources`",
    ),
    (
        "sources:\n  a: {type: nasa_firms, interval: 10 minutes please, paths: [x.csv]}\n",
        "sources.a.interval: invalid duration \"10 minutes please\"",
    ),
    (
        "sink: {type: log, log: {segment_bytes: 64 megs}}\n",
        "c.yaml:1:25: sink.log.segment_bytes: invalid size \"64 megs\"",
    ),
    (
        "queue: {max_records: lots}\n",
        "c.yaml:1:9: queue.max_records: invalid type: string \"lots\", expected usize",
    ),
    (
        "sources:\n  a: {type: nasa_firms, interval: 5m, map_key: \"${FS_NOPE_KEY}\"}\n",
        "sources.a.map_key: environment variable FS_NOPE_KEY is not set; export it, or write `${FS_NOPE_KEY:-default}`",
    ),
    (
        "sources:\n  a: {type: nasa_firms, interval: 5m, map_key: \"${FS_NOPE_KEY:?ask the FIRMS admin}\"}\n",
        "sources.a.map_key: environment variable FS_NOPE_KEY is not set: ask the FIRMS admin",
    ),
    (
        "sources:\n  a: {type: nasa_firms, paths: [x.csv]}\n",
        "sources.a.interval: mode real_time needs an interval, e.g. `interval: 5m`",
    ),
    (
        "sources:\n  a: {type: nasa_firms, mode: batch, schedule: {cron: \"61 * * * *\"}, paths: [x.csv]}\n",
        "sources.a.schedule.cron: \"61 * * * *\" is not a cron expression",
    ),
    (
        "sources:\n  a: {type: nasa_firms, interval: 5m, paths: [x.csv]}\n  a: {type: nasa_firms, interval: 5m, paths: [y.csv]}\n",
        "c.yaml:2:3: sources: `a` is given twice",
    ),
    (
        "sources:\n  a: {type: nasa_firms, interval: 5m, paths: [x.csv], topic: \"bad topic!\"}\n",
        "sources.a.topic: \"bad topic!\" is not a valid topic name",
    ),
    (
        "sink: {type: kafka}\n",
        "sink.kafka: `type: kafka` needs the brokers, e.g. `kafka: {bootstrap_servers: \"localhost:9092\"}`",
    ),
    (
        "sources:\n  a: {type: nasa_fires, interval: 5m, paths: [x.csv]}\n",
        "c.yaml:2:7: sources.a.type: unknown variant `nasa_fires`, expected one of `nasa_firms`",
    ),
    (
        "sources:\n\ta: 1\n",
        "c.yaml:2:1: sources: found character that cannot start any token",
    ),
    (
        "api: {bind: \"0.0.0.0:9000\"}\n",
        "api.bind: 0.0.0.0:9000 is reachable from other machines and api.token is not set",
    ),
];

#[test]
fn each_broken_config_says_what_where_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in CASES {
        std::fs::write(dir.path().join("c.yaml"), text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
            .args(["validate", "-c", "c.yaml"])
            .current_dir(dir.path())
            .env_remove("FS_NOPE_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{err}");
        assert!(
            err.contains(expected),
            "{text}\nexpected: {expected}\ngot: {err}"
        );
        assert!(err.contains("c.yaml"), "the file is named: {err}");
    }
}

/// Every problem the checks find is reported in one run, not one per run.
#[test]
fn semantic_problems_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "api: {bind: \"0.0.0.0:9000\"}\n\
         sources:\n  a: {type: nasa_firms, paths: [x.csv]}\n  b: {type: nasa_firms, interval: 5m, paths: [x.csv], topic: \"bad topic!\"}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["validate", "-c", "c.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problem(s)"), "{err}");
    for expected in ["api.bind:", "sources.a.interval:", "sources.b.topic:"] {
        assert!(err.contains(expected), "{expected}: {err}");
    }
}
