//! The bounded priority queue between sources and delivery (DESIGN §2, §5).
//!
//! Sources only enqueue; delivery only dequeues, so a slow sink never stalls a poll's timing
//! and a slow API never stalls delivery. The critical lane has its own consumer, so a
//! critical record never waits behind a bulk batch being written.
//!
//! Bounds: the high, normal and low lanes share `max_records` and `max_bytes` (bytes as
//! [`estimated_bytes`] says; a single record larger than `max_bytes` is let in alone).
//! Critical records have `critical_reserve` slots of their own (beyond it they use free bulk
//! slots), so they never wait for bulk space, and they never evict anything whatever the
//! policy.
//!
//! Overflow, per source ([`Queue::set_overflow`]; unregistered sources — files, `ingest` —
//! block): `block` waits for room, nothing is lost; `drop_newest` refuses the new record;
//! `drop_oldest` evicts the oldest records of the lowest non-empty lane at or below the new
//! record's priority until it fits, and when even that cannot make room (the queue holds
//! only higher-priority work) refuses the new record. A dropped record becomes a dead letter
//! (`stage: queue`) carrying its receipt, its id is forgotten by dedupe, and counters move.
//! Drops need the dead-letter lane to have room; while it is full, a push waits as `block`.
//!
//! The bulk consumer drains high > normal > low, except that while a higher lane has
//! records waiting, each lower lane with records waiting gets `ceil(max × starvation_share)`
//! slots of the batch first (its oldest records), so `low` never starves; see
//! [`bulk_split`]. Dead letters travel in their own lane, drained with the bulk lanes, so
//! they reach the sink's DLQ topic through the same writer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use crate::config::{Overflow, QueueConfig};
use crate::dedupe::DedupeRegistry;
use crate::dlq::{DeadLetter, Stage};
use crate::receipt::Receipt;
use crate::record::{Data, Priority, Record};
use crate::router::Router;
use crate::stats::Stats;

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
    /// When each record entered the queue, in the order of `records`: delivery measures
    /// enqueue → acknowledgement from it.
    pub enqueued: Vec<Instant>,
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

/// Records and estimated bytes waiting, per priority lane, and dead letters waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub by_priority: [usize; 4],
    pub bytes_by_priority: [u64; 4],
    pub dead_letters: usize,
}

/// The queue's bounds and share (`queue:` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueSettings {
    pub max_records: usize,
    pub max_bytes: u64,
    pub critical_reserve: usize,
    pub starvation_share: f64,
}

impl QueueSettings {
    pub fn of(config: &QueueConfig) -> Self {
        QueueSettings {
            max_records: config.max_records,
            max_bytes: config.max_bytes.0,
            critical_reserve: config.critical_reserve,
            starvation_share: config.starvation_share,
        }
    }
}

/// A record's size in the queue, estimated from its fields without serialising it: the
/// envelope's fixed keys and numbers (~360 bytes), the kind's fixed `data` keys, plus the
/// length of every variable string, list and map, and for an alert's geometry a walk of its
/// JSON (numbers as 12 bytes). Within about ±30% of the serialised envelope (tested).
pub fn estimated_bytes(record: &Record) -> u64 {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let list = |v: &[String]| v.iter().map(|s| s.len() + 3).sum::<usize>();
    let flags = record.quality.flags.len() * 16;
    let location = if record.location.is_some() { 60 } else { 0 };
    let data = match &record.data {
        Data::FireDetection(d) => 330 + d.satellite.len() + opt(&d.version),
        Data::WeatherObservation(d) => {
            560 + d.station_id.len()
                + opt(&d.text_description)
                + opt(&d.raw_message)
                + d.qc
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 6)
                    .sum::<usize>()
        }
        Data::WeatherAlert(d) => {
            let times = [&d.sent, &d.effective, &d.onset, &d.expires, &d.ends];
            300 + d.alert_id.len()
                + [
                    &d.event,
                    &d.message_type,
                    &d.severity,
                    &d.urgency,
                    &d.certainty,
                    &d.headline,
                    &d.area_desc,
                    &d.sender_name,
                ]
                .into_iter()
                .map(opt)
                .sum::<usize>()
                + times.iter().filter(|t| t.is_some()).count() * 20
                + list(&d.ugc_zones)
                + list(&d.references)
                + d.geometry.as_ref().map_or(0, json_bytes)
        }
        Data::AirQuality(d) => {
            420 + d.sensor_id.len()
                + d.provider.len()
                + d.parameter.len()
                + opt(&d.aqi_category)
                + opt(&d.reporting_area)
                + d.concentrations.keys().map(|k| k.len() + 16).sum::<usize>()
        }
        Data::SensorReading(d) => {
            80 + d.device_id.len()
                + d.topic.len()
                + d.measurements.keys().map(|k| k.len() + 16).sum::<usize>()
        }
        Data::FireIncident(d) => {
            230 + d.incident_id.len()
                + opt(&d.name)
                + opt(&d.county)
                + opt(&d.updated)
                + opt(&d.url)
        }
        Data::Raw(value) => 10 + json_bytes(value),
    };
    (360 + record.source_id.len() + flags + location + data) as u64
}

