//! `purpleair`: PurpleAir PM2.5 sensors, from three JSON shapes:
//!
//! - API v1 list `/v1/sensors`: `{"fields": [...], "data": [[...], ...], "data_time_stamp": …}`.
//!   Rows are zipped with the response's own `fields` (the API may order them differently from
//!   the request); a row of the wrong length is invalid, the rest continue.
//! - API v1 single sensor `/v1/sensors/:index`: `{"sensor": {...}, "data_time_stamp": …}`.
//! - The sensor's local `/json` document (`SensorId`, `DateTime`, `pm2_5_atm`, `pm2_5_atm_b`).
//!
//! Mapping: `pm2_5_ugm3` is `pm2.5_atm` when present, else `pm2.5` (PurpleAir's A/B average;
//! the CF=ATM variant is the one meant for outdoor air); channels A and B come from
//! `pm2.5_atm_a/_b` when the response has them, else `pm2.5_a/_b`, never one of each, and are
//! kept apart. `temperature` and `humidity` are measured inside the sensor housing (PurpleAir
//! documents them as about 8 °F warmer and 4 % drier than ambient); they are converted
//! (°F → °C) but not corrected. Pressure hPa → Pa. The AQI is the 2024 US EPA PM2.5 AQI of the
//! current reading, as PurpleAir's map shows it, not a 24-hour or NowCast AQI.
//!
//! Staleness is judged against the response's own `data_time_stamp` (else `time_stamp`),
//! never the wall clock, so replaying an old capture gives the same records.
//!
//! Bounds: PM [`PM_UGM3`], temperature [`TEMPERATURE_C`] after conversion, pressure
//! [`PRESSURE_HPA`], humidity 0–100 %; a time before [`EARLIEST`] or more than a day after the
//! response's time stamp (the wall clock for the local JSON or a response without one) makes
//! the row invalid.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::{
    Bounds, Invalid, Parser, PayloadError, Row, SourceType, excerpt, not_in_future, read_json,
    show_number,
};
use crate::config::{Dur, SourceConfig};
use crate::record::{
    AirQuality, Data, Kind, Location, Priority, Quality, QualityFlag, Record, RecordId, aqi,
    format_event_time, key_number,
};

/// Fields a configured `fields` list must contain for records to be built.
pub const REQUIRED_FIELDS: &[&str] = &["last_seen"];

/// A configured `fields` list must contain at least one of these PM2.5 fields.
pub const PM2_5_FIELDS: &[&str] = &["pm2.5_atm", "pm2.5"];

/// A reading older than this against the response's time stamp is `stale`, unless configured.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3600);

/// Channels A and B disagree when they differ by more than this many µg/m³ **and** by more
/// than [`CHANNEL_DISAGREEMENT_RELATIVE`] of their mean: the A/B QC rule of Barkjohn et al.
/// 2021 (US EPA, AMT 14, 4617), used for the AirNow Fire and Smoke Map.
pub const CHANNEL_DISAGREEMENT_UGM3: f64 = 5.0;

/// Relative A/B difference, `|A − B| / ((A + B) / 2)`, above which channels disagree (70 %).
pub const CHANNEL_DISAGREEMENT_RELATIVE: f64 = 0.7;

/// Mass concentrations (PM1, PM2.5, PM10, either channel). The Plantower sensors inside
/// saturate well below this (effective range 0–500 µg/m³, maximum about 1,000 µg/m³ in the
/// PMS5003 data sheet; dense smoke reads a few thousand at most), so 10,000 µg/m³ is a margin
/// no real reading crosses.
pub const PM_UGM3: Bounds = Bounds::new(0.0, 10_000.0, "µg/m³");

/// Temperature after °F → °C. The BME280 inside the housing is specified for −40..85 °C and
/// reads a few degrees warmer than the air; a margin on each side gives −60..90 °C.
pub const TEMPERATURE_C: Bounds = Bounds::new(-60.0, 90.0, "°C");

/// Pressure: the BME280's measuring range, 300–1,100 hPa (sea level is ~1,013 hPa; 300 hPa is
/// above Everest's summit).
pub const PRESSURE_HPA: Bounds = Bounds::new(300.0, 1_100.0, "hPa");

/// PurpleAir sensors first reported in 2015: an earlier time is a broken clock or value
/// (`last_seen: -5` would be 1969).
pub fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2015, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// The date in [`earliest`], for docs and messages.
pub const EARLIEST: &str = "2015-01-01";

/// Largest PurpleAir document read into memory (a whole-network list is a few MB).
const MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;

const EXPECTED: &str = "PurpleAir JSON";

pub struct PurpleAirParser {
    source_id: Arc<str>,
    stale_after: Duration,
    /// The wall clock, used only where the payload has no time stamp of its own (a field so
    /// tests can fix it).
    now: fn() -> DateTime<Utc>,
}

impl PurpleAirParser {
    pub fn new(source_id: Arc<str>, config: &SourceConfig) -> Self {
        PurpleAirParser {
            source_id,
            stale_after: config.stale_after.map_or(DEFAULT_STALE_AFTER, |Dur(d)| d),
            now: Utc::now,
        }
    }
}

/// Checks the parser-related settings of a `purpleair` source (called from config validation).
pub fn check_config(at: &str, s: &SourceConfig, problems: &mut Vec<String>) {
    if s.fields.is_empty() {
        if s.is_http() {
            problems.push(format!(
                "{at}.fields: list the fields to request, e.g. `fields: [name, last_seen, latitude, longitude, pm2.5_atm, pm2.5_atm_a, pm2.5_atm_b, humidity, temperature, pressure]`; requesting all fields is a config error (PurpleAir charges points per field)"
            ));
        }
    } else {
        let has = |name: &str| s.fields.iter().any(|f| f.trim() == name);
        for required in REQUIRED_FIELDS {
            if !has(required) {
                problems.push(format!(
                    "{at}.fields: must include `{required}` (records are keyed and timed by it)"
                ));
            }
        }
        if !PM2_5_FIELDS.iter().any(|f| has(f)) {
            problems.push(format!(
                "{at}.fields: must include a PM2.5 field, one of {}",
                PM2_5_FIELDS.join(", ")
            ));
        }
        for (i, field) in s.fields.iter().enumerate() {
            if field.trim().is_empty() {
                problems.push(format!("{at}.fields[{i}]: empty field name"));
            } else if s.fields[..i].iter().any(|f| f.trim() == field.trim()) {
                problems.push(format!(
                    "{at}.fields[{i}]: `{field}` is listed twice (each field costs points)"
                ));
            }
        }
    }
    if let Some(Dur(d)) = s.stale_after
        && d.is_zero()
    {
        problems.push(format!(
            "{at}.stale_after: must be longer than 0s, e.g. `stale_after: 1h`"
        ));
    }
}

