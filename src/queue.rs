//! The bounded priority queue between sources and delivery (DESIGN §2, §5).
//!
//! Sources only enqueue; delivery only dequeues, so a slow sink never stalls a poll's timing
//! and a slow API never stalls delivery. Lanes are drained in strict priority order
//! (critical > high > normal > low). The high, normal and low lanes share `max_records`;
//! critical records also have `critical_reserve` slots of their own, so they never wait for
//! bulk space and never evict anything. When full, a push waits (`overflow: block`): nothing
//! is lost. Dead letters travel in their own lane so they reach the sink's DLQ topic through
//! the same single writer.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::dlq::DeadLetter;
use crate::record::{Priority, Record};

/// The queue was closed (shutdown); the item is handed back.
#[derive(Debug)]
pub struct Closed<T>(pub T);

/// What one dequeue returns: records in priority order, and pending dead letters.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub dead_letters: Vec<DeadLetter>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dead_letters.is_empty()
    }
}

/// Records waiting, per priority lane, and dead letters waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub by_priority: [usize; 4],
    pub dead_letters: usize,
}

pub struct Queue {
    max_records: usize,
    critical_reserve: usize,
    dead_capacity: usize,
    state: Mutex<State>,
    /// Signalled when room appears.
    space: Notify,
    /// Signalled when an item arrives or the queue closes.
    ready: Notify,
}

#[derive(Default)]
struct State {
    lanes: [VecDeque<Record>; 4],
    dead: VecDeque<DeadLetter>,
    closed: bool,
}

impl State {
    fn bulk_len(&self) -> usize {
        self.lanes[1..].iter().map(VecDeque::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.dead.is_empty() && self.lanes.iter().all(VecDeque::is_empty)
    }
}

impl Queue {
    pub fn new(max_records: usize, critical_reserve: usize) -> Self {
        Queue {
            max_records,
            critical_reserve,
            dead_capacity: (max_records / 10).max(1_000),
            state: Mutex::new(State::default()),
            space: Notify::new(),
            ready: Notify::new(),
        }
    }

    fn admits(&self, state: &State, priority: Priority) -> bool {
        let critical = state.lanes[Priority::Critical.lane()].len();
        let bulk = state.bulk_len();
        if priority == Priority::Critical {
            // Its reserve, plus any bulk space that is free.
            critical < self.critical_reserve
                || bulk + critical < self.max_records + self.critical_reserve
        } else {
            // Critical records beyond their reserve occupy bulk space.
            bulk + critical.saturating_sub(self.critical_reserve) < self.max_records
        }
    }

    /// Enqueues a record, waiting while its lane is full.
    pub async fn push(&self, record: Record) -> Result<(), Closed<Record>> {
        self.put(
            record,
            |queue, state, record| queue.admits(state, record.priority),
            |state, record| state.lanes[record.priority.lane()].push_back(record),
        )
        .await
    }

    /// Enqueues a dead letter, waiting while the dead-letter lane is full.
    pub async fn push_dead(&self, dead: DeadLetter) -> Result<(), Closed<DeadLetter>> {
        self.put(
            dead,
            |queue, state, _| state.dead.len() < queue.dead_capacity,
            |state, dead| state.dead.push_back(dead),
        )
        .await
    }

