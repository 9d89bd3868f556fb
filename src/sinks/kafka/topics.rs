//! Topic administration (DESIGN §5 Router, §6 `topics:`): declared topics are created with
//! their partitions, replication, retention and compression when missing and checked when
//! present; any other topic is looked up before its first message, so a record routed to a
//! topic that does not exist fails at once instead of after librdkafka's message timeout.
//!
//! firestream's own topics (the DLQ and the critical-alerts copy) count as declared with
//! default settings, so dead letters and critical copies have somewhere to go.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use tracing::{info, warn};

use crate::config::TopicConfig;

/// How long "this topic does not exist" is believed before asking the cluster again, so a
/// topic created by hand starts receiving records without a restart.
const MISSING_TTL: Duration = Duration::from_secs(10);

/// What the cluster says about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// It exists (or is being created): produce to it.
    Exists,
    /// It does not exist and firestream may not create it: fail its records with this reason.
    Missing(String),
    /// No broker answered: leave it to librdkafka, which waits for the cluster.
    Unknown,
}

/// A topic firestream may create, and whether the user declared it (only then is an
/// existing topic checked against its settings).
#[derive(Debug, Clone)]
pub struct Declared {
    pub config: TopicConfig,
    pub explicit: bool,
}

#[derive(Debug, Clone)]
enum State {
    Exists,
    Missing { reason: String, checked: Instant },
}

pub struct TopicCatalog {
    admin: Arc<AdminClient<DefaultClientContext>>,
    declared: BTreeMap<String, Declared>,
    states: Mutex<HashMap<String, State>>,
    timeout: Duration,
}

impl TopicCatalog {
    pub fn new(
        admin: AdminClient<DefaultClientContext>,
        declared: BTreeMap<String, Declared>,
        timeout: Duration,
    ) -> Self {
        TopicCatalog {
            admin: Arc::new(admin),
            declared,
            states: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// The cluster's metadata for one topic (or all brokers only when `topic` is `None`).
    pub async fn metadata(&self, topic: Option<&str>) -> Result<Metadata, String> {
        let admin = self.admin.clone();
        let topic = topic.map(str::to_owned);
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(topic.as_deref(), timeout)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Whether records may be produced to `topic` now.
    pub async fn lookup(&self, topic: &str) -> Lookup {
        match self.states.lock().expect("topic states").get(topic) {
            Some(State::Exists) => return Lookup::Exists,
            Some(State::Missing { reason, checked }) if checked.elapsed() < MISSING_TTL => {
                return Lookup::Missing(reason.clone());
            }
            _ => {}
        }
        let lookup = match self.describe(topic).await {
            Described::Present { .. } => Lookup::Exists,
            Described::Absent => match self.declared.get(topic) {
                Some(declared) => match self.create(topic, &declared.config).await {
                    Ok(()) => Lookup::Exists,
                    Err(reason) => Lookup::Missing(reason),
                },
                None => Lookup::Missing(format!(
                    "topic `{topic}` does not exist on the Kafka cluster and is not declared \
                     under `topics:`; declare it there (firestream creates declared topics) or \
                     create it on the cluster"
                )),
            },
            Described::Unreachable(_) => Lookup::Unknown,
        };
        let state = match &lookup {
            Lookup::Exists => Some(State::Exists),
            Lookup::Missing(reason) => Some(State::Missing {
                reason: reason.clone(),
                checked: Instant::now(),
            }),
            Lookup::Unknown => None,
        };
        if let Some(state) = state {
            self.states
                .lock()
                .expect("topic states")
                .insert(topic.to_owned(), state);
        }
        lookup
    }

    /// Creates the declared topics that are missing and checks the ones present, warning
    /// about every difference. Returns false when the cluster could not be asked.
    pub async fn reconcile(&self) -> bool {
        for (name, declared) in &self.declared {
            let config = &declared.config;
            match self.describe(name).await {
                Described::Unreachable(e) => {
                    warn!(topic = %name, error = %e, "cannot check declared topic: no broker answered; will check again when the cluster is reachable");
                    return false;
                }
                Described::Absent => {
                    if let Err(reason) = self.create(name, config).await {
                        warn!(topic = %name, "{reason}");
                    }
                }
                Described::Present {
                    partitions,
                    replication,
                } => {
                    if declared.explicit {
                        self.check(name, config, partitions, replication).await;
                    }
                    self.states
                        .lock()
                        .expect("topic states")
                        .insert(name.clone(), State::Exists);
                }
            }
        }
        true
    }

    async fn describe(&self, topic: &str) -> Described {
        let metadata = match self.metadata(Some(topic)).await {
            Ok(m) => m,
            Err(e) => return Described::Unreachable(e),
        };
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Described::Absent;
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => Described::Present {
                partitions: t.partitions().len(),
                replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
            },
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Described::Absent
            }
            // Being created or electing a leader: it exists.
            Some(_) => Described::Present {
                partitions: t.partitions().len(),
                replication: 0,
            },
        }
    }

    async fn create(&self, name: &str, config: &TopicConfig) -> Result<(), String> {
        let retention = config.retention.map(|d| d.0.as_millis().to_string());
        let replication = config.replication.map_or(-1, i32::from);
        let mut topic = NewTopic::new(
            name,
            config.partitions as i32,
            TopicReplication::Fixed(replication),
        );
        if let Some(ms) = &retention {
            topic = topic.set("retention.ms", ms);
        }
        if let Some(codec) = config.compression {
            topic = topic.set("compression.type", codec.as_str());
        }
        let options = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let result = self.admin.create_topics([&topic], &options).await;
        let outcome = match result {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) | None => Ok(()),
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(()),
                Some(Err((_, code))) => Err(code.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                info!(
                    topic = name,
                    partitions = config.partitions,
                    replication = config.replication.map_or_else(|| "broker default".to_owned(), |r| r.to_string()),
                    retention = ?config.retention.map(|d| d.to_string()),
                    compression = ?config.compression.map(|c| c.as_str()),
                    "created topic"
                );
                self.states
                    .lock()
                    .expect("topic states")
                    .insert(name.to_owned(), State::Exists);
                Ok(())
            }
            Err(e) => Err(format!(
                "topic `{name}` is missing and could not be created ({e}); create it on the \
                 cluster with {} partition(s)",
                config.partitions
            )),
        }
    }

