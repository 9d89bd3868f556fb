//! Where checkpoints are kept: a local directory (the default), or the compacted topic
//! `firestream-checkpoints` beside the records when the sink is Kafka, so a replica on
//! another machine can take a source over.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{Checkpoint, CheckpointError, Loaded, Unreadable};

/// The compacted topic of the Kafka store.
pub const CHECKPOINT_TOPIC: &str = "firestream-checkpoints";

/// A checkpoint holds a source's dedupe window: a busy source's can pass Kafka's default
/// 1 MB message limit, so the store's producer and topic allow this much.
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024 * 1024;

#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// What and where, for log lines.
    fn describe(&self) -> String;

    /// The newest checkpoint of every source that has one, or why it cannot be read: a
    /// damaged checkpoint stops its own source, not the others.
    async fn load_all(&self) -> Result<Loaded, CheckpointError>;

    /// Stores checkpoints durably; returns once they would survive a crash.
    async fn save(&self, checkpoints: Vec<Checkpoint>) -> Result<(), CheckpointError>;
}

/// Writes checkpoint records (source id, JSON) to [`CHECKPOINT_TOPIC`] in a Kafka
/// transaction: the transactional Kafka sink, so checkpoints commit with its producer.
#[async_trait]
pub trait CheckpointWriter: Send + Sync {
    async fn write_checkpoints(&self, records: Vec<(String, Vec<u8>)>) -> Result<(), String>;
}

/// The Kafka store with `sink.kafka.transactional`: read like [`KafkaStore`] (committed
/// records only), written through the sink's transactional producer.
pub struct TransactionalStore {
    pub reader: KafkaStore,
    pub writer: std::sync::Arc<dyn CheckpointWriter>,
}

#[async_trait]
impl CheckpointStore for TransactionalStore {
    fn describe(&self) -> String {
        format!("topic {CHECKPOINT_TOPIC} (transactional)")
    }

    async fn load_all(&self) -> Result<Loaded, CheckpointError> {
        self.reader.load_all().await
    }

    async fn save(&self, checkpoints: Vec<Checkpoint>) -> Result<(), CheckpointError> {
        let records = checkpoints
            .iter()
            .map(|c| {
                let body = serde_json::to_vec(c).expect("a checkpoint serialises");
                (c.source_id.clone(), body)
            })
            .collect();
        self.writer
            .write_checkpoints(records)
            .await
            .map_err(CheckpointError::Kafka)
    }
}

/// Characters kept as they are in a file name; everything else is percent-encoded, so any
/// stream id maps to one safe file name and back.
const FILE_NAME: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// One JSON file per source: written to a temporary file, fsynced, renamed over the old one,
/// and the directory fsynced, so a crash leaves the old checkpoint or the new one, whole.
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: PathBuf) -> Self {
        DirStore { dir }
    }

    fn path(&self, source_id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.json",
            utf8_percent_encode(source_id, FILE_NAME)
        ))
    }

    fn load_sync(dir: &Path) -> Result<Loaded, CheckpointError> {
        let mut all = HashMap::new();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(e) => return Err(CheckpointError::io(dir, e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| CheckpointError::io(dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let id = percent_decode_str(stem).decode_utf8_lossy().into_owned();
            let checkpoint = match fs::read(&path) {
                Ok(text) => serde_json::from_slice(&text).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            all.insert(
                id,
                checkpoint.map_err(|detail| Unreadable {
                    at: path.display().to_string(),
                    detail,
                }),
            );
        }
        Ok(all)
    }

    fn save_sync(&self, checkpoints: &[Checkpoint]) -> Result<(), CheckpointError> {
        fs::create_dir_all(&self.dir).map_err(|e| CheckpointError::io(&self.dir, e))?;
        for checkpoint in checkpoints {
            let path = self.path(&checkpoint.source_id);
            let temp = path.with_extension("json.tmp");
            let body = serde_json::to_vec(checkpoint).expect("a checkpoint serialises");
            let write = || -> std::io::Result<()> {
                let mut file = File::create(&temp)?;
                file.write_all(&body)?;
                file.sync_all()?;
                fs::rename(&temp, &path)
            };
            write().map_err(|e| CheckpointError::io(&path, e))?;
        }
        // The renames are durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CheckpointError::io(&self.dir, e))
    }
}

#[async_trait]
impl CheckpointStore for DirStore {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    async fn load_all(&self) -> Result<Loaded, CheckpointError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::load_sync(&dir))
            .await
            .map_err(|e| CheckpointError::Kafka(e.to_string()))?
    }

    async fn save(&self, checkpoints: Vec<Checkpoint>) -> Result<(), CheckpointError> {
        let store = DirStore {
            dir: self.dir.clone(),
        };
        tokio::task::spawn_blocking(move || store.save_sync(&checkpoints))
            .await
            .map_err(|e| CheckpointError::Kafka(e.to_string()))?
    }
}

