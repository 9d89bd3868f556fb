//! The embedded local log (DESIGN §7): Kafka's layout and semantics on a local disk, so the
//! whole pipeline runs without a broker and `jq` can read the result.
//!
//! `<dir>/<topic>/<partition>/<base-offset>.jsonl`, one record per line; partition chosen by
//! Kafka's murmur2 of the key; offsets dense per partition and recovered on restart. One
//! process owns a log directory at a time (an exclusive lock on `<dir>/.lock`); readers such
//! as `firestream tail` need no lock.
//!
//! Retention deletes whole closed segments (see [`retention`]). A write that fails (a full
//! disk, any I/O error) is undone to the partition's last acknowledged line, so a segment is
//! never left with half a record; the batch comes back as a retriable error and the sink
//! reports itself not ready until a write succeeds again. With `sink.log.min_free_bytes` it
//! refuses writes before the disk is actually full. A line that is not a record (a hand
//! edit, disk damage) is skipped by every reader and reported once (see `damage.rs`).

mod damage;
pub mod groups;
pub mod reader;
pub mod retention;
mod segment;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;

use self::segment::PartitionWriter;
use super::partition::partition_for_key;
use super::{Delivered, ErrorClass, Message, Outcome, Pending, Readiness, Sink, SinkError};
use crate::config::{Config, FsyncPolicy};
use crate::dlq::DLQ_TOPIC;

pub use self::damage::damaged_lines;
pub use self::segment::{list_segments, segment_name};

/// A message and where it was appended (partition, offset), before the flush confirms it.
type Appended = (Message, Result<(u32, u64), SinkError>);

pub struct LogSink {
    inner: Arc<Inner>,
}

/// The error kind of a write refused or failed for lack of space.
pub const DISK_FULL_KIND: &str = "disk_full";

/// Once the disk was full, the sink reports ready again when this much is free (or
/// `min_free_bytes`, if larger) — or at once when a write succeeds.
const RECOVERY_FREE_BYTES: u64 = 64 * 1024;

/// What retention has deleted since the sink opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionCounts {
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
}

