//! The `continuous_streaming` buffer (DESIGN §1, row 2): records of a pushed or fast-polled
//! source are held briefly and handed to the queue in bursts — when `buffer_size` records
//! wait, or `buffer_flush_interval` after the first of them arrived, whichever comes first.
//!
//! Critical records are never held: they go to the queue at once. A record's receipt (the
//! MQTT ack) travels with it, so a buffered message is acknowledged only once delivered or
//! dead-lettered. At stop everything buffered is flushed into the queue before the stream
//! ends, and afterwards records go straight to the queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::SourceConfig;
use crate::dedupe::Dedupe;
use crate::queue::{Closed, Queue};
use crate::receipt::Receipt;
use crate::record::{Priority, Record};

/// Flush thresholds of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSettings {
    /// Flush once this many records wait (`buffer_size`, default 500).
    pub size: usize,
    /// Flush this long after the first waiting record arrived (`buffer_flush_interval`,
    /// default 1s).
    pub flush_interval: Duration,
}

impl Default for BufferSettings {
    fn default() -> Self {
        BufferSettings {
            size: 500,
            flush_interval: Duration::from_secs(1),
        }
    }
}

impl BufferSettings {
    pub fn of(source: &SourceConfig) -> Self {
        let default = BufferSettings::default();
        BufferSettings {
            size: source.buffer_size.unwrap_or(default.size).max(1),
            flush_interval: source
                .buffer_flush_interval
                .map_or(default.flush_interval, |d| d.0),
        }
    }
}

type Held = (Record, Option<Receipt>);

/// Records on their way from one stream to the queue.
pub struct Buffer {
    settings: BufferSettings,
    queue: Arc<Queue>,
    /// A record the queue will never take is forgotten, so a later fetch sends it again.
    dedupe: Arc<Dedupe>,
    state: Mutex<State>,
    /// Flushes run one at a time, so records reach the queue in the order they came.
    flushing: tokio::sync::Mutex<()>,
    /// Wakes the timer when the first record of a burst arrives.
    arrived: Notify,
}

#[derive(Default)]
struct State {
    held: Vec<Held>,
    /// When the oldest held record arrived.
    first_at: Option<Instant>,
    /// Stopped: records go straight to the queue.
    closed: bool,
}

impl Buffer {
    pub fn new(settings: BufferSettings, queue: Arc<Queue>, dedupe: Arc<Dedupe>) -> Self {
        Buffer {
            settings,
            queue,
            dedupe,
            state: Mutex::new(State::default()),
            flushing: tokio::sync::Mutex::new(()),
            arrived: Notify::new(),
        }
    }

    /// Like [`Queue::push`], through the buffer.
    pub async fn push(&self, record: Record) -> Result<(), Closed<Record>> {
        self.hold(record, None)
            .await
            .map_err(|Closed((record, _))| Closed(record))
    }

    /// Like [`Queue::push_with_receipt`], through the buffer.
    pub async fn push_with_receipt(
        &self,
        record: Record,
        receipt: Receipt,
    ) -> Result<(), Closed<(Record, Receipt)>> {
        self.hold(record, Some(receipt))
            .await
            .map_err(|Closed((record, receipt))| {
                Closed((record, receipt.expect("the receipt given back"))) // given in, so given back
            })
    }

    async fn hold(
        &self,
        record: Record,
        receipt: Option<Receipt>,
    ) -> Result<(), Closed<(Record, Option<Receipt>)>> {
        let critical = record.priority == Priority::Critical;
        let mut item = Some((record, receipt));
        let held = {
            let mut state = self.state.lock().expect("buffer lock");
            if critical || state.closed {
                None
            } else {
                if state.held.is_empty() {
                    state.first_at = Some(Instant::now());
                    self.arrived.notify_one();
                }
                state.held.extend(item.take());
                Some(state.held.len())
            }
        };
        let Some(held) = held else {
            let (record, receipt) = item.expect("not held");
            return enqueue(&self.queue, record, receipt).await;
        };
        let full = held >= self.settings.size;
        if full {
            // The pusher waits for its own flush: backpressure from a full queue reaches the
            // source instead of growing the buffer.
            self.flush().await;
        }
        Ok(())
    }

