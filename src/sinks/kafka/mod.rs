//! The Kafka sink (DESIGN §5, §6 `sink.kafka`): librdkafka through rdkafka, idempotent with
//! `acks=all`, keys placed by murmur2 like the local log and Java clients.
//!
//! A batch is enqueued into librdkafka without waiting for brokers: a full local queue is
//! backpressure (`submit` waits for room), and each delivery report lands in its batch's slot,
//! so a batch of thousands costs one await. Critical records travel on their own producer
//! with `linger.ms=0`, so they never sit behind a bulk batch. librdkafka sets compression per
//! producer, so a topic with its own `compression` gets a producer of that codec.
//!
//! Before the first message to a topic the sink looks the topic up (see [`topics`]): a
//! missing, undeclared topic fails its records at once, as fatal, instead of after
//! librdkafka's five-minute message timeout. Readiness — can a broker be reached — is probed
//! at start-up within `connect_timeout` and then every few seconds.

mod errors;
mod topics;
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use tokio::sync::oneshot;
use tracing::{debug, error, info};

pub use self::errors::{classify, classify_code};
use self::topics::{Declared, Lookup, TopicCatalog};
use self::txn::TxnState;
pub use self::txn::{
    ABORTED_KIND, FENCED_KIND, check_transactions, default_transactional_id, producer_id,
};
use super::{Delivered, Message, Origin, Pending, Readiness, SHUTDOWN_KIND, Sink, SinkError};
use crate::config::{Compression, Config, KafkaProperties, KafkaSinkConfig, TopicConfig};
use crate::dlq::DLQ_TOPIC;
use crate::record::Priority;

/// firestream's defaults; `sink.kafka.properties` overrides any of them.
const DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "firestream"),
    // Kafka's Java client placement, so the log sink and Kafka agree (DESIGN §3).
    ("partitioner", "murmur2_random"),
    // Topics are created from `topics:` with the right settings, never by accident.
    ("allow.auto.create.topics", "false"),
    ("linger.ms", "20"),
    ("compression.type", "lz4"),
];

/// Properties firestream sets itself and will not take from `sink.kafka.properties`.
const RESERVED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "set sink.kafka.bootstrap_servers instead",
    ),
    (
        "transactional.id",
        "set sink.kafka.transactional: true (and sink.kafka.transactional_id) instead",
    ),
    (
        "delivery.report.only.error",
        "firestream needs every delivery report to account for each record",
    ),
];

/// How often readiness is probed while the cluster answers, and while it does not.
const PROBE_READY: Duration = Duration::from_secs(10);
const PROBE_DOWN: Duration = Duration::from_secs(2);

/// How long `submit` waits before offering a message again to a full librdkafka queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);

/// The one name of a librdkafka setting that has several: aliases, and topic settings
/// written with a `topic.` prefix. firestream compares and overrides settings by this name;
/// otherwise two spellings of one setting would both be set and whichever librdkafka
/// applied last would win, differently from run to run.
fn canonical(name: &str) -> &str {
    match name.strip_prefix("topic.").unwrap_or(name) {
        "request.required.acks" => "acks",
        "queue.buffering.max.ms" => "linger.ms",
        "compression.codec" => "compression.type",
        "metadata.broker.list" => "bootstrap.servers",
        "message.send.max.retries" => "retries",
        "max.in.flight.requests.per.connection" => "max.in.flight",
        "delivery.timeout.ms" => "message.timeout.ms",
        other => other,
    }
}

