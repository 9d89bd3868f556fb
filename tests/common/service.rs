//! `firestream run` — the binary — as a test drives it: started in a directory with its
//! config, its log lines collected, its API address read from the "HTTP API listening" line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Service {
    pub child: Child,
    /// `http://127.0.0.1:<port>` (or the address as logged).
    pub base: String,
    /// Every log line after the API's, as it comes.
    pub lines: mpsc::Receiver<String>,
    /// The log lines read before the API's.
    pub early: Vec<String>,
    /// The "HTTP API listening" line itself.
    pub listening: String,
}

/// Starts `firestream run -c <config>` in `dir` with `env` set and `RUST_LOG` as given
/// (removed when `None`).
pub fn start(dir: &Path, config: &str, env: &[(&str, &str)], rust_log: Option<&str>) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_firestream"));
    command
        .args(["run", "-c", config])
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match rust_log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command.spawn().unwrap();
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut early = Vec::new();
    let started = Instant::now();
    let listening = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30).saturating_sub(started.elapsed()))
            .unwrap_or_else(|_| {
                panic!("the API did not say where it listens within 30 s: {early:?}")
            });
        if line.contains("HTTP API listening") {
            break line;
        }
        early.push(line);
    };
    let addr = listening.split("addr=").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap();
    Service {
        child,
        base: format!("http://{addr}"),
        lines,
        early,
        listening,
    }
}

impl Service {
    /// The next log line containing `needle`, within 30 s.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends a signal (`-TERM`, `-HUP`, …) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name}");
    }

    /// SIGTERM, then waits: asserts a clean exit and returns what it printed on stdout.
    pub fn stop(mut self) -> String {
        self.signal("-TERM");
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).unwrap();
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        stdout
    }

    /// A GET over a plain socket (HTTP/1.0: the server closes after answering): the body.
    pub fn get(&self, path: &str) -> String {
        let host = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

/// A test that fails half-way must not leave the service running.
impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
