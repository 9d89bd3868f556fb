//! The record envelope `firestream.record.v1` (DESIGN §3): one shape for every feed, so a
//! consumer reads fire detections, weather and alerts with one schema.

pub mod aqi;
mod data;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

pub use data::{
    AirQuality, Confidence, Data, DayNight, DetectionType, FireDetection, FireIncident, Instrument,
    SensorReading, WeatherAlert, WeatherObservation,
};

use crate::sources::SourceType;

/// Schema name written into every envelope and the `firestream-schema` header.
pub const SCHEMA: &str = "firestream.record.v1";

/// Length of `location.geohash` (≈ 4.9 km × 4.9 km). Routing keys use a prefix of it.
pub const GEOHASH_PRECISION: usize = 5;

/// What a record describes; decides which `data` fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    FireDetection,
    WeatherObservation,
    WeatherAlert,
    AirQuality,
    SensorReading,
    FireIncident,
    /// A generic `http` source's record, kept as the upstream JSON.
    Raw,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FireDetection => "fire_detection",
            Kind::WeatherObservation => "weather_observation",
            Kind::WeatherAlert => "weather_alert",
            Kind::AirQuality => "air_quality",
            Kind::SensorReading => "sensor_reading",
            Kind::FireIncident => "fire_incident",
            Kind::Raw => "raw",
        }
    }
}

/// Delivery priority. The derived order is the queue's lane order: `Critical` first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Lane index in the priority queue (0 = most urgent).
    pub fn lane(self) -> usize {
        self as usize
    }
}

/// Record id: the first 16 bytes of SHA-256 over the source type and the natural key.
///
/// The same observation in the same product gets the same id whichever file or poll it came
/// from, which is what makes dedupe and replays safe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId([u8; 16]);

impl RecordId {
    /// Hashes `source_type|part|part…`. Callers normalise each part first (see [`key_number`]).
    pub fn from_natural_key(source_type: SourceType, parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(source_type.as_str().as_bytes());
        for part in parts {
            hasher.update(b"|");
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RecordId(id)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 32 hex digits of [`Display`](fmt::Display) back (a stored envelope's `id`).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(RecordId(id))
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A number as it enters a natural key: rounded to 5 decimals and written as the shortest
/// decimal of that value, so `-20`, `-20.0` and `-20.00000` give the same id. Text trimming
/// would get `1e-5` style inputs and `-0` wrong; arithmetic does not.
pub fn key_number(value: f64) -> String {
    let rounded = (value * 1e5).round() / 1e5;
    if rounded == 0.0 {
        // Normalises -0.0 as well.
        return "0".to_owned();
    }
    format!("{rounded}")
}

/// Where a record happened. Coordinates are WGS84 degrees, checked to be in range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub geohash: String,
}

impl Location {
    /// Builds a location, or says why the coordinates are not usable.
    pub fn new(lat: f64, lon: f64) -> Result<Self, String> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(format!("latitude {lat} is outside -90..90"));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(format!("longitude {lon} is outside -180..180"));
        }
        let geohash = geohash::encode(geohash::Coord { x: lon, y: lat }, GEOHASH_PRECISION)
            .map_err(|e| format!("cannot geohash ({lat}, {lon}): {e}"))?;
        Ok(Location { lat, lon, geohash })
    }
}

/// A reason to trust a record less. Each costs a fixed share of `quality.score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityFlag {
    /// Night-time satellite pass: fewer false positives from sun glint, but also less context.
    Night,
    LowConfidence,
    /// A field the kind normally carries is missing upstream (kept as `null`).
    MissingFields,
    /// An upstream QC code says a value is questioned or rejected.
    QcQuestioned,
    Stale,
    ChannelDisagreement,
}

impl QualityFlag {
    /// What the flag takes off the score (documented in the README).
    pub fn penalty(self) -> f64 {
        match self {
            QualityFlag::Night => 0.1,
            QualityFlag::LowConfidence => 0.3,
            QualityFlag::MissingFields => 0.1,
            QualityFlag::QcQuestioned => 0.2,
            QualityFlag::Stale => 0.3,
            QualityFlag::ChannelDisagreement => 0.2,
        }
    }
}

