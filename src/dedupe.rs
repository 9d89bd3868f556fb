//! Dedupe (DESIGN §5): a record id seen within the window is counted, not sent again.
//!
//! One window per source type, because the id covers the source type and natural key: two
//! sources of the same product with overlapping areas yield one record. The window is
//! measured against `ingested_at` of the first sighting.
//!
//! An id is inserted when its record is queued and marked acknowledged, with the source that
//! sent it, once the record is in the sink. Only acknowledged ids go into a source's
//! checkpoint: an id still in flight at a crash must not stop its record from being sent
//! again after the restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::record::RecordId;
use crate::sources::SourceType;

/// Ids seen within a time window.
pub struct Dedupe {
    window_ms: i64,
    state: Mutex<State>,
}

/// A remembered id.
#[derive(Debug, Clone)]
struct Entry {
    /// When it expires (ms since the epoch).
    expires: i64,
    /// The source whose record was acknowledged by the sink; `None` while in flight.
    acked_by: Option<Arc<str>>,
}

#[derive(Default)]
struct State {
    seen: HashMap<RecordId, Entry>,
    /// Insertion order, for expiry; entries whose id was forgotten or renewed are skipped.
    order: VecDeque<(i64, RecordId)>,
}

impl Dedupe {
    pub fn new(window: Duration) -> Self {
        Dedupe {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            state: Mutex::new(State::default()),
        }
    }

    /// Remembers `id` and returns true if it was not seen within the window before `now`.
    pub fn insert_if_new(&self, id: RecordId, now: DateTime<Utc>) -> bool {
        let now_ms = now.timestamp_millis();
        let mut state = self.state.lock().expect("dedupe lock");
        state.expire(now_ms);
        let expires = now_ms.saturating_add(self.window_ms);
        match state.seen.get(&id) {
            Some(_) => false,
            None => {
                state.seen.insert(
                    id,
                    Entry {
                        expires,
                        acked_by: None,
                    },
                );
                state.order.push_back((expires, id));
                true
            }
        }
    }

    /// The record of `id` from `source` is in the sink: its id may go into checkpoints.
    pub fn ack(&self, id: &RecordId, source: &Arc<str>) {
        if let Some(entry) = self.state.lock().expect("dedupe lock").seen.get_mut(id) {
            entry.acked_by = Some(source.clone());
        }
    }

    /// Acknowledged ids of `source` that have not expired by `now`, with their expiry
    /// (ms since the epoch): the dedupe part of its checkpoint.
    pub fn acked_by(&self, source: &str, now: DateTime<Utc>) -> Vec<(RecordId, i64)> {
        let mut state = self.state.lock().expect("dedupe lock");
        state.expire(now.timestamp_millis());
        state
            .seen
            .iter()
            .filter(|(_, e)| e.acked_by.as_deref() == Some(source))
            .map(|(id, e)| (*id, e.expires))
            .collect()
    }

    /// Remembers ids known to be in the sink already (from a checkpoint, or found in a
    /// topic's tail after a restart), with their expiry (ms since the epoch); those expired
    /// before `now` are skipped. An id remembered twice keeps the later expiry.
    pub fn restore(
        &self,
        ids: impl IntoIterator<Item = (RecordId, i64)>,
        source: &Arc<str>,
        now: DateTime<Utc>,
    ) {
        let now_ms = now.timestamp_millis();
        let mut state = self.state.lock().expect("dedupe lock");
        for (id, expires) in ids {
            if expires <= now_ms {
                continue;
            }
            let entry = state.seen.entry(id).or_insert(Entry {
                expires,
                acked_by: None,
            });
            entry.expires = entry.expires.max(expires);
            entry.acked_by = Some(source.clone());
            let expires = entry.expires;
            state.order.push_back((expires, id));
        }
        // Restored ids arrive in no particular order; expiry walks the queue from the front.
        state
            .order
            .make_contiguous()
            .sort_unstable_by_key(|(t, _)| *t);
    }