    /// Hands every held record to the queue, in arrival order, waiting for room.
    pub async fn flush(&self) {
        let _turn = self.flushing.lock().await;
        let held = {
            let mut state = self.state.lock().expect("buffer lock");
            state.first_at = None;
            std::mem::take(&mut state.held)
        };
        let mut lost = 0usize;
        for (record, receipt) in held {
            if let Err(Closed((record, receipt))) = enqueue(&self.queue, record, receipt).await {
                // Delivery is gone: not acknowledged upstream, and sent again when fetched again.
                if let Some(receipt) = receipt {
                    receipt.abandon();
                }
                self.dedupe.forget(&record.id);
                lost += 1;
            }
        }
        if lost > 0 {
            error!(
                records = lost,
                "queue closed while records were buffered; they were not sent (fetched or redelivered again later)"
            );
        }
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.state.lock().expect("buffer lock").held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops holding records: flushes what is held; later records go straight to the queue.
    pub async fn close(&self) {
        self.state.lock().expect("buffer lock").closed = true;
        self.flush().await;
    }

    /// Flushes `buffer_flush_interval` after the first record of each burst until
    /// `cancel`, then closes the buffer (flushing what is left).
    pub async fn run_timer(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let due = {
                let state = self.state.lock().expect("buffer lock");
                state.first_at.map(|at| at + self.settings.flush_interval)
            };
            // Registered before the wait, so an arrival in between is not missed.
            let arrived = self.arrived.notified();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sleep_until(due) => self.flush().await,
                _ = arrived => {}
            }
        }
        self.close().await;
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn enqueue(
    queue: &Queue,
    record: Record,
    receipt: Option<Receipt>,
) -> Result<(), Closed<(Record, Option<Receipt>)>> {
    match receipt {
        Some(receipt) => queue
            .push_with_receipt(record, receipt)
            .await
            .map_err(|Closed((record, receipt))| Closed((record, Some(receipt)))),
        None => queue
            .push(record)
            .await
            .map_err(|Closed(record)| Closed((record, None))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::queue::Lanes;
    use crate::queue::tests::{alert_id, record};

    fn buffer(size: usize, flush_ms: u64) -> (Arc<Buffer>, Arc<Queue>) {
        let queue = Arc::new(Queue::new(100, 10));
        let dedupe = Arc::new(Dedupe::new(Duration::from_secs(60)));
        let settings = BufferSettings {
            size,
            flush_interval: Duration::from_millis(flush_ms),
        };
        (
            Arc::new(Buffer::new(settings, queue.clone(), dedupe)),
            queue,
        )
    }

    fn queued(queue: &Queue) -> usize {
        queue.depth().by_priority.iter().sum()
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_when_buffer_size_records_wait() {
        let (buffer, queue) = buffer(3, 60_000);
        buffer.push(record(1, Priority::Normal)).await.unwrap();
        buffer.push(record(2, Priority::Low)).await.unwrap();
        assert_eq!((buffer.len(), queued(&queue)), (2, 0));
        buffer.push(record(3, Priority::Normal)).await.unwrap();
        assert_eq!((buffer.len(), queued(&queue)), (0, 3));
        let batch = queue.pop(Lanes::Bulk, 10).await.unwrap();
        let ids: Vec<_> = batch.records.iter().map(alert_id).collect();
        assert_eq!(ids, ["1", "3", "2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_the_interval_after_the_first_record() {
        let (buffer, queue) = buffer(500, 1_000);
        let cancel = CancellationToken::new();
        let timer = tokio::spawn(buffer.clone().run_timer(cancel.clone()));
        buffer.push(record(1, Priority::Normal)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        // A later record does not push the deadline back.
        buffer.push(record(2, Priority::Normal)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(399)).await;
        assert_eq!((buffer.len(), queued(&queue)), (2, 0));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!((buffer.len(), queued(&queue)), (0, 2));
        // The next burst gets its own interval, counted from its first record.
        tokio::time::sleep(Duration::from_secs(5)).await;
        buffer.push(record(3, Priority::Normal)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert_eq!(buffer.len(), 1);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!((buffer.len(), queued(&queue)), (0, 3));
        cancel.cancel();
        timer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn critical_records_are_never_held() {
        let (buffer, queue) = buffer(500, 60_000);
        buffer.push(record(1, Priority::Normal)).await.unwrap();
        buffer.push(record(2, Priority::Critical)).await.unwrap();
        assert_eq!(buffer.len(), 1);
        assert_eq!(queue.depth().by_priority, [1, 0, 0, 0]);
        let critical = queue.pop(Lanes::Critical, 10).await.unwrap();
        assert_eq!(alert_id(&critical.records[0]), "2");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_flushes_and_later_records_pass_straight_through() {
        let (buffer, queue) = buffer(500, 60_000);
        let cancel = CancellationToken::new();
        let timer = tokio::spawn(buffer.clone().run_timer(cancel.clone()));
        let (receipt, fired) = crate::receipt::tests::counted();
        buffer
            .push_with_receipt(record(1, Priority::Normal), receipt)
            .await
            .unwrap();
        buffer.push(record(2, Priority::High)).await.unwrap();
        cancel.cancel();
        timer.await.unwrap();
        assert_eq!((buffer.len(), queued(&queue)), (0, 2));
        buffer.push(record(3, Priority::Low)).await.unwrap();
        assert_eq!((buffer.len(), queued(&queue)), (0, 3));
        // The receipt travelled with its record: it fires only once delivery drops it.
        let batch = queue.pop(Lanes::Bulk, 10).await.unwrap();
        let ids: Vec<_> = batch.records.iter().map(alert_id).collect();
        assert_eq!(ids, ["2", "1", "3"]);
        assert!(batch.receipts[1].is_some());
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        drop(batch);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn records_buffered_when_the_queue_closes_are_forgotten_and_not_acked() {
        let queue = Arc::new(Queue::new(100, 10));
        let dedupe = Arc::new(Dedupe::new(Duration::from_secs(60)));
        let buffer = Buffer::new(BufferSettings::default(), queue.clone(), dedupe.clone());
        let r = record(1, Priority::Normal);
        assert!(dedupe.insert_if_new(r.id, r.ingested_at));
        let (receipt, fired) = crate::receipt::tests::counted();
        let pending = receipt.downgrade();
        buffer.push_with_receipt(r.clone(), receipt).await.unwrap();
        queue.close();
        buffer.close().await;
        assert!(pending.is_resolved());
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        // Forgotten: the same record fetched again is new.
        assert!(dedupe.insert_if_new(r.id, r.ingested_at));
    }
}
