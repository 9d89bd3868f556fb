//! Secrets never leave: a `firestream run` whose sources and API use secrets, polling a
//! local server that echoes every request (path, query and headers) back in a 500 answer,
//! then everything an operator can see — the log, /metrics, the stream views, the config
//! view, and the dead letters on disk — searched for the secret values (issue #6).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

mod common;

use common::service;

const SECRETS: [(&str, &str); 4] = [
    ("FS_SECRET_MAP_KEY", "mapkey0123456789abcdef"),
    ("FS_SECRET_HEADER", "hdr-s3cr3t-value-42"),
    ("FS_SECRET_QUERY", "qry-s3cr3t-value-77"),
    ("FS_SECRET_API_TOKEN", "api-t0ken-value-99"),
];

/// Answers every request with 500 and the request itself as the body.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let body = format!("upstream error, you sent: {request}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn no_secret_appears_in_logs_metrics_status_or_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo_server();
    std::fs::write(
        dir.path().join("run.yaml"),
        format!(
            "sink: {{type: log, log: {{dir: out/log}}}}\n\
             api: {{bind: \"127.0.0.1:0\", token: \"${{FS_SECRET_API_TOKEN}}\"}}\n\
             sources:\n\
             \x20 firms: {{type: nasa_firms, interval: 1s, retries: 0, url: \"{upstream}\", map_key: \"${{FS_SECRET_MAP_KEY}}\",\n\
             \x20         product: VIIRS_NOAA20_NRT, bbox: [-124, 32, -114, 42]}}\n\
             \x20 feed:\n\
             \x20   type: http\n\
             \x20   interval: 1s\n\
             \x20   retries: 0\n\
             \x20   topic: wildfire-misc\n\
             \x20   url: \"{upstream}/v1/data?token=${{FS_SECRET_QUERY}}&q=1\"\n\
             \x20   headers: {{X-Api-Key: \"${{FS_SECRET_HEADER}}\"}}\n"
        ),
    )
    .unwrap();
    let mut service = service::start(dir.path(), "run.yaml", &SECRETS, Some("debug"));
    let get = |path: &str| service.get(path);
    let started = Instant::now();
    loop {
        let views = get("/api/v1/streams");
        if views.matches("\"polls_failed\":").count() == 2
            && !views.contains("\"polls_failed\":0")
            && !views.contains("\"polls_failed\":1,")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{views}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut seen = vec![
        get("/metrics"),
        get("/api/v1/streams"),
        get("/api/v1/streams/firms"),
        get("/api/v1/streams/feed"),
        get("/api/v1/config"),
    ];
    assert!(seen[2].contains("last_error"), "{}", seen[2]);
    let mut log = service.early.clone();
    log.push(service.listening.clone());
    let lines = std::mem::replace(&mut service.lines, std::sync::mpsc::channel().1);
    seen.push(service.stop());
    // Every line up to the end of the stream (the reader ends when the process has exited).
    log.extend(lines.iter());
    seen.push(log.join("\n"));
    // The dead letters on disk.
    for entry in walk(&dir.path().join("out")) {
        seen.push(String::from_utf8_lossy(&std::fs::read(entry).unwrap()).into_owned());
    }
    let all = seen.join("\n");
    assert!(
        all.contains("upstream error, you sent"),
        "the echo reached the operator's view"
    );
    // The echoed keys were there to leak, and were replaced.
    assert!(all.matches("<redacted>").count() >= 3, "{all}");
    for (name, value) in SECRETS {
        assert!(
            !all.contains(value),
            "{name}'s value appears:\n{}",
            context(&all, value)
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn context(all: &str, value: &str) -> String {
    let i = all.find(value).unwrap();
    let start = all[..i].char_indices().rev().nth(200).map_or(0, |(j, _)| j);
    all[start..(i + value.len() + 100).min(all.len())].to_owned()
}
