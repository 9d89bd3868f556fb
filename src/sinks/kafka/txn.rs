//! Transactional delivery (`sink.kafka.transactional`, README "Transactions"): each
//! producer's share of a batch is one Kafka transaction, and its outcomes are reported only
//! once that transaction committed, so a `read_committed` consumer sees a batch whole or not
//! at all. Checkpoints are committed by the bulk producer in transactions of their own,
//! serialised with the batches, so a checkpoint never covers a record that was not committed.
//!
//! Every blocking librdkafka call (init, commit, abort) runs on a blocking thread with a
//! timeout. A fenced producer (another replica took its transactional.id) produces nothing
//! more: its records go to the DLQ instead of risking a duplicate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, oneshot};
use tracing::{error, info, warn};

use super::topics::Lookup;
use super::{
    BatchAcks, KafkaProducer, KafkaSink, Lane, ReadinessState, Slots, canonical, send_one,
};
use crate::checkpoint::{CHECKPOINT_TOPIC, CheckpointWriter, MAX_CHECKPOINT_BYTES};
use crate::config::{CheckpointStoreKind, Compression, KafkaSinkConfig};
use crate::dlq::Stage;
use crate::sinks::{Delivered, Message, Origin, Pending, SHUTDOWN_KIND, SinkError};

/// The `error_kind` of records whose transaction was aborted every time it was tried:
/// retriable, delivery may send them again.
pub const ABORTED_KIND: &str = "transaction_aborted";
/// The `error_kind` of records a fenced (or otherwise fatally failed) transactional producer
/// could not commit: fatal, so they go to the DLQ rather than risk a duplicate.
pub const FENCED_KIND: &str = "producer_fenced";

/// How long one init, commit or abort call may block (librdkafka's default
/// `transaction.timeout.ms`).
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// Commit calls after retriable errors before the transaction is aborted instead.
const COMMIT_TRIES: u32 = 5;
/// Transactions a batch gets after abortable failures before its records are reported
/// retriable ([`ABORTED_KIND`]).
const TXN_ATTEMPTS: u32 = 3;
/// `init_transactions` calls before a batch gives up waiting for the cluster.
const INIT_TRIES: u32 = 3;
/// librdkafka's `transaction.timeout.ms` default.
const DEFAULT_TRANSACTION_TIMEOUT_MS: i64 = 60_000;

/// `firestream-<hostname>`: stable across restarts of a replica on one host, distinct across
/// hosts. Replicas whose host name changes on every start (plain container deployments) must
/// set `sink.kafka.transactional_id` themselves.
pub fn default_transactional_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()));
    match host {
        Some(host) => format!("firestream-{host}"),
        None => "firestream".to_owned(),
    }
}

/// The transactional.id of one producer: `<base>-<lane>[-<codec>]`, so each producer of a
/// replica has its own and keeps it across restarts.
pub fn producer_id(base: &str, lane: Lane, codec: Option<Compression>) -> String {
    let lane = match lane {
        Lane::Bulk => "bulk",
        Lane::Critical => "critical",
    };
    match codec {
        Some(codec) => format!("{base}-{lane}-{}", codec.as_str()),
        None => format!("{base}-{lane}"),
    }
}

/// Problems with the transactional settings, each naming its field.
pub fn check_transactions(kafka: &KafkaSinkConfig, store: CheckpointStoreKind) -> Vec<String> {
    let mut problems = Vec::new();
    if !kafka.transactional {
        return problems;
    }
    let id = &kafka.transactional_id;
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problems.push(format!(
            "sink.kafka.transactional_id: {id:?} must be non-empty without spaces; name the replica, e.g. `firestream-east-1`"
        ));
    }
    if store == CheckpointStoreKind::Dir {
        problems.push(
            "checkpoint.store: `dir` keeps checkpoints outside Kafka's transactions; with sink.kafka.transactional use `kafka` or leave it out"
                .to_owned(),
        );
    }
    let property = |setting: &str| {
        kafka
            .properties
            .0
            .iter()
            .find(|(name, _)| canonical(name) == setting)
            .map(|(name, value)| (name.clone(), value.trim().to_owned()))
    };
    if let Some((name, value)) = property("isolation.level")
        && value != "read_committed"
    {
        problems.push(format!(
            "sink.kafka.properties.{name}: recovery must read only committed records with sink.kafka.transactional; remove this property"
        ));
    }
    let transaction_timeout = property("transaction.timeout.ms")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
    if let Some((name, value)) = property("message.timeout.ms")
        && value
            .parse::<i64>()
            .is_ok_and(|ms| ms > transaction_timeout)
    {
        problems.push(format!(
            "sink.kafka.properties.{name}: with sink.kafka.transactional it must not exceed transaction.timeout.ms ({transaction_timeout}); lower it or raise transaction.timeout.ms"
        ));
    }
    problems
}