struct Inner {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    partitions: HashMap<String, u32>,
    default_partitions: u32,
    writers: Mutex<HashMap<(Arc<str>, u32), PartitionWriter>>,
    retention: retention::Policy,
    newest_cache: Mutex<retention::NewestCache>,
    segments_deleted: AtomicU64,
    bytes_deleted: AtomicU64,
    /// Writes are refused below this much free space (0: never).
    min_free_bytes: AtomicU64,
    /// Why the sink is not ready (the disk is full), until a write succeeds.
    trouble: Mutex<Option<String>>,
    /// Dropped with the sink: stops the periodic retention thread.
    _stop_retention: Mutex<mpsc::Sender<()>>,
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
        let (stop, stopped) = mpsc::channel();
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            fsync: settings.fsync,
            segment_bytes: settings.segment_bytes.0,
            partitions,
            default_partitions: config.partitions(""),
            writers: Mutex::new(HashMap::new()),
            retention: retention::Policy {
                max_age: settings.retention.map(|d| d.0),
                max_bytes: settings.retention_bytes.map(|s| s.0),
            },
            newest_cache: Mutex::new(HashMap::new()),
            segments_deleted: AtomicU64::new(0),
            bytes_deleted: AtomicU64::new(0),
            min_free_bytes: AtomicU64::new(settings.min_free_bytes.0),
            trouble: Mutex::new(None),
            _stop_retention: Mutex::new(stop),
            _lock: lock,
        });
        spawn_retention(Arc::downgrade(&inner), stopped, retention::CHECK_INTERVAL)
            .map_err(|e| unusable(format!("cannot start its retention thread ({e})")))?;
        Ok(LogSink { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Segments and bytes deleted by retention since the sink opened.
    pub fn retention_counts(&self) -> RetentionCounts {
        RetentionCounts {
            segments_deleted: self.inner.segments_deleted.load(Ordering::Relaxed),
            bytes_deleted: self.inner.bytes_deleted.load(Ordering::Relaxed),
        }
    }

    /// Applies retention to every partition now (it also runs on each segment roll and
    /// every [`retention::CHECK_INTERVAL`]).
    pub fn enforce_retention(&self) {
        self.inner.enforce_retention_everywhere();
    }

    /// Changes the free-space floor; the running sink's seam for tests of the refusal path.
    #[cfg(test)]
    fn set_min_free_bytes(&self, bytes: u64) {
        self.inner.min_free_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Runs retention at once, then every `every`, until the sink is dropped.
fn spawn_retention(
    inner: Weak<Inner>,
    stopped: mpsc::Receiver<()>,
    every: Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("log-retention".into())
        .spawn(move || {
            loop {
                match inner.upgrade() {
                    Some(inner) => inner.enforce_retention_everywhere(),
                    None => return,
                }
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .map(drop)
}

/// Free and total bytes of the file system holding `dir`, as an unprivileged writer sees it.
fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        stat.f_blocks.saturating_mul(stat.f_frsize),
    ))
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl Inner {
    fn partitions(&self, topic: &str) -> u32 {
        self.partitions
            .get(topic)
            .copied()
            .unwrap_or(self.default_partitions)
    }

    /// Appends the batch, then flushes (and per policy syncs) every partition it touched.
    /// A message counts as delivered only once its partition's flush succeeded; a partition
    /// whose write fails is rolled back to where the batch began and all its messages fail.
    fn write(&self, batch: Vec<Message>) -> Vec<Outcome> {
        let refused = self.check_free_space();
        let mut writers = self.writers.lock().expect("log writers lock");
        let mut results: Vec<Appended> = Vec::with_capacity(batch.len());
        let mut touched: HashSet<(Arc<str>, u32)> = HashSet::new();
        let mut failed: HashMap<(Arc<str>, u32), SinkError> = HashMap::new();
        let mut disk_full = refused.is_some();
        for message in batch {
            let partition =
                partition_for_key(message.key.as_bytes(), self.partitions(&message.topic));
            let slot = (message.topic.clone(), partition);
            // Dead letters may use the reserve: they are what tells an operator what failed.
            if let Some(err) = refused.as_ref().filter(|_| &*message.topic != DLQ_TOPIC) {
                results.push((message, Err(err.clone())));
                continue;
            }
            if let Some(err) = failed.get(&slot) {
                let err = err.clone();
                results.push((message, Err(err)));
                continue;
            }
            let path = self.dir.join(&*message.topic).join(partition.to_string());
            let writer = match writers.entry(slot.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match PartitionWriter::open(&path) {
                        Ok(writer) => e.insert(writer),
                        Err(err) => {
                            disk_full |= is_disk_full(&err);
                            let err = self.io_error(&path, err);
                            failed.insert(slot, err.clone());
                            results.push((message, Err(err)));
                            continue;
                        }
                    }
                }
            };
            writer.begin();
            match writer.append(
                message.timestamp_ms,
                &message.key,
                &message.headers,
                &message.payload,
                self.segment_bytes,
            ) {
                Ok(offset) => {
                    touched.insert(slot);
                    results.push((message, Ok((partition, offset))));
                }
                Err(err) => {
                    disk_full |= is_disk_full(&err);
                    let err = self.io_error(&path, err);
                    let writer = writers.remove(&slot).expect("writer in use");
                    self.roll_back(&path, writer);
                    touched.remove(&slot);
                    failed.insert(slot, err.clone());
                    results.push((message, Err(err)));
                }
            }
        }

        let sync = self.fsync == FsyncPolicy::Batch;
        let mut rolled = Vec::new();
        for slot in touched {
            let path = self.dir.join(&*slot.0).join(slot.1.to_string());
            let writer = writers.get_mut(&slot).expect("touched writer");
            match writer.flush(sync) {
                Ok(()) => {
                    writer.commit();
                    if writer.take_rolled() {
                        rolled.push(slot);
                    }
                }
                Err(err) => {
                    disk_full |= is_disk_full(&err);
                    let err = self.io_error(&path, err);
                    let writer = writers.remove(&slot).expect("touched writer");
                    self.roll_back(&path, writer);
                    failed.insert(slot, err);
                }
            }
        }
        for (topic, partition) in rolled {
            self.enforce_retention(&topic, partition);
        }
        drop(writers);

        // A full disk concerns the whole sink; other I/O errors concern their partition and
        // are reported with its records (delivery logs them per topic and kind).
        let wrote = results.iter().any(|(_, r)| r.is_ok());
        if disk_full {
            if let Some(first) = failed.values().next() {
                self.trouble_begins(first);
            }
        } else if refused.is_none() && wrote {
            self.trouble_ends();
        }
        results
            .into_iter()
            .map(|(message, result)| {
                let outcome = result.and_then(|(partition, offset)| {
                    match failed.get(&(message.topic.clone(), partition)) {
                        Some(err) => Err(err.clone()),
                        None => Ok(Delivered {
                            partition,
                            offset: Some(offset),
                        }),
                    }
                });
                (message, outcome)
            })
            .collect()
    }

    /// Undoes a failed batch in one partition (see [`PartitionWriter::rollback`]).
    fn roll_back(&self, path: &Path, writer: PartitionWriter) {
        if let Err(e) = writer.rollback() {
            // The next open truncates a partial line; complete lines of the failed batch
            // stay and may be written again when it is retried.
            tracing::error!(partition = %path.display(), error = %e, "cannot undo a failed write; the partition is repaired when it is next opened");
        }
    }

    /// The error a failed write reports: `disk_full` (retriable) when space ran out.
    fn io_error(&self, path: &Path, e: std::io::Error) -> SinkError {
        if is_disk_full(&e) {
            return SinkError::retriable(
                DISK_FULL_KIND,
                format!(
                    "local log {}: {e}; {}",
                    path.display(),
                    self.disk_full_detail()
                ),
            );
        }
        io_error(path, e)
    }

    /// `Some(error)` when free space is below `min_free_bytes`: the batch is refused.
    fn check_free_space(&self) -> Option<SinkError> {
        let min_free = self.min_free_bytes.load(Ordering::Relaxed);
        if min_free == 0 {
            return None;
        }
        match free_space(&self.dir) {
            Ok((free, _)) if free < min_free => {
                let err = SinkError::retriable(DISK_FULL_KIND, self.disk_full_detail());
                self.trouble_begins(&err);
                Some(err)
            }
            Ok(_) => None,
            // Cannot tell: let the write itself find out.
            Err(_) => None,
        }
    }

    fn disk_full_detail(&self) -> String {
        let min_free = self.min_free_bytes.load(Ordering::Relaxed);
        let space = match free_space(&self.dir) {
            Ok((free, total)) => format!(
                "free space {} of {}",
                bytesize::ByteSize::b(free).display().iec(),
                bytesize::ByteSize::b(total).display().iec()
            ),
            Err(e) => format!("free space unknown ({e})"),
        };
        format!(
            "disk full at {}: {space} (sink.log.min_free_bytes {}); delete old segments or lower sink.log.retention / retention_bytes",
            self.dir.display(),
            bytesize::ByteSize::b(min_free).display().iec()
        )
    }

    /// The disk is full: not ready from now on; logged once, when it starts.
    fn trouble_begins(&self, err: &SinkError) {
        let detail = self.disk_full_detail();
        let mut trouble = self.trouble.lock().expect("log trouble lock");
        if trouble.is_none() {
            tracing::error!(dir = %self.dir.display(), error_kind = err.kind, "local log cannot write: {detail}");
        }
        *trouble = Some(detail);
    }

    fn trouble_ends(&self) {
        let mut trouble = self.trouble.lock().expect("log trouble lock");
        if let Some(was) = trouble.take() {
            tracing::info!(dir = %self.dir.display(), was = %was, "local log writes succeed again");
        }
    }

    fn readiness(&self) -> Readiness {
        let trouble = self.trouble.lock().expect("log trouble lock").clone();
        let min_free = self.min_free_bytes.load(Ordering::Relaxed);
        let free = if min_free > 0 || trouble.is_some() {
            free_space(&self.dir).ok().map(|(free, _)| free)
        } else {
            None
        };
        // Below the floor the next batch would be refused: say so before it comes.
        if min_free > 0 && free.is_some_and(|free| free < min_free) {
            return Readiness {
                ready: false,
                detail: self.disk_full_detail(),
            };
        }
        let Some(detail) = trouble else {
            return Readiness {
                ready: true,
                detail: format!("local log at {}", self.dir.display()),
            };
        };
        // Space freed since (retention, an operator): ready, so delivery tries again.
        if detail.starts_with("disk full")
            && free.is_some_and(|free| free >= min_free.max(RECOVERY_FREE_BYTES))
        {
            return Readiness {
                ready: true,
                detail: format!(
                    "local log at {} (space available again after: {detail})",
                    self.dir.display()
                ),
            };
        }
        Readiness {
            ready: false,
            detail,
        }
    }

    /// Retention for one partition, counted; a failure is logged (the next pass retries).
    fn enforce_retention(&self, topic: &str, partition: u32) {
        let dir = self.dir.join(topic).join(partition.to_string());
        let now = chrono::Utc::now().timestamp_millis();
        let mut cache = self.newest_cache.lock().expect("retention cache lock");
        match retention::enforce(&dir, topic, partition, self.retention, now, &mut cache) {
            Ok(deleted) => {
                for d in deleted {
                    self.segments_deleted.fetch_add(1, Ordering::Relaxed);
                    self.bytes_deleted.fetch_add(d.bytes, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "log retention failed for a partition; retrying at the next pass");
            }
        }
    }

    /// Retention over every partition on disk; holds the writers so no batch is mid-way.
    fn enforce_retention_everywhere(&self) {
        if self.retention == retention::Policy::default() {
            return;
        }
        let _writers = self.writers.lock().expect("log writers lock");
        for topic in reader::topics(&self.dir).unwrap_or_default() {
            for partition in reader::partitions(&self.dir, &topic).unwrap_or_default() {
                self.enforce_retention(&topic, partition);
            }
        }
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
    use std::io::ErrorKind;
    let class = match e.kind() {
        // Retrying cannot fix a damaged segment, permissions, or a file where the layout
        // needs a directory: these records go to the DLQ at once (and can be replayed).
        ErrorKind::InvalidData
        | ErrorKind::PermissionDenied
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::AlreadyExists => ErrorClass::Fatal,
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
        self.inner.readiness()
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
        // Once open, its own readiness (a full disk shows here too).
        if let Ok(sink) = self.sink.try_lock()
            && let Some(sink) = sink.as_ref()
        {
            return sink.readiness();
        }
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
            assert_eq!(d.offset, Some(i as u64));
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
    async fn below_min_free_space_writes_are_refused_until_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(&config(dir.path())).unwrap();
        assert!(sink.readiness().ready);
        // More free space than any disk has: the refusal path, as on a nearly full disk.
        sink.set_min_free_bytes(u64::MAX);
        // Not ready before anything is written.
        let r = sink.readiness();
        assert!(!r.ready);
        assert!(r.detail.starts_with("disk full at "), "{}", r.detail);
        let mut batch: Vec<Message> = (0..3).map(|n| message("t2", "9q8y", n)).collect();
        batch.push(message(DLQ_TOPIC, "s", 9));
        let outcomes = sink.send(batch).await;
        for (m, result) in &outcomes[..3] {
            let err = result.as_ref().unwrap_err();
            assert_eq!(
                (err.kind, err.class),
                (DISK_FULL_KIND, ErrorClass::Retriable),
                "{}",
                m.topic
            );
            assert!(
                err.message.starts_with(&format!(
                    "disk full at {}: free space ",
                    dir.path().display()
                )),
                "{err}"
            );
        }
        // A dead letter may use the reserve.
        assert_eq!(outcomes[3].1.as_ref().unwrap().offset, Some(0));
        assert!(!dir.path().join("t2").exists());
        let r = sink.readiness();
        assert!(!r.ready);
        assert!(r.detail.starts_with("disk full at "), "{}", r.detail);
        assert!(
            r.detail
                .ends_with("delete old segments or lower sink.log.retention / retention_bytes"),
            "{}",
            r.detail
        );

        // Space returns: ready at once, and the next write succeeds.
        sink.set_min_free_bytes(1);
        let r = sink.readiness();
        assert!(r.ready, "{}", r.detail);
        assert!(r.detail.contains("space available again"), "{}", r.detail);
        let outcomes = sink.send(vec![message("t2", "9q8y", 0)]).await;
        assert_eq!(outcomes[0].1.as_ref().unwrap().offset, Some(0));
        assert_eq!(
            sink.readiness(),
            Readiness {
                ready: true,
                detail: format!("local log at {}", dir.path().display())
            }
        );
    }

    #[tokio::test]
    async fn a_file_where_a_topic_directory_belongs_fails_its_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(&config(dir.path())).unwrap();
        fs::write(dir.path().join("blocked"), "").unwrap();
        let outcomes = sink
            .send(vec![message("blocked", "k", 0), message("t2", "k", 1)])
            .await;
        let err = outcomes[0].1.as_ref().unwrap_err();
        assert_eq!((err.kind, err.class), ("log_io_error", ErrorClass::Fatal));
        assert!(err.message.starts_with("local log "), "{err}");
        assert!(outcomes[1].1.is_ok());
        // One topic's problem, not the sink's: still ready.
        assert!(sink.readiness().ready);
        // Fixed: the next write succeeds.
        fs::remove_file(dir.path().join("blocked")).unwrap();
        let outcomes = sink.send(vec![message("blocked", "k", 0)]).await;
        assert!(outcomes[0].1.is_ok());
    }

    #[tokio::test]
    async fn retention_runs_on_roll_and_counts_what_it_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.sink.log.segment_bytes = crate::config::Size(4096);
        c.sink.log.retention = None;
        c.sink.log.retention_bytes = Some(crate::config::Size(8192));
        let sink = LogSink::open(&c).unwrap();
        // ~100-byte lines: 200 of them roll about five 4 KiB segments in one partition.
        for chunk in 0..4 {
            let batch = (0..50)
                .map(|n| message("t2", "9q8y", chunk * 50 + n))
                .collect();
            sink.send(batch).await;
        }
        let partition = partition_for_key(b"9q8y", 2);
        let pdir = dir.path().join("t2").join(partition.to_string());
        let segments = list_segments(&pdir).unwrap();
        let total: u64 = segments
            .iter()
            .map(|b| fs::metadata(pdir.join(segment_name(*b))).unwrap().len())
            .sum();
        assert!(total <= 8192 + 4096, "{total} bytes in {segments:?}");
        let counts = sink.retention_counts();
        assert!(counts.segments_deleted >= 2, "{counts:?}");
        // Offsets stay dense from the new log start.
        let mut r = reader::PartitionReader::new(&dir.path().join("t2"), partition);
        let mut offsets = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            offsets.push(e.offset);
        }
        assert_eq!(offsets.first(), Some(&segments[0]));
        assert_eq!(offsets.last(), Some(&199));
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[tokio::test]
    async fn opening_the_log_applies_retention_to_what_is_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("old-topic/0");
        fs::create_dir_all(&pdir).unwrap();
        let line = |offset: u64, ts: i64| {
            format!(
                "{{\"offset\":{offset},\"timestamp\":{ts},\"key\":\"k\",\"headers\":{{}},\"value\":{{}}}}\n"
            )
        };
        let now = chrono::Utc::now().timestamp_millis();
        let day = 86_400_000;
        fs::write(pdir.join(segment_name(0)), line(0, now - 30 * day)).unwrap();
        fs::write(pdir.join(segment_name(1)), line(1, now - 8 * day)).unwrap();
        fs::write(pdir.join(segment_name(2)), line(2, now - 6 * day)).unwrap();
        fs::write(pdir.join(segment_name(3)), line(3, now - 60 * day)).unwrap();
        let sink = LogSink::open(&config(dir.path())).unwrap();
        // The retention thread's first pass runs at once; allow it a generous while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.retention_counts().segments_deleted < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(list_segments(&pdir).unwrap(), vec![2, 3]);
        assert_eq!(
            sink.retention_counts(),
            RetentionCounts {
                segments_deleted: 2,
                bytes_deleted: (line(0, now - 30 * day).len() + line(1, now - 8 * day).len())
                    as u64,
            }
        );
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
