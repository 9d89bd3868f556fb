//! `data` fields per kind (DESIGN §3.1). Metric units are named in the field; a value the
//! source did not give is `None` (JSON `null`), never 0.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

/// The kind-specific part of a record.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Data {
    FireDetection(FireDetection),
    WeatherObservation(WeatherObservation),
    WeatherAlert(WeatherAlert),
    AirQuality(AirQuality),
    SensorReading(SensorReading),
    FireIncident(FireIncident),
    /// A generic `http` record: the upstream object as given.
    Raw(serde_json::Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Instrument {
    #[serde(rename = "MODIS")]
    Modis,
    #[serde(rename = "VIIRS")]
    Viirs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Low,
    Nominal,
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DayNight {
    Day,
    Night,
}

/// FIRMS archive `type` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionType {
    /// 0: presumed vegetation fire.
    VegetationFire,
    /// 1: active volcano.
    Volcano,
    /// 2: other static land source (industry, gas flares).
    StaticLandSource,
    /// 3: offshore (platforms, ships).
    Offshore,
}

impl DetectionType {
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DetectionType::VegetationFire),
            1 => Some(DetectionType::Volcano),
            2 => Some(DetectionType::StaticLandSource),
            3 => Some(DetectionType::Offshore),
            _ => None,
        }
    }
}

/// A satellite active-fire pixel (NASA FIRMS, MODIS or VIIRS).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FireDetection {
    pub satellite: String,
    pub instrument: Instrument,
    /// VIIRS I-4 or MODIS channel 21/22 brightness temperature.
    pub brightness_k: Option<f64>,
    /// VIIRS I-5 or MODIS channel 31 brightness temperature.
    pub brightness_2_k: Option<f64>,
    pub frp_mw: Option<f64>,
    pub scan_km: Option<f64>,
    pub track_km: Option<f64>,
    pub confidence: Option<Confidence>,
    /// MODIS 0–100 confidence; `None` for VIIRS' categorical confidence.
    pub confidence_pct: Option<u8>,
    pub daynight: Option<DayNight>,
    pub version: Option<String>,
    pub detection_type: Option<DetectionType>,
}

/// A surface weather observation (NWS / MADIS).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeatherObservation {
    pub station_id: String,
    pub temperature_c: Option<f64>,
    pub dewpoint_c: Option<f64>,
    pub relative_humidity_pct: Option<f64>,
    pub wind_speed_mps: Option<f64>,
    pub wind_gust_mps: Option<f64>,
    pub wind_direction_deg: Option<f64>,
    pub pressure_pa: Option<f64>,
    pub sea_level_pressure_pa: Option<f64>,
    pub visibility_m: Option<f64>,
    pub precipitation_last_hour_mm: Option<f64>,
    pub heat_index_c: Option<f64>,
    pub wind_chill_c: Option<f64>,
    pub text_description: Option<String>,
    pub raw_message: Option<String>,
    /// Our field name → NWS/MADIS `qualityControl` code, kept even when the value is null.
    pub qc: BTreeMap<&'static str, String>,
}

/// A weather alert (NWS CAP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeatherAlert {
    pub alert_id: String,
    pub event: Option<String>,
    pub message_type: Option<String>,
    pub severity: Option<String>,
    pub urgency: Option<String>,
    pub certainty: Option<String>,
    pub headline: Option<String>,
    pub area_desc: Option<String>,
    pub ugc_zones: Vec<String>,
    #[serde(serialize_with = "optional_time")]
    pub sent: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_time")]
    pub effective: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_time")]
    pub onset: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_time")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(serialize_with = "optional_time")]
    pub ends: Option<DateTime<Utc>>,
    pub sender_name: Option<String>,
    /// Ids of the alerts this one updates or cancels.
    pub references: Vec<String>,
    /// The alert's GeoJSON geometry, or `None` when it is given by zones only.
    pub geometry: Option<serde_json::Value>,
}

/// An air-quality measurement (PurpleAir sensor or AirNow monitor).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AirQuality {
    pub sensor_id: String,
    /// `purpleair` or `airnow`.
    pub provider: &'static str,
    /// What was measured: `pm2_5`, `pm10`, `o3`, … (AirNow); `pm2_5` for PurpleAir.
    pub parameter: String,
    pub pm2_5_ugm3: Option<f64>,
    pub pm2_5_a_ugm3: Option<f64>,
    pub pm2_5_b_ugm3: Option<f64>,
    pub pm10_ugm3: Option<f64>,
    /// Other concentrations by parameter (AirNow: `o3_ppb`, `co_ppm`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub concentrations: BTreeMap<String, f64>,
    /// US EPA AQI (2024 PM2.5 breakpoints where recomputed).
    pub aqi: Option<u16>,
    pub aqi_category: Option<String>,
    pub temperature_c: Option<f64>,
    pub relative_humidity_pct: Option<f64>,
    pub pressure_pa: Option<f64>,
    pub stale: bool,
    pub reporting_area: Option<String>,
}

/// A reading from a field IoT sensor (MQTT).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorReading {
    pub device_id: String,
    pub topic: String,
    /// A retained message: the broker's last known value, possibly old.
    pub retained: bool,
    pub measurements: BTreeMap<String, f64>,
}

/// A fire incident as a fire agency lists it (CAL FIRE).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FireIncident {
    pub incident_id: String,
    pub name: Option<String>,
    pub acres_burned: Option<f64>,
    pub percent_contained: Option<f64>,
    pub county: Option<String>,
    #[serde(serialize_with = "optional_time")]
    pub started: Option<DateTime<Utc>>,
    /// UTC time of the update, or the date alone when the list gives only a date.
    pub updated: Option<String>,
    pub is_active: Option<bool>,
    pub url: Option<String>,
}

fn optional_time<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => super::serialize_event_time(t, serializer),
        None => serializer.serialize_none(),
    }
}