impl Parser for PurpleAirParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        let (body, doc) = read_json(input, MAX_DOCUMENT_BYTES, EXPECTED)?;
        let unexpected = |detail: String| PayloadError::UnexpectedJson {
            detail,
            excerpt: excerpt(&body),
        };
        let Value::Object(top) = &doc else {
            return Err(unexpected(
                "not a JSON object (PurpleAir answers with an object)".to_owned(),
            ));
        };
        if let Some(error) = top.get("error").filter(|e| !e.is_null()) {
            // PurpleAir's error document, e.g. ApiKeyInvalidError, PaymentRequiredError.
            let code = error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            let title = top
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or(&code)
                .to_owned();
            return Err(PayloadError::Problem {
                title,
                status: code,
                excerpt: excerpt(&body),
            });
        }
        if top.contains_key("data") || top.contains_key("fields") {
            let response_time = response_time(top).map_err(&unexpected)?;
            return self.parse_list(top, response_time, out).map_err(unexpected);
        }
        if let Some(raw) = top.get("sensor") {
            let response_time = response_time(top).map_err(&unexpected)?;
            let Value::Object(sensor) = raw else {
                return Err(unexpected("`sensor` is not an object".to_owned()));
            };
            let fields: Fields = sensor.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let row = self.api_row(&fields, response_time).map_or_else(
                |reason| invalid("sensor 1", reason, raw),
                |r| Row::Valid(Box::new(r)),
            );
            out(row);
            return Ok(());
        }
        if top.contains_key("SensorId") || top.contains_key("DateTime") {
            let row = self.device_row(top).map_or_else(
                |reason| invalid("sensor 1", reason, &doc),
                |r| Row::Valid(Box::new(r)),
            );
            out(row);
            return Ok(());
        }
        Err(unexpected(
            "neither an API v1 `fields`/`data` list, a `sensor` object nor a sensor's local JSON"
                .to_owned(),
        ))
    }
}

/// One sensor's values by field name.
type Fields<'a> = HashMap<&'a str, &'a Value>;

impl PurpleAirParser {
    fn parse_list(
        &self,
        top: &serde_json::Map<String, Value>,
        response_time: Option<DateTime<Utc>>,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), String> {
        let names: Vec<&str> = match top.get("fields") {
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| n.as_str().ok_or("`fields` holds a non-string name"))
                .collect::<Result<_, _>>()?,
            _ => return Err("`data` without a `fields` array of names".to_owned()),
        };
        let rows = match top.get("data") {
            Some(Value::Array(rows)) => rows,
            // No sensor matched the query: PurpleAir sends `fields` and an empty `data`.
            None | Some(Value::Null) => return Ok(()),
            Some(_) => return Err("`data` is not an array of rows".to_owned()),
        };
        for (i, row) in rows.iter().enumerate() {
            let position = format!("row {}", i + 1);
            let parsed = match row {
                Value::Array(values) if values.len() == names.len() => {
                    let fields: Fields = names.iter().copied().zip(values).collect();
                    self.api_row(&fields, response_time)
                }
                Value::Array(values) => Err(format!(
                    "row has {} values for the {} fields of the response ({})",
                    values.len(),
                    names.len(),
                    names.join(", ")
                )),
                _ => Err("row is not an array of values".to_owned()),
            };
            let row = match parsed {
                Ok(record) => Row::Valid(Box::new(record)),
                Err(reason) => invalid(&position, reason, row),
            };
            if !out(row) {
                break;
            }
        }
        Ok(())
    }

    /// A sensor from the API (list row or single sensor).
    fn api_row(&self, f: &Fields, response_time: Option<DateTime<Utc>>) -> Result<Record, String> {
        let sensor_index = match f.get("sensor_index") {
            None | Some(Value::Null) => return Err("sensor_index is missing".to_owned()),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("sensor_index: {} is not a sensor number", show(v)))?,
        };
        let last_seen = time(f, "last_seen")?
            .map(|seen| {
                let (reference, name) = match response_time {
                    Some(t) => (t, "the response's time stamp"),
                    None => ((self.now)(), "now"),
                };
                plausible_time("last_seen", seen, reference, name)
            })
            .transpose()?;
        let event_time = last_seen.or(response_time).ok_or(
            "no time: last_seen is missing and the response has no data_time_stamp or time_stamp",
        )?;

        let pm2_5 = concentration(f, "pm2.5_atm")?.or(concentration(f, "pm2.5")?);
        let has_atm_channels = [f.get("pm2.5_atm_a"), f.get("pm2.5_atm_b")]
            .into_iter()
            .any(|v| v.is_some_and(|v| !v.is_null()));
        let (a, b) = if has_atm_channels {
            (
                concentration(f, "pm2.5_atm_a")?,
                concentration(f, "pm2.5_atm_b")?,
            )
        } else {
            (concentration(f, "pm2.5_a")?, concentration(f, "pm2.5_b")?)
        };
        let pm10 = concentration(f, "pm10.0_atm")?.or(concentration(f, "pm10.0")?);

        let temperature_c = temperature(f, "temperature")?.or(temperature(f, "temperature_a")?);
        let humidity = humidity(f, "humidity")?.or(humidity(f, "humidity_a")?);
        let pressure_hpa = pressure(f, "pressure")?.or(pressure(f, "pressure_a")?);

        let location = match (number(f, "latitude")?, number(f, "longitude")?) {
            (Some(lat), Some(lon)) => {
                Some(Location::new(lat, lon).map_err(|e| format!("latitude/longitude: {e}"))?)
            }
            (None, None) => None,
            (Some(_), None) => return Err("latitude is given without longitude".to_owned()),
            (None, Some(_)) => return Err("longitude is given without latitude".to_owned()),
        };

        let stale = match (last_seen, response_time) {
            (Some(seen), Some(now)) => now
                .signed_duration_since(seen)
                .to_std()
                .is_ok_and(|age| age > self.stale_after),
            _ => false,
        };
        let mut flags = Vec::new();
        if stale {
            flags.push(QualityFlag::Stale);
        }
        // PurpleAir's own verdict: 1 = A downgraded, 2 = B downgraded, 3 = both.
        let channel_flags = number(f, "channel_flags")?;
        if channel_flags.is_some_and(|flags| flags != 0.0) {
            flags.push(QualityFlag::QcQuestioned);
        }

        let reading = Reading {
            sensor_id: sensor_index.to_string(),
            pm2_5,
            a,
            b,
            pm10,
            temperature_c,
            humidity,
            pressure_hpa,
            stale,
        };
        let last_seen_key = format_event_time(&event_time);
        Ok(self.record(
            reading,
            flags,
            event_time,
            location,
            &[&key_number(sensor_index as f64), &last_seen_key],
        ))
    }

    /// The sensor's local `/json` document. Its `lat`/`lon` are the owner's registration
    /// settings, not a measurement, and are often blank (0, 0) or redacted: when they are not a
    /// usable position the reading keeps a null location instead of being rejected.
    fn device_row(&self, doc: &serde_json::Map<String, Value>) -> Result<Record, String> {
        let f: Fields = doc.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let sensor_id = f
            .get("SensorId")
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or("SensorId is missing")?
            .to_owned();
        let event_time = match f.get("DateTime") {
            Some(Value::String(text)) => {
                plausible_time("DateTime", device_time(text)?, (self.now)(), "now")?
            }
            None | Some(Value::Null) => return Err("DateTime is missing".to_owned()),
            Some(other) => return Err(format!("DateTime: {} is not a time", show(other))),
        };
        // `pm2_5_atm` is channel A; dual-laser sensors add `pm2_5_atm_b`.
        let a = concentration(&f, "pm2_5_atm")?;
        let b = concentration(&f, "pm2_5_atm_b")?;
        let pm10 = mean(
            concentration(&f, "pm10_0_atm")?,
            concentration(&f, "pm10_0_atm_b")?,
        );
        let location = match (number(&f, "lat")?, number(&f, "lon")?) {
            (Some(lat), Some(lon)) if !(lat == 0.0 && lon == 0.0) => Location::new(lat, lon).ok(),
            _ => None,
        };
        let reading = Reading {
            sensor_id,
            pm2_5: mean(a, b),
            a,
            b,
            pm10,
            temperature_c: temperature(&f, "current_temp_f")?,
            humidity: humidity(&f, "current_humidity")?,
            pressure_hpa: pressure(&f, "pressure")?,
            // The device answers with its current reading: there is nothing to be stale against.
            stale: false,
        };
        let key_time = format_event_time(&event_time);
        let key = [reading.sensor_id.clone(), key_time];
        Ok(self.record(
            reading,
            Vec::new(),
            event_time,
            location,
            &[&key[0], &key[1]],
        ))
    }

    fn record(
        &self,
        r: Reading,
        mut flags: Vec<QualityFlag>,
        event_time: DateTime<Utc>,
        location: Option<Location>,
        key: &[&str],
    ) -> Record {
        if let (Some(a), Some(b)) = (r.a, r.b)
            && channels_disagree(a, b)
        {
            flags.push(QualityFlag::ChannelDisagreement);
        }
        if r.pm2_5.is_none() {
            flags.push(QualityFlag::MissingFields);
        }
        let aqi = r.pm2_5.and_then(aqi::pm2_5);
        let data = AirQuality {
            sensor_id: r.sensor_id,
            provider: "purpleair",
            parameter: "pm2_5".to_owned(),
            pm2_5_ugm3: r.pm2_5,
            pm2_5_a_ugm3: r.a,
            pm2_5_b_ugm3: r.b,
            pm10_ugm3: r.pm10,
            concentrations: BTreeMap::new(),
            aqi,
            aqi_category: aqi.map(|v| aqi::category_name(v).to_owned()),
            temperature_c: r.temperature_c,
            relative_humidity_pct: r.humidity,
            pressure_pa: r.pressure_hpa.map(|p| round4(p * 100.0)),
            stale: r.stale,
            reporting_area: None,
        };
        Record {
            schema: (),
            id: RecordId::from_natural_key(SourceType::Purpleair, key),
            source_id: self.source_id.clone(),
            source_type: SourceType::Purpleair,
            kind: Kind::AirQuality,
            event_time,
            ingested_at: Utc::now(),
            location,
            priority: Priority::Normal,
            quality: Quality::from_flags(flags),
            data: Data::AirQuality(data),
        }
    }
}

