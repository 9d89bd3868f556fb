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

use crate::checkpoint::{OffsetLedger, Ticket};
use crate::dedupe::DedupeRegistry;
use crate::dlq::{DeadLetter, Stage};
use crate::queue::{Batch, Lanes, Queue};
use crate::receipt::Receipt;
use crate::router::Router;
use crate::sinks::{Message, Origin, Outcome, SHUTDOWN_KIND, Sink};
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
    /// sink, and accounts for each as its outcomes arrive (in submission order).
    async fn drain(&self, lanes: Lanes, deadline: &CancellationToken) {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        loop {
            let take = open && in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                Some((ticket, outcomes)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.account(outcomes).await;
                    self.ledger.settled(ticket);
                }
                _ = deadline.cancelled(), if take => open = false,
                batch = self.queue.pop(lanes, self.batch_size(lanes)), if take => match batch {
                    Some(batch) => {
                        let messages = self.route(batch);
                        if let Some(throttle) = self.throttle.as_ref().filter(|_| lanes == Lanes::Bulk) {
                            throttle.admit(&messages, deadline).await;
                        }
                        let ticket: Ticket = self.ledger.submitted();
                        let pending = self.sink.submit(messages).await;
                        in_flight.push_back(async move { (ticket, pending.await) });
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

    fn route(&self, batch: Batch) -> Vec<Message> {
        let mut messages = Vec::with_capacity(batch.records.len() + batch.dead_letters.len());
        let mut receipts = batch.receipts.into_iter();
        for record in &batch.records {
            let receipt = receipts.next().flatten();
            messages.extend(self.router.route_with_receipt(record, receipt));
        }
        for dead in &batch.dead_letters {
            messages.push(self.router.dead_letter(dead));
        }
        messages
    }

    /// Counts what was delivered; turns each failed record into a dead letter and sends
    /// refused dead letters to the fallback. Records' receipts are released only at the end,
    /// once the dead letters of this batch are written.
    async fn account(&self, outcomes: Vec<Outcome>) {
        let mut receipts = Vec::new();
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut failed_records = Vec::new();
        let mut refused_dead = Vec::new();
        // One log line per topic and error kind, not one per record.
        let mut failures: BTreeMap<(Arc<str>, &'static str), (u64, String)> = BTreeMap::new();
        // Receipts of records that failed: if their dead letters cannot be stored either,
        // the source must not acknowledge upstream (the message comes back instead).
        let mut failed_receipts = Vec::new();
        let lost_before = self.stats.dlq_write_failures.load(Ordering::Relaxed);
        for (mut message, result) in outcomes {
            let receipt = match &mut message.origin {
                Origin::Record { receipt, .. } => receipt.take(),
                Origin::DeadLetter { .. } => None,
            };
            let e = match result {
                Ok(stored) => {
                    if let Origin::Record {
                        id,
                        source_id,
                        source_type,
                        copy: false,
                        ..
                    } = &message.origin
                    {
                        self.dedupe.for_type(*source_type).ack(id, source_id);
                        self.ledger.acked(
                            source_id,
                            &message.topic,
                            stored.partition,
                            stored.offset,
                        );
                    }
                    receipts.extend(receipt);
                    *delivered.entry(message.topic.clone()).or_default() += 1;
                    continue;
                }
                Err(e) => {
                    failed_receipts.extend(receipt);
                    e
                }
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
        if self.stats.dlq_write_failures.load(Ordering::Relaxed) > lost_before {
            failed_receipts.iter().for_each(Receipt::abandon);
        }
        drop(failed_receipts);
        drop(receipts);
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

    /// Holds each record batch until the test releases it with the outcome it chooses;
    /// stores dead letters at once and counts them.
    #[derive(Default)]
    struct GatedSink {
        gates: Mutex<Vec<oneshot::Sender<bool>>>,
        dead_letters: AtomicUsize,
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
                let ok = batch
                    .into_iter()
                    .map(|m| {
                        (
                            m,
                            Ok(Delivered {
                                partition: 0,
                                offset: 0,
                            }),
                        )
                    })
                    .collect();
                return futures::future::ready(ok).boxed();
            }
            let (tx, rx) = oneshot::channel();
            self.gates.lock().unwrap().push(tx);
            async move {
                let deliver = rx.await.unwrap_or(false);
                batch
                    .into_iter()
                    .map(|m| {
                        let result = if deliver {
                            Ok(Delivered {
                                partition: 0,
                                offset: 0,
                            })
                        } else {
                            Err(SinkError::fatal("message_too_large", "refused by the test"))
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
        let config = Config::parse("", Path::new("t.yaml")).unwrap();
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

        /// Waits for the sink to hold `n` gated batches, then opens the first.
        async fn release(&self, deliver: bool) {
            for _ in 0..200 {
                if let Some(gate) = self.sink.gates.lock().unwrap().pop() {
                    gate.send(deliver).unwrap();
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
                    let _ = gate.send(store);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
