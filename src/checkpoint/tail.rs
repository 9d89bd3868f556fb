//! Reading back the tail of a topic after a restart: which ids a source already stored after
//! the offsets its checkpoint covers (DESIGN §5 "Delivery guarantee"). Records carry their
//! source and id in the `firestream-source-id` and `firestream-id` headers, so only headers
//! are decoded.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::CheckpointError;
use crate::record::RecordId;
use crate::sinks::log::reader::{self, PartitionReader};

/// Where reading a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Offset(u64),
    /// The first record stored at or after this time (ms since the epoch).
    Time(i64),
}

/// A stored record, as far as recovery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub source_id: String,
    pub id: RecordId,
}

/// What a partition holds at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtOffset {
    /// The offset is past the partition's end (or the partition does not exist).
    Missing,
    /// Below the partition's start: deleted by retention.
    Deleted,
    /// A record, with its `firestream-id` when it has one.
    Record(Option<RecordId>),
    /// Inside the partition, but its line in the local log is damaged (skipped and warned
    /// about by the reader): there is nothing to compare, as for a deleted record.
    Damaged,
}

/// A topic store that recovery can read: the local log or a Kafka cluster.
pub trait TailSource: Send + Sync {
    /// The topic's partitions; empty when the topic does not exist.
    fn partitions(&self, topic: &str) -> Result<Vec<u32>, CheckpointError>;

    /// What each partition holds at an offset: recovery checks that a checkpoint's last
    /// covered record is still the one it names.
    fn records_at(
        &self,
        topic: &str,
        offsets: &BTreeMap<u32, u64>,
    ) -> Result<BTreeMap<u32, AtOffset>, CheckpointError>;

    /// Calls `found` for each record from each partition's start to its current end.
    /// Records without firestream's headers (written by something else) are skipped.
    fn scan(
        &self,
        topic: &str,
        starts: &BTreeMap<u32, StartAt>,
        found: &mut dyn FnMut(TailRecord),
    ) -> Result<u64, CheckpointError>;
}

#[derive(serde::Deserialize)]
struct LineHeaders<'a> {
    #[serde(borrow, rename = "firestream-source-id")]
    source_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "firestream-id")]
    id: Option<Cow<'a, str>>,
}

/// The `firestream-id` of a log line, when it has one.
fn line_id(line: &str) -> Option<RecordId> {
    let head = serde_json::from_str::<LineHead<'_>>(line).ok()?;
    RecordId::from_hex(&head.headers?.id?)
}

#[derive(serde::Deserialize)]
struct LineHead<'a> {
    #[serde(borrow)]
    headers: Option<LineHeaders<'a>>,
}

/// The embedded log's segments.
pub struct LogTail {
    dir: PathBuf,
}

impl LogTail {
    pub fn new(dir: PathBuf) -> Self {
        LogTail { dir }
    }
}

impl TailSource for LogTail {
    fn records_at(
        &self,
        topic: &str,
        offsets: &BTreeMap<u32, u64>,
    ) -> Result<BTreeMap<u32, AtOffset>, CheckpointError> {
        let topic_dir = self.dir.join(topic);
        let mut found = BTreeMap::new();
        for (&partition, &offset) in offsets {
            let dir = topic_dir.join(partition.to_string());
            let io = |e| CheckpointError::topic(&dir, e);
            let start = crate::sinks::log::groups::log_start_offset(&dir).map_err(io)?;
            let end = crate::sinks::log::groups::log_end_offset(&dir).map_err(io)?;
            let at = if offset >= end {
                AtOffset::Missing
            } else if offset < start {
                AtOffset::Deleted
            } else {
                let mut reader =
                    PartitionReader::starting_at(&topic_dir, partition, offset).map_err(io)?;
                match reader.next_entry().map_err(io)? {
                    Some(entry) if entry.offset == offset => AtOffset::Record(line_id(&entry.line)),
                    // Below the log end yet not read: the reader skipped its damaged line.
                    _ => AtOffset::Damaged,
                }
            };
            found.insert(partition, at);
        }
        Ok(found)
    }