/// Problems with `sink.kafka.properties`, each naming the property (values of secret
/// properties are never repeated).
pub fn check_properties(properties: &KafkaProperties) -> Vec<String> {
    let mut problems = Vec::new();
    let mut spelled: HashMap<&str, &str> = HashMap::new();
    for (name, value) in &properties.0 {
        let at = format!("sink.kafka.properties.{name}");
        let setting = canonical(name);
        if let Some(first) = spelled.insert(setting, name) {
            problems.push(format!(
                "{at}: the same librdkafka setting as sink.kafka.properties.{first}; keep one of them"
            ));
        }
        if let Some((_, why)) = RESERVED.iter().find(|(n, _)| *n == setting) {
            problems.push(format!("{at}: firestream sets this itself; {why}"));
            continue;
        }
        let number = value.trim().parse::<i64>().ok();
        match setting {
            "enable.idempotence" if value != "true" => problems.push(format!(
                "{at}: firestream needs the idempotent producer (no duplicates on retry); remove this property"
            )),
            "acks" if value != "all" && value != "-1" => problems.push(format!(
                "{at}: firestream needs acks=all so an acknowledged record survives a broker failure; remove this property"
            )),
            "retries" if number == Some(0) => problems.push(format!(
                "{at}: the idempotent producer needs retries > 0; remove this property"
            )),
            "max.in.flight" if number.is_some_and(|n| n > 5) => problems.push(format!(
                "{at}: the idempotent producer allows at most 5 requests in flight per connection; set 1 to 5 or remove this property"
            )),
            "message.timeout.ms" if number == Some(0) => problems.push(format!(
                "{at}: 0 means records wait for a broker forever, so neither a broker outage nor shutdown would ever end them; set a time (default 300000)"
            )),
            _ => {}
        }
        let mut probe = ClientConfig::new();
        probe.set(name, value);
        if let Err(e) = probe.create_native_config() {
            let detail = match &e {
                KafkaError::ClientConfig(_, message, _, _) if !KafkaProperties::is_secret(name) => {
                    message.clone()
                }
                _ => "librdkafka rejects this property or its value (value hidden: it is a secret)"
                    .to_owned(),
            };
            problems.push(format!("{at}: {detail}"));
        }
    }
    problems
}

/// Where a message travels: critical records never share a producer queue with bulk ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Bulk,
    Critical,
}

impl Lane {
    fn of(message: &Message) -> Lane {
        match message.origin {
            Origin::Record {
                priority: Priority::Critical,
                ..
            } => Lane::Critical,
            _ => Lane::Bulk,
        }
    }
}

/// Each message's outcome by position; `None` until its delivery report arrives.
type Slots = Vec<Option<Result<Delivered, SinkError>>>;

/// The outcomes of one submitted batch, filled in by librdkafka's delivery reports.
struct BatchAcks {
    results: Mutex<Slots>,
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Slots>>>,
}

impl BatchAcks {
    fn new(n: usize) -> (Arc<Self>, oneshot::Receiver<Slots>) {
        let (tx, rx) = oneshot::channel();
        let acks = Arc::new(BatchAcks {
            results: Mutex::new((0..n).map(|_| None).collect()),
            remaining: AtomicUsize::new(n),
            done: Mutex::new(Some(tx)),
        });
        if n == 0 {
            acks.finish();
        }
        (acks, rx)
    }

    fn complete(&self, index: usize, result: Result<Delivered, SinkError>) {
        self.results.lock().expect("batch acks")[index] = Some(result);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        let results = std::mem::take(&mut *self.results.lock().expect("batch acks"));
        if let Some(tx) = self.done.lock().expect("batch acks").take() {
            let _ = tx.send(results);
        }
    }
}

type Opaque = Box<(Arc<BatchAcks>, usize)>;

/// Shared state behind [`Readiness`], updated by the probe and by librdkafka's callbacks.
struct ReadinessState {
    bootstrap: String,
    current: Mutex<Readiness>,
    /// A fenced transactional producer: not ready for good, whatever the probe finds.
    fenced: AtomicBool,
}

impl ReadinessState {
    fn set(&self, ready: bool, detail: String) {
        let mut current = self.current.lock().expect("readiness");
        if self.fenced.load(Ordering::Acquire) {
            return;
        }
        if current.ready != ready {
            if ready {
                info!(detail = %detail, "Kafka is reachable");
            } else {
                error!(detail = %detail, "Kafka is not reachable; records wait in the producer (up to message.timeout.ms) and then go to the DLQ");
            }
        }
        *current = Readiness { ready, detail };
    }

    fn get(&self) -> Readiness {
        self.current.lock().expect("readiness").clone()
    }

    /// Not ready from now on, with `detail`.
    fn fence(&self, detail: String) {
        let mut current = self.current.lock().expect("readiness");
        self.fenced.store(true, Ordering::Release);
        *current = Readiness {
            ready: false,
            detail,
        };
    }
}

