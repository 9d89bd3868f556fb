//! The local log on a really full disk: a 1 MiB tmpfs. Mounting needs root; elsewhere the
//! test says so and stops (the refusal path below `min_free_bytes` and the rollback are
//! covered by unit tests in `src/sinks/log`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use firestream::config::{Config, Size};
use firestream::dlq::Stage;
use firestream::sinks::log::LogSink;
use firestream::sinks::log::reader::PartitionReader;
use firestream::sinks::{ErrorClass, Message, Origin, Sink};

struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` at a fresh directory, or `None` when this process cannot mount.
    fn mount(size: &str) -> Option<(tempfile::TempDir, Tmpfs)> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        if !status.success() {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        let mounted = Tmpfs(dir.path().to_owned());
        Some((dir, mounted))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn message(n: u32) -> Message {
    Message {
        topic: Arc::from("t"),
        key: "k".into(),
        timestamp_ms: 1_700_000_000_000,
        headers: vec![("content-type", "application/json".into())],
        payload: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(900)).into_bytes(),
        origin: Origin::DeadLetter {
            stage: Stage::Deliver,
            receipt: None,
        },
    }
}

fn offsets_on_disk(log: &Path) -> Vec<u64> {
    // The reader fails on any line that is not a whole record.
    let mut reader = PartitionReader::new(&log.join("t"), 0);
    std::iter::from_fn(|| reader.next_entry().unwrap())
        .map(|e| e.offset)
        .collect()
}

#[tokio::test]
async fn a_full_disk_never_leaves_half_a_record_and_the_sink_recovers() {
    let Some((dir, _mounted)) = Tmpfs::mount("1m") else {
        return;
    };
    let log = dir.path().join("log");
    let mut config = Config::parse("topics: {t: {partitions: 1}}", Path::new("t.yaml")).unwrap();
    config.sink.log.dir = log.clone();
    config.sink.log.segment_bytes = Size(64 * 1024);
    config.sink.log.min_free_bytes = Size(0);
    config.sink.log.retention = None;
    // Space an operator can free later.
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();

    let sink = LogSink::open(&config).unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    'fill: for round in 0..100u32 {
        let batch = (0..20).map(|i| message(round * 20 + i)).collect();
        for (_, result) in sink.send(batch).await {
            match result {
                Ok(d) => acked.push(d.offset.expect("the log names every offset")),
                Err(e) => {
                    failure = Some(e);
                }
            }
        }
        if failure.is_some() {
            break 'fill;
        }
    }
    let err = failure.expect("a 1 MiB disk fills up");
    assert_eq!((err.kind, err.class), ("disk_full", ErrorClass::Retriable));
    assert!(err.message.contains("disk full at"), "{err}");
    let ready = sink.readiness();
    assert!(!ready.ready);
    assert!(
        ready
            .detail
            .starts_with(&format!("disk full at {}: free space ", log.display())),
        "{}",
        ready.detail
    );
    // Exactly the acknowledged records are on disk, every line whole, offsets dense.
    assert!(!acked.is_empty());
    assert_eq!(offsets_on_disk(&log), acked);
    assert_eq!(acked, (0..acked.len() as u64).collect::<Vec<_>>());

    // Space returns: ready again, and the next batch continues the offsets.
    std::fs::remove_file(&filler).unwrap();
    assert!(sink.readiness().ready, "{}", sink.readiness().detail);
    let outcomes = sink.send(vec![message(9_999)]).await;
    let next = outcomes[0].1.as_ref().expect("written once space is back");
    assert_eq!(next.offset, Some(acked.len() as u64));
    assert_eq!(
        sink.readiness().detail,
        format!("local log at {}", log.display())
    );
    sink.close().await.unwrap();
    drop(sink);
    // A restart finds nothing to repair and the same records.
    let sink = LogSink::open(&config).unwrap();
    assert_eq!(offsets_on_disk(&log).len(), acked.len() + 1);
    drop(sink);
}
