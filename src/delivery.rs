//! Delivery: drains the queue, routes each record, hands batches to the sink and accounts
//! for every outcome. A record that cannot be delivered becomes a DLQ record (`stage:
//! deliver`) and its id is forgotten by dedupe so a later fetch can send it again; a dead
//! letter the sink refuses goes to the fallback sink (the local log behind Kafka).
//!
//! Two consumers run side by side: one for the critical lane, one for the bulk lanes and
//! dead letters, so a critical record never waits behind a bulk batch. Each keeps a few
//! batches in flight: the sink accepts a batch, and its acknowledgements are collected while
//! the next batches are routed and submitted, each batch's as soon as they are all in.
//!
//! A record that failed with a retriable error is sent again after a backoff (see
//! [`crate::retry`]); while it waits, its consumer goes on with other batches, and a later
//! record with the same topic and key joins the waiting retry instead of overtaking it.
//! Batches already in flight when the failure is reported can still land first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::{OffsetLedger, Ticket};
use crate::dedupe::DedupeRegistry;
use crate::dlq::{DeadLetter, Stage};
use crate::queue::{Batch, Lanes, Queue};
use crate::receipt::Receipt;
use crate::retry::{Attempt, RetryPolicy};
use crate::router::Router;
use crate::sinks::{ErrorClass, Message, Origin, Outcome, SHUTDOWN_KIND, Sink};
use crate::stats::Stats;
use crate::throttle::Throttle;

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
    /// Where acknowledged records are, for checkpoints.
    pub ledger: Arc<OffsetLedger>,
    /// Lag-driven throttle: bulk records wait for their topic's tokens before submission.
    pub throttle: Option<Arc<Throttle>>,
    pub retry: RetryPolicy,
}

/// A submitted batch: its ledger ticket, each message's attempt history, then its outcomes.
type InFlight = BoxFuture<'static, (Ticket, Vec<Attempt>, Vec<Outcome>)>;

/// Messages waiting for their retry's backoff.
struct Waiting {
    due: Instant,
    messages: Vec<Message>,
    attempts: Vec<Attempt>,
}

/// One consumer's retries waiting for their backoff, and the (topic, key) pairs they hold
/// back: a later record of a held key joins the retry, so it is not sent before it.
#[derive(Default)]
struct Backoffs {
    next_id: u64,
    waiting: BTreeMap<u64, Waiting>,
    held: HashMap<(Arc<str>, String), u64>,
}

impl Backoffs {
    fn add(&mut self, retry: Waiting) {
        let id = self.next_id;
        self.next_id += 1;
        for m in &retry.messages {
            self.held.insert((m.topic.clone(), m.key.clone()), id);
        }
        self.waiting.insert(id, retry);
    }

    /// Moves the records of a fresh batch whose key is held into the retry holding it;
    /// returns the others.
    fn hold_back(&mut self, messages: Vec<Message>, now: Instant) -> Vec<Message> {
        if self.held.is_empty() {
            return messages;
        }
        let mut free = Vec::with_capacity(messages.len());
        for m in messages {
            let holder = match m.origin {
                Origin::Record { .. } => self.held.get(&(m.topic.clone(), m.key.clone())),
                Origin::DeadLetter { .. } => None,
            };
            match holder.and_then(|id| self.waiting.get_mut(id)) {
                Some(retry) => {
                    retry.messages.push(m);
                    retry.attempts.push(Attempt::first(now));
                }
                None => free.push(m),
            }
        }
        free
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.due).min()
    }

    /// Takes the retry due first and releases its keys.
    fn take_due(&mut self) -> Option<Waiting> {
        let id = *self.waiting.iter().min_by_key(|(_, w)| w.due)?.0;
        let retry = self.waiting.remove(&id)?;
        self.held.retain(|_, holder| *holder != id);
        Some(retry)
    }
}

/// Returns when the backoff ending at `due` is over, or at once when the deadline passed.
async fn backoff_over(due: Option<Instant>, deadline: &CancellationToken) {
    let Some(due) = due else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::time::sleep_until(due.into()) => {}
        _ = deadline.cancelled() => {}
    }
}