/// A sensor's values before unit conversion, whichever shape they came from.
struct Reading {
    sensor_id: String,
    pm2_5: Option<f64>,
    a: Option<f64>,
    b: Option<f64>,
    pm10: Option<f64>,
    /// Converted from °F and checked.
    temperature_c: Option<f64>,
    humidity: Option<f64>,
    pressure_hpa: Option<f64>,
    stale: bool,
}

/// The EPA A/B rule: both the absolute and the relative difference must be too large, so
/// low concentrations (where 1 vs 3 µg/m³ is 100 %) and high ones (where 5 µg/m³ is noise)
/// are not flagged.
pub fn channels_disagree(a: f64, b: f64) -> bool {
    let diff = (a - b).abs();
    let mean = (a + b) / 2.0;
    diff > CHANNEL_DISAGREEMENT_UGM3 && mean > 0.0 && diff / mean > CHANNEL_DISAGREEMENT_RELATIVE
}

/// The response's own time: `data_time_stamp` (when the data was last updated), else
/// `time_stamp` (when the response was made).
fn response_time(top: &serde_json::Map<String, Value>) -> Result<Option<DateTime<Utc>>, String> {
    let f: Fields = top.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(time(&f, "data_time_stamp")?.or(time(&f, "time_stamp")?))
}

/// A Unix time in seconds (PurpleAir's form) or RFC 3339 text; null or absent is `None`.
fn time(f: &Fields, name: &str) -> Result<Option<DateTime<Utc>>, String> {
    match f.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|x| x.fract() == 0.0).map(|x| x as i64))
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .map(Some)
            .ok_or_else(|| format!("{name}: {n} is not a Unix time in seconds")),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| format!("{name}: {text:?} is not a Unix time or RFC 3339")),
        Some(other) => Err(format!("{name}: {} is not a time", show(other))),
    }
}

/// The local JSON's `DateTime`, e.g. `2026/05/17T22:23:06z` (UTC).
fn device_time(text: &str) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    if let Some(naive) = trimmed
        .strip_suffix(['z', 'Z'])
        .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y/%m/%dT%H:%M:%S").ok())
    {
        return Ok(naive.and_utc());
    }
    DateTime::parse_from_rfc3339(trimmed)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("DateTime: {text:?} is not like 2026/05/17T22:23:06z"))
}

/// A numeric field; null or absent is `None`, text or a non-finite value is an error naming it.
fn number(f: &Fields, name: &str) -> Result<Option<f64>, String> {
    match f.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| format!("{name}: {n} is not a finite number")),
        Some(other) => Err(format!("{name}: {} is not a number", show(other))),
    }
}

