//! LagProbe (DESIGN §5): how far the downstream consumer groups are behind on a topic.
//!
//! A group's lag on a topic is Σ over partitions (log-end offset − committed offset). A
//! partition the group has no committed offset for counts from the log start (the group will
//! read all of it); a committed offset older than the log start counts from the log start
//! (the rest is gone). A group with no committed offset on any partition of the topic does
//! not read that topic and adds nothing to its lag. The topic's lag is the max over groups.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::sinks::log::groups;
use crate::sinks::log::reader;

/// One partition's offsets as the probe saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still stored (Kafka's low watermark).
    pub start: u64,
    /// Offset the next record will get (Kafka's high watermark).
    pub end: u64,
    /// The group's next offset to read, if it committed one.
    pub committed: Option<u64>,
}

/// A group's lag over the partitions of a topic; `None` when it committed on none of them.
pub fn group_lag(partitions: &[PartitionOffsets]) -> Option<u64> {
    if partitions.iter().all(|p| p.committed.is_none()) {
        return None;
    }
    Some(
        partitions
            .iter()
            .map(|p| {
                p.end
                    .saturating_sub(p.committed.unwrap_or(p.start).max(p.start))
            })
            .sum(),
    )
}

/// A topic's lag and each group's part in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicLag {
    /// Max over the groups that read the topic; 0 when none does.
    pub lag: u64,
    /// Each configured group's lag; `None`: it has no committed offset on this topic.
    pub groups: BTreeMap<String, Option<u64>>,
}

impl TopicLag {
    fn from_groups(groups: BTreeMap<String, Option<u64>>) -> Self {
        TopicLag {
            lag: groups.values().flatten().copied().max().unwrap_or(0),
            groups,
        }
    }
}

/// Why a sample could not be taken (the level is then left as it is).
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("topic {topic}: cannot read {what} from Kafka: {source}")]
    Kafka {
        topic: String,
        what: String,
        source: Box<KafkaError>,
    },
    #[error("topic {topic}: Kafka does not know it ({detail})")]
    UnknownTopic { topic: String, detail: String },
    #[error("topic {topic} in the local log: {source}")]
    Log {
        topic: String,
        source: std::io::Error,
    },
    #[error("topic {topic}: the lag probe stopped unexpectedly: {detail}")]
    Task { topic: String, detail: String },
}

#[async_trait]
pub trait LagProbe: Send + Sync {
    async fn lag(&self, topic: &str) -> Result<TopicLag, LagError>;
}

/// Runs a blocking probe call off the async runtime.
async fn blocking<T: Send + 'static>(
    topic: &str,
    f: impl FnOnce() -> Result<T, LagError> + Send + 'static,
) -> Result<T, LagError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(LagError::Task {
            topic: topic.to_owned(),
            detail: e.to_string(),
        })
    })
}

/// The local log's consumer groups: log-end offsets from the segments, committed offsets
/// from `<dir>/<topic>/.groups/<group>.json`.
pub struct LogLagProbe {
    dir: PathBuf,
    groups: Vec<String>,
}

impl LogLagProbe {
    pub fn new(dir: PathBuf, groups: Vec<String>) -> Self {
        LogLagProbe { dir, groups }
    }

    /// The blocking part: reads segment ends and group files.
    pub fn lag_now(&self, topic: &str) -> Result<TopicLag, LagError> {
        let err = |source| LagError::Log {
            topic: topic.to_owned(),
            source,
        };
        let topic_dir = self.dir.join(topic);
        let partitions = if topic_dir.is_dir() {
            reader::partitions(&self.dir, topic).map_err(err)?
        } else {
            Vec::new()
        };
        let mut bounds = Vec::with_capacity(partitions.len());
        for p in &partitions {
            let dir = topic_dir.join(p.to_string());
            bounds.push((
                *p,
                groups::log_start_offset(&dir).map_err(err)?,
                groups::log_end_offset(&dir).map_err(err)?,
            ));
        }
        let mut per_group = BTreeMap::new();
        for group in &self.groups {
            let committed = groups::read_group(&self.dir, topic, group).map_err(err)?;
            let offsets: Vec<PartitionOffsets> = bounds
                .iter()
                .map(|&(p, start, end)| PartitionOffsets {
                    start,
                    end,
                    committed: committed.as_ref().and_then(|c| c.get(&p).copied()),
                })
                .collect();
            per_group.insert(group.clone(), group_lag(&offsets));
        }
        Ok(TopicLag::from_groups(per_group))
    }
}

