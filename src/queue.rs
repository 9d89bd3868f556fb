//! The bounded priority queue between sources and delivery (DESIGN §2, §5).
//!
//! Sources only enqueue; delivery only dequeues, so a slow sink never stalls a poll's timing
//! and a slow API never stalls delivery. The critical lane has its own consumer, so a
//! critical record never waits behind a bulk batch being written; the bulk consumer drains
//! high > normal > low in strict order. The high, normal and low lanes share `max_records`;
//! critical records also have `critical_reserve` slots of their own, so they never wait for
//! bulk space and never evict anything. When full, a push waits (`overflow: block`): nothing
//! is lost. Dead letters travel in their own lane, drained with the bulk lanes, so they reach
//! the sink's DLQ topic through the same writer.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::dlq::DeadLetter;
use crate::receipt::Receipt;
use crate::record::{Priority, Record};

/// The queue was closed (shutdown); the item is handed back.
#[derive(Debug)]
pub struct Closed<T>(pub T);

/// What one dequeue returns: records in priority order, and pending dead letters.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// The receipt of each record, in the order of `records` (`None` for sources that need
    /// no acknowledgement). Drop one only once its record's outcome is accounted for.
    pub receipts: Vec<Option<Receipt>>,
    pub dead_letters: Vec<DeadLetter>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dead_letters.is_empty()
    }
}

/// Which lanes a consumer drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// The critical lane alone.
    Critical,
    /// High, normal and low, in that order, plus the dead letters.
    Bulk,
}

impl Lanes {
    /// The consumer that takes records of `priority`.
    fn of(priority: Priority) -> Lanes {
        if priority == Priority::Critical {
            Lanes::Critical
        } else {
            Lanes::Bulk
        }
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
    /// Signalled when a critical record arrives or the queue closes.
    ready_critical: Notify,
    /// Signalled when a bulk record or dead letter arrives or the queue closes.
    ready_bulk: Notify,
}

/// A queued record and the receipt its source waits on, if any.
type Queued = (Record, Option<Receipt>);

#[derive(Default)]
struct State {
    lanes: [VecDeque<Queued>; 4],
    dead: VecDeque<DeadLetter>,
    closed: bool,
}

impl State {
    fn bulk_len(&self) -> usize {
        self.lanes[1..].iter().map(VecDeque::len).sum()
    }

    fn has(&self, lanes: Lanes) -> bool {
        match lanes {
            Lanes::Critical => !self.lanes[Priority::Critical.lane()].is_empty(),
            Lanes::Bulk => !self.dead.is_empty() || self.bulk_len() > 0,
        }
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
            ready_critical: Notify::new(),
            ready_bulk: Notify::new(),
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
        let lanes = Lanes::of(record.priority);
        self.put(
            record,
            lanes,
            |queue, state, record| queue.admits(state, record.priority),
            |state, record| state.lanes[record.priority.lane()].push_back((record, None)),
        )
        .await
    }

    /// Enqueues a record whose source acknowledges upstream once `receipt` resolves: delivery
    /// keeps the receipt until the record is delivered or dead-lettered. When the queue is
    /// closed both come back; abandon the receipt then, as the record was not delivered.
    pub async fn push_with_receipt(
        &self,
        record: Record,
        receipt: Receipt,
    ) -> Result<(), Closed<(Record, Receipt)>> {
        let lanes = Lanes::of(record.priority);
        self.put(
            (record, receipt),
            lanes,
            |queue, state, (record, _)| queue.admits(state, record.priority),
            |state, (record, receipt)| {
                state.lanes[record.priority.lane()].push_back((record, Some(receipt)))
            },
        )
        .await
    }