    fn partitions(&self, topic: &str) -> Result<Vec<u32>, CheckpointError> {
        let topic_dir = self.dir.join(topic);
        if topic_dir.exists() && !topic_dir.is_dir() {
            // Not a topic (the sink refuses to write there): it holds no records.
            return Ok(Vec::new());
        }
        match reader::partitions(&self.dir, topic) {
            Ok(partitions) => Ok(partitions),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(CheckpointError::topic(&self.dir.join(topic), e)),
        }
    }

    fn scan(
        &self,
        topic: &str,
        starts: &BTreeMap<u32, StartAt>,
        found: &mut dyn FnMut(TailRecord),
    ) -> Result<u64, CheckpointError> {
        let topic_dir = self.dir.join(topic);
        let mut read = 0;
        for (&partition, &start) in starts {
            let io = |e| CheckpointError::topic(&topic_dir.join(partition.to_string()), e);
            let mut partition_reader = PartitionReader::new(&topic_dir, partition);
            let (from_offset, from_time) = match start {
                StartAt::Offset(offset) => {
                    partition_reader.seek(offset).map_err(io)?;
                    (offset, i64::MIN)
                }
                StartAt::Time(t) => (0, t),
            };
            while let Some(entry) = partition_reader.next_entry().map_err(io)? {
                if entry.offset < from_offset || entry.timestamp_ms < from_time {
                    continue;
                }
                read += 1;
                let Ok(head) = serde_json::from_str::<LineHead<'_>>(&entry.line) else {
                    continue;
                };
                let Some(LineHeaders {
                    source_id: Some(source_id),
                    id: Some(id),
                }) = head.headers
                else {
                    continue;
                };
                let Some(id) = RecordId::from_hex(&id) else {
                    continue;
                };
                found(TailRecord {
                    partition,
                    offset: entry.offset,
                    timestamp_ms: entry.timestamp_ms,
                    source_id: source_id.into_owned(),
                    id,
                });
            }
        }
        Ok(read)
    }
}

/// How long recovery keeps reading after the high watermarks for records they missed.
const PAST_HIGH_WATERMARK: Duration = Duration::from_millis(500);

/// A Kafka cluster, read with an unsubscribed consumer (assign, no group commits).
pub struct KafkaTail {
    client: ClientConfig,
    timeout: Duration,
}

impl KafkaTail {
    pub fn new(client: ClientConfig, timeout: Duration) -> Self {
        KafkaTail { client, timeout }
    }

    fn consumer(&self) -> Result<BaseConsumer, CheckpointError> {
        let mut client = self.client.clone();
        for name in [
            "linger.ms",
            "compression.type",
            "partitioner",
            "acks",
            "enable.idempotence",
        ] {
            client.remove(name);
        }
        client
            .set("group.id", "firestream-recovery")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| CheckpointError::Kafka(format!("recovery consumer: {e}")))
    }
}

/// Whether the consumer's position in a partition reached `end`. With transactions the last
/// offsets can be commit markers, which are never delivered as messages.
pub(super) fn reached(consumer: &BaseConsumer, topic: &str, partition: i32, end: i64) -> bool {
    consumer.position().is_ok_and(|list| {
        list.find_partition(topic, partition)
            .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= end))
    })
}