/// Routes librdkafka's delivery reports into their batches and its errors into readiness.
struct SinkContext {
    readiness: Arc<ReadinessState>,
    /// Set when librdkafka reports a fatal error: this producer instance is unusable.
    fatal: AtomicBool,
    /// With `sink.kafka.transactional`: this producer's transactional.id and transaction lock.
    txn: Option<TxnState>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.readiness.set(
                false,
                format!(
                    "no Kafka broker reachable at {}: {reason}",
                    self.readiness.bootstrap
                ),
            ),
            Some(RDKafkaErrorCode::Fatal) => {
                self.fatal.store(true, Ordering::Release);
                match &self.txn {
                    None => {
                        error!(error = %error, reason, "the Kafka producer hit a fatal error; it is replaced before the next batch")
                    }
                    Some(txn) => {
                        error!(error = %error, reason, transactional_id = %txn.id, "the transactional Kafka producer hit a fatal error; it produces nothing more")
                    }
                }
            }
            // librdkafka logs these itself (rate-limited); repeating them adds only noise.
            _ => debug!(error = %error, reason, "Kafka client error"),
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Opaque;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Opaque) {
        let (acks, index) = *opaque;
        let outcome = match result {
            Ok(message) => Ok(Delivered {
                partition: message.partition() as u32,
                offset: u64::try_from(message.offset()).ok(),
            }),
            Err((e, _)) => Err(classify(e)),
        };
        acks.complete(index, outcome);
    }
}

type KafkaProducer = ThreadedProducer<SinkContext>;

/// A producer's place: its lane and, for topics that declare one, its codec.
type ProducerKey = (Lane, Option<Compression>);

/// The producers of one sink: one per lane and codec, created on first use.
struct Producers {
    base: ClientConfig,
    readiness: Arc<ReadinessState>,
    map: Mutex<HashMap<ProducerKey, Arc<KafkaProducer>>>,
    /// `sink.kafka.transactional_id` when transactional.
    transactional: Option<String>,
}

impl Producers {
    fn get(&self, lane: Lane, codec: Option<Compression>) -> Result<Arc<KafkaProducer>, SinkError> {
        let mut map = self.map.lock().expect("producers");
        if let Some(p) = map.get(&(lane, codec)) {
            if !p.context().fatal.load(Ordering::Acquire) {
                return Ok(p.clone());
            }
            // A new producer with the same transactional.id would fence the replica that
            // fenced this one, and so on: a fenced producer stays fenced.
            if let Some(txn) = &p.context().txn {
                return Err(txn.fenced_error());
            }
        }
        let mut config = self.base.clone();
        if lane == Lane::Critical {
            set_setting(&mut config, "linger.ms", "0");
        }
        if let Some(codec) = codec {
            set_setting(&mut config, "compression.type", codec.as_str());
        }
        let txn = self.transactional.as_deref().map(|base| {
            let id = producer_id(base, lane, codec);
            config.set("transactional.id", &id);
            if lane == Lane::Bulk && codec.is_none() {
                txn::allow_checkpoints(&mut config);
            }
            TxnState::new(id)
        });
        let context = SinkContext {
            readiness: self.readiness.clone(),
            fatal: AtomicBool::new(false),
            txn,
        };
        let producer: KafkaProducer = config.create_with_context(context).map_err(|e| {
            SinkError::fatal(
                "sink_config",
                format!("cannot create the Kafka producer: {e}; check sink.kafka.properties"),
            )
        })?;
        let producer = Arc::new(producer);
        map.insert((lane, codec), producer.clone());
        Ok(producer)
    }

    fn all(&self) -> Vec<Arc<KafkaProducer>> {
        self.map
            .lock()
            .expect("producers")
            .values()
            .cloned()
            .collect()
    }
}

pub struct KafkaSink {
    producers: Producers,
    topics: Arc<TopicCatalog>,
    /// Topic → its declared codec, for topics that have one.
    codecs: HashMap<String, Compression>,
    readiness: Arc<ReadinessState>,
    aborting: Arc<AtomicBool>,
    probe: tokio::task::JoinHandle<()>,
}