#[async_trait]
impl LagProbe for LogLagProbe {
    async fn lag(&self, topic: &str) -> Result<TopicLag, LagError> {
        let probe = LogLagProbe {
            dir: self.dir.clone(),
            groups: self.groups.clone(),
        };
        let name = topic.to_owned();
        blocking(topic, move || probe.lag_now(&name)).await
    }
}

/// `sink.kafka.properties` meant for the producer: not handed to the probe's consumers,
/// which would log a warning for each (security and connection settings do apply).
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.backpressure.threshold",
    "compression.type",
    "compression.codec",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "retries",
    "message.send.max.retries",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
];

/// Kafka's consumer groups, through librdkafka: one consumer per group (never subscribed,
/// never committing) asks for the group's committed offsets; watermarks give the log ends.
pub struct KafkaLagProbe {
    consumers: Arc<Vec<(String, BaseConsumer)>>,
    timeout: Duration,
}

impl KafkaLagProbe {
    /// Clients for the sink's cluster (its properties too: security settings apply; the
    /// producer-only ones are ignored by librdkafka). `timeout` bounds each request.
    pub fn new(config: &Config, groups: &[String], timeout: Duration) -> Result<Self, KafkaError> {
        let kafka = config
            .sink
            .kafka
            .as_ref()
            .expect("a checked config with sink.type kafka has sink.kafka");
        let mut consumers = Vec::with_capacity(groups.len());
        for group in groups {
            let mut client = ClientConfig::new();
            for (name, value) in &kafka.properties.0 {
                let setting = name.strip_prefix("topic.").unwrap_or(name);
                if !PRODUCER_ONLY.contains(&setting) {
                    client.set(name, value);
                }
            }
            client
                .set("bootstrap.servers", &kafka.bootstrap_servers)
                // Asking about a topic must never create it.
                .set("allow.auto.create.topics", "false")
                .set("group.id", group)
                .set("client.id", "firestream-lag-probe")
                // It only looks: it must never move the group's offsets.
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
            consumers.push((group.clone(), client.create()?));
        }
        Ok(KafkaLagProbe {
            consumers: Arc::new(consumers),
            timeout,
        })
    }

    fn lag_now(
        consumers: &[(String, BaseConsumer)],
        topic: &str,
        timeout: Duration,
    ) -> Result<TopicLag, LagError> {
        let Some((_, first)) = consumers.first() else {
            return Ok(TopicLag::default());
        };
        let kafka = |what: &str| {
            let what = what.to_owned();
            move |source| LagError::Kafka {
                topic: topic.to_owned(),
                what,
                source: Box::new(source),
            }
        };
        let metadata = first
            .fetch_metadata(Some(topic), timeout)
            .map_err(kafka("metadata"))?;
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(LagError::UnknownTopic {
                topic: topic.to_owned(),
                detail: "absent from the metadata".to_owned(),
            });
        };
        if let Some(e) = meta.error() {
            return Err(LagError::UnknownTopic {
                topic: topic.to_owned(),
                detail: rdkafka::types::RDKafkaErrorCode::from(e).to_string(),
            });
        }
        let mut bounds = Vec::new();
        let mut list = TopicPartitionList::new();
        for p in meta.partitions() {
            let (low, high) = first
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(kafka(&format!("the watermarks of partition {}", p.id())))?;
            bounds.push((p.id(), low.max(0) as u64, high.max(0) as u64));
            list.add_partition(topic, p.id());
        }
        let mut per_group = BTreeMap::new();
        for (group, consumer) in consumers {
            // Serves the client's queued events (errors, logs) so they do not pile up; with
            // nothing assigned it returns no message.
            let _ = consumer.poll(Duration::ZERO);
            let committed = consumer
                .committed_offsets(list.clone(), timeout)
                .map_err(kafka(&format!("the committed offsets of group {group}")))?;
            let offsets: Vec<PartitionOffsets> = bounds
                .iter()
                .map(|&(p, start, end)| PartitionOffsets {
                    start,
                    end,
                    committed: committed
                        .find_partition(topic, p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(n) if n >= 0 => Some(n as u64),
                            _ => None,
                        }),
                })
                .collect();
            per_group.insert(group.clone(), group_lag(&offsets));
        }
        Ok(TopicLag::from_groups(per_group))
    }
}

