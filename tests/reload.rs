//! Hot reload on SIGHUP (issue #6), through the binary and its HTTP API: an added source
//! starts, a removed one stops and goes, a changed one restarts with its new settings, an
//! unchanged one keeps running untouched; an invalid new config is refused and the old one
//! keeps running.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::service::{self, Service};
use serde_json::Value;

fn config(dir: &Path, sources: &str) {
    std::fs::write(
        dir.join("run.yaml"),
        format!("sink: {{type: log, log: {{dir: out/log}}}}\napi: {{bind: \"127.0.0.1:0\"}}\nsources:\n{sources}"),
    )
    .unwrap();
}

/// id → (state, mode) of every stream.
fn states(service: &Service) -> Vec<(String, String, String)> {
    let views: Value = serde_json::from_str(&service.get("/api/v1/streams")).unwrap();
    views["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
                s["mode"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_for(service: &Service, want: &[(&str, &str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = states(service);
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "streams {now:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_source_changes_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("feed")).unwrap();
    std::fs::copy(
        common::real("firms/fire_nrt_M6_157509.csv"),
        dir.path().join("feed/m6.csv"),
    )
    .unwrap();
    let keep = "  keep: {type: nasa_firms, interval: 1h, paths: [\"feed/*.csv\"]}\n";
    config(
        dir.path(),
        &format!(
            "{keep}  change: {{type: nasa_firms, interval: 1h, paths: [\"none/*.csv\"]}}\n  \
             drop: {{type: nasa_firms, interval: 1h, paths: [\"none/*.csv\"]}}\n"
        ),
    );
    let service = service::start(dir.path(), "run.yaml", &[], None);
    wait_for(
        &service,
        &[
            ("change", "running", "real_time"),
            ("drop", "running", "real_time"),
            ("keep", "running", "real_time"),
        ],
    );
    let view = |id: &str| -> Value {
        serde_json::from_str(&service.get(&format!("/api/v1/streams/{id}"))).unwrap()
    };
    let keep_polls = || view("keep")["counters"]["polls_ok"].clone();
    let before = keep_polls();

    let hangup = || service.signal("-HUP");
    // `change` becomes a batch source, `drop` goes, `add` comes; `keep` is untouched.
    config(
        dir.path(),
        &format!(
            "{keep}  change: {{type: nasa_firms, mode: batch, schedule: {{every: 1h}}, paths: [\"none/*.csv\"]}}\n  \
             add: {{type: nasa_firms, interval: 1h, paths: [\"none/*.csv\"]}}\n"
        ),
    );
    hangup();
    let line = service.wait_for_line("config reloaded");
    assert!(line.contains("added=[\"add\"]"), "{line}");
    assert!(line.contains("removed=[\"drop\"]"), "{line}");
    assert!(line.contains("changed=[\"change\"]"), "{line}");
    assert!(line.contains("unchanged=1"), "{line}");
    wait_for(
        &service,
        &[
            ("add", "running", "real_time"),
            ("change", "running", "batch"),
            ("keep", "running", "real_time"),
        ],
    );
    // The unchanged stream was not restarted: it did not poll again (interval 1h).
    assert_eq!(keep_polls(), before);
    assert_eq!(view("drop")["error"], "not_found");

    // An invalid config is refused; everything keeps running as it was.
    std::fs::write(
        dir.path().join("run.yaml"),
        "sources:\n  x: {type: nasa_fires}\n",
    )
    .unwrap();
    hangup();
    let line = service.wait_for_line("the new config is invalid; the running one stays");
    assert!(line.contains("unknown variant `nasa_fires`"), "{line}");
    wait_for(
        &service,
        &[
            ("add", "running", "real_time"),
            ("change", "running", "batch"),
            ("keep", "running", "real_time"),
        ],
    );

    // A change outside `sources` is named as needing a restart.
    config(
        dir.path(),
        &format!(
            "{keep}  change: {{type: nasa_firms, mode: batch, schedule: {{every: 1h}}, paths: [\"none/*.csv\"]}}\n  \
             add: {{type: nasa_firms, interval: 1h, paths: [\"none/*.csv\"]}}\nqueue: {{max_records: 5000}}\n"
        ),
    );
    hangup();
    let line = service.wait_for_line("take effect only at a restart");
    assert!(line.contains("queue"), "{line}");

    service.stop();
}
