//! Hot reload on SIGHUP (issue #6), through the binary and its HTTP API: an added source
//! starts, a removed one stops and goes, a changed one restarts with its new settings, an
//! unchanged one keeps running untouched; an invalid new config is refused and the old one
//! keeps running.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn config(dir: &Path, sources: &str) {
    std::fs::write(
        dir.join("run.yaml"),
        format!("sink: {{type: log, log: {{dir: out/log}}}}\napi: {{bind: \"127.0.0.1:0\"}}\nsources:\n{sources}"),
    )
    .unwrap();
}

fn http_get(base: &str, path: &str) -> Value {
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap()
}

/// id → (state, mode) of every stream.
fn states(base: &str) -> Vec<(String, String, String)> {
    http_get(base, "/api/v1/streams")["streams"]
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

fn wait_for(base: &str, want: &[(&str, &str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = states(base);
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

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c", "run.yaml"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = wait_for_line(&rx, "HTTP API listening");
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let base = format!("http://{addr}");
    wait_for(
        &base,
        &[
            ("change", "running", "real_time"),
            ("drop", "running", "real_time"),
            ("keep", "running", "real_time"),
        ],
    );
    let keep_polls = || http_get(&base, "/api/v1/streams/keep")["counters"]["polls_ok"].clone();
    let before = keep_polls();

    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // `change` becomes a batch source, `drop` goes, `add` comes; `keep` is untouched.
    config(
        dir.path(),
        &format!(
            "{keep}  change: {{type: nasa_firms, mode: batch, schedule: {{every: 1h}}, paths: [\"none/*.csv\"]}}\n  \
             add: {{type: nasa_firms, interval: 1h, paths: [\"none/*.csv\"]}}\n"
        ),
    );
    hangup();
    let line = wait_for_line(&rx, "config reloaded");
    assert!(line.contains("added=[\"add\"]"), "{line}");
    assert!(line.contains("removed=[\"drop\"]"), "{line}");
    assert!(line.contains("changed=[\"change\"]"), "{line}");
    assert!(line.contains("unchanged=1"), "{line}");
    wait_for(
        &base,
        &[
            ("add", "running", "real_time"),
            ("change", "running", "batch"),
            ("keep", "running", "real_time"),
        ],
    );
    // The unchanged stream was not restarted: it did not poll again (interval 1h).
    assert_eq!(keep_polls(), before);
    assert_eq!(
        http_get(&base, "/api/v1/streams/drop")["error"],
        "not_found"
    );

    // An invalid config is refused; everything keeps running as it was.
    std::fs::write(
        dir.path().join("run.yaml"),
        "sources:\n  x: {type: nasa_fires}\n",
    )
    .unwrap();
    hangup();
    let line = wait_for_line(&rx, "the new config is invalid; the running one stays");
    assert!(line.contains("unknown variant `nasa_fires`"), "{line}");
    wait_for(
        &base,
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
    let line = wait_for_line(&rx, "take effect only at a restart");
    assert!(line.contains("queue"), "{line}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