    /// Inserts `item` as soon as `fits` says there is room, or hands it back once the
    /// queue is closed.
    async fn put<T>(
        &self,
        item: T,
        fits: impl Fn(&Queue, &State, &T) -> bool,
        insert: impl FnOnce(&mut State, T),
    ) -> Result<(), Closed<T>> {
        loop {
            // Registered before the check, so a wake-up between check and wait is not missed.
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                if state.closed {
                    return Err(Closed(item));
                }
                if fits(self, &state, &item) {
                    insert(&mut state, item);
                    drop(state);
                    self.ready.notify_one();
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Dequeues up to `max` records (most urgent first) plus the waiting dead letters; waits
    /// while empty. `None` once the queue is closed and empty.
    pub async fn pop_batch(&self, max: usize) -> Option<Batch> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                if !state.is_empty() {
                    let batch = Self::take(&mut state, max);
                    drop(state);
                    self.space.notify_waiters();
                    return Some(batch);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn take(state: &mut State, max: usize) -> Batch {
        let mut batch = Batch {
            records: Vec::with_capacity(max.min(state.lanes.iter().map(VecDeque::len).sum())),
            dead_letters: state.dead.drain(..).collect(),
        };
        for lane in &mut state.lanes {
            let n = (max - batch.records.len()).min(lane.len());
            batch.records.extend(lane.drain(..n));
            if batch.records.len() == max {
                break;
            }
        }
        batch
    }

    /// Refuses new items and wakes everyone; queued items can still be dequeued.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.ready.notify_waiters();
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// Everything still queued, for the shutdown report.
    pub fn drain(&self) -> Batch {
        let mut state = self.state.lock().expect("queue lock");
        let batch = Self::take(&mut state, usize::MAX);
        drop(state);
        self.space.notify_waiters();
        batch
    }

    pub fn depth(&self) -> Depth {
        let state = self.state.lock().expect("queue lock");
        let mut depth = Depth {
            dead_letters: state.dead.len(),
            ..Depth::default()
        };
        for (i, lane) in state.lanes.iter().enumerate() {
            depth.by_priority[i] = lane.len();
        }
        depth
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::record::{Data, Kind, Quality, RecordId, WeatherAlert};
    use crate::sources::SourceType;

    fn record(n: u32, priority: Priority) -> Record {
        Record {
            schema: (),
            id: RecordId::from_natural_key(SourceType::NwsAlerts, &[&n.to_string()]),
            source_id: Arc::from("t"),
            source_type: SourceType::NwsAlerts,
            kind: Kind::WeatherAlert,
            event_time: chrono::Utc::now(),
            ingested_at: chrono::Utc::now(),
            location: None,
            priority,
            quality: Quality::from_flags(vec![]),
            data: Data::WeatherAlert(WeatherAlert {
                alert_id: n.to_string(),
                event: None,
                message_type: None,
                severity: None,
                urgency: None,
                certainty: None,
                headline: None,
                area_desc: None,
                ugc_zones: vec![],
                sent: None,
                effective: None,
                onset: None,
                expires: None,
                ends: None,
                sender_name: None,
                references: vec![],
                geometry: None,
            }),
        }
    }

    fn alert_id(r: &Record) -> &str {
        match &r.data {
            Data::WeatherAlert(a) => &a.alert_id,
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn dequeues_in_priority_order_fifo_within_a_lane() {
        let q = Queue::new(10, 2);
        q.push(record(1, Priority::Low)).await.unwrap();
        q.push(record(2, Priority::Normal)).await.unwrap();
        q.push(record(3, Priority::Critical)).await.unwrap();
        q.push(record(4, Priority::Normal)).await.unwrap();
        q.push(record(5, Priority::High)).await.unwrap();
        let batch = q.pop_batch(10).await.unwrap();
        let order: Vec<_> = batch.records.iter().map(alert_id).collect();
        assert_eq!(order, ["3", "5", "2", "4", "1"]);
    }

    #[tokio::test]
    async fn pop_batch_respects_max() {
        let q = Queue::new(10, 2);
        for n in 0..5 {
            q.push(record(n, Priority::Normal)).await.unwrap();
        }
        assert_eq!(q.pop_batch(3).await.unwrap().records.len(), 3);
        assert_eq!(q.depth().by_priority, [0, 0, 2, 0]);
    }

    #[tokio::test]
    async fn full_queue_blocks_bulk_but_not_critical() {
        let q = Arc::new(Queue::new(2, 1));
        q.push(record(1, Priority::Low)).await.unwrap();
        q.push(record(2, Priority::Low)).await.unwrap();
        // Bulk is full: a third low record waits.
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(record(3, Priority::Low)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // A critical record goes straight into its reserve.
        tokio::time::timeout(
            Duration::from_secs(1),
            q.push(record(9, Priority::Critical)),
        )
        .await
        .expect("critical must not wait for bulk space")
        .unwrap();
        assert_eq!(q.depth().by_priority, [1, 0, 0, 2]);
        // Draining makes room and the waiting push completes; nothing was dropped.
        let first = q.pop_batch(2).await.unwrap();
        assert_eq!(alert_id(&first.records[0]), "9");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let rest = q.pop_batch(10).await.unwrap();
        let ids: Vec<_> = first
            .records
            .iter()
            .chain(&rest.records)
            .map(alert_id)
            .collect();
        assert_eq!(ids, ["9", "1", "2", "3"]);
    }

    #[tokio::test]
    async fn critical_beyond_reserve_uses_free_bulk_space_then_waits() {
        let q = Arc::new(Queue::new(1, 1));
        q.push(record(1, Priority::Critical)).await.unwrap();
        q.push(record(2, Priority::Critical)).await.unwrap(); // takes the one bulk slot
        let bulk = {
            let q = q.clone();
            tokio::spawn(async move { q.push(record(3, Priority::Normal)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !bulk.is_finished(),
            "bulk must wait while critical holds its space"
        );
        q.pop_batch(1).await.unwrap();
        q.pop_batch(1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), bulk)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn close_ends_the_consumer_after_the_queue_drains() {
        let q = Arc::new(Queue::new(10, 1));
        q.push(record(1, Priority::Normal)).await.unwrap();
        q.close();
        assert!(q.push(record(2, Priority::Normal)).await.is_err());
        assert_eq!(q.pop_batch(10).await.unwrap().records.len(), 1);
        assert!(q.pop_batch(10).await.is_none());
    }

    #[tokio::test]
    async fn waiting_consumer_wakes_on_push_and_on_close() {
        let q = Arc::new(Queue::new(10, 1));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { q.pop_batch(10).await.map(|b| b.records.len()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(record(1, Priority::Low)).await.unwrap();
        assert_eq!(consumer.await.unwrap(), Some(1));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { q.pop_batch(10).await.is_none() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert!(consumer.await.unwrap());
    }
}