/// `quality.score` ∈ [0, 1] with the flags that lowered it, so consumers can filter on flags
/// without trusting the arithmetic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    pub score: f64,
    pub flags: Vec<QualityFlag>,
}

impl Quality {
    pub fn from_flags(mut flags: Vec<QualityFlag>) -> Self {
        flags.sort();
        flags.dedup();
        let lost: f64 = flags.iter().map(|f| f.penalty()).sum();
        let score = ((1.0 - lost).max(0.0) * 100.0).round() / 100.0;
        Quality { score, flags }
    }
}

/// One normalised observation, alert or detection.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    #[serde(serialize_with = "serialize_schema")]
    pub schema: (),
    pub id: RecordId,
    pub source_id: Arc<str>,
    pub source_type: SourceType,
    pub kind: Kind,
    #[serde(serialize_with = "serialize_event_time")]
    pub event_time: DateTime<Utc>,
    #[serde(serialize_with = "serialize_millis")]
    pub ingested_at: DateTime<Utc>,
    pub location: Option<Location>,
    pub priority: Priority,
    pub quality: Quality,
    pub data: Data,
}

impl Record {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising our own types into memory cannot fail: every map key is a string.
        serde_json::to_vec(self).expect("record envelope serialises")
    }
}

fn serialize_schema<S: Serializer>(_: &(), serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(SCHEMA)
}

/// RFC 3339 UTC with `Z`, to the second unless the source had sub-seconds.
pub fn format_event_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub(crate) fn serialize_event_time<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_event_time(time))
}

pub(crate) fn serialize_millis<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_numbers_agree_however_they_are_written() {
        assert_eq!(key_number(-20.0), "-20");
        assert_eq!(key_number("-20.00000".parse().unwrap()), "-20");
        assert_eq!(key_number(-9.774), "-9.774");
        assert_eq!(key_number(19.601184), "19.60118");
        assert_eq!(key_number(19.601186), "19.60119");
        assert_eq!(key_number(-0.000001), "0");
        assert_eq!(key_number(0.00001), "0.00001");
        assert_eq!(key_number(142.0583), "142.0583");
    }

    #[test]
    fn record_id_is_sha256_prefix_of_the_joined_key() {
        let id = RecordId::from_natural_key(SourceType::NasaFirms, &["Terra", "2020-10-02"]);
        let digest = Sha256::digest(b"nasa_firms|Terra|2020-10-02");
        let expected: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id.to_string(), expected);
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(RecordId::from_hex(&expected), Some(id));
        assert_eq!(RecordId::from_hex(&expected[1..]), None);
        assert_eq!(RecordId::from_hex(&"zz".repeat(16)), None);
    }

    #[test]
    fn location_checks_ranges_and_geohashes() {
        let loc = Location::new(-13.823, -51.84).unwrap();
        assert_eq!(loc.geohash, "6ve1k");
        assert!(
            Location::new(91.0, 0.0)
                .unwrap_err()
                .contains("latitude 91")
        );
        assert!(
            Location::new(0.0, -180.5)
                .unwrap_err()
                .contains("longitude -180.5")
        );
        assert!(Location::new(f64::NAN, 0.0).is_err());
    }

    #[test]
    fn quality_score_loses_each_flag_once() {
        assert_eq!(Quality::from_flags(vec![]).score, 1.0);
        assert_eq!(Quality::from_flags(vec![QualityFlag::Night]).score, 0.9);
        let q = Quality::from_flags(vec![
            QualityFlag::LowConfidence,
            QualityFlag::Night,
            QualityFlag::Night,
        ]);
        assert_eq!(q.score, 0.6);
        assert_eq!(
            q.flags,
            vec![QualityFlag::Night, QualityFlag::LowConfidence]
        );
        let all = Quality::from_flags(vec![
            QualityFlag::LowConfidence,
            QualityFlag::Stale,
            QualityFlag::QcQuestioned,
            QualityFlag::ChannelDisagreement,
            QualityFlag::MissingFields,
        ]);
        assert_eq!(all.score, 0.0);
    }

    #[test]
    fn priority_order_is_lane_order() {
        assert!(Priority::Critical < Priority::High);
        assert_eq!(Priority::Low.lane(), 3);
    }
}