/// A mass concentration: PurpleAir never reports a negative one, so it marks a broken row,
/// as does one above [`PM_UGM3`].
fn concentration(f: &Fields, name: &str) -> Result<Option<f64>, String> {
    match number(f, name)? {
        Some(c) if c < 0.0 => Err(format!("{name}: {c} µg/m³ is negative")),
        Some(c) => PM_UGM3.check(name, c).map(Some),
        None => Ok(None),
    }
}

/// A temperature in °F, as °C within [`TEMPERATURE_C`].
fn temperature(f: &Fields, name: &str) -> Result<Option<f64>, String> {
    let Some(fahrenheit) = number(f, name)? else {
        return Ok(None);
    };
    let celsius = round4((fahrenheit - 32.0) * 5.0 / 9.0);
    if TEMPERATURE_C.contains(celsius) {
        return Ok(Some(celsius));
    }
    Err(format!(
        "{name} {} °F = {} °C is outside the accepted range {TEMPERATURE_C}",
        show_number(fahrenheit),
        show_number(celsius)
    ))
}

/// A pressure in hPa within [`PRESSURE_HPA`].
fn pressure(f: &Fields, name: &str) -> Result<Option<f64>, String> {
    number(f, name)?
        .map(|p| PRESSURE_HPA.check(name, p))
        .transpose()
}

/// A sensor time: not before PurpleAir existed, not more than a day after `reference`.
fn plausible_time(
    name: &str,
    t: DateTime<Utc>,
    reference: DateTime<Utc>,
    reference_name: &str,
) -> Result<DateTime<Utc>, String> {
    if t < earliest() {
        return Err(format!(
            "{name} {} is before {EARLIEST}, when PurpleAir sensors did not yet exist",
            format_event_time(&t)
        ));
    }
    not_in_future(name, t, reference, reference_name)
}

fn humidity(f: &Fields, name: &str) -> Result<Option<f64>, String> {
    match number(f, name)? {
        Some(h) if !(0.0..=100.0).contains(&h) => Err(format!("{name}: {h} % is outside 0..100")),
        other => Ok(other),
    }
}

/// The mean of two channels when both are present, else the one that is.
fn mean(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(round4((a + b) / 2.0)),
        (one, None) | (None, one) => one,
    }
}