    /// The window's length in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Forgets an id whose record was not delivered, so a later fetch may send it again.
    pub fn forget(&self, id: &RecordId) {
        self.state.lock().expect("dedupe lock").seen.remove(id);
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.state.lock().expect("dedupe lock").seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State {
    fn expire(&mut self, now_ms: i64) {
        while let Some(&(expires, id)) = self.order.front() {
            if expires > now_ms {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&id).map(|e| e.expires) == Some(expires) {
                self.seen.remove(&id);
            }
        }
    }
}

/// The dedupe window of every source type.
pub struct DedupeRegistry {
    window: Duration,
    by_type: Mutex<HashMap<SourceType, Arc<Dedupe>>>,
}

impl DedupeRegistry {
    pub fn new(window: Duration) -> Self {
        DedupeRegistry {
            window,
            by_type: Mutex::new(HashMap::new()),
        }
    }

    pub fn for_type(&self, source_type: SourceType) -> Arc<Dedupe> {
        self.by_type
            .lock()
            .expect("dedupe registry lock")
            .entry(source_type)
            .or_insert_with(|| Arc::new(Dedupe::new(self.window)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn id(n: u8) -> RecordId {
        RecordId::from_natural_key(SourceType::NasaFirms, &[&n.to_string()])
    }

    #[test]
    fn second_sighting_within_window_is_a_duplicate() {
        let d = Dedupe::new(Duration::from_secs(60));
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert!(d.insert_if_new(id(1), t0));
        assert!(!d.insert_if_new(id(1), t0 + chrono::Duration::seconds(59)));
        assert!(d.insert_if_new(id(2), t0));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn window_is_measured_from_the_first_sighting() {
        let d = Dedupe::new(Duration::from_secs(60));
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert!(d.insert_if_new(id(1), t0));
        assert!(!d.insert_if_new(id(1), t0 + chrono::Duration::seconds(30)));
        // 60 s after the first sighting it is forgotten, although it was seen at +30 s.
        assert!(d.insert_if_new(id(1), t0 + chrono::Duration::seconds(60)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn forgotten_id_is_new_again() {
        let d = Dedupe::new(Duration::from_secs(60));
        let t0 = Utc::now();
        assert!(d.insert_if_new(id(1), t0));
        d.forget(&id(1));
        assert!(d.insert_if_new(id(1), t0));
        // The stale expiry entry of the first insert must not evict the second.
        assert!(!d.insert_if_new(id(1), t0 + chrono::Duration::seconds(1)));
    }

    #[test]
    fn only_acknowledged_ids_of_a_source_go_into_its_checkpoint() {
        let d = Dedupe::new(Duration::from_secs(60));
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(d.insert_if_new(id(1), t0));
        assert!(d.insert_if_new(id(2), t0));
        assert!(d.insert_if_new(id(3), t0));
        d.ack(&id(1), &a);
        d.ack(&id(3), &b);
        // id 2 is still in flight: not in anybody's checkpoint.
        assert_eq!(
            d.acked_by("a", t0),
            vec![(id(1), t0.timestamp_millis() + 60_000)]
        );
        assert_eq!(
            d.acked_by("b", t0),
            vec![(id(3), t0.timestamp_millis() + 60_000)]
        );
        assert!(
            d.acked_by("a", t0 + chrono::Duration::seconds(60))
                .is_empty()
        );
    }

    #[test]
    fn restored_ids_are_duplicates_until_they_expire() {
        let d = Dedupe::new(Duration::from_secs(60));
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let src: Arc<str> = Arc::from("s");
        let ms = t0.timestamp_millis();
        // Out of order, one already expired.
        d.restore(
            [(id(2), ms + 20_000), (id(1), ms + 10_000), (id(3), ms)],
            &src,
            t0,
        );
        assert_eq!(d.len(), 2);
        assert!(!d.insert_if_new(id(1), t0));
        assert!(d.insert_if_new(id(3), t0));
        // id 1 expires at +10 s, id 2 at +20 s.
        assert!(d.insert_if_new(id(1), t0 + chrono::Duration::seconds(10)));
        assert!(!d.insert_if_new(id(2), t0 + chrono::Duration::seconds(19)));
        let mut acked = d.acked_by("s", t0 + chrono::Duration::seconds(19));
        acked.sort();
        assert_eq!(acked, vec![(id(2), ms + 20_000)]);
    }

    #[test]
    fn registry_shares_one_window_per_type() {
        let r = DedupeRegistry::new(Duration::from_secs(60));
        let now = Utc::now();
        assert!(r.for_type(SourceType::NasaFirms).insert_if_new(id(1), now));
        assert!(!r.for_type(SourceType::NasaFirms).insert_if_new(id(1), now));
        assert!(r.for_type(SourceType::NwsAlerts).insert_if_new(id(1), now));
    }
}
