//! Secrets never leave: a `firestream run` whose sources and API use secrets, polling a
//! local server that echoes every request (path, query and headers) back in a 500 answer,
//! then everything an operator can see — the log, /metrics, the stream views, the config
//! view, and the dead letters on disk — searched for the secret values (issue #6).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c", "run.yaml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .envs(SECRETS)
        .stdout(Stdio::piped())
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
    let mut log = Vec::new();
    let started = Instant::now();
    let base = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the API listens");
        log.push(line.clone());
        if line.contains("HTTP API listening") {
            let addr = line.split("addr=").nth(1).unwrap();
            break format!("http://{}", addr.split_whitespace().next().unwrap());
        }
    };
    // Both streams fail a few polls against the echo server.
    let get = |path: &str| {
        // Plain HTTP/1.0 over a socket: the server closes after answering.
        let host = base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    };
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
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(child.wait().unwrap().success());
    log.extend(rx.try_iter());
    seen.push(stdout);
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
