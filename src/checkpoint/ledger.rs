//! Which topic offsets a checkpoint covers (DESIGN §5 "Delivery guarantee").
//!
//! After a crash a source reads its topics from the offsets its checkpoint names and adds the
//! ids it finds there to its dedupe window. That is safe only if every record that was not
//! yet acknowledged when the checkpoint's ids were taken sits at or after those offsets. A
//! record submitted at time t lands after every record acknowledged before t in the same
//! partition, so the ledger keeps, for each batch in flight, the acknowledged offsets as they
//! were when it was submitted: the oldest such floor bounds everything still unsettled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::record::RecordId;

type Partition = (Arc<str>, u32);
/// Per partition: the next offset after the last acknowledged record, and that record's id
/// (an anchor: recovery checks the record is still there, so a checkpoint of a deleted and
/// refilled topic is not trusted).
type Offsets = HashMap<Partition, (u64, Option<RecordId>)>;

/// Per topic and partition: the covered offset and the id of the record just before it.
pub type Covered = BTreeMap<String, BTreeMap<u32, (u64, Option<RecordId>)>>;

/// A submitted batch, until [`OffsetLedger::settled`].
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Default)]
pub struct OffsetLedger {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Next offset after the last acknowledged record, per topic partition.
    acked: Arc<Offsets>,
    /// Topics each source's records were acknowledged on.
    topics: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// The acknowledged offsets when each batch still in flight was submitted.
    in_flight: BTreeMap<u64, Arc<Offsets>>,
    next: u64,
}

impl OffsetLedger {
    /// A batch is about to be handed to the sink.
    pub fn submitted(&self) -> Ticket {
        let mut state = self.state.lock().expect("ledger lock");
        let ticket = state.next;
        state.next += 1;
        let floor = state.acked.clone();
        state.in_flight.insert(ticket, floor);
        Ticket(ticket)
    }

    /// A record of `source` (with `id`, when known) is stored at `offset` of
    /// `topic`/`partition`.
    pub fn acked(
        &self,
        source: &Arc<str>,
        topic: &Arc<str>,
        partition: u32,
        offset: u64,
        id: Option<RecordId>,
    ) {
        let mut state = self.state.lock().expect("ledger lock");
        let next = Arc::make_mut(&mut state.acked)
            .entry((topic.clone(), partition))
            .or_default();
        if offset + 1 > next.0 {
            *next = (offset + 1, id);
        }
        if !state
            .topics
            .get(source)
            .is_some_and(|topics| topics.contains(topic))
        {
            state
                .topics
                .entry(source.clone())
                .or_default()
                .insert(topic.clone());
        }
    }

    /// Every outcome of the batch is accounted for (acknowledged or dead-lettered).
    pub fn settled(&self, ticket: Ticket) {
        self.state
            .lock()
            .expect("ledger lock")
            .in_flight
            .remove(&ticket.0);
    }

    /// For each topic `source` wrote to, per partition, the offset from which its records
    /// may not yet be in its acknowledged ids. Take this before those ids. A partition is left
    /// out when nothing was known to be stored in it when the oldest batch in flight was
    /// submitted: recovery then reads it from the start of the dedupe window.
    pub fn covered(&self, source: &str) -> Covered {
        let state = self.state.lock().expect("ledger lock");
        let floor = state
            .in_flight
            .values()
            .next()
            .unwrap_or(&state.acked)
            .clone();
        let mut covered = BTreeMap::new();
        for topic in state.topics.get(source).into_iter().flatten() {
            let partitions: &mut BTreeMap<u32, _> = covered.entry(topic.to_string()).or_default();
            for ((t, partition), offset) in floor.iter() {
                if t == topic {
                    partitions.insert(*partition, *offset);
                }
            }
        }
        covered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn nothing_in_flight_covers_up_to_the_last_ack() {
        let ledger = OffsetLedger::default();
        let (src, topic) = (arc("firms"), arc("t"));
        let t = ledger.submitted();
        ledger.acked(&src, &topic, 0, 41, None);
        ledger.acked(&src, &topic, 1, 7, None);
        ledger.settled(t);
        assert_eq!(
            ledger.covered("firms"),
            BTreeMap::from([(
                "t".to_owned(),
                BTreeMap::from([(0, (42, None)), (1, (8, None))])
            )])
        );
        assert!(ledger.covered("other").is_empty());
    }

    #[test]
    fn a_batch_in_flight_holds_the_floor_where_it_was_submitted() {
        let ledger = OffsetLedger::default();
        let (src, topic) = (arc("s"), arc("t"));
        let first = ledger.submitted();
        ledger.acked(&src, &topic, 0, 9, None);
        ledger.settled(first);
        // A slow batch is submitted when offset 10 is next...
        let slow = ledger.submitted();
        // ...then a later batch (another lane) is acknowledged at 20.
        let fast = ledger.submitted();
        ledger.acked(&src, &topic, 0, 20, None);
        ledger.settled(fast);
        // The slow batch may still land anywhere from 10 on.
        assert_eq!(ledger.covered("s")["t"], BTreeMap::from([(0, (10, None))]));
        ledger.settled(slow);
        assert_eq!(ledger.covered("s")["t"], BTreeMap::from([(0, (21, None))]));
    }

    #[test]
    fn a_partition_unknown_when_the_oldest_batch_was_submitted_is_left_out() {
        let ledger = OffsetLedger::default();
        let (src, topic) = (arc("s"), arc("t"));
        let slow = ledger.submitted();
        ledger.acked(&src, &topic, 3, 5, None);
        // Recovery must read partition 3 from the window start, not from 6.
        assert_eq!(ledger.covered("s")["t"], BTreeMap::new());
        ledger.settled(slow);
        assert_eq!(ledger.covered("s")["t"], BTreeMap::from([(3, (6, None))]));
    }

    #[test]
    fn the_anchor_is_the_id_of_the_last_record_acknowledged() {
        let ledger = OffsetLedger::default();
        let (src, topic) = (arc("s"), arc("t"));
        let (a, b) = (
            RecordId::from_hex(&"a".repeat(32)),
            RecordId::from_hex(&"b".repeat(32)),
        );
        ledger.acked(&src, &topic, 0, 7, b);
        // A late report of an earlier offset moves neither the offset nor its anchor.
        ledger.acked(&src, &topic, 0, 3, a);
        assert_eq!(ledger.covered("s")["t"], BTreeMap::from([(0, (8, b))]));
    }
}