    /// Compares a present topic with its declaration; differences are warnings, because
    /// firestream never alters a topic that exists.
    async fn check(&self, name: &str, config: &TopicConfig, partitions: usize, replication: usize) {
        if partitions != config.partitions as usize {
            warn!(
                topic = name,
                actual = partitions,
                declared = config.partitions,
                "topic exists with a different partition count than topics.{name}.partitions; firestream does not change it (records are placed by the actual count)"
            );
        }
        if let Some(want) = config.replication
            && replication != 0
            && replication != usize::from(want)
        {
            warn!(
                topic = name,
                actual = replication,
                declared = want,
                "topic exists with a different replication factor than topics.{name}.replication; firestream does not change it"
            );
        }
        let mut wanted: Vec<(&str, String)> = Vec::new();
        if let Some(d) = config.retention {
            wanted.push(("retention.ms", d.0.as_millis().to_string()));
        }
        if let Some(c) = config.compression {
            wanted.push(("compression.type", c.as_str().to_owned()));
        }
        if wanted.is_empty() {
            return;
        }
        let options = AdminOptions::new().request_timeout(Some(self.timeout));
        let described = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(name)], &options)
            .await;
        let resource = match described.map(|mut r| r.pop()) {
            Ok(Some(Ok(resource))) => resource,
            Ok(Some(Err(e))) => {
                warn!(topic = name, error = %e, "cannot read the topic's configuration; its retention and compression are not checked");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                warn!(topic = name, error = %e, "cannot read the topic's configuration; its retention and compression are not checked");
                return;
            }
        };
        for (key, want) in wanted {
            let actual = resource.get(key).and_then(|e| e.value.clone());
            if actual.as_deref() != Some(want.as_str()) {
                warn!(
                    topic = name,
                    config = key,
                    actual = actual.as_deref().unwrap_or("unset"),
                    declared = %want,
                    "topic exists with a different {key} than declared under topics:; firestream does not change it"
                );
            }
        }
    }
}

enum Described {
    Present {
        partitions: usize,
        /// Replicas of partition 0; 0 when unknown.
        replication: usize,
    },
    Absent,
    Unreachable(String),
}