impl TailSource for KafkaTail {
    fn records_at(
        &self,
        topic: &str,
        offsets: &BTreeMap<u32, u64>,
    ) -> Result<BTreeMap<u32, AtOffset>, CheckpointError> {
        let kafka = |e: KafkaError| CheckpointError::Kafka(format!("reading {topic}: {e}"));
        let partitions = self.partitions(topic)?;
        let consumer = self.consumer()?;
        let mut found = BTreeMap::new();
        let mut highs = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for (&partition, &offset) in offsets {
            if !partitions.contains(&partition) {
                found.insert(partition, AtOffset::Missing);
                continue;
            }
            let p = partition as i32;
            let (low, high) = consumer
                .fetch_watermarks(topic, p, self.timeout)
                .map_err(kafka)?;
            highs.insert(partition, high);
            if (offset as i64) < low {
                found.insert(partition, AtOffset::Deleted);
                continue;
            }
            assignment
                .add_partition_offset(topic, p, Offset::Offset(offset as i64))
                .map_err(kafka)?;
        }
        if assignment.count() == 0 {
            return Ok(found);
        }
        consumer.assign(&assignment).map_err(kafka)?;
        let mut waiting: BTreeMap<u32, u64> = offsets
            .iter()
            .filter(|(p, _)| !found.contains_key(p))
            .map(|(p, o)| (*p, *o))
            .collect();
        // Below the high watermark the record is there: wait for it. Above, it may be too
        // (tansu 0.6 reports a short high watermark): wait until nothing comes for a moment.
        let patience = |waiting: &BTreeMap<u32, u64>| {
            let below = waiting
                .iter()
                .any(|(p, o)| highs.get(p).is_some_and(|&high| (*o as i64) < high));
            if below {
                self.timeout
            } else {
                PAST_HIGH_WATERMARK
            }
        };
        let mut last_progress = Instant::now();
        while !waiting.is_empty() && last_progress.elapsed() < patience(&waiting) {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.map_err(kafka)?;
            last_progress = Instant::now();
            let partition = message.partition() as u32;
            let Some(&offset) = waiting.get(&partition) else {
                continue;
            };
            let id = if message.offset() == offset as i64 {
                message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "firestream-id")
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(RecordId::from_hex)
                })
            } else {
                // The offset holds no message a consumer receives (a commit marker, or an
                // aborted record).
                None
            };
            found.insert(partition, AtOffset::Record(id));
            waiting.remove(&partition);
        }
        for partition in waiting.into_keys() {
            found.insert(partition, AtOffset::Missing);
        }
        Ok(found)
    }

    fn partitions(&self, topic: &str) -> Result<Vec<u32>, CheckpointError> {
        let consumer = self.consumer()?;
        let metadata = consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| CheckpointError::Kafka(format!("metadata of {topic}: {e}")))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id() as u32))
            .collect())
    }

    fn scan(
        &self,
        topic: &str,
        starts: &BTreeMap<u32, StartAt>,
        found: &mut dyn FnMut(TailRecord),
    ) -> Result<u64, CheckpointError> {
        let kafka = |e: KafkaError| CheckpointError::Kafka(format!("reading {topic}: {e}"));
        let consumer = self.consumer()?;
        let mut assignment = TopicPartitionList::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for (&partition, start) in starts {
            let p = partition as i32;
            let (low, high) = consumer
                .fetch_watermarks(topic, p, self.timeout)
                .map_err(kafka)?;
            // A time start reads the partition from its beginning; the caller keeps the
            // records stored since. (Looking the time up with ListOffsets would read less, but
            // brokers answer it differently for records produced with their own timestamps.)
            let from = match start {
                StartAt::Offset(o) => (*o as i64).max(low),
                StartAt::Time(_) => low,
            };
            assignment
                .add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(kafka)?;
            if from < high {
                ends.insert(p, high);
            }
        }
        consumer.assign(&assignment).map_err(kafka)?;
        let mut read = 0;
        let mut last_progress = Instant::now();
        // Past the high watermarks, read on until nothing comes for a moment: some brokers
        // (tansu 0.6) report a high watermark below the log's real end.
        while !ends.is_empty() || last_progress.elapsed() < PAST_HIGH_WATERMARK {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                // A transactional topic ends with a commit marker no consumer receives.
                ends.retain(|&p, &mut end| !reached(&consumer, topic, p, end));
                if ends.is_empty() {
                    continue;
                }
                if last_progress.elapsed() > self.timeout {
                    return Err(CheckpointError::Kafka(format!(
                        "reading {topic} back: no progress for {:?} with partitions {:?} unread",
                        self.timeout,
                        ends.keys().collect::<Vec<_>>()
                    )));
                }
                continue;
            };
            let message = message.map_err(kafka)?;
            last_progress = Instant::now();
            let (p, offset) = (message.partition(), message.offset());
            if ends.get(&p).is_some_and(|&end| offset + 1 >= end) {
                ends.remove(&p);
            }
            read += 1;
            let (mut source_id, mut id) = (None, None);
            if let Some(headers) = message.headers() {
                for header in headers.iter() {
                    let value = header.value.and_then(|v| std::str::from_utf8(v).ok());
                    match header.key {
                        "firestream-source-id" => source_id = value.map(str::to_owned),
                        "firestream-id" => id = value.and_then(RecordId::from_hex),
                        _ => {}
                    }
                }
            }
            if let (Some(source_id), Some(id)) = (source_id, id) {
                found(TailRecord {
                    partition: p as u32,
                    offset: offset as u64,
                    timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                    source_id,
                    id,
                });
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::log::segment_name;
    use std::fs;

    fn line(offset: u64) -> String {
        format!(
            "{{\"offset\":{offset},\"timestamp\":{},\"key\":\"k\",\"headers\":{{\"firestream-source-id\":\"s\",\"firestream-id\":\"{:032x}\"}},\"value\":{{}}}}\n",
            1_000 + offset,
            offset
        )
    }

    #[test]
    fn recovery_reads_past_damaged_lines_and_the_log_end_ignores_them() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        fs::create_dir_all(&p0).unwrap();
        // Line 11 is not JSON, a later one not UTF-8, and the last one is garbage too.
        let mut bytes: Vec<u8> = (0..10).flat_map(|o| line(o).into_bytes()).collect();
        bytes.extend_from_slice(b"this is not json\n");
        bytes.extend_from_slice(line(10).as_bytes());
        bytes.extend_from_slice(b"\xff\xfe\xfd\n");
        bytes.extend_from_slice(line(11).as_bytes());
        bytes.extend_from_slice(b"garbage at the end\n");
        fs::write(p0.join(segment_name(0)), bytes).unwrap();
        let tail = LogTail::new(dir.path().to_owned());
        let mut offsets = Vec::new();
        let read = tail
            .scan("t", &[(0, StartAt::Time(0))].into(), &mut |r| {
                offsets.push(r.offset)
            })
            .unwrap();
        assert_eq!(read, 12);
        assert_eq!(offsets, (0..12).collect::<Vec<_>>());
        // From a checkpoint's offset inside the damage.
        let mut offsets = Vec::new();
        tail.scan("t", &[(0, StartAt::Offset(10))].into(), &mut |r| {
            offsets.push(r.offset)
        })
        .unwrap();
        assert_eq!(offsets, vec![10, 11]);
        let at = |offset| tail.records_at("t", &[(0, offset)].into()).unwrap()[&0];
        assert_eq!(
            at(11),
            AtOffset::Record(RecordId::from_hex(&format!("{:032x}", 11)))
        );
        assert_eq!(at(12), AtOffset::Missing);
        // A checkpoint's last covered record damaged since: not proof the topic was replaced.
        let text = fs::read(p0.join(segment_name(0))).unwrap();
        let damaged: Vec<u8> = text
            .split_inclusive(|&b| b == b'\n')
            .enumerate()
            .flat_map(|(i, l)| {
                if i == 11 {
                    b"\x00\n".to_vec()
                } else {
                    l.to_vec()
                }
            })
            .collect();
        fs::write(p0.join(segment_name(0)), damaged).unwrap();
        assert_eq!(at(10), AtOffset::Damaged);
        assert_eq!(
            at(11),
            AtOffset::Record(RecordId::from_hex(&format!("{:032x}", 11)))
        );
    }

    #[test]
    fn an_unreadable_segment_is_a_permanent_error_naming_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        // A directory where a segment file belongs: reading it fails the same way every time.
        fs::create_dir_all(p0.join(segment_name(0))).unwrap();
        let tail = LogTail::new(dir.path().to_owned());
        let err = tail
            .scan("t", &[(0, StartAt::Time(0))].into(), &mut |_| {})
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("reading {} back for recovery: ", p0.display())),
            "{message}"
        );
        assert!(message.contains("waiting will not fix this"), "{message}");
        // A transient one is retried, and says nothing about waiting.
        let err = CheckpointError::topic(
            &p0,
            std::io::Error::new(std::io::ErrorKind::TimedOut, "slow disk"),
        );
        assert!(!err.is_permanent());
        assert!(!err.to_string().contains("waiting"), "{err}");
    }
}
