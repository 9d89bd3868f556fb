//! Sinks: where routed messages go. `log` is the embedded default (DESIGN §7); `kafka` is
//! the production sink (librdkafka). Both sit behind one trait.
//!
//! A sink takes a batch and reports each message's outcome (its partition and offset, or a
//! classified error), so delivery can acknowledge, retry or dead-letter message by message.
//! It never needs one await per record, and backpressure lives in one place: `submit`
//! returns only once the sink has room for the batch.

pub mod kafka;
pub mod log;
pub mod partition;

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::config::{Config, SinkKind};
use crate::dlq::Stage;
use crate::receipt::Receipt;
use crate::record::{Priority, RecordId};
use crate::sources::SourceType;

/// A message ready for a topic: what Kafka calls a producer record.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub key: String,
    /// Milliseconds since the epoch (`ingested_at` for records, `failed_at` for dead letters).
    pub timestamp_ms: i64,
    pub headers: Vec<(&'static str, String)>,
    /// The JSON value.
    pub payload: Vec<u8>,
    pub origin: Origin,
}

/// What a message carries, so delivery can account for its outcome.
#[derive(Debug, Clone)]
pub enum Origin {
    Record {
        id: RecordId,
        source_id: Arc<str>,
        source_type: SourceType,
        priority: Priority,
        /// The copy of a critical record in the critical-alerts topic.
        copy: bool,
        /// Held until the outcome is accounted for (see [`crate::receipt`]).
        receipt: Option<Receipt>,
        /// The record's `event_time` (ms since the epoch): a stream's data freshness is
        /// that of its newest delivered event.
        event_time_ms: i64,
        /// When it entered the queue (`None` when it did not come through one, as in a
        /// DLQ replay), for the enqueue → acknowledgement latency.
        enqueued: Option<std::time::Instant>,
    },
    DeadLetter {
        stage: Stage,
        /// The receipt of a record the queue dropped, held until this dead letter is stored.
        receipt: Option<Receipt>,
    },
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    /// `None` when the broker did not say: librdkafka reports offset -1 for a batch the
    /// broker recognised as a resend of one it had stored (idempotent producer).
    pub offset: Option<u64>,
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The record was not stored; sending it again may succeed.
    Retriable,
    /// The sink gave up on a record that may have been stored all the same (a request in
    /// flight when librdkafka's message timeout ran out): sending it again could duplicate
    /// it, so it is not retried.
    MaybeWritten,
    Fatal,
}

/// A failed delivery, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub class: ErrorClass,
    /// Short machine-readable kind for the DLQ's `error_kind`.
    pub kind: &'static str,
    pub message: String,
}

impl SinkError {
    pub fn fatal(kind: &'static str, message: impl Into<String>) -> Self {
        SinkError {
            class: ErrorClass::Fatal,
            kind,
            message: message.into(),
        }
    }

    pub fn retriable(kind: &'static str, message: impl Into<String>) -> Self {
        SinkError {
            class: ErrorClass::Retriable,
            kind,
            message: message.into(),
        }
    }
}

pub type Outcome = (Message, Result<Delivered, SinkError>);

/// The outcomes of a submitted batch, in the order given, once the sink knows them.
pub type Pending = BoxFuture<'static, Vec<Outcome>>;

/// Whether a sink can deliver now, and why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// What the sink is connected to, or what is wrong.
    pub detail: String,
}

/// The `kind` of a message given back unsent because the shutdown deadline passed.
pub const SHUTDOWN_KIND: &str = "shutdown_timeout";

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;

    /// Hands a batch to the sink, in order. Returns once the sink has taken every message —
    /// waiting here is backpressure — with a future of every message's outcome, so the
    /// caller can keep several batches in flight and never awaits one delivery per record.
    async fn submit(&self, batch: Vec<Message>) -> Pending;

    /// Submits a batch and waits for its outcomes.
    async fn send(&self, batch: Vec<Message>) -> Vec<Outcome> {
        self.submit(batch).await.await
    }

    fn readiness(&self) -> Readiness;

    /// The shutdown deadline passed: messages not yet on their way come back at once with an
    /// error of kind [`SHUTDOWN_KIND`] instead of waiting for a broker.
    fn abort_pending(&self) {}

    /// Flushes and releases resources; nothing is accepted afterwards.
    async fn close(&self) -> Result<(), SinkError>;
}

/// The sinks of a configuration: where records go, and where dead letters go when that
/// sink cannot take them (the local log's DLQ topic behind Kafka).
pub struct Sinks {
    pub main: Arc<dyn Sink>,
    pub dlq_fallback: Option<Arc<dyn Sink>>,
    /// The transactional Kafka sink, which writes checkpoints in its transactions.
    pub checkpoint_writer: Option<Arc<dyn crate::checkpoint::CheckpointWriter>>,
}

/// Opens the configured sink: the log's directory is checked to be writable; Kafka is
/// probed for `connect_timeout` (an unreachable cluster is reported, not fatal).
pub async fn build(config: &Config) -> Result<Sinks, SinkError> {
    match config.sink.kind {
        SinkKind::Log => Ok(Sinks {
            main: Arc::new(log::LogSink::open(config)?),
            dlq_fallback: None,
            checkpoint_writer: None,
        }),
        SinkKind::Kafka => {
            let sink = Arc::new(kafka::KafkaSink::connect(config).await?);
            let transactional = config.sink.kafka.as_ref().is_some_and(|k| k.transactional);
            Ok(Sinks {
                checkpoint_writer: transactional.then(|| sink.clone() as _),
                main: sink,
                dlq_fallback: Some(Arc::new(log::LazyLogSink::new(config.clone()))),
            })
        }
    }
}