impl Delivery {
    /// Delivers until the queue is closed and empty. When `deadline` fires first, the sink
    /// gives back what it has not sent and whatever is still queued goes to the DLQ with
    /// `stage: shutdown`.
    pub async fn run(self, deadline: CancellationToken) {
        // Records the queue drops become dead letters routed like the records they were.
        self.queue.set_dropper(crate::queue::Dropper::new(
            self.router.clone(),
            self.dedupe.clone(),
            self.stats.clone(),
        ));
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
        // Their sources' acknowledgements wait until the dead letters are written, and do
        // not happen when they cannot be.
        let receipts: Vec<_> = left.receipts.into_iter().flatten().collect();
        let lost_before = self.stats.dlq_write_failures.load(Ordering::Relaxed);
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
        if self.stats.dlq_write_failures.load(Ordering::Relaxed) > lost_before {
            receipts.iter().for_each(Receipt::abandon);
        }
    }

    /// One consumer: takes batches of `lanes`, keeps up to [`MAX_IN_FLIGHT`] of them in the
    /// sink (retries included), and accounts for each as soon as its outcomes arrive, so a
    /// slow batch (a retry to a partition still without a leader) does not hold up the
    /// accounting of later ones. A retry waiting for its backoff holds no slot.
    async fn drain(&self, lanes: Lanes, deadline: &CancellationToken) {
        let mut in_flight = FuturesUnordered::new();
        let mut backoffs = Backoffs::default();
        let mut open = true;
        loop {
            let room = in_flight.len() < MAX_IN_FLIGHT;
            let take = open && room;
            let due = backoffs.next_due();
            tokio::select! {
                biased;
                Some((ticket, attempts, outcomes)) = in_flight.next(), if !in_flight.is_empty() => {
                    let retry = self.account(outcomes, attempts, deadline).await;
                    // Records sent again get a new ticket when resubmitted.
                    self.ledger.settled(ticket);
                    if let Some(retry) = retry {
                        backoffs.add(retry);
                    }
                }
                _ = backoff_over(due, deadline), if room && due.is_some() => {
                    if let Some(retry) = backoffs.take_due() {
                        let submitted = self.submit(retry.messages, retry.attempts).await;
                        in_flight.push(submitted);
                    }
                }
                _ = deadline.cancelled(), if take => open = false,
                batch = self.queue.pop(lanes, self.batch_size(lanes)), if take => match batch {
                    Some(batch) => {
                        let now = Instant::now();
                        let messages = backoffs.hold_back(self.route(batch), now);
                        if !messages.is_empty() {
                            if let Some(throttle) = self.throttle.as_ref().filter(|_| lanes == Lanes::Bulk) {
                                throttle.admit(&messages, deadline).await;
                            }
                            let attempts = vec![Attempt::first(now); messages.len()];
                            let submitted = self.submit(messages, attempts).await;
                            in_flight.push(submitted);
                        }
                    }
                    None => open = false,
                },
                else => break,
            }
        }
    }

    /// A throttled bulk consumer takes small batches, so it sends in steps at its rate.
    fn batch_size(&self, lanes: Lanes) -> usize {
        match &self.throttle {
            Some(throttle) if lanes == Lanes::Bulk => throttle.batch_limit(BATCH_SIZE),
            _ => BATCH_SIZE,
        }
    }

    /// Hands messages to the sink (waiting while it has no room) and pairs their outcomes
    /// with their ledger ticket and attempt histories.
    async fn submit(&self, messages: Vec<Message>, attempts: Vec<Attempt>) -> InFlight {
        let ticket: Ticket = self.ledger.submitted();
        let pending = self.sink.submit(messages).await;
        async move { (ticket, attempts, pending.await) }.boxed()
    }

    fn route(&self, batch: Batch) -> Vec<Message> {
        let mut messages = Vec::with_capacity(batch.records.len() + batch.dead_letters.len());
        let mut receipts = batch.receipts.into_iter();
        let mut enqueued = batch.enqueued.into_iter();
        for record in &batch.records {
            let receipt = receipts.next().flatten();
            let messages_of = self
                .router
                .route_with_receipt(record, receipt, enqueued.next());
            messages.extend(messages_of);
        }
        for dead in &batch.dead_letters {
            messages.push(self.router.dead_letter(dead));
        }
        messages
    }