/// Converted values are rounded to 4 decimals, so 69 °F reads 20.5556 °C, not 20.555555…
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// A value as it appears in an error message, capped.
fn show(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn invalid(position: &str, reason: String, raw: &Value) -> Row {
    Row::Invalid(Invalid {
        position: position.to_owned(),
        reason,
        raw: crate::dlq::truncate(raw.to_string(), crate::dlq::MAX_RAW_BYTES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SAN_JUAN: &str = "v1_sensors_bbox_SanJuanMtns_CO__2026-07-02.json";

    fn real(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/real")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn config() -> SourceConfig {
        SourceConfig::defaults_for(SourceType::Purpleair)
    }

    fn parse_with(config: &SourceConfig, text: &str) -> Result<Vec<Row>, PayloadError> {
        let parser = PurpleAirParser::new(Arc::from("pa"), config);
        let mut rows = Vec::new();
        parser.parse(&mut text.as_bytes(), &mut |r| {
            rows.push(r);
            true
        })?;
        Ok(rows)
    }

    fn parse(text: &str) -> Result<Vec<Row>, PayloadError> {
        parse_with(&config(), text)
    }

    fn valid(rows: &[Row]) -> Vec<&Record> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Valid(r) => Some(&**r),
                Row::Invalid(_) => None,
            })
            .collect()
    }

    fn invalid_rows(rows: &[Row]) -> Vec<&Invalid> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Invalid(i) => Some(i),
                Row::Valid(_) => None,
            })
            .collect()
    }

    fn one(text: &str) -> Record {
        let mut rows = parse(text).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        match rows.remove(0) {
            Row::Valid(r) => *r,
            Row::Invalid(i) => panic!("{i:?}"),
        }
    }

    fn aq(r: &Record) -> &AirQuality {
        match &r.data {
            Data::AirQuality(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The San Juan list with `edit` applied to its JSON.
    fn san_juan_edited(edit: impl FnOnce(&mut Value)) -> String {
        let mut doc: Value = serde_json::from_str(&real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        edit(&mut doc);
        doc.to_string()
    }

    #[test]
    fn api_list_maps_every_row_by_the_response_fields() {
        let rows = parse(&real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        assert_eq!(rows.len(), 7);
        let records = valid(&rows);
        assert_eq!(records.len(), 7);

        let r = records[0];
        assert_eq!(r.id.to_string(), "caf4a8fe12d8217dfe322812cacbea4c");
        assert_eq!(
            r.id,
            RecordId::from_natural_key(SourceType::Purpleair, &["13125", "2026-07-02T03:35:41Z"])
        );
        assert_eq!(r.source_type, SourceType::Purpleair);
        assert_eq!(r.kind, Kind::AirQuality);
        assert_eq!(format_event_time(&r.event_time), "2026-07-02T03:35:41Z");
        let loc = r.location.as_ref().unwrap();
        assert_eq!(
            (loc.lat, loc.lon, loc.geohash.as_str()),
            (37.856102, -107.83177, "9wer6")
        );
        assert_eq!(r.quality, Quality::from_flags(vec![]));
        let expected = AirQuality {
            sensor_id: "13125".to_owned(),
            provider: "purpleair",
            parameter: "pm2_5".to_owned(),
            pm2_5_ugm3: Some(0.0),
            pm2_5_a_ugm3: Some(0.0),
            pm2_5_b_ugm3: Some(0.0),
            pm10_ugm3: None,
            concentrations: BTreeMap::new(),
            aqi: Some(0),
            aqi_category: Some("Good".to_owned()),
            temperature_c: Some(15.0),
            relative_humidity_pct: Some(22.0),
            pressure_pa: None,
            stale: false,
            reporting_area: None,
        };
        assert_eq!(aq(r), &expected);

        // Ouray: a non-zero reading and its AQI.
        let ouray = aq(records[2]);
        assert_eq!(ouray.sensor_id, "57091");
        assert_eq!(
            (ouray.pm2_5_ugm3, ouray.pm2_5_a_ugm3, ouray.pm2_5_b_ugm3),
            (Some(0.5), Some(0.7), Some(0.4))
        );
        assert_eq!(ouray.aqi, Some(3));
        assert_eq!(ouray.temperature_c, Some(19.4444));
        assert_eq!(
            records[2].id.to_string(),
            "75650b0a255a0dba123c6e0fa340a5a4"
        );
    }

    #[test]
    fn null_humidity_and_temperature_stay_null() {
        let rows = parse(&real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        let horsefly = aq(valid(&rows)[5]);
        assert_eq!(horsefly.sensor_id, "191341");
        assert_eq!(horsefly.relative_humidity_pct, None);
        assert_eq!(horsefly.temperature_c, None);
        assert_eq!(horsefly.pm2_5_ugm3, Some(0.6));
        assert_eq!(horsefly.aqi, Some(3));
    }

    #[test]
    fn reordered_fields_give_the_same_records() {
        let original = parse(&real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        // Reverse the field order and every row with it, as a response may.
        let reordered = san_juan_edited(|doc| {
            let fields = doc["fields"].as_array_mut().unwrap();
            fields.reverse();
            for row in doc["data"].as_array_mut().unwrap() {
                row.as_array_mut().unwrap().reverse();
            }
        });
        let reordered = parse(&reordered).unwrap();
        let (a, b) = (valid(&original), valid(&reordered));
        assert_eq!(a.len(), 7);
        assert_eq!(b.len(), 7);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.id, y.id);
            assert_eq!(x.event_time, y.event_time);
            assert_eq!(x.location, y.location);
            assert_eq!(aq(x), aq(y));
        }
    }

    #[test]
    fn a_short_row_is_invalid_and_the_others_are_kept() {
        let text = san_juan_edited(|doc| {
            doc["data"][2].as_array_mut().unwrap().pop();
        });
        let rows = parse(&text).unwrap();
        assert_eq!(rows.len(), 7);
        assert_eq!(valid(&rows).len(), 6);
        let bad = invalid_rows(&rows);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].position, "row 3");
        assert!(
            bad[0]
                .reason
                .starts_with("row has 9 values for the 10 fields of the response (sensor_index,"),
            "{}",
            bad[0].reason
        );
        assert_eq!(
            bad[0].raw,
            r#"[57091,1782963395,"Ouray",38.026466,-107.67247,17,67,0.5,0.7]"#
        );
        // A long row cannot be aligned either.
        let text = san_juan_edited(|doc| {
            doc["data"][0].as_array_mut().unwrap().push(json!(1));
        });
        let bad = parse(&text).unwrap();
        assert!(
            invalid_rows(&bad)[0]
                .reason
                .starts_with("row has 11 values")
        );
    }

    #[test]
    fn a_row_without_sensor_index_is_invalid() {
        let text = san_juan_edited(|doc| doc["data"][1][0] = Value::Null);
        let rows = parse(&text).unwrap();
        let bad = invalid_rows(&rows);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].position, "row 2");
        assert_eq!(bad[0].reason, "sensor_index is missing");
        assert_eq!(valid(&rows).len(), 6);
    }

    #[test]
    fn out_of_range_coordinates_and_wrong_types_name_the_field() {
        let text = san_juan_edited(|doc| {
            doc["data"][0][3] = json!(137.856102);
            doc["data"][1][7] = json!("0.0");
            doc["data"][2][7] = json!(-3.0);
        });
        let rows = parse(&text).unwrap();
        let bad = invalid_rows(&rows);
        assert_eq!(bad.len(), 3);
        assert_eq!(
            bad[0].reason,
            "latitude/longitude: latitude 137.856102 is outside -90..90"
        );
        assert_eq!(bad[1].reason, "pm2.5_atm: \"0.0\" is not a number");
        assert_eq!(bad[2].reason, "pm2.5_atm: -3 µg/m³ is negative");
        assert_eq!(valid(&rows).len(), 4);
    }

    #[test]
    fn staleness_is_measured_against_data_time_stamp() {
        // Row 1 was last seen at 1782963341; the response's data is 121 s newer: fresh.
        let rows = parse(&real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        assert!(!aq(valid(&rows)[0]).stale);

        let at = |stamp: i64| {
            san_juan_edited(|doc| {
                doc["data_time_stamp"] = json!(stamp);
                doc["time_stamp"] = json!(stamp + 2);
            })
        };
        // Exactly one hour old is not older than the default one hour.
        let r = valid(&parse(&at(1782963341 + 3600)).unwrap())[0].clone();
        assert!(!aq(&r).stale);
        assert!(r.quality.flags.is_empty());
        let r = valid(&parse(&at(1782963341 + 3601)).unwrap())[0].clone();
        assert!(aq(&r).stale);
        assert_eq!(r.quality.flags, vec![QualityFlag::Stale]);
        assert_eq!(r.quality.score, 0.7);
        // The event time and id are the reading's, not the response's.
        assert_eq!(r.id.to_string(), "caf4a8fe12d8217dfe322812cacbea4c");

        // Without data_time_stamp, time_stamp is the reference.
        let text = san_juan_edited(|doc| {
            doc.as_object_mut().unwrap().remove("data_time_stamp");
            doc["time_stamp"] = json!(1782963341 + 7200);
        });
        assert!(aq(valid(&parse(&text).unwrap())[0]).stale);

        // A configured stale_after is used: 121 s is older than 2 minutes.
        let mut cfg = config();
        cfg.stale_after = Some(Dur(Duration::from_secs(120)));
        let rows = parse_with(&cfg, &real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        assert!(aq(valid(&rows)[0]).stale);
        // Ouray was seen 67 s before the response.
        assert!(!aq(valid(&rows)[2]).stale);
    }

    #[test]
    fn channel_disagreement_is_flagged_and_the_values_kept() {
        // Rock_Outdoor really reads A 6.1, B 1.3: 4.8 µg/m³ apart, within the rule.
        let rows = parse(&real(&format!("purpleair/{SAN_JUAN}"))).unwrap();
        let rock = valid(&rows)[4];
        assert_eq!(aq(rock).sensor_id, "173805");
        assert!(rock.quality.flags.is_empty());

        // B 0.5: 5.6 µg/m³ and 170 % apart.
        let text = san_juan_edited(|doc| doc["data"][4][9] = json!(0.5));
        let rows = parse(&text).unwrap();
        let rock = valid(&rows)[4];
        assert_eq!(rock.quality.flags, vec![QualityFlag::ChannelDisagreement]);
        assert_eq!(rock.quality.score, 0.8);
        let data = aq(rock);
        assert_eq!(
            (data.pm2_5_ugm3, data.pm2_5_a_ugm3, data.pm2_5_b_ugm3),
            (Some(3.7), Some(6.1), Some(0.5))
        );
        assert_eq!(data.aqi, Some(21));
    }

    #[test]
    fn disagreement_needs_both_the_absolute_and_the_relative_difference() {
        assert!(!channels_disagree(6.1, 1.3)); // 4.8 apart
        assert!(channels_disagree(6.1, 0.5)); // 5.6 apart, 170 %
        assert!(!channels_disagree(40.0, 30.0)); // 10 apart, but 29 %
        assert!(channels_disagree(20.0, 5.0)); // 15 apart, 120 %
        assert!(!channels_disagree(0.0, 0.0));
        // The edge: 5 apart is not more than 5.
        assert!(!channels_disagree(5.0, 0.0));
    }

    #[test]
    fn single_sensor_converts_units_and_uses_the_atm_channels() {
        let r = one(&real("purpleair/v1_sensors_131075__2022-11-05.json"));
        assert_eq!(r.id.to_string(), "165fb4c5847ae98c7292e78f3557e058");
        assert_eq!(format_event_time(&r.event_time), "2022-11-05T16:36:02Z");
        assert_eq!(r.location.as_ref().unwrap().geohash, "9muqd");
        let d = aq(&r);
        assert_eq!(d.sensor_id, "131075");
        // 69 °F, 1001.66 hPa.
        assert_eq!(d.temperature_c, Some(20.5556));
        assert_eq!(d.pressure_pa, Some(100166.0));
        assert_eq!(d.relative_humidity_pct, Some(33.0));
        // Real zeros stay zeros.
        assert_eq!(d.pm2_5_ugm3, Some(0.0));
        assert_eq!(d.pm10_ugm3, Some(0.0));
        assert_eq!(d.aqi, Some(0));
        assert!(!d.stale);

        let r = one(&real(
            "purpleair/v1_sensors_14867_Kangerlussuaq__2022-07-23.json",
        ));
        let d = aq(&r);
        assert_eq!(d.sensor_id, "14867");
        // pm2.5_atm, and the atm channels (not pm2.5_a/_b, 1.1 and 2.2).
        assert_eq!(
            (d.pm2_5_ugm3, d.pm2_5_a_ugm3, d.pm2_5_b_ugm3),
            (Some(1.7), Some(1.08), Some(2.22))
        );
        assert_eq!(d.pm10_ugm3, Some(1.8));
        assert_eq!(d.aqi, Some(9));
        assert_eq!(d.aqi_category.as_deref(), Some("Good"));
        assert_eq!(d.temperature_c, Some(15.5556));
        assert_eq!(d.pressure_pa, Some(98239.0));
        let loc = r.location.as_ref().unwrap();
        assert_eq!(
            (loc.lat, loc.lon, loc.geohash.as_str()),
            (66.996, -50.6215, "fguj0")
        );
        assert!(r.quality.flags.is_empty());
    }

    #[test]
    fn downgraded_single_channel_sensor_is_stale_with_no_combined_value() {
        // PA-I-SD, channel A downgraded (channel_flags 1), last seen 13.6 days before the
        // response: PurpleAir gives no pm2.5/pm2.5_atm, only A's 2020 µg/m³.
        let r = one(&real(
            "purpleair/v1_sensors_Idaea_2_PA-I-SD__2023-02-13.json",
        ));
        let d = aq(&r);
        assert_eq!(d.sensor_id, "137236");
        assert_eq!(format_event_time(&r.event_time), "2023-01-30T14:02:58Z");
        assert_eq!(d.pm2_5_ugm3, None);
        assert_eq!(d.pm2_5_a_ugm3, Some(2020.0));
        assert_eq!(d.pm2_5_b_ugm3, None);
        assert_eq!((d.aqi, d.aqi_category.as_deref()), (None, None));
        assert!(d.stale);
        assert_eq!(
            r.quality.flags,
            vec![
                QualityFlag::MissingFields,
                QualityFlag::QcQuestioned,
                QualityFlag::Stale
            ]
        );
        assert_eq!(r.quality.score, 0.4);
        assert_eq!(d.temperature_c, Some(23.8889));
    }

    #[test]
    fn pm2_5_falls_back_to_the_plain_field_without_atm() {
        let text = json!({
            "data_time_stamp": 1658588700,
            "fields": ["sensor_index", "last_seen", "pm2.5", "pm2.5_a", "pm2.5_b"],
            "data": [[14867, 1658588620, 1.7, 1.1, 2.2]]
        })
        .to_string();
        let r = one(&text);
        let d = aq(&r);
        assert_eq!(
            (d.pm2_5_ugm3, d.pm2_5_a_ugm3, d.pm2_5_b_ugm3),
            (Some(1.7), Some(1.1), Some(2.2))
        );
        // No coordinates requested: no location.
        assert_eq!(r.location, None);
        // Same sensor and last_seen as the single-sensor response: same id.
        let single = one(&real(
            "purpleair/v1_sensors_14867_Kangerlussuaq__2022-07-23.json",
        ));
        assert_eq!(r.id, single.id);
    }

    const SENSOR: &str = "purpleair/v1_sensors_131075__2022-11-05.json";
    const LOCAL: &str = "iot/purpleair_local_json_PA-II_single__2023-09-22.json";

    /// The reason the single-sensor response with `key` set to `value` is rejected, or `None`
    /// when it is valid.
    fn sensor_with(key: &str, value: Value) -> Option<String> {
        let mut doc: Value = serde_json::from_str(&real(SENSOR)).unwrap();
        doc["sensor"][key] = value;
        let mut rows = parse(&doc.to_string()).unwrap();
        match rows.pop() {
            Some(Row::Valid(_)) => None,
            Some(Row::Invalid(i)) => Some(i.reason),
            None => panic!("no row"),
        }
    }

    #[test]
    fn temperature_is_bounded_at_minus_60_and_90_c_after_conversion() {
        // −76 °F = −60 °C and 194 °F = 90 °C exactly.
        assert_eq!(sensor_with("temperature", json!(-76)), None);
        assert_eq!(sensor_with("temperature", json!(194)), None);
        assert_eq!(
            sensor_with("temperature", json!(-76.1)).as_deref(),
            Some("temperature -76.1 °F = -60.0556 °C is outside the accepted range -60 to 90 °C")
        );
        assert_eq!(
            sensor_with("temperature", json!(194.1)).as_deref(),
            Some("temperature 194.1 °F = 90.0556 °C is outside the accepted range -60 to 90 °C")
        );
        assert_eq!(
            sensor_with("temperature", json!(-500)).as_deref(),
            Some("temperature -500 °F = -295.5556 °C is outside the accepted range -60 to 90 °C")
        );
    }

    #[test]
    fn pressure_is_bounded_at_300_and_1100_hpa() {
        assert_eq!(sensor_with("pressure", json!(300)), None);
        assert_eq!(sensor_with("pressure", json!(1100)), None);
        assert_eq!(
            sensor_with("pressure", json!(299.99)).as_deref(),
            Some("pressure 299.99 hPa is outside the accepted range 300 to 1100 hPa")
        );
        assert_eq!(
            sensor_with("pressure", json!(1100.01)).as_deref(),
            Some("pressure 1100.01 hPa is outside the accepted range 300 to 1100 hPa")
        );
    }

    #[test]
    fn pm_is_bounded_at_10000_ugm3_in_every_field() {
        for key in ["pm2.5_atm", "pm2.5_atm_a", "pm2.5", "pm10.0_atm"] {
            assert_eq!(sensor_with(key, json!(10000)), None, "{key}");
            assert_eq!(
                sensor_with(key, json!(10000.01)),
                Some(format!(
                    "{key} 10000.01 µg/m³ is outside the accepted range 0 to 10000 µg/m³"
                ))
            );
        }
        assert_eq!(
            sensor_with("pm2.5_atm", json!(1e308)).as_deref(),
            Some("pm2.5_atm 1e308 µg/m³ is outside the accepted range 0 to 10000 µg/m³")
        );
        assert_eq!(sensor_with("pm2.5_atm", json!(0)), None);
        assert_eq!(
            sensor_with("pm2.5_atm", json!(-0.01)).as_deref(),
            Some("pm2.5_atm: -0.01 µg/m³ is negative")
        );
    }

    #[test]
    fn last_seen_is_after_2015_and_at_most_a_day_after_the_response() {
        // 2015-01-01T00:00:00Z = 1420070400.
        assert_eq!(sensor_with("last_seen", json!(1_420_070_400)), None);
        assert_eq!(
            sensor_with("last_seen", json!(1_420_070_399)).as_deref(),
            Some(
                "last_seen 2014-12-31T23:59:59Z is before 2015-01-01, when PurpleAir sensors did not yet exist"
            )
        );
        assert_eq!(
            sensor_with("last_seen", json!(-5)).as_deref(),
            Some(
                "last_seen 1969-12-31T23:59:55Z is before 2015-01-01, when PurpleAir sensors did not yet exist"
            )
        );
        // data_time_stamp 1667666181 + 86400.
        assert_eq!(sensor_with("last_seen", json!(1_667_752_581)), None);
        assert_eq!(
            sensor_with("last_seen", json!(1_667_752_582)).as_deref(),
            Some(
                "last_seen 2022-11-06T16:36:22Z is in the future: the latest accepted is the response's time stamp + 1 day = 2022-11-06T16:36:21Z"
            )
        );
    }

    fn fixed_parser(now: fn() -> DateTime<Utc>) -> PurpleAirParser {
        PurpleAirParser {
            now,
            ..PurpleAirParser::new(Arc::from("pa"), &config())
        }
    }

    fn reason_with(parser: &PurpleAirParser, text: &str) -> Option<String> {
        let mut rows = Vec::new();
        parser
            .parse(&mut text.as_bytes(), &mut |r| {
                rows.push(r);
                true
            })
            .unwrap();
        match rows.pop() {
            Some(Row::Valid(_)) => None,
            Some(Row::Invalid(i)) => Some(i.reason),
            None => panic!("no row"),
        }
    }

    #[test]
    fn without_a_response_time_last_seen_is_bounded_by_the_clock() {
        fn now() -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2022, 11, 5, 0, 0, 0).unwrap()
        }
        let parser = fixed_parser(now);
        let text = |seen: i64| {
            format!(
                r#"{{"fields": ["sensor_index", "last_seen", "pm2.5_atm"], "data": [[1, {seen}, 1.0]]}}"#
            )
        };
        // 2022-11-06T00:00:00Z = 1667692800.
        assert_eq!(reason_with(&parser, &text(1_667_692_800)), None);
        assert_eq!(
            reason_with(&parser, &text(1_667_692_801)).as_deref(),
            Some(
                "last_seen 2022-11-06T00:00:01Z is in the future: the latest accepted is now + 1 day = 2022-11-06T00:00:00Z"
            )
        );
    }

    #[test]
    fn local_json_time_is_after_2015_and_at_most_a_day_ahead_of_the_clock() {
        fn now() -> DateTime<Utc> {
            // The capture's DateTime, 2023-09-22T16:04:07Z, minus one day.
            Utc.with_ymd_and_hms(2023, 9, 21, 16, 4, 7).unwrap()
        }
        let parser = fixed_parser(now);
        let local = real(LOCAL);
        assert_eq!(reason_with(&parser, &local), None);
        let ahead = local.replace("2023/09/22T16:04:07z", "2023/09/22T16:04:08z");
        assert_ne!(ahead, local);
        assert_eq!(
            reason_with(&parser, &ahead).as_deref(),
            Some(
                "DateTime 2023-09-22T16:04:08Z is in the future: the latest accepted is now + 1 day = 2023-09-22T16:04:07Z"
            )
        );
        let old = local.replace("2023/09/22T16:04:07z", "2014/12/31T23:59:59z");
        assert_eq!(
            reason_with(&parser, &old).as_deref(),
            Some(
                "DateTime 2014-12-31T23:59:59Z is before 2015-01-01, when PurpleAir sensors did not yet exist"
            )
        );
        let first = local.replace("2023/09/22T16:04:07z", "2015/01/01T00:00:00z");
        assert_eq!(reason_with(&parser, &first), None);
        // Temperature and pressure of the local JSON are bounded too.
        let mut doc: Value = serde_json::from_str(&local).unwrap();
        doc["current_temp_f"] = json!(194.1);
        assert!(
            reason_with(&parser, &doc.to_string())
                .unwrap()
                .starts_with("current_temp_f 194.1 °F = 90.0556 °C is outside")
        );
    }

    #[test]
    fn an_empty_list_is_zero_rows() {
        let text = r#"{"data_time_stamp": 1782963462, "fields": ["sensor_index", "last_seen", "pm2.5_atm"], "data": []}"#;
        assert!(parse(text).unwrap().is_empty());
    }

    #[test]
    fn local_device_json_dual_laser() {
        let r = one(&real(
            "iot/purpleair_local_json_PA-II_dual__2026-05-17.json",
        ));
        assert_eq!(r.id.to_string(), "8239fd006bc9b85db0c6085d3309f669");
        assert_eq!(format_event_time(&r.event_time), "2026-05-17T22:23:06Z");
        // lat/lon 0, 0 is the blank setting, not a place.
        assert_eq!(r.location, None);
        let d = aq(&r);
        assert_eq!(d.sensor_id, "00:00:00:00:00:02");
        assert_eq!(
            (d.pm2_5_ugm3, d.pm2_5_a_ugm3, d.pm2_5_b_ugm3),
            (Some(0.0), Some(0.0), Some(0.0))
        );
        assert_eq!(d.aqi, Some(0));
        assert_eq!(d.temperature_c, Some(26.6667));
        assert_eq!(d.relative_humidity_pct, Some(14.0));
        assert_eq!(d.pressure_pa, Some(93390.0));
        assert!(!d.stale);
    }

    #[test]
    fn local_device_json_single_laser_with_redacted_coordinates() {
        let r = one(&real(
            "iot/purpleair_local_json_PA-II_single__2023-09-22.json",
        ));
        assert_eq!(format_event_time(&r.event_time), "2023-09-22T16:04:07Z");
        // 123.123 is the repository author's redaction: no location, reading kept.
        assert_eq!(r.location, None);
        let d = aq(&r);
        assert_eq!(d.sensor_id, "de:ad:be:ef:12:34");
        assert_eq!(
            (d.pm2_5_ugm3, d.pm2_5_a_ugm3, d.pm2_5_b_ugm3),
            (Some(0.04), Some(0.04), None)
        );
        assert_eq!(d.pm10_ugm3, Some(0.44));
        assert_eq!(d.aqi, Some(0));
        assert_eq!(d.temperature_c, Some(26.1111));
        assert_eq!(d.pressure_pa, Some(92457.0));
    }

    #[test]
    fn api_error_bodies_are_classified_not_zero_rows() {
        let err = parse(
            r#"{"api_version": "V1.0.10-0.0.17", "time_stamp": 1656117000, "error": "ApiKeyInvalidError", "description": "The provided api_key was not valid."}"#,
        )
        .unwrap_err();
        match &err {
            PayloadError::Problem { title, status, .. } => {
                assert_eq!(title, "The provided api_key was not valid.");
                assert_eq!(status, "ApiKeyInvalidError");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.kind(), "upstream_problem");
        let err = parse(r#"{"api_version": "V1.2.0-1.1.45", "time_stamp": 1782963464, "error": "PaymentRequiredError", "description": "Your account has run out of points."}"#).unwrap_err();
        assert!(
            matches!(&err, PayloadError::Problem { status, .. } if status == "PaymentRequiredError"),
            "{err:?}"
        );
    }

    #[test]
    fn payloads_that_are_not_purpleair_json_are_classified() {
        let kind = |text: &str| parse(text).unwrap_err().kind();
        assert_eq!(kind(""), "empty_payload");
        assert_eq!(
            kind("<html><body>502 Bad Gateway</body></html>"),
            "html_payload"
        );
        assert_eq!(kind("Too many requests"), "text_payload");
        assert_eq!(
            kind(r#"{"fields": ["sensor_index"], "data": [[1]"#),
            "invalid_json"
        );
        assert_eq!(kind("[]"), "unexpected_json");
        assert_eq!(kind(r#"{"results": []}"#), "unexpected_json");
        assert_eq!(kind(r#"{"data": [[1, 2]]}"#), "unexpected_json");
        assert_eq!(
            kind(r#"{"fields": ["a"], "data": {"a": 1}}"#),
            "unexpected_json"
        );
        assert_eq!(kind(r#"{"sensor": [1]}"#), "unexpected_json");
        let err =
            parse(r#"{"data_time_stamp": "yesterday", "fields": [], "data": []}"#).unwrap_err();
        assert!(err.to_string().contains("data_time_stamp"), "{err}");
    }

    /// Values of every wrong kind in every field: always one row per input row, never a panic.
    const ODD_VALUES: [&str; 10] = [
        "null",
        "true",
        "\"x\"",
        "-1",
        "1e308",
        "-1e308",
        "1.5",
        "[]",
        "{}",
        "18446744073709551615",
    ];

    #[test]
    fn odd_values_in_any_field_give_rows_not_panics() {
        for i in 0..10 {
            for odd in ODD_VALUES {
                let text =
                    san_juan_edited(|doc| doc["data"][0][i] = serde_json::from_str(odd).unwrap());
                let rows = parse(&text).unwrap();
                assert_eq!(rows.len(), 7, "field {i} = {odd}");
            }
        }
        for file in [
            "purpleair/v1_sensors_131075__2022-11-05.json",
            "iot/purpleair_local_json_PA-II_dual__2026-05-17.json",
        ] {
            let doc: Value = serde_json::from_str(&real(file)).unwrap();
            let object = doc.get("sensor").unwrap_or(&doc).as_object().unwrap();
            for key in object.keys() {
                for odd in ODD_VALUES {
                    let mut edited = doc.clone();
                    let target = match edited.get_mut("sensor") {
                        Some(sensor) => sensor,
                        None => &mut edited,
                    };
                    target[key] = serde_json::from_str(odd).unwrap();
                    let rows = parse(&edited.to_string()).unwrap();
                    assert_eq!(rows.len(), 1, "{file}: {key} = {odd}");
                }
            }
        }
    }

    #[test]
    fn config_checks() {
        let check = |s: &SourceConfig| {
            let mut problems = Vec::new();
            check_config("sources.pa", s, &mut problems);
            problems
        };
        // Over HTTP, no field list would request (and pay for) every field.
        let problems = check(&config());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("sources.pa.fields: list the fields"),
            "{problems:?}"
        );
        assert!(problems[0].contains("requesting all fields is a config error"));
        // Replaying files needs no field list.
        let mut files = config();
        files.paths = vec!["captures/*.json".to_owned()];
        assert!(check(&files).is_empty());

        let mut s = config();
        s.fields = vec!["name".into(), "humidity".into(), "name".into(), " ".into()];
        s.stale_after = Some(Dur(Duration::ZERO));
        assert_eq!(
            check(&s),
            vec![
                "sources.pa.fields: must include `last_seen` (records are keyed and timed by it)",
                "sources.pa.fields: must include a PM2.5 field, one of pm2.5_atm, pm2.5",
                "sources.pa.fields[2]: `name` is listed twice (each field costs points)",
                "sources.pa.fields[3]: empty field name",
                "sources.pa.stale_after: must be longer than 0s, e.g. `stale_after: 1h`",
            ]
        );
        let mut ok = config();
        ok.fields = ["last_seen", "latitude", "longitude", "pm2.5_atm"]
            .map(String::from)
            .to_vec();
        ok.stale_after = Some(Dur(Duration::from_secs(600)));
        assert!(check(&ok).is_empty());
    }
}