/// A JSON value's serialised size, roughly: numbers count 12 bytes.
fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_bytes(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + json_bytes(v))
                .sum::<usize>()
        }
    }
}

/// How many records a bulk batch of at most `max` takes from the high, normal and low lanes
/// that have `waiting` records. First, each lower lane (normal, low) with records waiting
/// while a lane above it has some gets `min(ceil(max × share), waiting)` slots, leaving at
/// least one slot for the top lane; then the rest is filled strictly high > normal > low.
/// With `max` 2000 and share 0.1, three deep lanes split 1600 / 200 / 200.
pub fn bulk_split(waiting: [usize; 3], max: usize, share: f64) -> [usize; 3] {
    let quota = if share > 0.0 {
        (max as f64 * share).ceil() as usize
    } else {
        0
    };
    let mut take = [0usize; 3];
    let mut left = max;
    for lane in 1..3 {
        let busy_above = waiting[..lane].iter().any(|&w| w > 0);
        if busy_above {
            let n = quota.min(waiting[lane]).min(left.saturating_sub(1));
            take[lane] = n;
            left -= n;
        }
    }
    for lane in 0..3 {
        let n = (waiting[lane] - take[lane]).min(left);
        take[lane] += n;
        left -= n;
    }
    take
}

/// Turns a record the queue drops into its dead letter: routed as delivery would route it
/// (topic, key), its id forgotten by dedupe so a later fetch sends it again, and counted.
pub struct Dropper {
    router: Arc<Router>,
    dedupe: Arc<DedupeRegistry>,
    stats: Arc<Stats>,
}

impl Dropper {
    pub fn new(router: Arc<Router>, dedupe: Arc<DedupeRegistry>, stats: Arc<Stats>) -> Self {
        Dropper {
            router,
            dedupe,
            stats,
        }
    }

    fn dead_letter(&self, item: Item, reason: String) -> DeadLetter {
        let record = &item.record;
        self.dedupe.for_type(record.source_type).forget(&record.id);
        self.stats.add_dead_letter(Stage::Queue);
        self.stats
            .stream(&record.source_id)
            .dropped
            .fetch_add(1, Ordering::Relaxed);
        let topic = self.router.topic(&record.source_id, record.source_type);
        let mut dead = DeadLetter::envelope(
            Stage::Queue,
            QUEUE_FULL_KIND,
            reason,
            0,
            record.source_id.clone(),
            topic.to_string(),
            self.router.key(record),
            &record.to_json(),
        );
        dead.receipt = item.receipt;
        dead
    }
}

/// The `error_kind` of a record dropped by an overflow policy.
pub const QUEUE_FULL_KIND: &str = "queue_full";

pub struct Queue {
    settings: QueueSettings,
    dead_capacity: usize,
    state: Mutex<State>,
    /// Overflow policy per source id; sources not listed block.
    overflow: Mutex<HashMap<Arc<str>, Overflow>>,
    /// Set when delivery starts; until then every source blocks.
    dropper: OnceLock<Dropper>,
    /// Signalled when room appears.
    space: Notify,
    /// Signalled when a critical record arrives or the queue closes.
    ready_critical: Notify,
    /// Signalled when a bulk record or dead letter arrives or the queue closes.
    ready_bulk: Notify,
}

/// A queued record, the receipt its source waits on, its estimated size, and when it was
/// enqueued (one clock read per record, for the delivery latency).
#[derive(Debug)]
struct Item {
    record: Record,
    receipt: Option<Receipt>,
    bytes: u64,
    enqueued: Instant,
}

#[derive(Default)]
struct State {
    lanes: [VecDeque<Item>; 4],
    bytes: [u64; 4],
    dead: VecDeque<DeadLetter>,
    closed: bool,
}

impl State {
    fn bulk_len(&self) -> usize {
        self.lanes[1..].iter().map(VecDeque::len).sum()
    }

    fn bulk_bytes(&self) -> u64 {
        self.bytes[1..].iter().sum()
    }

    fn has(&self, lanes: Lanes) -> bool {
        match lanes {
            Lanes::Critical => !self.lanes[Priority::Critical.lane()].is_empty(),
            Lanes::Bulk => !self.dead.is_empty() || self.bulk_len() > 0,
        }
    }