impl KafkaSink {
    /// Creates the producers, probes the cluster for `connect_timeout`, and creates or
    /// checks the declared topics when it answers. An unreachable cluster is reported and
    /// probed again in the background; it is not an error here.
    pub async fn connect(config: &Config) -> Result<KafkaSink, SinkError> {
        let kafka = config.sink.kafka.as_ref().ok_or_else(|| {
            SinkError::fatal(
                "sink_config",
                "sink.type is kafka but sink.kafka is not set",
            )
        })?;
        let base = client_config(kafka);
        let readiness = Arc::new(ReadinessState {
            bootstrap: kafka.bootstrap_servers.clone(),
            current: Mutex::new(Readiness {
                ready: false,
                detail: format!("connecting to {}", kafka.bootstrap_servers),
            }),
            fenced: AtomicBool::new(false),
        });
        let admin = base
            .create::<rdkafka::admin::AdminClient<DefaultClientContext>>()
            .map_err(|e| {
                SinkError::fatal(
                    "sink_config",
                    format!(
                        "cannot create the Kafka admin client: {e}; check sink.kafka.properties"
                    ),
                )
            })?;
        let topics = Arc::new(TopicCatalog::new(
            admin,
            declared_topics(config),
            kafka.connect_timeout.0,
        ));
        let producers = Producers {
            base,
            readiness: readiness.clone(),
            map: Mutex::new(HashMap::new()),
            transactional: kafka.transactional.then(|| kafka.transactional_id.clone()),
        };
        // Created now so a bad property fails start-up, not the first record.
        let bulk = producers.get(Lane::Bulk, None)?;
        let critical = producers.get(Lane::Critical, None)?;

        let reachable = probe(&topics, &readiness).await;
        if reachable && kafka.transactional {
            txn::init_at_connect(&[bulk, critical], kafka.connect_timeout.0).await;
        }
        let reconciled = reachable && topics.reconcile().await;
        let probe = tokio::spawn(probe_forever(topics.clone(), readiness.clone(), reconciled));
        let codecs = config
            .topics
            .iter()
            .filter_map(|(name, t)| t.compression.map(|c| (name.clone(), c)))
            .collect();
        Ok(KafkaSink {
            producers,
            topics,
            codecs,
            readiness,
            aborting: Arc::new(AtomicBool::new(false)),
            probe,
        })
    }

    /// Enqueues one message, waiting while librdkafka's queue is full.
    async fn enqueue(&self, message: &Message, acks: &Arc<BatchAcks>, index: usize) {
        let codec = self.codecs.get(&*message.topic).copied();
        let producer = match self.producers.get(Lane::of(message), codec) {
            Ok(p) => p,
            Err(e) => return acks.complete(index, Err(e)),
        };
        send_one(&producer, message, acks, index, &self.aborting).await;
    }
}