/// The compacted topic `firestream-checkpoints`, keyed by source id: the newest value per
/// key is the checkpoint. Created (one partition, `cleanup.policy=compact`) when missing.
pub struct KafkaStore {
    client: ClientConfig,
    producer: FutureProducer,
    timeout: Duration,
}

impl KafkaStore {
    /// `client` carries the sink's connection settings (bootstrap servers, SASL/SSL).
    pub fn new(mut client: ClientConfig, timeout: Duration) -> Result<Self, CheckpointError> {
        for name in [
            "linger.ms",
            "compression.type",
            "partitioner",
            "transactional.id",
        ] {
            client.remove(name);
        }
        let producer = client
            .clone()
            .set("message.max.bytes", MAX_CHECKPOINT_BYTES.to_string())
            .set("compression.type", "zstd")
            .set("linger.ms", "0")
            // A checkpoint not stored within this is retried with newer content next time.
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()
            .map_err(|e| CheckpointError::Kafka(format!("checkpoint producer: {e}")))?;
        Ok(KafkaStore {
            client,
            producer,
            timeout,
        })
    }

    /// Creates the topic when the cluster does not have it.
    async fn ensure_topic(&self) -> Result<(), CheckpointError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client
            .create()
            .map_err(|e| CheckpointError::Kafka(format!("admin client: {e}")))?;
        let (client, timeout) = (self.client.clone(), self.timeout);
        let exists = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = client.create()?;
            let metadata = consumer.fetch_metadata(Some(CHECKPOINT_TOPIC), timeout)?;
            Ok::<_, KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .any(|t| t.error().is_none() && !t.partitions().is_empty()),
            )
        })
        .await
        .map_err(|e| CheckpointError::Kafka(e.to_string()))?
        .map_err(|e| CheckpointError::Kafka(format!("metadata of {CHECKPOINT_TOPIC}: {e}")))?;
        if exists {
            return Ok(());
        }
        let max = MAX_CHECKPOINT_BYTES.to_string();
        let topic = NewTopic::new(CHECKPOINT_TOPIC, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact")
            .set("max.message.bytes", &max);
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| CheckpointError::Kafka(format!("creating {CHECKPOINT_TOPIC}: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(CheckpointError::Kafka(format!(
                        "creating {CHECKPOINT_TOPIC}: {code}; create it as a compacted topic, or check firestream's ACLs"
                    )));
                }
            }
        }
        Ok(())
    }

    fn load_sync(client: ClientConfig, timeout: Duration) -> Result<Loaded, CheckpointError> {
        let kafka =
            |e: KafkaError| CheckpointError::Kafka(format!("reading {CHECKPOINT_TOPIC}: {e}"));
        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", "firestream-checkpoint-loader")
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", MAX_CHECKPOINT_BYTES.to_string())
            .set(
                "receive.message.max.bytes",
                (MAX_CHECKPOINT_BYTES + 1_000_000).to_string(),
            )
            .create()
            .map_err(kafka)?;
        let (low, high) = consumer
            .fetch_watermarks(CHECKPOINT_TOPIC, 0, timeout)
            .map_err(kafka)?;
        let mut all = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(CHECKPOINT_TOPIC, 0, Offset::Offset(low))
            .map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)?;
        let mut last_progress = Instant::now();
        let mut next = low;
        // Past the high watermark, read on until nothing comes for a moment: some brokers
        // (tansu 0.6) report one below the log's real end.
        while next < high || last_progress.elapsed() < Duration::from_millis(500) {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                // A transactional topic ends with a commit marker no consumer receives.
                if next >= high || super::tail::reached(&consumer, CHECKPOINT_TOPIC, 0, high) {
                    next = next.max(high);
                    continue;
                }
                if last_progress.elapsed() > timeout {
                    return Err(CheckpointError::Kafka(format!(
                        "reading {CHECKPOINT_TOPIC}: stuck at offset {next} of {high} for {timeout:?}"
                    )));
                }
                continue;
            };
            let message = message.map_err(kafka)?;
            last_progress = Instant::now();
            next = message.offset() + 1;
            let Some(key) = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
            else {
                continue;
            };
            match message.payload() {
                // A tombstone: the source's checkpoint was deleted.
                None => {
                    all.remove(&key);
                }
                Some(value) => {
                    let checkpoint =
                        serde_json::from_slice::<Checkpoint>(value).map_err(|e| Unreadable {
                            at: format!("{CHECKPOINT_TOPIC} offset {}", message.offset()),
                            detail: e.to_string(),
                        });
                    all.insert(key, checkpoint);
                }
            }
        }
        Ok(all)
    }
}