/// A transactional producer's id and the lock that keeps one transaction open at a time.
pub struct TxnState {
    pub id: String,
    /// Held from `begin_transaction` until the commit or abort returned; the value says
    /// whether `init_transactions` succeeded.
    lock: Arc<AsyncMutex<bool>>,
    /// Why the producer is fenced, once it is.
    fenced: std::sync::Mutex<Option<String>>,
}

impl TxnState {
    pub fn new(id: String) -> Self {
        TxnState {
            id,
            lock: Arc::new(AsyncMutex::new(false)),
            fenced: std::sync::Mutex::new(None),
        }
    }

    /// The error a fenced producer's records get.
    pub fn fenced_error(&self) -> SinkError {
        let detail = self.fenced.lock().expect("fenced").clone().unwrap_or_else(|| {
            format!(
                "the transactional producer {} hit a fatal error (see the log); this replica stops producing on it",
                self.id
            )
        });
        SinkError::fatal(FENCED_KIND, detail)
    }
}

/// The bulk producer also writes checkpoints, which can be larger than a record.
pub fn allow_checkpoints(config: &mut ClientConfig) {
    let set = config
        .config_map()
        .keys()
        .any(|k| canonical(k) == "message.max.bytes");
    if !set {
        config.set("message.max.bytes", MAX_CHECKPOINT_BYTES.to_string());
    }
}

/// Starts transactions on the sink's first producers while the cluster answers; a producer
/// that cannot is initialised again before its first batch.
pub async fn init_at_connect(producers: &[Arc<KafkaProducer>], timeout: Duration) {
    for producer in producers {
        let Some(txn) = &producer.context().txn else {
            continue;
        };
        let Ok(mut initialized) = txn.lock.clone().try_lock_owned() else {
            continue;
        };
        match blocking(producer, move |p| p.init_transactions(timeout)).await {
            Ok(()) => {
                *initialized = true;
                info!(transactional_id = %txn.id, "Kafka transactions initialised");
            }
            Err(e) => {
                warn!(transactional_id = %txn.id, error = %e, "cannot initialise Kafka transactions yet; tried again before the first batch")
            }
        }
    }
}

/// Runs a blocking librdkafka call on a blocking thread.
async fn blocking<T: Send + 'static>(
    producer: &Arc<KafkaProducer>,
    call: impl FnOnce(&KafkaProducer) -> KafkaResult<T> + Send + 'static,
) -> KafkaResult<T> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// What a failed transaction call calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remedy {
    /// Call it again (librdkafka: `is_retriable`; or commit's flush timed out).
    Retry,
    /// Abort the transaction and produce the batch again (`txn_requires_abort`).
    Abort,
    /// The producer is fenced or fatally failed: it must produce nothing more.
    Fence,
}

/// Whether a code says another producer took this one's transactional.id.
fn is_fencing(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
        )
    )
}

fn remedy(error: &KafkaError) -> Remedy {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() || is_fencing(Some(e.code())) => Remedy::Fence,
        KafkaError::Transaction(e) if e.txn_requires_abort() => Remedy::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => Remedy::Retry,
        KafkaError::Flush(_) => Remedy::Retry,
        _ => Remedy::Abort,
    }
}

/// One producer's share of a batch and what its transaction needs.
struct Txn {
    producer: Arc<KafkaProducer>,
    batch: Arc<Vec<Message>>,
    indices: Vec<usize>,
    aborting: Arc<AtomicBool>,
    readiness: Arc<ReadinessState>,
}

type Outcomes = Vec<(usize, Result<Delivered, SinkError>)>;
type Opened = Result<(Arc<BatchAcks>, oneshot::Receiver<Slots>), SinkError>;

