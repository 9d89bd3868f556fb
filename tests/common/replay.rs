//! A local HTTP/1.1 server scripted per test: each path answers a sequence of replies
//! (the last one repeats), replaying real captured payloads and the faults upstream APIs
//! produce — error statuses, `Retry-After`, 304, slow and cut-off bodies. Written on raw
//! TCP so a test can send exactly the bytes a broken upstream sends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Announce the full length but send only this many bytes, then close.
    pub cut_at: Option<usize>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body: body.into(),
            delay: Duration::ZERO,
            cut_at: None,
        }
    }

    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Reply::new(200, "application/json", body)
    }

    pub fn csv(body: impl Into<Vec<u8>>) -> Self {
        Reply::new(200, "text/csv", body)
    }

    pub fn status(status: u16) -> Self {
        Reply::new(status, "text/plain", format!("status {status}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn cut_at(mut self, bytes: usize) -> Self {
        self.cut_at = Some(bytes);
        self
    }
}

/// A request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
}

#[derive(Clone)]
pub struct Replay {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl Replay {
    pub async fn start() -> Replay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let server = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, server.clone()));
            }
        });
        Replay { base, state }
    }

    /// Replies for `path` (without query), in order; the last repeats.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(path.to_owned(), replies.into());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// Waits until `path` was requested `n` times (panics after `timeout`).
    pub async fn wait_hits(&self, path: &str, n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.hits(path) < n {
            assert!(
                start.elapsed() < timeout,
                "{path} requested {} time(s), expected {n} within {timeout:?}",
                self.hits(path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        let path = target.split('?').next().unwrap_or("/").to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let reply = {
            let mut state = state.lock().unwrap();
            state.seen.push(Seen {
                path: path.clone(),
                target: target.clone(),
                headers,
                at: Instant::now(),
            });
            match state.scripts.get_mut(&path) {
                Some(queue) if queue.len() > 1 => queue.pop_front(),
                Some(queue) => queue.front().cloned(),
                None => None,
            }
            .unwrap_or_else(|| Reply::new(404, "text/plain", format!("no script for {path}")))
        };
        tokio::time::sleep(reply.delay).await;
        let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let close = reply.cut_at.is_some();
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: {}\r\n\r\n",
            reply.body.len(),
            if close { "close" } else { "keep-alive" }
        ));
        let body = match reply.cut_at {
            Some(n) => &reply.body[..n.min(reply.body.len())],
            None => &reply.body[..],
        };
        if socket.write_all(out.as_bytes()).await.is_err() || socket.write_all(body).await.is_err()
        {
            return;
        }
        if close {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