#[async_trait]
impl LagProbe for KafkaLagProbe {
    async fn lag(&self, topic: &str) -> Result<TopicLag, LagError> {
        let consumers = self.consumers.clone();
        let timeout = self.timeout;
        let name = topic.to_owned();
        blocking(topic, move || Self::lag_now(&consumers, &name, timeout)).await
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::sinks::log::segment_name;

    fn p(start: u64, end: u64, committed: Option<u64>) -> PartitionOffsets {
        PartitionOffsets {
            start,
            end,
            committed,
        }
    }

    #[test]
    fn group_lag_sums_partitions_from_the_committed_offset_or_the_log_start() {
        // 100 − 40, + all of the uncommitted partition (50 − 10), + 0 for a caught-up one.
        assert_eq!(
            group_lag(&[p(0, 100, Some(40)), p(10, 50, None), p(0, 7, Some(7))]),
            Some(60 + 40)
        );
        // A commit older than the log start counts from the start; one past the end as 0.
        assert_eq!(
            group_lag(&[p(30, 100, Some(5)), p(0, 5, Some(9))]),
            Some(70)
        );
        // No commit anywhere on the topic: the group does not read it.
        assert_eq!(group_lag(&[p(0, 100, None), p(0, 3, None)]), None);
        assert_eq!(group_lag(&[]), None);
    }

    fn write_partition(
        dir: &std::path::Path,
        topic: &str,
        partition: u32,
        segments: &[(u64, u64)],
    ) {
        let pdir = dir.join(topic).join(partition.to_string());
        fs::create_dir_all(&pdir).unwrap();
        for &(base, count) in segments {
            let text: String = (base..base + count)
                .map(|o| format!("{{\"offset\":{o},\"timestamp\":1,\"key\":\"k\",\"headers\":{{}},\"value\":{{}}}}\n"))
                .collect();
            fs::write(pdir.join(segment_name(base)), text).unwrap();
        }
    }

    #[test]
    fn local_log_lag_from_real_segments_and_group_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Partition 0: offsets 0..250 in two segments; partition 1: 100..180 (0..100 retained
        // away); partition 2: nothing yet.
        write_partition(d, "t", 0, &[(0, 200), (200, 50)]);
        write_partition(d, "t", 1, &[(100, 80)]);
        fs::create_dir_all(d.join("t/2")).unwrap();
        groups::commit_group(d, "t", "slow", &[(0, 10)].into()).unwrap();
        groups::commit_group(d, "t", "fast", &[(0, 250), (1, 170)].into()).unwrap();
        let probe = LogLagProbe::new(
            d.to_owned(),
            vec!["slow".into(), "fast".into(), "absent".into()],
        );
        let lag = probe.lag_now("t").unwrap();
        // slow: 250 − 10 on p0, all 80 stored records of p1 (no commit there), 0 on p2.
        assert_eq!(lag.groups["slow"], Some(240 + 80));
        assert_eq!(lag.groups["fast"], Some(10));
        assert_eq!(lag.groups["absent"], None);
        assert_eq!(lag.lag, 320);
        // The group reads on: lag falls.
        groups::commit_group(d, "t", "slow", &[(0, 250), (1, 180)].into()).unwrap();
        assert_eq!(probe.lag_now("t").unwrap().lag, 10);
        // A topic with no records yet has no lag.
        assert_eq!(probe.lag_now("other").unwrap().lag, 0);
    }

    #[tokio::test]
    async fn a_damaged_group_file_fails_the_sample_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        write_partition(dir.path(), "t", 0, &[(0, 5)]);
        fs::create_dir_all(dir.path().join("t/.groups")).unwrap();
        fs::write(groups::group_path(dir.path(), "t", "g"), "[]").unwrap();
        let probe = LogLagProbe::new(dir.path().to_owned(), vec!["g".into()]);
        let err = probe.lag("t").await.unwrap_err().to_string();
        assert!(err.starts_with("topic t in the local log: "), "{err}");
        assert!(
            err.contains(".groups/g.json: not a consumer-group offsets file"),
            "{err}"
        );
    }
}