    fn push(&mut self, item: Item) {
        let lane = item.record.priority.lane();
        self.bytes[lane] += item.bytes;
        self.lanes[lane].push_back(item);
    }

    fn pop_front(&mut self, lane: usize) -> Option<Item> {
        let item = self.lanes[lane].pop_front()?;
        self.bytes[lane] -= item.bytes;
        Some(item)
    }
}

/// What a full queue does with a new bulk record under a drop policy.
enum Plan {
    /// Evict this many records from the front of each lane (index = lane), then insert.
    Evict([usize; 4]),
    /// Refuse the new record.
    Refuse,
}

impl Queue {
    pub fn new(max_records: usize, critical_reserve: usize) -> Self {
        Self::with_settings(QueueSettings {
            max_records,
            max_bytes: u64::MAX,
            critical_reserve,
            starvation_share: 0.0,
        })
    }

    pub fn with_settings(settings: QueueSettings) -> Self {
        Queue {
            settings,
            dead_capacity: (settings.max_records / 10).max(1_000),
            state: Mutex::new(State::default()),
            overflow: Mutex::new(HashMap::new()),
            dropper: OnceLock::new(),
            space: Notify::new(),
            ready_critical: Notify::new(),
            ready_bulk: Notify::new(),
        }
    }

    /// The overflow policy of `source_id`'s records (sources never set block).
    pub fn set_overflow(&self, source_id: &str, policy: Overflow) {
        self.overflow
            .lock()
            .expect("queue lock")
            .insert(Arc::from(source_id), policy);
    }

    /// How dropped records become dead letters; drop policies apply from now on. Set once.
    pub fn set_dropper(&self, dropper: Dropper) {
        let _ = self.dropper.set(dropper);
    }

    fn policy(&self, source_id: &str) -> Overflow {
        if self.dropper.get().is_none() {
            return Overflow::Block;
        }
        self.overflow
            .lock()
            .expect("queue lock")
            .get(source_id)
            .copied()
            .unwrap_or_default()
    }

    /// Whether `bytes` more of `priority` fit once `freed` records of `freed_bytes` are
    /// evicted from the bulk lanes.
    fn room(
        &self,
        state: &State,
        priority: Priority,
        bytes: u64,
        freed: usize,
        freed_bytes: u64,
    ) -> bool {
        let QueueSettings {
            max_records,
            max_bytes,
            critical_reserve,
            ..
        } = self.settings;
        let critical = state.lanes[Priority::Critical.lane()].len();
        let bulk = state.bulk_len() - freed;
        if priority == Priority::Critical {
            // Its reserve, plus any bulk slot that is free.
            critical < critical_reserve || bulk + critical < max_records + critical_reserve
        } else {
            // Critical records beyond their reserve occupy bulk slots.
            let slots = bulk + critical.saturating_sub(critical_reserve) < max_records;
            let bulk_bytes = state.bulk_bytes() - freed_bytes;
            // A record larger than the whole bound is let in alone rather than never.
            let bytes_ok = bulk == 0 || bulk_bytes.saturating_add(bytes) <= max_bytes;
            slots && bytes_ok
        }
    }

    /// Under `drop_oldest`: the oldest records of the lowest lanes at or below the new
    /// record's priority whose eviction makes it fit, or `Refuse` when none would.
    fn plan(&self, state: &State, item: &Item, policy: Overflow) -> Plan {
        if policy != Overflow::DropOldest {
            return Plan::Refuse;
        }
        let priority = item.record.priority;
        let mut evict = [0usize; 4];
        let (mut freed, mut freed_bytes) = (0, 0);
        for lane in (priority.lane()..4).rev() {
            for queued in &state.lanes[lane] {
                evict[lane] += 1;
                freed += 1;
                freed_bytes += queued.bytes;
                if self.room(state, priority, item.bytes, freed, freed_bytes) {
                    return Plan::Evict(evict);
                }
            }
        }
        Plan::Refuse
    }

    fn dead_room(&self, state: &State, n: usize) -> bool {
        state.dead.is_empty() || state.dead.len() + n <= self.dead_capacity
    }

    /// Enqueues a record, waiting while its lane is full (or dropping, as its source's
    /// overflow policy says).
    pub async fn push(&self, record: Record) -> Result<(), Closed<Record>> {
        self.put_record(record, None)
            .await
            .map_err(|Closed((record, _))| Closed(record))
    }

    /// Enqueues a record whose source acknowledges upstream once `receipt` resolves: delivery
    /// keeps the receipt until the record is delivered or dead-lettered (a dropped record's
    /// receipt travels in its dead letter). When the queue is closed both come back;
    /// abandon the receipt then, as the record was not delivered.
    pub async fn push_with_receipt(
        &self,
        record: Record,
        receipt: Receipt,
    ) -> Result<(), Closed<(Record, Receipt)>> {
        self.put_record(record, Some(receipt))
            .await
            .map_err(|Closed((record, receipt))| {
                Closed((record, receipt.expect("the receipt given in")))
            })
    }