impl Txn {
    fn state(&self) -> &TxnState {
        self.producer
            .context()
            .txn
            .as_ref()
            .expect("a transactional producer")
    }

    fn all(&self, error: SinkError) -> Outcomes {
        self.indices
            .iter()
            .map(|&i| (i, Err(error.clone())))
            .collect()
    }

    /// Marks the producer fenced for good and says so in readiness.
    fn fence(&self, error: &KafkaError) -> SinkError {
        let state = self.state();
        let detail = if is_fencing(error.rdkafka_error_code()) {
            format!(
                "fenced: another replica uses transactional.id {} ({error}); this replica stops producing on it. Give each replica its own sink.kafka.transactional_id",
                state.id
            )
        } else {
            format!(
                "fatal transaction error on transactional.id {} ({error}); this replica stops producing on it; restart it once the cause is fixed",
                state.id
            )
        };
        self.producer.context().fatal.store(true, Ordering::Release);
        *state.fenced.lock().expect("fenced") = Some(detail.clone());
        error!(transactional_id = %state.id, detail = %detail, "Kafka transactions stopped; records go to the DLQ");
        self.readiness.fence(detail.clone());
        SinkError::fatal(FENCED_KIND, detail)
    }

    /// Initialises transactions when needed, begins one and hands every message to
    /// librdkafka. An error is the outcome of every message.
    async fn open(&self, initialized: &mut bool) -> Opened {
        let state = self.state();
        if self.producer.context().fatal.load(Ordering::Acquire) {
            return Err(state.fenced_error());
        }
        let mut tries = 0;
        while !*initialized {
            match blocking(&self.producer, |p| p.init_transactions(TXN_TIMEOUT)).await {
                Ok(()) => *initialized = true,
                Err(e) if remedy(&e) == Remedy::Fence => return Err(self.fence(&e)),
                Err(e) => {
                    tries += 1;
                    if tries >= INIT_TRIES || self.aborting.load(Ordering::Acquire) {
                        return Err(SinkError::retriable(
                            "transaction_init",
                            format!(
                                "Kafka: cannot start transactions for transactional.id {}: {e}; is the cluster reachable, and does it allow transactions (transaction.state.log.replication.factor at most the number of brokers)?",
                                state.id
                            ),
                        ));
                    }
                    warn!(transactional_id = %state.id, error = %e, "cannot initialise Kafka transactions; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if let Err(e) = self.producer.begin_transaction() {
            return Err(match remedy(&e) {
                Remedy::Fence => self.fence(&e),
                _ => SinkError::retriable(
                    ABORTED_KIND,
                    format!(
                        "Kafka: cannot begin a transaction on transactional.id {}: {e}",
                        state.id
                    ),
                ),
            });
        }
        let (acks, done) = BatchAcks::new(self.indices.len());
        for (slot, &index) in self.indices.iter().enumerate() {
            send_one(
                &self.producer,
                &self.batch[index],
                &acks,
                slot,
                &self.aborting,
            )
            .await;
        }
        Ok((acks, done))
    }

    /// Commits, retrying what librdkafka calls retriable.
    async fn commit(&self) -> Result<(), (Remedy, KafkaError)> {
        let mut tries = 0;
        loop {
            let Err(e) = blocking(&self.producer, |p| p.commit_transaction(TXN_TIMEOUT)).await
            else {
                return Ok(());
            };
            match remedy(&e) {
                Remedy::Retry if tries < COMMIT_TRIES && !self.aborting.load(Ordering::Acquire) => {
                    tries += 1;
                    warn!(transactional_id = %self.state().id, error = %e, "committing the Kafka transaction failed; trying again");
                }
                Remedy::Retry => return Err((Remedy::Abort, e)),
                other => return Err((other, e)),
            }
        }
    }

    /// Aborts the open transaction, retrying what librdkafka calls retriable.
    async fn abort(&self) -> Result<(), KafkaError> {
        let mut tries = 0;
        loop {
            let Err(e) = blocking(&self.producer, |p| p.abort_transaction(TXN_TIMEOUT)).await
            else {
                return Ok(());
            };
            tries += 1;
            if remedy(&e) == Remedy::Fence
                || tries >= COMMIT_TRIES
                || self.aborting.load(Ordering::Acquire)
            {
                return Err(e);
            }
            warn!(transactional_id = %self.state().id, error = %e, "aborting the Kafka transaction failed; trying again");
        }
    }

    /// Commits the opened transaction — aborting and producing again after abortable
    /// failures — and only then reports each message's outcome. Holds the producer's
    /// transaction lock throughout.
    async fn settle(self, mut initialized: OwnedMutexGuard<bool>, mut opened: Opened) -> Outcomes {
        let mut attempt = 1;
        loop {
            let (acks, done) = match opened {
                Ok(opened) => opened,
                Err(e) => return self.all(e),
            };
            drop(acks);
            let failure = match self.commit().await {
                Ok(()) => {
                    let slots = reports(done, self.indices.len()).await;
                    return self
                        .indices
                        .iter()
                        .zip(slots)
                        .map(|(&i, slot)| {
                            let outcome = slot.unwrap_or_else(|| {
                                Err(SinkError::fatal(
                                    "no_delivery_report",
                                    "the Kafka producer committed the transaction without reporting this message",
                                ))
                            });
                            (i, outcome)
                        })
                        .collect();
                }
                Err((Remedy::Fence, e)) => return self.all(self.fence(&e)),
                Err((_, e)) => e,
            };
            if let Err(e) = self.abort().await {
                if self.aborting.load(Ordering::Acquire) && remedy(&e) != Remedy::Fence {
                    return self.all(SinkError::fatal(
                        SHUTDOWN_KIND,
                        format!("not sent: its Kafka transaction could not be committed or aborted before the shutdown deadline ({e}); it was not committed"),
                    ));
                }
                return self.all(self.fence(&e));
            }
            // The aborted messages' reports (purged, or stored and now aborted) are in.
            reports(done, self.indices.len()).await;
            if self.aborting.load(Ordering::Acquire) {
                return self.all(SinkError::fatal(
                    SHUTDOWN_KIND,
                    format!("not sent: its Kafka transaction was aborted at the shutdown deadline ({failure})"),
                ));
            }
            let id = self.state().id.clone();
            if attempt >= TXN_ATTEMPTS {
                return self.all(SinkError::retriable(
                    ABORTED_KIND,
                    format!(
                        "Kafka: the transaction on transactional.id {id} was aborted {attempt} times, last: {failure}; nothing of it was committed"
                    ),
                ));
            }
            attempt += 1;
            warn!(transactional_id = %id, error = %failure, attempt, records = self.indices.len(), "the Kafka transaction was aborted; producing its records again in a new one");
            opened = self.open(&mut initialized).await;
        }
    }
}

/// Every delivery report of a transaction's `n` messages; `None` for those missing after
/// [`TXN_TIMEOUT`].
async fn reports(done: oneshot::Receiver<Slots>, n: usize) -> Slots {
    let mut slots = match tokio::time::timeout(TXN_TIMEOUT, done).await {
        Ok(Ok(slots)) => slots,
        _ => Vec::new(),
    };
    slots.resize_with(n, || None);
    slots
}

impl KafkaSink {
    /// Opens one transaction per producer for its share of `batch`; the outcomes come once
    /// each committed (or failed for good).
    pub(super) async fn submit_transactional(&self, batch: Vec<Message>) -> Pending {
        let mut outcomes: Vec<Option<Result<Delivered, SinkError>>> =
            (0..batch.len()).map(|_| None).collect();
        let mut lookups: HashMap<Arc<str>, Lookup> = HashMap::new();
        for message in &batch {
            if !lookups.contains_key(&message.topic) {
                let lookup = self.topics.lookup(&message.topic).await;
                lookups.insert(message.topic.clone(), lookup);
            }
        }
        // By transactional.id, so concurrent batches take producers' locks in one order.
        let mut groups: BTreeMap<String, (Arc<KafkaProducer>, Vec<usize>)> = BTreeMap::new();
        for (index, message) in batch.iter().enumerate() {
            if let Lookup::Missing(reason) = &lookups[&message.topic] {
                outcomes[index] = Some(Err(SinkError::fatal("unknown_topic", reason.clone())));
                continue;
            }
            let codec = self.codecs.get(&*message.topic).copied();
            match self.producers.get(Lane::of(message), codec) {
                Ok(producer) => {
                    let id = producer.context().txn.as_ref().map(|t| t.id.clone());
                    groups
                        .entry(id.unwrap_or_default())
                        .or_insert_with(|| (producer, Vec::new()))
                        .1
                        .push(index);
                }
                Err(e) => outcomes[index] = Some(Err(e)),
            }
        }
        let batch = Arc::new(batch);
        let mut tasks = Vec::new();
        for (producer, indices) in groups.into_values() {
            tasks.push(self.transact(producer, batch.clone(), indices).await);
        }
        async move {
            for task in tasks {
                for (index, outcome) in task.await.unwrap_or_default() {
                    outcomes[index] = Some(outcome);
                }
            }
            let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
            batch
                .into_iter()
                .zip(outcomes)
                .map(|(message, outcome)| {
                    let outcome = outcome.unwrap_or_else(|| {
                        Err(SinkError::fatal(
                            "no_delivery_report",
                            "the Kafka producer went away without reporting this message",
                        ))
                    });
                    (message, outcome)
                })
                .collect()
        }
        .boxed()
    }

    /// Takes the producer's transaction lock, opens its transaction with `indices` of
    /// `batch` in it (waiting here is backpressure) and settles it in a task of its own, so
    /// the caller can submit the next batch meanwhile.
    async fn transact(
        &self,
        producer: Arc<KafkaProducer>,
        batch: Arc<Vec<Message>>,
        indices: Vec<usize>,
    ) -> tokio::task::JoinHandle<Outcomes> {
        let lock = producer
            .context()
            .txn
            .as_ref()
            .expect("a transactional producer")
            .lock
            .clone();
        let mut initialized = lock.lock_owned().await;
        let txn = Txn {
            producer,
            batch,
            indices,
            aborting: self.aborting.clone(),
            readiness: self.readiness.clone(),
        };
        let opened = txn.open(&mut initialized).await;
        tokio::spawn(txn.settle(initialized, opened))
    }
}

#[async_trait]
impl CheckpointWriter for KafkaSink {
    /// One transaction of the bulk producer holding only the checkpoint records. It waits
    /// for the batch transaction open on that producer, so it never commits before records
    /// whose acknowledgement it may cover.
    async fn write_checkpoints(&self, records: Vec<(String, Vec<u8>)>) -> Result<(), String> {
        let producer = self
            .producers
            .get(Lane::Bulk, None)
            .map_err(|e| e.message)?;
        let now = chrono::Utc::now().timestamp_millis();
        let topic: Arc<str> = Arc::from(CHECKPOINT_TOPIC);
        let messages: Vec<Message> = records
            .into_iter()
            .map(|(key, payload)| Message {
                topic: topic.clone(),
                key,
                timestamp_ms: now,
                headers: Vec::new(),
                payload,
                // Only carried to the producer; the sink reads no more than topic and key.
                origin: Origin::DeadLetter {
                    stage: Stage::Deliver,
                    receipt: None,
                },
            })
            .collect();
        let indices = (0..messages.len()).collect();
        let outcomes = self
            .transact(producer, Arc::new(messages), indices)
            .await
            .await
            .map_err(|e| format!("checkpoint transaction task: {e}"))?;
        match outcomes.into_iter().find_map(|(_, o)| o.err()) {
            None => Ok(()),
            Some(e) => Err(format!("writing checkpoints to {CHECKPOINT_TOPIC}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, KafkaProperties};

    fn kafka(transactional: bool, id: &str, properties: &[(&str, &str)]) -> KafkaSinkConfig {
        KafkaSinkConfig {
            bootstrap_servers: "b:9092".into(),
            properties: KafkaProperties(
                properties
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            connect_timeout: Dur(Duration::from_secs(1)),
            transactional,
            transactional_id: id.into(),
        }
    }

    #[test]
    fn each_producer_gets_its_own_transactional_id() {
        assert_eq!(producer_id("fs-east-1", Lane::Bulk, None), "fs-east-1-bulk");
        assert_eq!(
            producer_id("fs-east-1", Lane::Critical, None),
            "fs-east-1-critical"
        );
        assert_eq!(
            producer_id("fs-east-1", Lane::Bulk, Some(Compression::Gzip)),
            "fs-east-1-bulk-gzip"
        );
        assert_eq!(
            producer_id("fs-east-1", Lane::Critical, Some(Compression::Zstd)),
            "fs-east-1-critical-zstd"
        );
    }

    #[test]
    fn the_default_id_names_the_host_and_is_stable() {
        let id = default_transactional_id();
        assert!(id.starts_with("firestream"), "{id}");
        assert!(!id.chars().any(char::is_whitespace), "{id:?}");
        assert_eq!(id, default_transactional_id());
    }

    #[test]
    fn transactional_settings_are_checked_only_when_transactional() {
        let loose = kafka(
            false,
            "",
            &[
                ("isolation.level", "read_uncommitted"),
                ("message.timeout.ms", "300000"),
            ],
        );
        assert_eq!(
            check_transactions(&loose, CheckpointStoreKind::Dir),
            Vec::<String>::new()
        );
        let fine = kafka(
            true,
            "fs-east-1",
            &[
                ("transaction.timeout.ms", "120000"),
                ("delivery.timeout.ms", "90000"),
            ],
        );
        assert_eq!(
            check_transactions(&fine, CheckpointStoreKind::Auto),
            Vec::<String>::new()
        );
    }

    #[test]
    fn conflicting_transactional_settings_are_refused_by_field() {
        let bad = kafka(
            true,
            "fs east",
            &[
                ("isolation.level", "read_uncommitted"),
                ("delivery.timeout.ms", "300000"),
            ],
        );
        let problems = check_transactions(&bad, CheckpointStoreKind::Dir);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("sink.kafka.transactional_id: \"fs east\" must be non-empty"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("checkpoint.store: `dir` keeps checkpoints outside"),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].starts_with(
                "sink.kafka.properties.isolation.level: recovery must read only committed"
            ),
            "{}",
            problems[2]
        );
        assert_eq!(
            problems[3],
            "sink.kafka.properties.delivery.timeout.ms: with sink.kafka.transactional it must not exceed transaction.timeout.ms (60000); lower it or raise transaction.timeout.ms"
        );
    }

    #[test]
    fn a_user_transactional_id_property_points_to_the_setting() {
        let p = KafkaProperties(
            [("transactional.id".to_owned(), "x".to_owned())]
                .into_iter()
                .collect(),
        );
        let all = super::super::check_properties(&p).join("\n");
        assert!(
            all.contains("properties.transactional.id: firestream sets this itself; set sink.kafka.transactional: true"),
            "{all}"
        );
    }

    #[test]
    fn the_keys_parse_and_config_check_names_each_problem() {
        let parse = |yaml: &str| {
            crate::config::Config::parse(yaml, std::path::Path::new("t.yaml")).expect("parses")
        };
        let config = parse(
            "sink: {type: kafka, kafka: {bootstrap_servers: \"b:9092\", transactional: true}}",
        );
        let kafka = config.sink.kafka.as_ref().unwrap();
        assert!(kafka.transactional);
        assert_eq!(kafka.transactional_id, default_transactional_id());
        config.check().expect("valid");
        let off = parse("sink: {type: kafka, kafka: {bootstrap_servers: \"b:9092\"}}");
        assert!(!off.sink.kafka.unwrap().transactional);
        let bad = parse(
            "sink: {type: kafka, kafka: {bootstrap_servers: \"b:9092\", transactional: true, transactional_id: \"\", properties: {transactional.id: x}}}\ncheckpoint: {store: dir}",
        );
        let err = bad.check().unwrap_err().to_string();
        for expected in [
            "sink.kafka.transactional_id: \"\" must be non-empty",
            "checkpoint.store: `dir` keeps checkpoints outside Kafka's transactions",
            "sink.kafka.properties.transactional.id: firestream sets this itself",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
    }

    #[test]
    fn checkpoint_size_is_allowed_unless_the_user_set_a_limit() {
        let mut config = ClientConfig::new();
        allow_checkpoints(&mut config);
        assert_eq!(
            config.get("message.max.bytes"),
            Some(MAX_CHECKPOINT_BYTES.to_string().as_str())
        );
        let mut config = ClientConfig::new();
        config.set("message.max.bytes", "2000000");
        allow_checkpoints(&mut config);
        assert_eq!(config.get("message.max.bytes"), Some("2000000"));
    }
}
