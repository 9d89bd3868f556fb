//! Checkpoints (DESIGN §5 "Checkpoint store", "Delivery guarantee"): what a source has
//! safely handed over, so a restart neither loses nor repeats records.
//!
//! A source's checkpoint holds the ids of its records the sink acknowledged (its dedupe
//! window), the topic offsets those ids cover, and the files it read whose records were all
//! accounted for. Nothing advances for a record still in flight. On start, each source's
//! window is restored and the tail of its topics after the covered offsets is read back: ids
//! found there (written just before a crash) join the window, so they are not written again,
//! while records that never reached the sink are fetched and sent again.

mod ledger;
mod store;
mod tail;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use self::ledger::{OffsetLedger, Ticket};
pub use self::store::{
    CHECKPOINT_TOPIC, CheckpointStore, CheckpointWriter, DirStore, KafkaStore,
    MAX_CHECKPOINT_BYTES, TransactionalStore,
};
pub use self::tail::{AtOffset, KafkaTail, LogTail, StartAt, TailRecord, TailSource};
use crate::config::{CheckpointStoreKind, Config, SinkKind};
use crate::dedupe::DedupeRegistry;
use crate::record::RecordId;
use crate::sources::SourceType;
use crate::transport::file::Fingerprint;

/// Topic → partition → offset.
type TopicOffsets = BTreeMap<String, BTreeMap<u32, u64>>;
/// Topic → partition → record id (hex).
type TopicAnchors = BTreeMap<String, BTreeMap<u32, String>>;

/// A ledger's covered offsets split into a checkpoint's offsets and anchors.
fn split_covered(covered: ledger::Covered) -> (TopicOffsets, TopicAnchors) {
    let (mut offsets, mut anchors) = (BTreeMap::new(), BTreeMap::new());
    for (topic, partitions) in covered {
        let mut ids = BTreeMap::new();
        let ends = partitions
            .into_iter()
            .map(|(p, (end, id))| {
                if let Some(id) = id {
                    ids.insert(p, id.to_string());
                }
                (p, end)
            })
            .collect();
        if !ids.is_empty() {
            anchors.insert(topic.clone(), ids);
        }
        offsets.insert(topic, ends);
    }
    (offsets, anchors)
}

/// Every stored checkpoint by source id, each read or why it could not be.
pub type Loaded = HashMap<String, Result<Checkpoint, Unreadable>>;

/// A stored checkpoint that cannot be used: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub at: String,
    pub detail: String,
}

/// The checkpoint format; a newer one is refused rather than misread.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "checkpoint at {at} cannot be read ({detail}); delete it to start that source without \
         one (its records of the last dedupe window are then found by reading its topics)"
    )]
    Corrupt { at: String, detail: String },
    #[error("checkpoint store: {0}")]
    Kafka(String),
    /// Reading a topic of the local log back (recovery's tail scan), not the checkpoint store.
    #[error("reading {path} back for recovery: {source}{}", topic_hint(source))]
    Topic {
        path: String,
        source: std::io::Error,
    },
}

/// What to do about a local-log read error that waiting will not fix.
fn topic_hint(e: &std::io::Error) -> &'static str {
    if topic_error_is_permanent(e) {
        "; waiting will not fix this: make the partition's files readable (or move the \
         offending file out of the partition directory) and start again"
    } else {
        ""
    }
}

/// Permissions, a file where a directory belongs (or the reverse), unreadable data: the
/// same on every retry.
fn topic_error_is_permanent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
            | ErrorKind::InvalidData
    )
}

impl CheckpointError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn topic(path: &Path, source: std::io::Error) -> Self {
        CheckpointError::Topic {
            path: path.display().to_string(),
            source,
        }
    }

    /// Whether trying again cannot help: a damaged checkpoint, or a topic of the local log
    /// that cannot be read for good. A source then does not start (and says why) instead of
    /// waiting for ever.
    pub fn is_permanent(&self) -> bool {
        match self {
            CheckpointError::Corrupt { .. } => true,
            CheckpointError::Topic { source, .. } => topic_error_is_permanent(source),
            CheckpointError::Io { .. } | CheckpointError::Kafka(_) => false,
        }
    }
}

