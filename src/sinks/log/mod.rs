//! The embedded local log (DESIGN §7): Kafka's layout and semantics on a local disk, so the
//! whole pipeline runs without a broker and `jq` can read the result.
//!
//! `<dir>/<topic>/<partition>/<base-offset>.jsonl`, one record per line; partition chosen by
//! Kafka's murmur2 of the key; offsets dense per partition and recovered on restart. One
//! process owns a log directory at a time (an exclusive lock on `<dir>/.lock`); readers such
//! as `firestream tail` need no lock.

pub mod reader;
mod segment;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::FutureExt;

use self::segment::PartitionWriter;
use super::partition::partition_for_key;
use super::{Delivered, ErrorClass, Message, Outcome, Pending, Readiness, Sink, SinkError};
use crate::config::{Config, FsyncPolicy};

pub use self::segment::{list_segments, segment_name};

/// A message and where it was appended (partition, offset), before the flush confirms it.
type Appended = (Message, Result<(u32, u64), SinkError>);

pub struct LogSink {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    partitions: HashMap<String, u32>,
    default_partitions: u32,
    writers: Mutex<HashMap<(Arc<str>, u32), PartitionWriter>>,
    /// Held for the sink's lifetime: the exclusive lock on the directory.
    _lock: File,
}

impl LogSink {
    /// Opens the log directory for writing, creating it if needed.
    pub fn open(config: &Config) -> Result<Self, SinkError> {
        let settings = &config.sink.log;
        let dir = settings.dir.clone();
        let unusable = |what: String| {
            SinkError::fatal(
                "log_dir_unusable",
                format!(
                    "log directory {}: {what}; set sink.log.dir to a writable directory",
                    dir.display()
                ),
            )
        };
        fs::create_dir_all(&dir).map_err(|e| unusable(format!("cannot create it ({e})")))?;
        let lock_path = dir.join(".lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unusable(format!("cannot write in it ({e})")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(SinkError::fatal(
                    "log_dir_locked",
                    format!(
                        "log directory {} is in use by another firestream process ({}); stop it or use another sink.log.dir",
                        dir.display(),
                        holder.trim()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(unusable(format!("cannot lock it ({e})")));
            }
        }
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "pid {}", std::process::id()))
            .map_err(|e| unusable(format!("cannot write in it ({e})")))?;

        let partitions = config
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), t.partitions))
            .collect();
        Ok(LogSink {
            inner: Arc::new(Inner {
                dir,
                fsync: settings.fsync,
                segment_bytes: settings.segment_bytes.0,
                partitions,
                default_partitions: config.partitions(""),
                writers: Mutex::new(HashMap::new()),
                _lock: lock,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn partitions(&self, topic: &str) -> u32 {
        self.partitions
            .get(topic)
            .copied()
            .unwrap_or(self.default_partitions)
    }

    /// Appends the batch, then flushes (and per policy syncs) every partition it touched.
    /// A message counts as delivered only once its partition's flush succeeded.
    fn write(&self, batch: Vec<Message>) -> Vec<Outcome> {
        let mut writers = self.writers.lock().expect("log writers lock");
        let mut results: Vec<Appended> = Vec::with_capacity(batch.len());
        let mut touched: HashSet<(Arc<str>, u32)> = HashSet::new();
        for message in batch {
            let partition =
                partition_for_key(message.key.as_bytes(), self.partitions(&message.topic));
            let slot = (message.topic.clone(), partition);
            let result = match writers.get_mut(&slot) {
                Some(writer) => Ok(writer),
                None => {
                    let path = self.dir.join(&*message.topic).join(partition.to_string());
                    match PartitionWriter::open(&path) {
                        Ok(writer) => Ok(writers.entry(slot.clone()).or_insert(writer)),
                        Err(e) => Err(io_error(&path, e)),
                    }
                }
            }
            .and_then(|writer| {
                writer
                    .append(
                        message.timestamp_ms,
                        &message.key,
                        &message.headers,
                        &message.payload,
                        self.segment_bytes,
                    )
                    .map_err(|e| io_error(&self.dir.join(&*message.topic), e))
            })
            .map(|offset| (partition, offset));
            if result.is_ok() {
                touched.insert(slot);
            }
            results.push((message, result));
        }

        let sync = self.fsync == FsyncPolicy::Batch;
        let mut failed_flush: HashMap<(Arc<str>, u32), SinkError> = HashMap::new();
        for slot in touched {
            if let Some(writer) = writers.get_mut(&slot)
                && let Err(e) = writer.flush(sync)
            {
                let path = self.dir.join(&*slot.0).join(slot.1.to_string());
                // The writer's buffer state is unknown now; reopen (and recover) next time.
                writers.remove(&slot);
                failed_flush.insert(slot, io_error(&path, e));
            }
        }
        results
            .into_iter()
            .map(|(message, result)| {
                let outcome = result.and_then(|(partition, offset)| {
                    match failed_flush.get(&(message.topic.clone(), partition)) {
                        Some(err) => Err(err.clone()),
                        None => Ok(Delivered { partition, offset }),
                    }
                });
                (message, outcome)
            })
            .collect()
    }

    fn close(&self) -> Result<(), SinkError> {
        let mut writers = self.writers.lock().expect("log writers lock");
        let mut first_error = None;
        for ((topic, partition), writer) in writers.iter_mut() {
            if let Err(e) = writer.flush(true) {
                let path = self.dir.join(&**topic).join(partition.to_string());
                first_error.get_or_insert(io_error(&path, e));
            }
        }
        writers.clear();
        first_error.map_or(Ok(()), Err)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> SinkError {
    let class = match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::PermissionDenied => ErrorClass::Fatal,
        _ => ErrorClass::Retriable,
    };
    SinkError {
        class,
        kind: "log_io_error",
        message: format!("local log {}: {e}", path.display()),
    }
}

#[async_trait]
impl Sink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    /// The write (and fsync, per policy) happens here, so the outcomes are known at once.
    async fn submit(&self, batch: Vec<Message>) -> Pending {
        let inner = self.inner.clone();
        let outcomes = match tokio::task::spawn_blocking(move || inner.write(batch)).await {
            Ok(outcomes) => outcomes,
            // The write thread panicked; its messages are gone from here, so this is a bug.
            Err(e) => panic!("local log writer failed: {e}"),
        };
        futures::future::ready(outcomes).boxed()
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            detail: format!("local log at {}", self.inner.dir.display()),
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.close())
            .await
            .unwrap_or_else(|e| Err(SinkError::fatal("log_io_error", e.to_string())))
    }
}

/// The local log opened on first use: the DLQ fallback behind Kafka, so a Kafka deployment
/// needs a writable `sink.log.dir` only once Kafka cannot take a dead letter.
pub struct LazyLogSink {
    config: Config,
    sink: tokio::sync::Mutex<Option<LogSink>>,
}

impl LazyLogSink {
    pub fn new(config: Config) -> Self {
        LazyLogSink {
            config,
            sink: tokio::sync::Mutex::new(None),
        }
    }
}

#[async_trait]
impl Sink for LazyLogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn submit(&self, batch: Vec<Message>) -> Pending {
        let mut sink = self.sink.lock().await;
        if sink.is_none() {
            match LogSink::open(&self.config) {
                Ok(opened) => {
                    tracing::warn!(dir = %opened.dir().display(), "opened the local log as the DLQ fallback");
                    *sink = Some(opened);
                }
                Err(e) => {
                    let outcomes = batch.into_iter().map(|m| (m, Err(e.clone()))).collect();
                    return futures::future::ready(outcomes).boxed();
                }
            }
        }
        sink.as_ref().expect("opened above").submit(batch).await
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            detail: format!(
                "local log at {} (opened when needed)",
                self.config.sink.log.dir.display()
            ),
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        match self.sink.lock().await.as_ref() {
            Some(sink) => sink.close().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::Stage;
    use crate::sinks::Origin;

    fn config(dir: &Path) -> Config {
        let mut c = Config::parse("topics: {t2: {partitions: 2}}", Path::new("t.yaml")).unwrap();
        c.sink.log.dir = dir.to_owned();
        c
    }

    fn message(topic: &str, key: &str, n: u32) -> Message {
        Message {
            topic: Arc::from(topic),
            key: key.to_owned(),
            timestamp_ms: 1_000,
            headers: vec![("content-type", "application/json".into())],
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            origin: Origin::DeadLetter {
                stage: Stage::Validate,
                receipt: None,
            },
        }
    }

    #[tokio::test]
    async fn writes_to_the_murmur2_partition_with_dense_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(&config(dir.path())).unwrap();
        let batch = (0..6).map(|n| message("t2", "9q8y", n)).collect();
        let outcomes = sink.send(batch).await;
        let expected_partition = partition_for_key(b"9q8y", 2);
        for (i, (_, result)) in outcomes.iter().enumerate() {
            let d = result.as_ref().unwrap();
            assert_eq!(d.partition, expected_partition);
            assert_eq!(d.offset, i as u64);
        }
        let path = dir
            .path()
            .join("t2")
            .join(expected_partition.to_string())
            .join(segment_name(0));
        assert_eq!(fs::read_to_string(path).unwrap().lines().count(), 6);
        sink.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_writer_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LogSink::open(&config(dir.path())).unwrap();
        let err = LogSink::open(&config(dir.path())).err().unwrap();
        assert_eq!(err.kind, "log_dir_locked");
        assert!(
            err.message.contains("in use by another firestream process"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unwritable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let err = LogSink::open(&config(&file.join("log"))).err().unwrap();
        assert_eq!(err.kind, "log_dir_unusable");
        assert!(err.message.contains("set sink.log.dir"), "{err}");
    }
}
