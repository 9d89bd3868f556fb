//! Delivery: drains the queue, routes each record, hands batches to the sink and accounts
//! for every outcome. A record that cannot be delivered becomes a DLQ record (`stage:
//! deliver`) and its id is forgotten by dedupe so a later fetch can send it again; a dead
//! letter the sink refuses goes to the fallback sink (the local log behind Kafka).
//!
//! Two consumers run side by side: one for the critical lane, one for the bulk lanes and
//! dead letters, so a critical record never waits behind a bulk batch. Each keeps a few
//! batches in flight: the sink accepts a batch, and its acknowledgements are collected while
//! the next batches are routed and submitted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::dedupe::DedupeRegistry;
use crate::dlq::{DeadLetter, Stage};
use crate::queue::{Batch, Lanes, Queue};
use crate::router::Router;
use crate::sinks::{Message, Origin, Outcome, SHUTDOWN_KIND, Sink};
use crate::stats::Stats;

/// Records per sink batch: large enough to amortise fsync and produce calls, small enough
/// that acknowledgements flow steadily.
pub const BATCH_SIZE: usize = 2_000;

/// Batches each consumer keeps in flight (submitted, not yet acknowledged).
pub const MAX_IN_FLIGHT: usize = 4;

pub struct Delivery {
    pub queue: Arc<Queue>,
    pub router: Arc<Router>,
    pub sink: Arc<dyn Sink>,
    /// Where dead letters go when `sink` refuses them.
    pub dlq_fallback: Option<Arc<dyn Sink>>,
    pub stats: Arc<Stats>,
    pub dedupe: Arc<DedupeRegistry>,
}

impl Delivery {
    /// Delivers until the queue is closed and empty. When `deadline` fires first, the sink
    /// gives back what it has not sent and whatever is still queued goes to the DLQ with
    /// `stage: shutdown`.
    pub async fn run(self, deadline: CancellationToken) {
        let abort = {
            let sink = self.sink.clone();
            let deadline = deadline.clone();
            tokio::spawn(async move {
                deadline.cancelled().await;
                sink.abort_pending();
            })
        };
        tokio::join!(
            self.drain(Lanes::Critical, &deadline),
            self.drain(Lanes::Bulk, &deadline)
        );
        abort.abort();
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
                SHUTDOWN_KIND,
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

    /// One consumer: takes batches of `lanes`, keeps up to [`MAX_IN_FLIGHT`] of them in the
    /// sink, and accounts for each as its outcomes arrive (in submission order).
    async fn drain(&self, lanes: Lanes, deadline: &CancellationToken) {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        loop {
            let take = open && in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                Some(outcomes) = in_flight.next(), if !in_flight.is_empty() => {
                    self.account(outcomes).await;
                }
                _ = deadline.cancelled(), if take => open = false,
                batch = self.queue.pop(lanes, BATCH_SIZE), if take => match batch {
                    Some(batch) => {
                        let messages = self.route(batch);
                        in_flight.push_back(self.sink.submit(messages).await);
                    }
                    None => open = false,
                },
                else => break,
            }
        }
    }

    fn route(&self, batch: Batch) -> Vec<Message> {
        let mut messages = Vec::with_capacity(batch.records.len() + batch.dead_letters.len());
        for record in &batch.records {
            messages.extend(self.router.route(record));
        }
        for dead in &batch.dead_letters {
            messages.push(self.router.dead_letter(dead));
        }
        messages
    }

    /// Counts what was delivered; turns each failed record into a dead letter and sends
    /// refused dead letters to the fallback.
    async fn account(&self, outcomes: Vec<Outcome>) {
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut failed_records = Vec::new();
        let mut refused_dead = Vec::new();
        // One log line per topic and error kind, not one per record.
        let mut failures: BTreeMap<(Arc<str>, &'static str), (u64, String)> = BTreeMap::new();
        for (message, result) in outcomes {
            let e = match result {
                Ok(_) => {
                    *delivered.entry(message.topic.clone()).or_default() += 1;
                    continue;
                }
                Err(e) => e,
            };
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
                    let stage = if e.kind == SHUTDOWN_KIND {
                        Stage::Shutdown
                    } else {
                        Stage::Deliver
                    };
                    failures
                        .entry((message.topic.clone(), e.kind))
                        .or_insert_with(|| (0, e.message.clone()))
                        .0 += 1;
                    self.stats.add_dead_letter(stage);
                    failed_records.push(DeadLetter::envelope(
                        stage,
                        e.kind,
                        e.message.clone(),
                        1,
                        source_id.clone(),
                        message.topic.to_string(),
                        message.key.clone(),
                        &message.payload,
                    ));
                }
                Origin::DeadLetter { .. } => refused_dead.push((message, e.message)),
            }
        }
        for (topic, n) in delivered {
            self.stats.add_delivered(&topic, n);
        }
        for ((topic, kind), (records, reason)) in failures {
            warn!(%topic, error_kind = kind, records, error = %reason, "delivery failed; the records go to the DLQ");
        }
        self.to_fallback(refused_dead).await;
        self.write_dead_letters(failed_records).await;
    }

    /// Writes dead letters to the sink's DLQ topic, or to the fallback when it refuses.
    async fn write_dead_letters(&self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let messages: Vec<Message> = dead.iter().map(|d| self.router.dead_letter(d)).collect();
        // A sink known to be unreachable would hold them for its whole timeout first.
        let readiness = self.sink.readiness();
        if !readiness.ready && self.dlq_fallback.is_some() {
            let refused = messages
                .into_iter()
                .map(|m| (m, readiness.detail.clone()))
                .collect();
            return self.to_fallback(refused).await;
        }
        let mut stored = 0;
        let mut refused = Vec::new();
        for (message, result) in self.sink.send(messages).await {
            match result {
                Ok(_) => stored += 1,
                Err(e) => {
                    self.stats.add_failed(&message.topic, 1);
                    refused.push((message, e.message));
                }
            }
        }
        if stored > 0 {
            self.stats.add_delivered(crate::dlq::DLQ_TOPIC, stored);
            info!(dead_letters = stored, "written to the DLQ");
        }
        self.to_fallback(refused).await;
    }

    /// Dead letters the sink refused: into the fallback's DLQ, else logged whole (lost).
    async fn to_fallback(&self, refused: Vec<(Message, String)>) {
        if refused.is_empty() {
            return;
        }
        let Some(fallback) = &self.dlq_fallback else {
            for (message, reason) in refused {
                self.lost(&message, &reason);
            }
            return;
        };
        warn!(
            dead_letters = refused.len(),
            reason = %refused[0].1,
            "the sink refused dead letters; writing them to the local log's DLQ instead"
        );
        let messages = refused.into_iter().map(|(m, _)| m).collect();
        let mut stored = 0;
        for (message, result) in fallback.send(messages).await {
            match result {
                Ok(_) => stored += 1,
                Err(e) => self.lost(&message, &e.message),
            }
        }
        self.stats.dlq_fallback.fetch_add(stored, Ordering::Relaxed);
    }

    /// A dead letter no sink would store: the one place a record can be lost, so say it
    /// loudly and keep the whole dead letter in the log line.
    fn lost(&self, message: &Message, reason: &str) {
        let stage = match message.origin {
            Origin::DeadLetter { stage } => stage,
            Origin::Record { .. } => Stage::Deliver,
        };
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