    async fn put_record(
        &self,
        record: Record,
        receipt: Option<Receipt>,
    ) -> Result<(), Closed<(Record, Option<Receipt>)>> {
        let priority = record.priority;
        let policy = if priority == Priority::Critical {
            // Critical records never evict anything: they wait for their reserve.
            Overflow::Block
        } else {
            self.policy(&record.source_id)
        };
        let item = Item {
            bytes: estimated_bytes(&record),
            record,
            receipt,
            enqueued: Instant::now(),
        };
        let mut item = Some(item);
        // A record that waited for room is stamped again when it gets in: the wait is the
        // source's backpressure, not time spent in the queue.
        let mut waited = false;
        loop {
            // Registered before the check, so a wake-up between check and wait is not missed.
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                let mut queued = item.take().expect("item present until inserted");
                if state.closed {
                    return Err(Closed((queued.record, queued.receipt)));
                }
                if waited {
                    queued.enqueued = Instant::now();
                }
                if self.room(&state, priority, queued.bytes, 0, 0) {
                    state.push(queued);
                    drop(state);
                    self.ready(Lanes::of(priority)).notify_one();
                    return Ok(());
                }
                if let (Some(dropper), Overflow::DropOldest | Overflow::DropNewest) =
                    (self.dropper.get(), policy)
                {
                    match self.plan(&state, &queued, policy) {
                        Plan::Evict(evict) if self.dead_room(&state, evict.iter().sum()) => {
                            let (full_records, full_bytes) = (state.bulk_len(), state.bulk_bytes());
                            for (lane, n) in evict.into_iter().enumerate() {
                                for _ in 0..n {
                                    let old = state.pop_front(lane).expect("planned eviction");
                                    let reason = format!(
                                        "queue full ({full_records} bulk records, {full_bytes} estimated bytes; bounds queue.max_records {} and queue.max_bytes {}): overflow drop_oldest evicted this {} record for a newer {} record of {}",
                                        self.settings.max_records,
                                        self.settings.max_bytes,
                                        old.record.priority.as_str(),
                                        priority.as_str(),
                                        queued.record.source_id,
                                    );
                                    let dead = dropper.dead_letter(old, reason);
                                    state.dead.push_back(dead);
                                }
                            }
                            state.push(queued);
                            drop(state);
                            self.ready_bulk.notify_one();
                            return Ok(());
                        }
                        Plan::Refuse if self.dead_room(&state, 1) => {
                            let reason = format!(
                                "queue full ({} bulk records, {} estimated bytes; bounds queue.max_records {} and queue.max_bytes {}): overflow {} refused this {} record{}",
                                state.bulk_len(),
                                state.bulk_bytes(),
                                self.settings.max_records,
                                self.settings.max_bytes,
                                policy.as_str(),
                                priority.as_str(),
                                if policy == Overflow::DropOldest {
                                    " (nothing at or below its priority to evict)"
                                } else {
                                    ""
                                },
                            );
                            let dead = dropper.dead_letter(queued, reason);
                            state.dead.push_back(dead);
                            drop(state);
                            self.ready_bulk.notify_one();
                            return Ok(());
                        }
                        // The dead-letter lane is full: wait, as `block` does.
                        _ => {}
                    }
                }
                item = Some(queued);
            }
            notified.await;
            waited = true;
        }
    }

    /// Enqueues a dead letter, waiting while the dead-letter lane is full.
    pub async fn push_dead(&self, dead: DeadLetter) -> Result<(), Closed<DeadLetter>> {
        let mut dead = Some(dead);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                let letter = dead.take().expect("dead letter present until inserted");
                if state.closed {
                    return Err(Closed(letter));
                }
                if state.dead.len() < self.dead_capacity {
                    state.dead.push_back(letter);
                    drop(state);
                    self.ready_bulk.notify_one();
                    return Ok(());
                }
                dead = Some(letter);
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

    /// Dequeues up to `max` records of `lanes` (the bulk lanes split by [`bulk_split`]),
    /// plus the waiting dead letters for the bulk consumer; waits while those lanes are
    /// empty. `None` once the queue is closed and they are empty.
    pub async fn pop(&self, lanes: Lanes, max: usize) -> Option<Batch> {
        loop {
            let notified = self.ready(lanes).notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                if state.has(lanes) {
                    let batch = self.take(&mut state, Some(lanes), max);
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

    /// Takes up to `max` records of `lanes` (`None`: every lane, strictly) in priority order.
    fn take(&self, state: &mut State, lanes: Option<Lanes>, max: usize) -> Batch {
        let mut counts = [0usize; 4];
        match lanes {
            Some(Lanes::Critical) => counts[0] = max.min(state.lanes[0].len()),
            Some(Lanes::Bulk) => {
                let waiting = [
                    state.lanes[1].len(),
                    state.lanes[2].len(),
                    state.lanes[3].len(),
                ];
                let split = bulk_split(waiting, max, self.settings.starvation_share);
                counts[1..].copy_from_slice(&split);
            }
            None => {
                let mut left = max;
                for (lane, count) in counts.iter_mut().enumerate() {
                    *count = left.min(state.lanes[lane].len());
                    left -= *count;
                }
            }
        }
        let dead_letters = match lanes {
            Some(Lanes::Critical) => Vec::new(),
            _ => state.dead.drain(..).collect(),
        };
        let total = counts.iter().sum();
        let mut batch = Batch {
            records: Vec::with_capacity(total),
            receipts: Vec::with_capacity(total),
            enqueued: Vec::with_capacity(total),
            dead_letters,
        };
        for (lane, n) in counts.into_iter().enumerate() {
            for _ in 0..n {
                let item = state.pop_front(lane).expect("counted");
                batch.records.push(item.record);
                batch.receipts.push(item.receipt);
                batch.enqueued.push(item.enqueued);
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
        let batch = self.take(&mut state, None, usize::MAX);
        drop(state);
        self.space.notify_waiters();
        batch
    }

    /// The bounds it was built with.
    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    pub fn depth(&self) -> Depth {
        let state = self.state.lock().expect("queue lock");
        let mut depth = Depth {
            dead_letters: state.dead.len(),
            bytes_by_priority: state.bytes,
            ..Depth::default()
        };
        for (i, lane) in state.lanes.iter().enumerate() {
            depth.by_priority[i] = lane.len();
        }
        depth
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::record::{Data, Kind, Quality, RecordId, WeatherAlert};
    use crate::sources::SourceType;

    pub(crate) fn record(n: u32, priority: Priority) -> Record {
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

    pub(crate) fn alert_id(r: &Record) -> &str {
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
    async fn each_record_carries_the_time_it_got_in_not_the_time_it_waited_for_room() {
        let q = Arc::new(Queue::new(1, 0));
        let before = Instant::now();
        q.push(record(1, Priority::Low)).await.unwrap();
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(record(2, Priority::Low)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let popped_at = Instant::now();
        let first = q.pop(Lanes::Bulk, 10).await.unwrap();
        assert_eq!(first.enqueued.len(), 1);
        assert!(before <= first.enqueued[0] && first.enqueued[0] <= popped_at);
        waiting.await.unwrap().unwrap();
        let second = q.pop(Lanes::Bulk, 10).await.unwrap();
        assert_eq!(alert_id(&second.records[0]), "2");
        // Stamped when room appeared, after the 50 ms spent blocked.
        assert!(second.enqueued[0] >= popped_at);
        // `drain` keeps them in step with the records too.
        q.push(record(3, Priority::Low)).await.unwrap();
        let left = q.drain();
        assert_eq!(left.enqueued.len(), left.records.len());
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

    use crate::config::Config;
    use crate::dedupe::DedupeRegistry;

    /// A queue with drop policies live, and what it dead-letters into.
    struct Dropping {
        queue: Queue,
        dedupe: Arc<DedupeRegistry>,
        stats: Arc<Stats>,
        router: Arc<Router>,
    }

    fn dropping(settings: QueueSettings, policy: Overflow) -> Dropping {
        let config = Config::parse("", std::path::Path::new("t.yaml")).unwrap();
        let router = Arc::new(Router::new(&config));
        let dedupe = Arc::new(DedupeRegistry::new(Duration::from_secs(60)));
        let stats = Arc::new(Stats::default());
        let queue = Queue::with_settings(settings);
        queue.set_dropper(Dropper::new(router.clone(), dedupe.clone(), stats.clone()));
        queue.set_overflow("t", policy);
        Dropping {
            queue,
            dedupe,
            stats,
            router,
        }
    }

    fn settings(max_records: usize) -> QueueSettings {
        QueueSettings {
            max_records,
            max_bytes: u64::MAX,
            critical_reserve: 1,
            starvation_share: 0.0,
        }
    }

    fn ids(records: &[Record]) -> Vec<&str> {
        records.iter().map(alert_id).collect()
    }

    /// The alert ids of the dropped records, from their dead letters.
    fn dropped_ids(dead: &[DeadLetter]) -> Vec<String> {
        dead.iter()
            .map(|d| {
                assert_eq!(d.stage, Stage::Queue);
                assert_eq!(d.error_kind, QUEUE_FULL_KIND);
                assert_eq!(d.topic.as_deref(), Some("wildfire-weather-alerts"));
                let v: serde_json::Value =
                    serde_json::from_str(d.record.as_ref().unwrap().get()).unwrap();
                v["data"]["alert_id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    async fn within_a_second<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(1), f)
            .await
            .expect("must not wait")
    }

    #[test]
    fn record_size_is_estimated_close_to_the_serialised_envelope() {
        let mut small = record(1, Priority::Normal);
        assert_eq!(estimated_bytes(&small), 360 + 1 + 300 + 1);
        let Data::WeatherAlert(alert) = &mut small.data else {
            unreachable!()
        };
        alert.headline = Some("Red Flag Warning issued December 4 at 3:00AM PST".into());
        alert.ugc_zones = vec!["CAZ211".into(), "CAZ212".into()];
        alert.geometry = Some(serde_json::json!({
            "type": "Polygon",
            "coordinates": [[[-122.12345, 38.5], [-122.2, 38.61234], [-122.3, 38.7], [-122.12345, 38.5]]]
        }));
        for r in [record(1, Priority::Normal), small] {
            let real = r.to_json().len() as f64;
            let estimate = estimated_bytes(&r) as f64;
            assert!(
                (estimate / real - 1.0).abs() < 0.3,
                "estimate {estimate} vs serialised {real}"
            );
        }
    }

    #[tokio::test]
    async fn the_byte_bound_blocks_bulk_and_lets_an_oversize_record_in_alone() {
        let size = estimated_bytes(&record(1, Priority::Normal));
        let q = Arc::new(Queue::with_settings(QueueSettings {
            max_bytes: size * 2 + size / 2,
            ..settings(100)
        }));
        q.push(record(1, Priority::Normal)).await.unwrap();
        q.push(record(2, Priority::Low)).await.unwrap();
        assert_eq!(q.depth().bytes_by_priority, [0, 0, size, size]);
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(record(3, Priority::High)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "two and a half records' bytes hold two"
        );
        // Critical records are bounded by their reserve, not by bytes.
        within_a_second(q.push(record(4, Priority::Critical)))
            .await
            .unwrap();
        assert_eq!(ids(&q.pop(Lanes::Bulk, 1).await.unwrap().records), ["1"]);
        within_a_second(waiting).await.unwrap().unwrap();
        assert_eq!(q.depth().bytes_by_priority, [size, size, 0, size]);
        // A record larger than the whole bound still gets in, once the lanes are empty.
        let tiny = Arc::new(Queue::with_settings(QueueSettings {
            max_bytes: 10,
            ..settings(100)
        }));
        within_a_second(tiny.push(record(5, Priority::Normal)))
            .await
            .unwrap();
        assert_eq!(tiny.depth().by_priority, [0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn drop_newest_refuses_the_new_record_into_the_dlq() {
        let d = dropping(settings(2), Overflow::DropNewest);
        let third = record(3, Priority::High);
        assert!(
            d.dedupe
                .for_type(SourceType::NwsAlerts)
                .insert_if_new(third.id, third.ingested_at)
        );
        d.queue.push(record(1, Priority::Low)).await.unwrap();
        d.queue.push(record(2, Priority::Normal)).await.unwrap();
        within_a_second(d.queue.push(third.clone())).await.unwrap();
        let depth = d.queue.depth();
        assert_eq!(depth.by_priority, [0, 0, 1, 1]);
        assert_eq!(depth.dead_letters, 1);
        let batch = d.queue.pop(Lanes::Bulk, 10).await.unwrap();
        assert_eq!(ids(&batch.records), ["2", "1"]);
        assert_eq!(dropped_ids(&batch.dead_letters), ["3"]);
        assert_eq!(
            batch.dead_letters[0].reason,
            format!(
                "queue full (2 bulk records, {} estimated bytes; bounds queue.max_records 2 and queue.max_bytes {}): overflow drop_newest refused this high record",
                estimated_bytes(&record(1, Priority::Low)) * 2,
                u64::MAX
            )
        );
        assert_eq!(batch.dead_letters[0].attempts, 0);
        // Forgotten by dedupe, so a later fetch sends it again; counted twice over.
        assert!(
            d.dedupe
                .for_type(SourceType::NwsAlerts)
                .insert_if_new(third.id, third.ingested_at)
        );
        assert_eq!(d.stats.dead_letters()[&Stage::Queue], 1);
        assert_eq!(d.stats.stream("t").snapshot().dropped, 1);
    }

    #[tokio::test]
    async fn drop_oldest_evicts_the_oldest_of_the_lowest_lane_at_or_below_the_new_one() {
        let d = dropping(settings(3), Overflow::DropOldest);
        for (n, p) in [
            (1, Priority::Low),
            (2, Priority::Normal),
            (3, Priority::Low),
        ] {
            d.queue.push(record(n, p)).await.unwrap();
        }
        // Normal evicts the oldest low record.
        within_a_second(d.queue.push(record(4, Priority::Normal)))
            .await
            .unwrap();
        assert_eq!(d.queue.depth().by_priority, [0, 0, 2, 1]);
        // High evicts the next lowest: the remaining low record.
        within_a_second(d.queue.push(record(5, Priority::High)))
            .await
            .unwrap();
        assert_eq!(d.queue.depth().by_priority, [0, 1, 2, 0]);
        // Normal again: no low left, so the oldest normal goes.
        within_a_second(d.queue.push(record(6, Priority::Normal)))
            .await
            .unwrap();
        // Low: nothing at or below low to evict, so the new record is refused.
        within_a_second(d.queue.push(record(7, Priority::Low)))
            .await
            .unwrap();
        let batch = d.queue.pop(Lanes::Bulk, 10).await.unwrap();
        assert_eq!(ids(&batch.records), ["5", "4", "6"]);
        assert_eq!(dropped_ids(&batch.dead_letters), ["1", "3", "2", "7"]);
        assert!(
            batch.dead_letters[0].reason.ends_with(
                "overflow drop_oldest evicted this low record for a newer normal record of t"
            ),
            "{}",
            batch.dead_letters[0].reason
        );
        assert!(
            batch.dead_letters[3]
                .reason
                .ends_with("overflow drop_oldest refused this low record (nothing at or below its priority to evict)"),
            "{}",
            batch.dead_letters[3].reason
        );
        assert_eq!(d.stats.dead_letters()[&Stage::Queue], 4);
        assert_eq!(d.stats.stream("t").snapshot().dropped, 4);
    }

    #[tokio::test]
    async fn drop_oldest_evicts_as_many_as_the_byte_bound_needs() {
        let size = estimated_bytes(&record(1, Priority::Low));
        let d = dropping(
            QueueSettings {
                max_bytes: size * 3,
                ..settings(100)
            },
            Overflow::DropOldest,
        );
        for n in 1..=3 {
            d.queue.push(record(n, Priority::Low)).await.unwrap();
        }
        let mut big = record(4, Priority::Low);
        let Data::WeatherAlert(alert) = &mut big.data else {
            unreachable!()
        };
        alert.headline = Some("x".repeat(size as usize));
        within_a_second(d.queue.push(big)).await.unwrap();
        let batch = d.queue.pop(Lanes::Bulk, 10).await.unwrap();
        assert_eq!(ids(&batch.records), ["3", "4"]);
        assert_eq!(dropped_ids(&batch.dead_letters), ["1", "2"]);
    }

    #[tokio::test]
    async fn critical_records_neither_wait_nor_evict_under_any_policy() {
        for policy in [Overflow::Block, Overflow::DropOldest, Overflow::DropNewest] {
            let d = dropping(settings(2), policy);
            d.queue.push(record(1, Priority::Low)).await.unwrap();
            d.queue.push(record(2, Priority::Low)).await.unwrap();
            within_a_second(d.queue.push(record(3, Priority::Critical)))
                .await
                .unwrap();
            let depth = d.queue.depth();
            assert_eq!(depth.by_priority, [1, 0, 0, 2], "{policy:?}");
            assert_eq!(depth.dead_letters, 0, "{policy:?}");
            // Beyond its reserve with no bulk slot free, a critical record waits: it never
            // evicts bulk records and is never dropped.
            let q = Arc::new(d.queue);
            let waiting = {
                let q = q.clone();
                tokio::spawn(async move { q.push(record(4, Priority::Critical)).await })
            };
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(!waiting.is_finished(), "{policy:?}");
            assert_eq!(q.depth().dead_letters, 0, "{policy:?}");
            assert_eq!(
                ids(&q.pop(Lanes::Critical, 10).await.unwrap().records),
                ["3"]
            );
            within_a_second(waiting).await.unwrap().unwrap();
            assert_eq!(q.depth().by_priority, [1, 0, 0, 2], "{policy:?}");
        }
    }

    #[tokio::test]
    async fn sources_without_a_policy_and_queues_without_a_dropper_block() {
        let d = dropping(settings(1), Overflow::DropNewest);
        let mut other = record(2, Priority::Low);
        other.source_id = Arc::from("files");
        d.queue.push(record(1, Priority::Low)).await.unwrap();
        let q = Arc::new(d.queue);
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(other).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished());
        q.pop(Lanes::Bulk, 10).await.unwrap();
        within_a_second(waiting).await.unwrap().unwrap();

        let plain = Arc::new(Queue::new(1, 1));
        plain.set_overflow("t", Overflow::DropNewest);
        plain.push(record(1, Priority::Low)).await.unwrap();
        let waiting = {
            let q = plain.clone();
            tokio::spawn(async move { q.push(record(2, Priority::Low)).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished(), "no dropper yet: block");
        plain.close();
    }

    #[tokio::test]
    async fn a_dropped_records_receipt_resolves_only_with_its_dead_letter() {
        let d = dropping(settings(1), Overflow::DropOldest);
        let (receipt, fired) = crate::receipt::tests::counted();
        d.queue
            .push_with_receipt(record(1, Priority::Low), receipt)
            .await
            .unwrap();
        within_a_second(d.queue.push(record(2, Priority::Low)))
            .await
            .unwrap();
        let batch = d.queue.pop(Lanes::Bulk, 10).await.unwrap();
        assert_eq!(ids(&batch.records), ["2"]);
        assert_eq!(dropped_ids(&batch.dead_letters), ["1"]);
        // Delivery routes the dead letter; the message carries the receipt to the sink.
        let message = d.router.dead_letter(&batch.dead_letters[0]);
        drop(batch);
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(message);
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Refused newest: the same.
        let d = dropping(settings(1), Overflow::DropNewest);
        d.queue.push(record(1, Priority::Low)).await.unwrap();
        let (receipt, fired) = crate::receipt::tests::counted();
        within_a_second(d.queue.push_with_receipt(record(2, Priority::Low), receipt))
            .await
            .unwrap();
        let batch = d.queue.pop(Lanes::Bulk, 10).await.unwrap();
        assert!(batch.dead_letters[0].receipt.is_some());
        let message = d.router.dead_letter(&batch.dead_letters[0]);
        drop(batch);
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(message);
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_full_dead_letter_lane_makes_drops_wait() {
        let d = dropping(settings(1), Overflow::DropNewest);
        d.queue.push(record(0, Priority::Low)).await.unwrap();
        let capacity = d.queue.dead_capacity;
        for n in 1..=capacity as u32 {
            d.queue.push(record(n, Priority::Low)).await.unwrap();
        }
        assert_eq!(d.queue.depth().dead_letters, capacity);
        let q = Arc::new(d.queue);
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.push(record(99_999, Priority::Low)).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiting.is_finished());
        let batch = q.pop(Lanes::Bulk, 1).await.unwrap();
        assert_eq!(batch.dead_letters.len(), capacity);
        within_a_second(waiting).await.unwrap().unwrap();
    }

    #[test]
    fn bulk_split_keeps_a_share_for_each_waiting_lower_lane() {
        // Every lane deep: 10% each for normal and low, the rest for high.
        assert_eq!(bulk_split([5000, 5000, 5000], 2000, 0.1), [1600, 200, 200]);
        // Only high and low waiting.
        assert_eq!(bulk_split([5000, 0, 5000], 2000, 0.1), [1800, 0, 200]);
        // High idle: normal is the top lane, low keeps its share.
        assert_eq!(bulk_split([0, 5000, 5000], 2000, 0.1), [0, 1800, 200]);
        // A lower lane with fewer waiting takes what it has; the slack goes to the top.
        assert_eq!(bulk_split([5000, 30, 5000], 2000, 0.1), [1770, 30, 200]);
        // Higher lanes short: the lower lanes fill the batch, strictly.
        assert_eq!(bulk_split([100, 300, 5000], 2000, 0.1), [100, 300, 1600]);
        // Rounded up, so small batches still serve low.
        assert_eq!(bulk_split([50, 50, 50], 10, 0.1), [8, 1, 1]);
        assert_eq!(bulk_split([50, 50, 50], 15, 0.1), [11, 2, 2]);
        // The top lane always keeps a slot.
        assert_eq!(bulk_split([50, 50, 50], 2, 0.1), [1, 1, 0]);
        assert_eq!(bulk_split([50, 50, 50], 1, 0.1), [1, 0, 0]);
        // Share 0: strict priority.
        assert_eq!(bulk_split([5000, 5000, 5000], 2000, 0.0), [2000, 0, 0]);
        assert_eq!(bulk_split([0, 0, 0], 2000, 0.1), [0, 0, 0]);
    }

    #[tokio::test]
    async fn low_records_are_not_starved_by_a_busy_high_lane() {
        let q = Queue::with_settings(QueueSettings {
            starvation_share: 0.1,
            ..settings(1000)
        });
        for n in 0..50 {
            q.push(record(n, Priority::High)).await.unwrap();
            q.push(record(1000 + n, Priority::Low)).await.unwrap();
        }
        let batch = q.pop(Lanes::Bulk, 10).await.unwrap();
        let got = ids(&batch.records);
        // Nine high, then the oldest low record.
        assert_eq!(got, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "1000"]);
        assert_eq!(q.depth().by_priority, [0, 41, 0, 49]);
    }
}