#[async_trait]
impl CheckpointStore for KafkaStore {
    fn describe(&self) -> String {
        format!("topic {CHECKPOINT_TOPIC}")
    }

    async fn load_all(&self) -> Result<Loaded, CheckpointError> {
        self.ensure_topic().await?;
        let (client, timeout) = (self.client.clone(), self.timeout);
        tokio::task::spawn_blocking(move || Self::load_sync(client, timeout))
            .await
            .map_err(|e| CheckpointError::Kafka(e.to_string()))?
    }

    async fn save(&self, checkpoints: Vec<Checkpoint>) -> Result<(), CheckpointError> {
        let bodies: Vec<Vec<u8>> = checkpoints
            .iter()
            .map(|c| serde_json::to_vec(c).expect("a checkpoint serialises"))
            .collect();
        let mut sends = Vec::with_capacity(checkpoints.len());
        for (checkpoint, body) in checkpoints.iter().zip(&bodies) {
            let record = FutureRecord::to(CHECKPOINT_TOPIC)
                .key(checkpoint.source_id.as_str())
                .payload(body);
            sends.push(self.producer.send(record, self.timeout));
        }
        for (checkpoint, sent) in checkpoints
            .iter()
            .zip(futures::future::join_all(sends).await)
        {
            if let Err((e, _)) = sent {
                return Err(CheckpointError::Kafka(format!(
                    "writing the checkpoint of {} to {CHECKPOINT_TOPIC}: {e}",
                    checkpoint.source_id
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_store_gives_back_what_it_saved_under_any_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().join("checkpoints"));
        assert!(store.load_all().await.unwrap().is_empty());
        let mut a = Checkpoint::empty("firms/viirs ca");
        a.offsets
            .insert("wildfire-nasa-firms".into(), [(0, 12), (3, 4)].into());
        let b = Checkpoint::empty("nws");
        store.save(vec![a.clone(), b.clone()]).await.unwrap();
        let mut newer = a.clone();
        newer.offsets.insert("x".into(), [(1, 1)].into());
        store.save(vec![newer.clone()]).await.unwrap();
        let loaded = store.load_all().await.unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["firms/viirs ca"], Ok(newer));
        assert_eq!(loaded["nws"], Ok(b));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
    }

    #[tokio::test]
    async fn a_damaged_checkpoint_file_is_reported_with_its_path_and_spares_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().to_owned());
        store.save(vec![Checkpoint::empty("fine")]).await.unwrap();
        fs::write(dir.path().join("s.json"), b"{\"version\": 1, \"sou").unwrap();
        let loaded = store.load_all().await.unwrap();
        assert_eq!(loaded["fine"].as_ref().unwrap().source_id, "fine");
        let damaged = loaded["s"].as_ref().unwrap_err();
        assert!(damaged.at.ends_with("s.json"), "{damaged:?}");
        assert!(damaged.detail.contains("EOF"), "{damaged:?}");
    }
}