    /// Enqueues a dead letter, waiting while the dead-letter lane is full.
    pub async fn push_dead(&self, dead: DeadLetter) -> Result<(), Closed<DeadLetter>> {
        self.put(
            dead,
            Lanes::Bulk,
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
        lanes: Lanes,
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
                    self.ready(lanes).notify_one();
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    fn ready(&self, lanes: Lanes) -> &Notify {
        match lanes {
            Lanes::Critical => &self.ready_critical,
            Lanes::Bulk => &self.ready_bulk,
        }
    }

    /// Dequeues up to `max` records of `lanes` (most urgent first), plus the waiting dead
    /// letters for the bulk consumer; waits while those lanes are empty. `None` once the
    /// queue is closed and they are empty.
    pub async fn pop(&self, lanes: Lanes, max: usize) -> Option<Batch> {
        loop {
            let notified = self.ready(lanes).notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                if state.has(lanes) {
                    let batch = Self::take(&mut state, Some(lanes), max);
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

    /// Takes up to `max` records of `lanes` (`None`: every lane) in priority order.
    fn take(state: &mut State, lanes: Option<Lanes>, max: usize) -> Batch {
        let range = match lanes {
            Some(Lanes::Critical) => 0..1,
            Some(Lanes::Bulk) => 1..4,
            None => 0..4,
        };
        let dead_letters = match lanes {
            Some(Lanes::Critical) => Vec::new(),
            _ => state.dead.drain(..).collect(),
        };
        let waiting: usize = state.lanes[range.clone()].iter().map(VecDeque::len).sum();
        let mut batch = Batch {
            records: Vec::with_capacity(max.min(waiting)),
            receipts: Vec::with_capacity(max.min(waiting)),
            dead_letters,
        };
        for lane in &mut state.lanes[range] {
            let n = (max - batch.records.len()).min(lane.len());
            for (record, receipt) in lane.drain(..n) {
                batch.records.push(record);
                batch.receipts.push(receipt);
            }
            if batch.records.len() == max {
                break;
            }
        }
        batch
    }

    /// Refuses new items and wakes everyone; queued items can still be dequeued.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        for ready in [&self.ready_critical, &self.ready_bulk] {
            ready.notify_waiters();
            ready.notify_one();
        }
        self.space.notify_waiters();
    }

    /// Everything still queued, for the shutdown report.
    pub fn drain(&self) -> Batch {
        let mut state = self.state.lock().expect("queue lock");
        let batch = Self::take(&mut state, None, usize::MAX);
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
        q.push(record(6, Priority::Critical)).await.unwrap();
        let bulk = q.pop(Lanes::Bulk, 10).await.unwrap();
        let order: Vec<_> = bulk.records.iter().map(alert_id).collect();
        assert_eq!(order, ["5", "2", "4", "1"]);
        let critical = q.pop(Lanes::Critical, 10).await.unwrap();
        let order: Vec<_> = critical.records.iter().map(alert_id).collect();
        assert_eq!(order, ["3", "6"]);
    }

    #[tokio::test]
    async fn dead_letters_go_to_the_bulk_consumer_only() {
        let q = Arc::new(Queue::new(10, 2));
        let dead = DeadLetter::raw(
            crate::dlq::Stage::Validate,
            "invalid_row",
            "x",
            Arc::from("s"),
            String::new(),
        );
        q.push_dead(dead).await.unwrap();
        q.push(record(1, Priority::Critical)).await.unwrap();
        let critical = q.pop(Lanes::Critical, 10).await.unwrap();
        assert_eq!(critical.records.len(), 1);
        assert!(critical.dead_letters.is_empty());
        let bulk = q.pop(Lanes::Bulk, 10).await.unwrap();
        assert!(bulk.records.is_empty());
        assert_eq!(bulk.dead_letters.len(), 1);
    }

    #[tokio::test]
    async fn a_critical_record_wakes_the_critical_consumer_not_the_bulk_one() {
        let q = Arc::new(Queue::new(10, 2));
        let bulk = {
            let q = q.clone();
            tokio::spawn(async move { q.pop(Lanes::Bulk, 10).await.map(|b| b.records.len()) })
        };
        let critical = {
            let q = q.clone();
            tokio::spawn(async move { q.pop(Lanes::Critical, 10).await.map(|b| b.records.len()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(record(1, Priority::Critical)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), critical)
            .await
            .expect("the critical consumer wakes")
            .unwrap();
        assert_eq!(got, Some(1));
        assert!(!bulk.is_finished());
        q.close();
        assert_eq!(bulk.await.unwrap(), None);
    }

    #[tokio::test]
    async fn pop_respects_max() {
        let q = Queue::new(10, 2);
        for n in 0..5 {
            q.push(record(n, Priority::Normal)).await.unwrap();
        }
        assert_eq!(q.pop(Lanes::Bulk, 3).await.unwrap().records.len(), 3);
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
        let first = q.pop(Lanes::Critical, 2).await.unwrap();
        assert_eq!(alert_id(&first.records[0]), "9");
        assert_eq!(first.records.len(), 1);
        let second = q.pop(Lanes::Bulk, 1).await.unwrap();
        assert_eq!(alert_id(&second.records[0]), "1");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let rest = q.pop(Lanes::Bulk, 10).await.unwrap();
        let ids: Vec<_> = first
            .records
            .iter()
            .chain(&second.records)
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
        q.pop(Lanes::Critical, 1).await.unwrap();
        q.pop(Lanes::Critical, 1).await.unwrap();
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
        assert_eq!(q.pop(Lanes::Bulk, 10).await.unwrap().records.len(), 1);
        assert!(q.pop(Lanes::Bulk, 10).await.is_none());
        assert!(q.pop(Lanes::Critical, 10).await.is_none());
    }

    #[tokio::test]
    async fn waiting_consumer_wakes_on_push_and_on_close() {
        let q = Arc::new(Queue::new(10, 1));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { q.pop(Lanes::Bulk, 10).await.map(|b| b.records.len()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(record(1, Priority::Low)).await.unwrap();
        assert_eq!(consumer.await.unwrap(), Some(1));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { q.pop(Lanes::Bulk, 10).await.is_none() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert!(consumer.await.unwrap());
    }

    #[tokio::test]
    async fn receipts_travel_beside_their_records_in_lane_order() {
        let q = Queue::new(10, 2);
        let (r1, fired1) = crate::receipt::tests::counted();
        q.push(record(1, Priority::Low)).await.unwrap();
        q.push_with_receipt(record(2, Priority::High), r1)
            .await
            .unwrap();
        let batch = q.pop(Lanes::Bulk, 10).await.unwrap();
        let order: Vec<_> = batch.records.iter().map(alert_id).collect();
        assert_eq!(order, ["2", "1"]);
        assert!(batch.receipts[0].is_some());
        assert!(batch.receipts[1].is_none());
        assert_eq!(fired1.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(batch);
        assert_eq!(fired1.load(std::sync::atomic::Ordering::SeqCst), 1);

        q.close();
        let (r2, fired2) = crate::receipt::tests::counted();
        let Err(Closed((record, receipt))) =
            q.push_with_receipt(record(3, Priority::Low), r2).await
        else {
            panic!("a closed queue must hand the record back");
        };
        assert_eq!(alert_id(&record), "3");
        receipt.abandon();
        drop(receipt);
        assert_eq!(fired2.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
