//! Delivery: drains the queue, routes each record, hands batches to the sink and accounts
//! for every outcome. A record that cannot be delivered becomes a DLQ record (`stage:
//! deliver`) and its id is forgotten by dedupe so a later fetch can send it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::dedupe::DedupeRegistry;
use crate::dlq::{DeadLetter, Stage};
use crate::queue::{Batch, Queue};
use crate::router::Router;
use crate::sinks::{Message, Origin, Sink};
use crate::stats::Stats;

/// Records per sink batch: large enough to amortise fsync, small enough to keep critical
/// records from waiting behind a long write.
pub const BATCH_SIZE: usize = 2_000;

pub struct Delivery {
    pub queue: Arc<Queue>,
    pub router: Arc<Router>,
    pub sink: Arc<dyn Sink>,
    pub stats: Arc<Stats>,
    pub dedupe: Arc<DedupeRegistry>,
}

impl Delivery {
    /// Delivers until the queue is closed and empty. When `deadline` fires first, whatever
    /// is still queued goes to the DLQ with `stage: shutdown`.
    pub async fn run(self, deadline: CancellationToken) {
        loop {
            let batch = tokio::select! {
                biased;
                _ = deadline.cancelled() => break,
                batch = self.queue.pop_batch(BATCH_SIZE) => batch,
            };
            match batch {
                Some(batch) => self.deliver(batch).await,
                None => return,
            }
        }
        let left = self.queue.drain();
        if left.is_empty() {
            return;
        }
        warn!(
            records = left.records.len(),
            dead_letters = left.dead_letters.len(),
            "shutdown timeout reached; records still queued go to the DLQ (stage shutdown)"
        );
        let mut dead = left.dead_letters;
        for record in left.records {
            let topic = self.router.topic(&record.source_id, record.source_type);
            self.dedupe.for_type(record.source_type).forget(&record.id);
            self.stats.add_dead_letter(Stage::Shutdown);
            dead.push(DeadLetter::envelope(
                Stage::Shutdown,
                "shutdown_timeout",
                "still queued when delivery.shutdown_timeout expired",
                0,
                record.source_id.clone(),
                topic.to_string(),
                self.router.key(&record),
                &record.to_json(),
            ));
        }
        self.write_dead_letters(dead).await;
    }

    async fn deliver(&self, batch: Batch) {
        let mut messages = Vec::with_capacity(batch.records.len() + batch.dead_letters.len());
        for record in &batch.records {
            messages.extend(self.router.route(record));
        }
        for dead in &batch.dead_letters {
            messages.push(self.router.dead_letter(dead));
        }
        drop(batch);
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut failed = Vec::new();
        for (message, result) in self.sink.send(messages).await {
            match result {
                Ok(_) => *delivered.entry(message.topic.clone()).or_default() += 1,
                Err(e) => {
                    self.stats.add_failed(&message.topic, 1);
                    match &message.origin {
                        Origin::Record {
                            id,
                            source_id,
                            source_type,
                            copy,
                            ..
                        } => {
                            if !copy {
                                self.dedupe.for_type(*source_type).forget(id);
                            }
                            warn!(topic = %message.topic, error = %e, "delivery failed; record goes to the DLQ");
                            self.stats.add_dead_letter(Stage::Deliver);
                            failed.push(DeadLetter::envelope(
                                Stage::Deliver,
                                e.kind,
                                e.message.clone(),
                                1,
                                source_id.clone(),
                                message.topic.to_string(),
                                message.key.clone(),
                                &message.payload,
                            ));
                        }
                        Origin::DeadLetter { stage } => self.lost(&message, *stage, &e.message),
                    }
                }
            }
        }
        for (topic, n) in delivered {
            self.stats.add_delivered(&topic, n);
        }
        self.write_dead_letters(failed).await;
    }

    /// Writes dead letters straight to the sink's DLQ topic.
    async fn write_dead_letters(&self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let messages = dead.iter().map(|d| self.router.dead_letter(d)).collect();
        let mut stored = 0;
        for (message, result) in self.sink.send(messages).await {
            match result {
                Ok(_) => stored += 1,
                Err(e) => {
                    let stage = match message.origin {
                        Origin::DeadLetter { stage } => stage,
                        Origin::Record { .. } => Stage::Deliver,
                    };
                    self.stats.add_failed(&message.topic, 1);
                    self.lost(&message, stage, &e.message);
                }
            }
        }
        if stored > 0 {
            self.stats.add_delivered(crate::dlq::DLQ_TOPIC, stored);
            info!(dead_letters = stored, "written to the DLQ");
        }
    }

    /// A dead letter the sink refused: the one place a record can be lost, so say it loudly
    /// and keep the whole dead letter in the log line.
    fn lost(&self, message: &Message, stage: Stage, reason: &str) {
        self.stats
            .dlq_write_failures
            .fetch_add(1, Ordering::Relaxed);
        error!(
            stage = stage.as_str(),
            error = reason,
            dead_letter = %String::from_utf8_lossy(&message.payload),
            "DLQ write failed; the dead letter is only in this log line"
        );
    }
}