/// One source's checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    pub source_id: String,
    /// RFC 3339, for people reading the file.
    pub written_at: String,
    /// Topic → partition → the offset from which the source's records may be missing from
    /// `seen`: recovery reads from there.
    #[serde(default)]
    pub offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Topic → partition → the id (hex) of the record just before the covered offset: on
    /// start it must still be there, or the topic was deleted (and perhaps refilled) since
    /// and the checkpoint no longer describes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub anchors: BTreeMap<String, BTreeMap<u32, String>>,
    /// Acknowledged record ids (hex) with the time their dedupe entry expires (ms).
    #[serde(default)]
    pub seen: Vec<(String, i64)>,
    /// Files read whose records were all accounted for.
    #[serde(default)]
    pub files: BTreeMap<PathBuf, Fingerprint>,
}

impl Checkpoint {
    pub fn empty(source_id: &str) -> Self {
        Checkpoint {
            version: VERSION,
            source_id: source_id.to_owned(),
            written_at: Utc::now().to_rfc3339(),
            offsets: BTreeMap::new(),
            anchors: BTreeMap::new(),
            seen: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    /// A fingerprint of the content (not of when it was written), to skip writing an
    /// unchanged checkpoint.
    fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.offsets.hash(&mut hasher);
        self.anchors.hash(&mut hasher);
        self.seen.hash(&mut hasher);
        self.files.len().hash(&mut hasher);
        for (path, f) in &self.files {
            path.hash(&mut hasher);
            format!("{f:?}").hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// A source whose checkpoint is kept: its id, its type (its dedupe window) and the topics its
/// records go to now (read back on start even if its checkpoint names none).
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub id: Arc<str>,
    pub source_type: SourceType,
    pub topics: Vec<String>,
}

/// Files a source read whose records were all accounted for; shared between its stream and
/// the checkpointer.
#[derive(Debug, Default)]
pub struct FileCursor {
    done: Mutex<BTreeMap<PathBuf, Fingerprint>>,
}

impl FileCursor {
    /// Every record of this version of the file is delivered or dead-lettered.
    pub fn done(&self, path: PathBuf, fingerprint: Fingerprint) {
        self.done
            .lock()
            .expect("file cursor lock")
            .insert(crate::transport::file::canonical(&path), fingerprint);
    }

    pub fn files(&self) -> BTreeMap<PathBuf, Fingerprint> {
        self.done.lock().expect("file cursor lock").clone()
    }
}

/// What recovery found, for the start-up log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Sources that had a checkpoint.
    pub checkpoints: usize,
    /// Ids restored from checkpoints.
    pub restored_ids: usize,
    /// Records read back from topic tails.
    pub tail_records: u64,
    /// Ids found in the tails (stored after the last checkpoint) now in the windows.
    pub tail_ids: usize,
}

/// The checkpoints of every source: recovery on start, writes while running and at stop.
pub struct Checkpoints {
    store: Box<dyn CheckpointStore>,
    tail: Arc<dyn TailSource>,
    ledger: Arc<OffsetLedger>,
    dedupe: Arc<DedupeRegistry>,
    window: Duration,
    sources: Mutex<Vec<SourceInfo>>,
    cursors: Mutex<HashMap<Arc<str>, Arc<FileCursor>>>,
    /// What was written last per source, to skip unchanged ones.
    written: Mutex<HashMap<String, Checkpoint>>,
}

impl Checkpoints {
    /// The configured store: `dir`, or the Kafka topic with the Kafka sink (`auto`). With a
    /// transactional sink, `writer` (the sink) writes the checkpoints in its transactions and
    /// recovery reads only committed records.
    pub fn open(
        config: &Config,
        ledger: Arc<OffsetLedger>,
        dedupe: Arc<DedupeRegistry>,
        writer: Option<Arc<dyn CheckpointWriter>>,
    ) -> Result<Self, CheckpointError> {
        let client = |k: &crate::config::KafkaSinkConfig| {
            let mut client = crate::sinks::kafka::connection_config(k);
            if k.transactional {
                client.set("isolation.level", "read_committed");
            }
            client
        };
        let kafka = match config.checkpoint.store {
            CheckpointStoreKind::Kafka => true,
            CheckpointStoreKind::Dir => false,
            CheckpointStoreKind::Auto => config.sink.kind == SinkKind::Kafka,
        };
        let store: Box<dyn CheckpointStore> = if kafka {
            let kafka_config = config
                .sink
                .kafka
                .as_ref()
                .ok_or_else(|| CheckpointError::Kafka("sink.kafka is not configured".into()))?;
            let timeout = kafka_config.connect_timeout.0.max(Duration::from_secs(10));
            let reader = KafkaStore::new(client(kafka_config), timeout)?;
            match writer.filter(|_| kafka_config.transactional) {
                Some(writer) => Box::new(TransactionalStore { reader, writer }),
                None => Box::new(reader),
            }
        } else {
            Box::new(DirStore::new(
                config.checkpoint.dir_for(&config.sink.log.dir),
            ))
        };
        let tail: Arc<dyn TailSource> = match (&config.sink.kind, &config.sink.kafka) {
            (SinkKind::Kafka, Some(k)) => Arc::new(KafkaTail::new(
                client(k),
                k.connect_timeout.0.max(Duration::from_secs(10)),
            )),
            _ => Arc::new(LogTail::new(config.sink.log.dir.clone())),
        };
        Ok(Self::with(
            store,
            tail,
            ledger,
            dedupe,
            config.dedupe.window.0,
        ))
    }

    pub fn with(
        store: Box<dyn CheckpointStore>,
        tail: Arc<dyn TailSource>,
        ledger: Arc<OffsetLedger>,
        dedupe: Arc<DedupeRegistry>,
        window: Duration,
    ) -> Self {
        Checkpoints {
            store,
            tail,
            ledger,
            dedupe,
            window,
            sources: Mutex::new(Vec::new()),
            cursors: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// The file cursor of a source (after [`Checkpoints::recover`], with what it restored).
    pub fn file_cursor(&self, source: &Arc<str>) -> Arc<FileCursor> {
        self.cursors
            .lock()
            .expect("cursors lock")
            .entry(source.clone())
            .or_default()
            .clone()
    }

    /// Restores every source's dedupe window and file cursor from its checkpoint, then reads
    /// its topics back from the covered offsets (or, without a checkpoint, from the start of
    /// the dedupe window) and adds the ids found. Run before any source starts.
    pub async fn recover(
        self: &Arc<Self>,
        sources: Vec<SourceInfo>,
    ) -> Result<Recovery, CheckpointError> {
        let loaded = self.store.load_all().await?;
        let now = Utc::now();
        let mut recovery = Recovery::default();
        let mut plans = Vec::new();
        for source in &sources {
            let checkpoint = match loaded.get(source.id.as_ref()) {
                Some(Ok(c)) if c.source_id != *source.id => {
                    return Err(CheckpointError::Corrupt {
                        at: format!("{} ({})", self.store.describe(), source.id),
                        detail: format!("it belongs to source `{}`", c.source_id),
                    });
                }
                Some(Ok(c)) => self.unless_stale(source, c).await?,
                Some(Err(Unreadable { at, detail })) => {
                    return Err(CheckpointError::Corrupt {
                        at: at.clone(),
                        detail: detail.clone(),
                    });
                }
                None => None,
            };
            if let Some(c) = checkpoint {
                if c.version > VERSION {
                    return Err(CheckpointError::Corrupt {
                        at: format!("{} ({})", self.store.describe(), source.id),
                        detail: format!(
                            "format version {} is newer than this build's {VERSION}",
                            c.version
                        ),
                    });
                }
                recovery.checkpoints += 1;
                let ids: Vec<(RecordId, i64)> = c
                    .seen
                    .iter()
                    .filter_map(|(hex, expires)| RecordId::from_hex(hex).map(|id| (id, *expires)))
                    .collect();
                recovery.restored_ids += ids.len();
                self.dedupe
                    .for_type(source.source_type)
                    .restore(ids, &source.id, now);
                let cursor = self.file_cursor(&source.id);
                for (path, fingerprint) in &c.files {
                    cursor.done(path.clone(), *fingerprint);
                }
            }
            let mut topics: Vec<String> = source.topics.clone();
            if let Some(c) = checkpoint {
                topics.extend(c.offsets.keys().cloned());
            }
            topics.sort();
            topics.dedup();
            for topic in topics {
                let offsets = checkpoint
                    .and_then(|c| c.offsets.get(&topic))
                    .cloned()
                    .unwrap_or_default();
                plans.push((source.clone(), topic, offsets));
            }
        }
        let since =
            now.timestamp_millis() - i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX / 2);
        let this = self.clone();
        let (tail_records, tail_ids) =
            tokio::task::spawn_blocking(move || this.read_tails(plans, since))
                .await
                .map_err(|e| CheckpointError::Kafka(format!("recovery task: {e}")))??;
        recovery.tail_records = tail_records;
        recovery.tail_ids = tail_ids;
        // Only a recovered source gets checkpoints written: an empty one written before would
        // replace what it had.
        let mut known = self.sources.lock().expect("sources lock");
        for source in sources {
            if !known.iter().any(|k| k.id == source.id) {
                known.push(source);
            }
        }
        Ok(recovery)
    }

    /// The checkpoint, unless its topics no longer hold the records it covers: the log or
    /// a topic was deleted (and perhaps refilled) since, so its ids would keep records that
    /// are no longer stored from being sent again. Then the source starts as if it had none
    /// and rebuilds its window from what the topics hold.
    async fn unless_stale<'c>(
        self: &Arc<Self>,
        source: &SourceInfo,
        checkpoint: &'c Checkpoint,
    ) -> Result<Option<&'c Checkpoint>, CheckpointError> {
        let this = self.clone();
        let offsets = checkpoint.offsets.clone();
        let anchors = checkpoint.anchors.clone();
        let stale = tokio::task::spawn_blocking(move || {
            for (topic, partitions) in &offsets {
                let last: BTreeMap<u32, u64> = partitions
                    .iter()
                    .filter(|(_, end)| **end > 0)
                    .map(|(p, end)| (*p, end - 1))
                    .collect();
                let found = this.tail.records_at(topic, &last)?;
                for (partition, offset) in last {
                    let expected = anchors
                        .get(topic)
                        .and_then(|a| a.get(&partition))
                        .and_then(|hex| RecordId::from_hex(hex));
                    let problem = match (found.get(&partition), expected) {
                        (None | Some(AtOffset::Missing), _) => "is past the end of the partition",
                        (Some(AtOffset::Record(Some(id))), Some(expected)) if *id != expected => {
                            "holds another record than the one checkpointed"
                        }
                        (Some(AtOffset::Record(None)), Some(_)) => {
                            "holds a record firestream did not write"
                        }
                        // Deleted by retention, a damaged line in the local log, or a
                        // checkpoint without anchors: the offsets are all there is to check.
                        _ => continue,
                    };
                    return Ok(Some(format!(
                        "{topic}/{partition} offset {offset} {problem}"
                    )));
                }
            }
            Ok::<_, CheckpointError>(None)
        })
        .await
        .map_err(|e| CheckpointError::Kafka(format!("recovery task: {e}")))??;
        match stale {
            None => Ok(Some(checkpoint)),
            Some(why) => {
                warn!(
                    source = %source.id,
                    checkpoint = %why,
                    "the checkpoint covers records the topic no longer has (deleted or replaced): it is ignored, and the source rebuilds its window from what the topics hold"
                );
                Ok(None)
            }
        }
    }

    /// Reads each (source, topic) tail; returns records read and ids added.
    fn read_tails(
        &self,
        plans: Vec<(SourceInfo, String, BTreeMap<u32, u64>)>,
        since_ms: i64,
    ) -> Result<(u64, usize), CheckpointError> {
        let (mut read, mut added) = (0, 0);
        for (source, topic, offsets) in plans {
            let partitions = self.tail.partitions(&topic)?;
            if partitions.is_empty() {
                continue;
            }
            let starts: BTreeMap<u32, StartAt> = partitions
                .iter()
                .map(|p| {
                    let start = offsets
                        .get(p)
                        .map_or(StartAt::Time(since_ms), |o| StartAt::Offset(*o));
                    (*p, start)
                })
                .collect();
            let dedupe = self.dedupe.for_type(source.source_type);
            let window_ms = dedupe.window_ms();
            let mut ids = Vec::new();
            // Where each partition's reading ends; at least where it started.
            let mut ends: BTreeMap<u32, u64> = offsets.clone();
            // The last firestream record read in each partition: the anchor of its end.
            let mut last: BTreeMap<u32, (u64, RecordId)> = BTreeMap::new();
            read += self.tail.scan(&topic, &starts, &mut |record| {
                let end = ends.entry(record.partition).or_default();
                *end = (*end).max(record.offset + 1);
                let newest = last
                    .entry(record.partition)
                    .or_insert((record.offset, record.id));
                if record.offset >= newest.0 {
                    *newest = (record.offset, record.id);
                }
                let in_range = match starts.get(&record.partition) {
                    Some(StartAt::Offset(o)) => record.offset >= *o,
                    Some(StartAt::Time(t)) => record.timestamp_ms >= *t,
                    None => false,
                };
                if in_range && record.source_id == *source.id {
                    ids.push((record.id, record.timestamp_ms.saturating_add(window_ms)));
                }
            })?;
            added += ids.len();
            dedupe.restore(ids, &source.id, chrono::Utc::now());
            // Everything read is stored: a checkpoint written before new records are
            // acknowledged still covers it.
            let topic: Arc<str> = Arc::from(topic.as_str());
            for (partition, end) in ends.into_iter().filter(|(_, end)| *end > 0) {
                let anchor = last
                    .get(&partition)
                    .filter(|(offset, _)| offset + 1 == end)
                    .map(|(_, id)| *id);
                self.ledger
                    .acked(&source.id, &topic, partition, end - 1, anchor);
            }
            debug!(source = %source.id, %topic, "topic tail read back");
        }
        Ok((read, added))
    }

    /// Writes the checkpoint of every source whose content changed since the last write.
    /// Returns how many were written.
    pub async fn save(&self) -> Result<usize, CheckpointError> {
        let sources = self.sources.lock().expect("sources lock").clone();
        let now = Utc::now();
        let mut changed = Vec::new();
        for source in &sources {
            // Offsets before ids (see [`OffsetLedger::covered`]).
            let (offsets, anchors) = split_covered(self.ledger.covered(&source.id));
            let mut seen: Vec<(String, i64)> = self
                .dedupe
                .for_type(source.source_type)
                .acked_by(&source.id, now)
                .into_iter()
                .map(|(id, expires)| (id.to_string(), expires))
                .collect();
            seen.sort_unstable();
            let files = self.file_cursor(&source.id).files();
            let checkpoint = Checkpoint {
                version: VERSION,
                source_id: source.id.to_string(),
                written_at: now.to_rfc3339(),
                offsets,
                anchors,
                seen,
                files,
            };
            let written = self.written.lock().expect("written lock");
            let same = written
                .get(source.id.as_ref())
                .is_some_and(|w| w.digest() == checkpoint.digest());
            drop(written);
            if !same {
                changed.push(checkpoint);
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let n = changed.len();
        self.store.save(changed.clone()).await?;
        let mut written = self.written.lock().expect("written lock");
        for checkpoint in changed {
            written.insert(checkpoint.source_id.clone(), checkpoint);
        }
        Ok(n)
    }

    /// Writes changed checkpoints every `interval` until `stop` fires. A failed write is
    /// logged and tried again next time: the previous checkpoint stays valid.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let saved = tokio::select! {
                _ = stop.cancelled() => return,
                saved = self.save() => saved,
            };
            match saved {
                Ok(n) => {
                    if failing {
                        info!(store = %self.describe(), "checkpoints are written again");
                    }
                    failing = false;
                    if n > 0 {
                        debug!(checkpoints = n, "checkpoints written");
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot write checkpoints; the previous ones stay valid and writing is retried");
                    }
                    failing = true;
                }
            }
        }
    }
}