/// Hands one message to `producer`, waiting while librdkafka's queue is full; its outcome
/// lands in `acks` at `index`.
async fn send_one(
    producer: &KafkaProducer,
    message: &Message,
    acks: &Arc<BatchAcks>,
    index: usize,
    aborting: &AtomicBool,
) {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    let mut record: BaseRecord<'_, str, [u8], Opaque> =
        BaseRecord::with_opaque_to(&message.topic, Box::new((acks.clone(), index)))
            .key(message.key.as_str())
            .payload(message.payload.as_slice())
            .timestamp(message.timestamp_ms)
            .headers(headers);
    loop {
        if aborting.load(Ordering::Acquire) {
            return acks.complete(
                index,
                Err(SinkError::fatal(
                    SHUTDOWN_KIND,
                    "not sent: the shutdown deadline passed before it reached the Kafka producer",
                )),
            );
        }
        match producer.send(record) {
            Ok(()) => {
                // The deadline may have passed between the check and the send: purge again
                // so this message does not wait for message.timeout.ms.
                if aborting.load(Ordering::Acquire) {
                    producer.purge(PurgeConfig::default().queue());
                }
                return;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((e, back)) => {
                drop(back);
                return acks.complete(index, Err(classify(&e)));
            }
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn submit(&self, batch: Vec<Message>) -> Pending {
        if self.producers.transactional.is_some() {
            return self.submit_transactional(batch).await;
        }
        let (acks, done) = BatchAcks::new(batch.len());
        let mut lookups: HashMap<Arc<str>, Lookup> = HashMap::new();
        for message in &batch {
            if !lookups.contains_key(&message.topic) {
                let lookup = self.topics.lookup(&message.topic).await;
                lookups.insert(message.topic.clone(), lookup);
            }
        }
        for (index, message) in batch.iter().enumerate() {
            match &lookups[&message.topic] {
                Lookup::Missing(reason) => acks.complete(
                    index,
                    Err(SinkError::fatal("unknown_topic", reason.clone())),
                ),
                Lookup::Exists | Lookup::Unknown => self.enqueue(message, &acks, index).await,
            }
        }
        drop(acks);
        async move {
            let results = done.await.unwrap_or_default();
            let mut results = results.into_iter();
            batch
                .into_iter()
                .map(|message| {
                    let outcome = results.next().flatten().unwrap_or_else(|| {
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

    fn readiness(&self) -> Readiness {
        self.readiness.get()
    }

    fn abort_pending(&self) {
        self.aborting.store(true, Ordering::Release);
        for producer in self.producers.all() {
            // In flight too, or a dead cluster holds shutdown for message.timeout.ms; those
            // records' dead letters say they may have been written.
            producer.purge(PurgeConfig::default().queue().inflight());
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.probe.abort();
        let producers = self.producers.all();
        let flushed = tokio::task::spawn_blocking(move || {
            let mut first_error = None;
            for producer in producers {
                if let Err(e) = producer.flush(Duration::from_secs(10)) {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        })
        .await
        .map_err(|e| SinkError::fatal("kafka_error", e.to_string()))?;
        self.producers.map.lock().expect("producers").clear();
        match flushed {
            None => Ok(()),
            Some(e) => Err(classify(&e)),
        }
    }
}

/// The client configuration: firestream's defaults, then the user's properties, then what
/// firestream's guarantees require.
/// The cluster connection alone (bootstrap servers, security and the user's properties), for
/// firestream's other clients: checkpoint store and recovery reader.
pub fn connection_config(kafka: &KafkaSinkConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in &kafka.properties.0 {
        config.set(name, value);
    }
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    config.set("client.id", "firestream");
    config
}

fn client_config(kafka: &KafkaSinkConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in DEFAULTS {
        let overridden = kafka.properties.0.keys().any(|p| canonical(p) == *name);
        if !overridden {
            config.set(*name, *value);
        }
    }
    for (name, value) in &kafka.properties.0 {
        config.set(name, value);
    }
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    config
}

/// Sets a setting under its canonical name, removing every other spelling of it.
fn set_setting(config: &mut ClientConfig, setting: &str, value: &str) {
    let spellings: Vec<String> = config
        .config_map()
        .keys()
        .filter(|k| canonical(k) == setting)
        .map(|k| (*k).to_owned())
        .collect();
    for name in spellings {
        config.remove(&name);
    }
    config.set(setting, value);
}

/// The topics firestream creates when missing: those under `topics:`, plus its own DLQ and
/// critical-alerts topics with default settings unless declared.
fn declared_topics(config: &Config) -> BTreeMap<String, Declared> {
    let mut declared: BTreeMap<String, Declared> = config
        .topics
        .iter()
        .map(|(name, t)| {
            let d = Declared {
                config: t.clone(),
                explicit: true,
            };
            (name.clone(), d)
        })
        .collect();
    let own = std::iter::once(DLQ_TOPIC.to_owned()).chain(config.routing.critical_topic.clone());
    for name in own {
        declared.entry(name).or_insert(Declared {
            config: TopicConfig::default(),
            explicit: false,
        });
    }
    declared
}

/// Asks the cluster for its brokers; updates readiness. Returns whether it answered.
async fn probe(topics: &TopicCatalog, readiness: &ReadinessState) -> bool {
    match topics.metadata(Some(DLQ_TOPIC)).await {
        Ok(metadata) => {
            readiness.set(
                true,
                format!(
                    "Kafka at {}: {} broker(s) reachable",
                    readiness.bootstrap,
                    metadata.brokers().len()
                ),
            );
            true
        }
        Err(e) => {
            readiness.set(
                false,
                format!("no Kafka broker reachable at {}: {e}", readiness.bootstrap),
            );
            false
        }
    }
}

async fn probe_forever(
    topics: Arc<TopicCatalog>,
    readiness: Arc<ReadinessState>,
    mut reconciled: bool,
) {
    loop {
        let wait = if readiness.get().ready {
            PROBE_READY
        } else {
            PROBE_DOWN
        };
        tokio::time::sleep(wait).await;
        if probe(&topics, &readiness).await && !reconciled {
            reconciled = topics.reconcile().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> KafkaProperties {
        KafkaProperties(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn valid_properties_pass() {
        let p = props(&[
            ("compression.type", "zstd"),
            ("linger.ms", "5"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "firestream"),
            ("sasl.password", "hunter2"),
            ("acks", "all"),
        ]);
        assert_eq!(check_properties(&p), Vec::<String>::new());
    }

    #[test]
    fn weakening_guarantees_or_unknown_names_are_refused() {
        let p = props(&[
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("bootstrap.servers", "x:9092"),
            ("lnger.ms", "5"),
            ("linger.ms", "soon"),
        ]);
        let all = check_properties(&p).join("\n");
        assert!(
            all.contains("properties.enable.idempotence: firestream needs the idempotent producer"),
            "{all}"
        );
        assert!(
            all.contains("properties.acks: firestream needs acks=all"),
            "{all}"
        );
        assert!(
            all.contains("properties.bootstrap.servers: firestream sets this itself"),
            "{all}"
        );
        assert!(
            all.contains("properties.lnger.ms: No such configuration property"),
            "{all}"
        );
        assert!(all.contains("properties.linger.ms: Invalid value"), "{all}");
    }

    #[test]
    fn aliases_and_topic_prefixes_are_checked_as_the_setting_they_name() {
        let p = props(&[
            ("topic.acks", "0"),
            ("topic.request.required.acks", "1"),
            ("metadata.broker.list", "x:9092"),
            ("retries", "0"),
            ("max.in.flight.requests.per.connection", "10"),
            ("delivery.timeout.ms", "0"),
        ]);
        let all = check_properties(&p).join("\n");
        for expected in [
            "properties.topic.acks: firestream needs acks=all",
            "properties.topic.request.required.acks: firestream needs acks=all",
            "properties.topic.request.required.acks: the same librdkafka setting as sink.kafka.properties.topic.acks",
            "properties.metadata.broker.list: firestream sets this itself",
            "properties.retries: the idempotent producer needs retries > 0",
            "properties.max.in.flight.requests.per.connection: the idempotent producer allows at most 5",
            "properties.delivery.timeout.ms: 0 means records wait for a broker forever",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn an_alias_replaces_the_default_it_names() {
        let kafka = KafkaSinkConfig {
            bootstrap_servers: "b:9092".into(),
            properties: props(&[
                ("queue.buffering.max.ms", "100"),
                ("compression.codec", "gzip"),
            ]),
            connect_timeout: crate::config::Dur(Duration::from_secs(1)),
            transactional: false,
            transactional_id: "firestream-test".into(),
        };
        let c = client_config(&kafka);
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("queue.buffering.max.ms"), Some("100"));
        assert_eq!(c.get("compression.type"), None);
        assert_eq!(c.get("compression.codec"), Some("gzip"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        let mut critical = c.clone();
        set_setting(&mut critical, "linger.ms", "0");
        assert_eq!(critical.get("queue.buffering.max.ms"), None);
        assert_eq!(critical.get("linger.ms"), Some("0"));
    }

    #[test]
    fn secret_values_never_show_in_debug_output() {
        let debug = format!(
            "{:?}",
            props(&[("sasl.password", "hunter2"), ("linger.ms", "5")])
        );
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("\"linger.ms\": \"5\""), "{debug}");
    }

    #[test]
    fn guarantees_win_over_properties() {
        let kafka = KafkaSinkConfig {
            bootstrap_servers: "b:9092".into(),
            properties: props(&[("linger.ms", "50"), ("partitioner", "consistent_random")]),
            connect_timeout: crate::config::Dur(Duration::from_secs(1)),
            transactional: false,
            transactional_id: "firestream-test".into(),
        };
        let c = client_config(&kafka);
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("partitioner"), Some("consistent_random"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }
}