    /// Counts what was delivered; sets records that failed with a retriable error aside for
    /// a retry (returned, with its backoff) while they have retries left; turns every other
    /// failed record into a dead letter and sends refused dead letters to the fallback.
    /// Records' receipts are released only at the end, once the dead letters of this batch
    /// are written; a retried record keeps its receipt until its final outcome.
    async fn account(
        &self,
        outcomes: Vec<Outcome>,
        attempts: Vec<Attempt>,
        deadline: &CancellationToken,
    ) -> Option<Waiting> {
        let mut receipts = Vec::new();
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut failed_records = Vec::new();
        let mut refused_dead = Vec::new();
        let mut retry = Vec::new();
        let mut retry_attempts: Vec<Attempt> = Vec::new();
        // One log line per topic and error kind, not one per record.
        let mut failures: BTreeMap<(Arc<str>, &'static str), (u64, String)> = BTreeMap::new();
        let mut retried: BTreeMap<(Arc<str>, &'static str), (u64, String)> = BTreeMap::new();
        // Receipts of records that failed: if their dead letters cannot be stored either,
        // the source must not acknowledge upstream (the message comes back instead).
        let mut failed_receipts = Vec::new();
        let lost_before = self.stats.dlq_write_failures.load(Ordering::Relaxed);
        // The newest event delivered per stream: one update per stream per batch.
        let mut newest: Vec<(Arc<str>, i64)> = Vec::new();
        let now = Instant::now();
        for ((mut message, result), attempt) in outcomes.into_iter().zip(attempts) {
            let e = match result {
                Ok(stored) => {
                    if let Origin::Record {
                        id,
                        source_id,
                        source_type,
                        priority,
                        copy: false,
                        event_time_ms,
                        enqueued,
                        ..
                    } = &message.origin
                    {
                        self.dedupe.for_type(*source_type).ack(id, source_id);
                        // Without an offset the ledger does not move: recovery then reads
                        // from the last known one, which is safe.
                        if let Some(offset) = stored.offset {
                            self.ledger.acked(
                                source_id,
                                &message.topic,
                                stored.partition,
                                offset,
                                Some(*id),
                            );
                        }
                        if let Some(enqueued) = enqueued {
                            self.stats.delivered_after(
                                *priority,
                                now.saturating_duration_since(*enqueued),
                            );
                        }
                        match newest.iter_mut().find(|(s, _)| s == source_id) {
                            Some((_, ms)) => *ms = (*ms).max(*event_time_ms),
                            None => newest.push((source_id.clone(), *event_time_ms)),
                        }
                    }
                    if let Origin::Record { receipt, .. } = &mut message.origin {
                        receipts.extend(receipt.take());
                    }
                    *delivered.entry(message.topic.clone()).or_default() += 1;
                    continue;
                }
                Err(e) => e,
            };
            let attempt = Attempt {
                failed: attempt.failed + 1,
                first: attempt.first,
            };
            let elapsed = now.saturating_duration_since(attempt.first);
            let Origin::Record {
                id,
                source_id,
                source_type,
                copy,
                receipt,
                ..
            } = &mut message.origin
            else {
                self.stats.add_failed(&message.topic, 1);
                refused_dead.push((message, e.message));
                continue;
            };
            let retriable = e.class == ErrorClass::Retriable;
            if retriable
                && !deadline.is_cancelled()
                && !self.retry.gives_up(attempt.failed, elapsed)
            {
                retried
                    .entry((message.topic.clone(), e.kind))
                    .or_insert_with(|| (0, e.message.clone()))
                    .0 += 1;
                retry.push(message);
                retry_attempts.push(attempt);
                continue;
            }
            failed_receipts.extend(receipt.take());
            self.stats.add_failed(&message.topic, 1);
            if !*copy {
                self.dedupe.for_type(*source_type).forget(id);
            }
            let (stage, reason) = if e.kind == SHUTDOWN_KIND {
                (Stage::Shutdown, e.message.clone())
            } else if retriable && deadline.is_cancelled() {
                (
                    Stage::Shutdown,
                    format!(
                        "{}; not retried: delivery.shutdown_timeout expired",
                        e.message
                    ),
                )
            } else if retriable {
                (
                    Stage::Deliver,
                    format!(
                        "{}; gave up after {} attempt(s) over {:.1}s (delivery.max_retries {}, delivery.max_elapsed {}s)",
                        e.message,
                        attempt.failed,
                        elapsed.as_secs_f64(),
                        self.retry.max_retries,
                        self.retry.max_elapsed.as_secs()
                    ),
                )
            } else {
                (Stage::Deliver, e.message.clone())
            };
            failures
                .entry((message.topic.clone(), e.kind))
                .or_insert_with(|| (0, e.message.clone()))
                .0 += 1;
            self.stats.add_dead_letter(stage);
            failed_records.push(DeadLetter::envelope(
                stage,
                e.kind,
                reason,
                attempt.failed,
                source_id.clone(),
                message.topic.to_string(),
                message.key.clone(),
                &message.payload,
            ));
        }
        for (topic, n) in delivered {
            self.stats.add_delivered(&topic, n);
        }
        for (stream, ms) in newest {
            self.stats.stream(&stream).newest_event.observe(ms);
        }
        for ((topic, kind), (records, reason)) in failures {
            warn!(%topic, error_kind = kind, records, error = %reason, "delivery failed; the records go to the DLQ");
        }
        self.to_fallback(refused_dead).await;
        self.write_dead_letters(failed_records).await;
        if self.stats.dlq_write_failures.load(Ordering::Relaxed) > lost_before {
            failed_receipts.iter().for_each(Receipt::abandon);
        }
        drop(failed_receipts);
        drop(receipts);
        self.backoff(retry, retry_attempts, retried, now)
    }

    /// The retry of a batch's retriable failures: one backoff for all of them (from the
    /// most-tried record's count), counted per topic and logged in one line.
    fn backoff(
        &self,
        messages: Vec<Message>,
        attempts: Vec<Attempt>,
        retried: BTreeMap<(Arc<str>, &'static str), (u64, String)>,
        now: Instant,
    ) -> Option<Waiting> {
        let failed = attempts.iter().map(|a| a.failed).max()?;
        let oldest = attempts.iter().map(|a| a.first).min()?;
        let wait = self.retry.wait(
            failed,
            now.saturating_duration_since(oldest),
            rand::random_range(0.0..=1.0),
        );
        let mut topics: BTreeMap<&str, u64> = BTreeMap::new();
        for ((topic, _), (n, _)) in &retried {
            *topics.entry(topic).or_default() += n;
        }
        for (topic, n) in &topics {
            self.stats.add_retries(topic, *n);
        }
        let (kind, reason) = retried
            .iter()
            .max_by_key(|(_, (n, _))| *n)
            .map(|((_, kind), (_, reason))| (*kind, reason.as_str()))
            .unwrap_or_default();
        warn!(
            records = messages.len(),
            topics = ?topics,
            retry = failed,
            wait_ms = wait.as_millis() as u64,
            error_kind = kind,
            error = %reason,
            "delivery failed with a retriable error; the batch is sent again after a backoff"
        );
        Some(Waiting {
            due: now + wait,
            messages,
            attempts,
        })
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
        let stage = match &message.origin {
            Origin::DeadLetter { stage, receipt } => {
                // A dropped record whose dead letter is lost stays unacknowledged upstream.
                receipt.iter().for_each(Receipt::abandon);
                *stage
            }
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use async_trait::async_trait;
    use futures::FutureExt;
    use tokio::sync::oneshot;

    use super::*;
    use crate::config::Config;
    use crate::record::{Data, Kind, Priority, Quality, Record, RecordId, SensorReading};
    use crate::sinks::{Delivered, Pending, Readiness, SinkError};
    use crate::sources::SourceType;

    /// What the test makes of a gated batch.
    #[derive(Debug, Clone, Copy)]
    enum Verdict {
        Deliver,
        Fatal,
        Retriable,
    }

    /// Holds each record batch until the test releases it with the outcome it chooses;
    /// stores dead letters at once and counts them.
    #[derive(Default)]
    struct GatedSink {
        gates: Mutex<Vec<oneshot::Sender<Verdict>>>,
        dead_letters: AtomicUsize,
        /// The dead letters stored, parsed.
        stored_dead: Mutex<Vec<serde_json::Value>>,
        /// Refuse dead letters too (a DLQ that cannot be written).
        refuse_dead: bool,
    }

    #[async_trait]
    impl Sink for GatedSink {
        fn name(&self) -> &'static str {
            "gated"
        }

        async fn submit(&self, batch: Vec<Message>) -> Pending {
            if batch
                .iter()
                .all(|m| matches!(m.origin, Origin::DeadLetter { .. }))
            {
                if self.refuse_dead {
                    let refused = batch
                        .into_iter()
                        .map(|m| (m, Err(SinkError::fatal("disk_full", "refused by the test"))))
                        .collect();
                    return futures::future::ready(refused).boxed();
                }
                self.dead_letters.fetch_add(batch.len(), Ordering::SeqCst);
                self.stored_dead.lock().unwrap().extend(
                    batch
                        .iter()
                        .map(|m| serde_json::from_slice(&m.payload).unwrap()),
                );
                let ok = batch
                    .into_iter()
                    .map(|m| {
                        (
                            m,
                            Ok(Delivered {
                                partition: 0,
                                offset: Some(0),
                            }),
                        )
                    })
                    .collect();
                return futures::future::ready(ok).boxed();
            }
            let (tx, rx) = oneshot::channel();
            self.gates.lock().unwrap().push(tx);
            async move {
                let verdict = rx.await.unwrap_or(Verdict::Fatal);
                batch
                    .into_iter()
                    .map(|m| {
                        let result = match verdict {
                            Verdict::Deliver => Ok(Delivered {
                                partition: 0,
                                offset: Some(0),
                            }),
                            Verdict::Fatal => {
                                Err(SinkError::fatal("message_too_large", "refused by the test"))
                            }
                            Verdict::Retriable => {
                                Err(SinkError::retriable("timeout", "timed out in the test"))
                            }
                        };
                        (m, result)
                    })
                    .collect()
            }
            .boxed()
        }

        fn readiness(&self) -> Readiness {
            Readiness {
                ready: true,
                detail: "test".into(),
            }
        }

        async fn close(&self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn reading(n: u32, priority: Priority) -> Record {
        Record {
            schema: (),
            id: RecordId::from_natural_key(SourceType::Mqtt, &[&n.to_string()]),
            source_id: Arc::from("iot"),
            source_type: SourceType::Mqtt,
            kind: Kind::SensorReading,
            event_time: chrono::Utc::now(),
            ingested_at: chrono::Utc::now(),
            location: None,
            priority,
            quality: Quality::from_flags(vec![]),
            data: Data::SensorReading(SensorReading {
                device_id: "d".into(),
                topic: "t".into(),
                retained: false,
                measurements: [("v".to_owned(), f64::from(n))].into(),
            }),
        }
    }

    /// What the world looked like when a receipt fired: (delivered to the record topic,
    /// dead letters stored).
    type Seen = Arc<Mutex<Option<(u64, usize)>>>;

    struct Harness {
        queue: Arc<Queue>,
        sink: Arc<GatedSink>,
        stats: Arc<Stats>,
        task: tokio::task::JoinHandle<()>,
    }

    fn harness() -> Harness {
        harness_with(GatedSink::default())
    }

    fn harness_with(sink: GatedSink) -> Harness {
        harness_config(sink, "")
    }

    fn harness_config(sink: GatedSink, yaml: &str) -> Harness {
        let config = Config::parse(yaml, Path::new("t.yaml")).unwrap();
        let queue = Arc::new(Queue::new(100, 10));
        let sink = Arc::new(sink);
        let stats = Arc::new(Stats::default());
        let delivery = Delivery {
            queue: queue.clone(),
            router: Arc::new(Router::new(&config)),
            sink: sink.clone(),
            dlq_fallback: None,
            stats: stats.clone(),
            dedupe: Arc::new(DedupeRegistry::new(Duration::from_secs(60))),
            ledger: Arc::default(),
            throttle: None,
            retry: RetryPolicy::new(&config.delivery),
        };
        let task = tokio::spawn(delivery.run(CancellationToken::new()));
        Harness {
            queue,
            sink,
            stats,
            task,
        }
    }

    impl Harness {
        /// A receipt that notes what had happened by the time it fired.
        fn receipt(&self) -> (Receipt, Seen) {
            let seen: Seen = Arc::default();
            let (stats, sink, note) = (self.stats.clone(), self.sink.clone(), seen.clone());
            let receipt = Receipt::new(move || {
                let delivered = stats
                    .topics()
                    .get("wildfire-iot-sensors")
                    .map_or(0, |t| t.delivered);
                let dead = sink.dead_letters.load(Ordering::SeqCst);
                *note.lock().unwrap() = Some((delivered, dead));
            });
            (receipt, seen)
        }

        /// Waits for the sink to hold a gated batch, then opens the last one it received.
        async fn release(&self, deliver: bool) {
            let verdict = if deliver {
                Verdict::Deliver
            } else {
                Verdict::Fatal
            };
            self.release_with(verdict).await;
        }

        async fn release_with(&self, verdict: Verdict) {
            for _ in 0..200 {
                if let Some(gate) = self.sink.gates.lock().unwrap().pop() {
                    gate.send(verdict).unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the sink never received the batch");
        }
    }

    async fn fired(seen: &Seen) -> (u64, usize) {
        for _ in 0..200 {
            if let Some(v) = *seen.lock().unwrap() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the receipt never fired");
    }

    #[tokio::test]
    async fn receipt_fires_after_the_delivered_batch_is_accounted() {
        let h = harness();
        let (receipt, seen) = h.receipt();
        h.queue
            .push_with_receipt(reading(1, Priority::Normal), receipt)
            .await
            .unwrap();
        // In the sink, not yet acknowledged: the receipt waits.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*seen.lock().unwrap(), None);
        h.release(true).await;
        assert_eq!(fired(&seen).await, (1, 0));
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn receipt_fires_after_the_failed_record_is_dead_lettered() {
        let h = harness();
        let (receipt, seen) = h.receipt();
        h.queue
            .push_with_receipt(reading(2, Priority::Normal), receipt)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*seen.lock().unwrap(), None);
        h.release(false).await;
        // Not delivered, but its dead letter was stored before the receipt fired.
        assert_eq!(fired(&seen).await, (0, 1));
        assert_eq!(h.stats.dead_letters()[&Stage::Deliver], 1);
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_critical_record_and_its_copy_share_one_receipt() {
        let h = harness();
        let (receipt, seen) = h.receipt();
        h.queue
            .push_with_receipt(reading(3, Priority::Critical), receipt)
            .await
            .unwrap();
        h.release(true).await;
        // Both messages (topic and critical copy) were accounted before it fired.
        assert_eq!(fired(&seen).await, (1, 0));
        assert_eq!(h.stats.topics()["wildfire-critical-alerts"].delivered, 1);
        h.queue.close();
        h.task.await.unwrap();
    }

    /// Waits until `n` records have been accounted for (delivered or failed) on `topic`.
    async fn accounted(h: &Harness, topic: &str, n: u64) {
        for _ in 0..200 {
            let done = h
                .stats
                .topics()
                .get(topic)
                .map_or(0, |t| t.delivered + t.failed);
            if done >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} record(s) of {topic} were never accounted for");
    }

    #[tokio::test]
    async fn an_acknowledged_record_moves_the_latency_and_the_freshness_of_its_stream() {
        let h = harness();
        let now = chrono::Utc::now();
        let at = |hours_ago: i64| now - chrono::Duration::hours(hours_ago);
        for (n, hours_ago) in [(1, 3), (2, 1), (3, 2)] {
            let mut record = reading(n, Priority::Normal);
            record.event_time = at(hours_ago);
            h.queue.push(record).await.unwrap();
        }
        h.release(true).await;
        accounted(&h, "wildfire-iot-sensors", 3).await;
        let stream = h.stats.stream("iot");
        // The newest event time of the batch, not the last one delivered.
        assert_eq!(stream.newest_event.get(), Some(at(1).timestamp_millis()));
        let normal = &h.stats.delivery_latency[Priority::Normal.lane()];
        assert_eq!(normal.count(), 3);
        assert!(normal.sum_seconds() > 0.0);

        // A critical record counts once, though its copy in the critical topic is delivered too.
        let mut critical = reading(4, Priority::Critical);
        critical.event_time = at(5);
        h.queue.push(critical).await.unwrap();
        h.release(true).await;
        accounted(&h, "wildfire-critical-alerts", 1).await;
        accounted(&h, "wildfire-iot-sensors", 4).await;
        assert_eq!(
            h.stats.delivery_latency[Priority::Critical.lane()].count(),
            1
        );
        // An older event leaves the freshness as it was.
        assert_eq!(stream.newest_event.get(), Some(at(1).timestamp_millis()));

        // A record that failed for good was not delivered: neither latency nor freshness move.
        let mut failed = reading(5, Priority::Normal);
        failed.event_time = now;
        h.queue.push(failed).await.unwrap();
        h.release(false).await;
        accounted(&h, "wildfire-iot-sensors", 5).await;
        assert_eq!(h.stats.topics()["wildfire-iot-sensors"].failed, 1);
        assert_eq!(normal.count(), 3);
        assert_eq!(stream.newest_event.get(), Some(at(1).timestamp_millis()));
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_record_whose_dead_letter_is_lost_is_not_acknowledged() {
        let h = harness_with(GatedSink {
            refuse_dead: true,
            ..GatedSink::default()
        });
        let (receipt, seen) = h.receipt();
        let pending = receipt.downgrade();
        h.queue
            .push_with_receipt(reading(4, Priority::Normal), receipt)
            .await
            .unwrap();
        h.release(false).await;
        for _ in 0..200 {
            if pending.is_resolved() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Settled, but abandoned: no acknowledgement, so the broker sends it again.
        assert!(pending.is_resolved());
        assert_eq!(*seen.lock().unwrap(), None);
        assert_eq!(h.stats.dlq_write_failures.load(Ordering::Relaxed), 1);
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_record_the_queue_drops_is_acknowledged_only_once_its_dead_letter_is_stored() {
        for store in [true, false] {
            let config = Config::parse("", Path::new("t.yaml")).unwrap();
            let queue = Arc::new(Queue::new(1, 10));
            queue.set_overflow("iot", crate::config::Overflow::DropNewest);
            let sink = Arc::new(GatedSink {
                refuse_dead: !store,
                ..GatedSink::default()
            });
            let stats = Arc::new(Stats::default());
            let delivery = Delivery {
                queue: queue.clone(),
                router: Arc::new(Router::new(&config)),
                sink: sink.clone(),
                dlq_fallback: None,
                stats: stats.clone(),
                dedupe: Arc::new(DedupeRegistry::new(Duration::from_secs(60))),
                ledger: Arc::default(),
                throttle: None,
                retry: RetryPolicy::new(&config.delivery),
            };
            let task = tokio::spawn(delivery.run(CancellationToken::new()));
            let h = Harness {
                queue: queue.clone(),
                sink: sink.clone(),
                stats: stats.clone(),
                task,
            };
            // Fill every in-flight slot with a held batch, then the one queue slot.
            for n in 0..MAX_IN_FLIGHT as u32 {
                h.queue.push(reading(n, Priority::Normal)).await.unwrap();
                for _ in 0..200 {
                    if h.sink.gates.lock().unwrap().len() > n as usize {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            h.queue.push(reading(90, Priority::Normal)).await.unwrap();
            let (receipt, fired) = crate::receipt::tests::counted();
            let pending = receipt.downgrade();
            h.queue
                .push_with_receipt(reading(91, Priority::Normal), receipt)
                .await
                .unwrap();
            assert_eq!(h.queue.depth().dead_letters, 1);
            assert_eq!(h.stats.dead_letters()[&Stage::Queue], 1);
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(
                fired.load(Ordering::SeqCst),
                0,
                "its dead letter is not stored yet"
            );
            // Release the held batches, then the one carrying the dead letter.
            for _ in 0..=MAX_IN_FLIGHT {
                h.release(store).await;
            }
            for _ in 0..200 {
                if pending.is_resolved() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(pending.is_resolved());
            // Stored: acknowledged. Lost (no sink stores it): never acknowledged.
            assert_eq!(fired.load(Ordering::SeqCst), usize::from(store));
            h.queue.close();
            while !h.task.is_finished() {
                if let Some(gate) = h.sink.gates.lock().unwrap().pop() {
                    let _ = gate.send(if store {
                        Verdict::Deliver
                    } else {
                        Verdict::Fatal
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Waits until the sink holds `n` gated batches.
    async fn gated(h: &Harness, n: usize) {
        for _ in 0..300 {
            if h.sink.gates.lock().unwrap().len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the sink never held {n} gated batch(es)");
    }

    const FAST_RETRIES: &str =
        "delivery: {max_retries: 2, retry_backoff: 1ms, retry_backoff_max: 1ms}";

    #[tokio::test]
    async fn a_retriable_failure_is_sent_again_and_the_receipt_waits_for_it() {
        let h = harness_config(GatedSink::default(), FAST_RETRIES);
        let (receipt, seen) = h.receipt();
        h.queue
            .push_with_receipt(reading(5, Priority::Normal), receipt)
            .await
            .unwrap();
        h.release_with(Verdict::Retriable).await;
        // The retry reaches the sink; the receipt still waits for its outcome.
        gated(&h, 1).await;
        assert_eq!(*seen.lock().unwrap(), None);
        h.release(true).await;
        assert_eq!(fired(&seen).await, (1, 0));
        let counts = h.stats.topics()["wildfire-iot-sensors"];
        assert_eq!((counts.delivered, counts.failed, counts.retries), (1, 0, 1));
        assert!(h.stats.dead_letters().is_empty());
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn retries_exhausted_go_to_the_dlq_with_the_attempts_and_last_error() {
        let h = harness_config(GatedSink::default(), FAST_RETRIES);
        let (receipt, seen) = h.receipt();
        h.queue
            .push_with_receipt(reading(6, Priority::Normal), receipt)
            .await
            .unwrap();
        // The first attempt and max_retries (2) retries.
        for _ in 0..3 {
            h.release_with(Verdict::Retriable).await;
        }
        assert_eq!(fired(&seen).await, (0, 1));
        let dead = h.sink.stored_dead.lock().unwrap().clone();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0]["stage"], "deliver");
        assert_eq!(dead[0]["error_kind"], "timeout");
        assert_eq!(dead[0]["attempts"], 3);
        let reason = dead[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("timed out in the test; gave up after 3 attempt(s)"),
            "{reason}"
        );
        let counts = h.stats.topics()["wildfire-iot-sensors"];
        assert_eq!((counts.delivered, counts.failed, counts.retries), (0, 1, 2));
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_fatal_failure_goes_to_the_dlq_at_once_with_one_attempt() {
        let h = harness_config(GatedSink::default(), FAST_RETRIES);
        h.queue.push(reading(7, Priority::Normal)).await.unwrap();
        h.release_with(Verdict::Fatal).await;
        for _ in 0..200 {
            if !h.sink.stored_dead.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let dead = h.sink.stored_dead.lock().unwrap().clone();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0]["error_kind"], "message_too_large");
        assert_eq!(dead[0]["attempts"], 1);
        assert_eq!(dead[0]["reason"], "refused by the test");
        assert_eq!(h.stats.topics()["wildfire-iot-sensors"].retries, 0);
        h.queue.close();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_retrying_batch_holds_back_neither_other_bulk_batches_nor_critical_records() {
        let h = harness_config(GatedSink::default(), FAST_RETRIES);
        h.queue.push(reading(8, Priority::Normal)).await.unwrap();
        h.release_with(Verdict::Retriable).await;
        // Its retry sits in the sink, unanswered.
        gated(&h, 1).await;
        h.queue.push(reading(9, Priority::Normal)).await.unwrap();
        gated(&h, 2).await;
        h.release(true).await;
        h.queue.push(reading(10, Priority::Critical)).await.unwrap();
        gated(&h, 2).await;
        h.release(true).await;
        for _ in 0..200 {
            if h.stats.topics()["wildfire-iot-sensors"].delivered == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let topics = h.stats.topics();
        assert_eq!(topics["wildfire-iot-sensors"].delivered, 2);
        assert_eq!(topics["wildfire-critical-alerts"].delivered, 1);
        // The retried record goes through last.
        h.release(true).await;
        h.queue.close();
        h.task.await.unwrap();
        let counts = h.stats.topics()["wildfire-iot-sensors"];
        assert_eq!((counts.delivered, counts.retries), (3, 1));
    }

    fn message(topic: &str, key: &str, n: u32) -> Message {
        let config = Config::parse("", Path::new("t.yaml")).unwrap();
        let mut m = Router::new(&config)
            .route_with_receipt(&reading(n, Priority::Normal), None, None)
            .remove(0);
        m.topic = Arc::from(topic);
        m.key = key.to_owned();
        m
    }

    #[test]
    fn a_record_whose_key_waits_for_a_retry_joins_it() {
        let now = Instant::now();
        let mut backoffs = Backoffs::default();
        backoffs.add(Waiting {
            due: now,
            messages: vec![message("a", "k1", 1)],
            attempts: vec![Attempt {
                failed: 1,
                first: now,
            }],
        });
        let fresh = vec![
            message("a", "k1", 2),
            message("a", "k2", 3),
            message("b", "k1", 4),
        ];
        let free = backoffs.hold_back(fresh, now);
        let keys: Vec<_> = free.iter().map(|m| (&*m.topic, m.key.as_str())).collect();
        assert_eq!(keys, [("a", "k2"), ("b", "k1")]);
        let retry = backoffs.take_due().unwrap();
        let failed: Vec<u32> = retry.attempts.iter().map(|a| a.failed).collect();
        assert_eq!(failed, [1, 0]);
        assert_eq!(retry.messages.len(), 2);
        // Released: the key flows freely again.
        assert_eq!(
            backoffs.hold_back(vec![message("a", "k1", 5)], now).len(),
            1
        );
        assert!(backoffs.take_due().is_none());
    }
}
