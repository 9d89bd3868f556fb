//! Dedupe (DESIGN §5): a record id seen within the window is counted, not sent again.
//!
//! One window per source type, because the id covers the source type and natural key: two
//! sources of the same product with overlapping areas yield one record. The window is
//! measured against `ingested_at` of the first sighting. In memory for now; the checkpoint
//! store will persist it.

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

#[derive(Default)]
struct State {
    /// id → when it expires (ms since the epoch).
    seen: HashMap<RecordId, i64>,
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
                state.seen.insert(id, expires);
                state.order.push_back((expires, id));
                true
            }
        }
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
            if self.seen.get(&id) == Some(&expires) {
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
    fn registry_shares_one_window_per_type() {
        let r = DedupeRegistry::new(Duration::from_secs(60));
        let now = Utc::now();
        assert!(r.for_type(SourceType::NasaFirms).insert_if_new(id(1), now));
        assert!(!r.for_type(SourceType::NasaFirms).insert_if_new(id(1), now));
        assert!(r.for_type(SourceType::NwsAlerts).insert_if_new(id(1), now));
    }
}
