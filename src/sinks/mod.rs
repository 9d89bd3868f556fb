//! Sinks: where routed messages go. `log` is the embedded default (DESIGN §7); `kafka` slots
//! in behind the same trait.
//!
//! A sink takes a batch and reports each message's outcome (its offset, or a classified
//! error), so delivery can acknowledge, retry or dead-letter message by message. It never
//! needs one await per record.

pub mod log;
pub mod partition;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{Config, SinkKind};
use crate::dlq::Stage;
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
    },
    DeadLetter {
        stage: Stage,
    },
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    pub offset: u64,
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retriable,
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
}

pub type Outcome = (Message, Result<Delivered, SinkError>);

#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;

    /// Writes a batch; returns every message with its outcome, in the order given.
    async fn send(&self, batch: Vec<Message>) -> Vec<Outcome>;

    /// Flushes and releases resources; nothing is accepted afterwards.
    async fn close(&self) -> Result<(), SinkError>;
}

/// The configured sink, ready to write (the log's directory is checked to be writable).
pub fn build(config: &Config) -> Result<Arc<dyn Sink>, SinkError> {
    match config.sink.kind {
        SinkKind::Log => Ok(Arc::new(log::LogSink::open(config)?)),
    }
}
