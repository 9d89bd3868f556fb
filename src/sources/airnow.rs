//! `airnow`: US EPA AirNow API, a JSON array in one of three shapes:
//!
//! - classic observations (`/aq/observation/latLong/current`): `DateObserved` (users report a
//!   trailing space), `HourObserved`, `LocalTimeZone` (PST, EDT, …), `ReportingArea`,
//!   `StateCode`, `Latitude`, `Longitude`, `ParameterName`, `AQI`, `Category {Number, Name}`;
//! - the newer observation schema: `dateObserved`, `hourObserved` as `"07:00"`,
//!   `localTimeZone`, `reportingAreaName`, `siteID`, `parameterName` (`OZONE` for `O3`),
//!   `nowcastAQI`, `aqiCategoryName`, and no coordinates (then `location` is null);
//! - `/aq/data` rows: `UTC`, `Latitude`, `Longitude`, `Parameter`, `Unit`, `Value` (the NowCast
//!   concentration AirNow's AQI is computed from), `RawConcentration` (the hour's measurement),
//!   `AQI`, `Category` (1–6); with `verbose=1` also `SiteName`, `FullAQSCode`, `IntlAQSCode`.
//!   Some data types carry only the AQI, no concentration.
//!
//! −1 and −999 are AirNow's "no value" in numeric fields: they become null. Other negative
//! concentrations are kept: regulatory monitors report small negatives in clean air.
//! Concentrations outside [`Parameter::bounds`] (after conversion) and a reported AQI outside
//! [`AQI_REPORTED`] make the row invalid.
//!
//! The AQI is recomputed (2024 breakpoints) where a concentration and a breakpoint table exist
//! (PM2.5, PM10 `Value`); otherwise the reported AQI is kept. `pm2_5_ugm3`/`pm10_ugm3` hold
//! `Value`; other gases go to `concentrations` in one unit per gas (`o3_ppb`, `no2_ppb`,
//! `so2_ppb`, `co_ppm`, converted when AirNow's `Unit` differs); `RawConcentration` is kept as
//! `<parameter>_raw_<unit>`. AirNow gives no reference time, so nothing is marked stale.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::Value;

use super::{Bounds, Invalid, Parser, PayloadError, Row, SourceType, excerpt, read_json};
use crate::config::SourceConfig;
use crate::record::{
    AirQuality, Data, Kind, Location, Priority, Quality, QualityFlag, Record, RecordId, aqi,
    format_event_time, key_number,
};

/// Largest AirNow document read into memory (a national bbox day is tens of MB).
const MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;

const EXPECTED: &str = "AirNow JSON";

/// A reported AQI. The index tops out at 500, but AirNow does report values "Beyond the AQI"
/// in extreme wildfire smoke (EPA counted about 40 occasions in the decade to 2023); a three-digit
/// AQI is kept as reported, a larger one is not an index value.
pub const AQI_REPORTED: Bounds = Bounds::new(0.0, 999.0, "");

/// AirNow's "no value" markers in numeric fields.
const SENTINELS: [f64; 2] = [-1.0, -999.0];

pub struct AirNowParser {
    source_id: Arc<str>,
}

impl AirNowParser {
    /// AirNow's parsing has no settings yet; `config` keeps the constructor alike across
    /// connectors.
    pub fn new(source_id: Arc<str>, _config: &SourceConfig) -> Self {
        AirNowParser { source_id }
    }
}

impl Parser for AirNowParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        let (body, doc) = read_json(input, MAX_DOCUMENT_BYTES, EXPECTED)?;
        let items = match &doc {
            Value::Array(items) => items,
            Value::Object(top) => return Err(object_error(top, &body)),
            _ => {
                return Err(PayloadError::UnexpectedJson {
                    detail: "not a JSON array of observations".to_owned(),
                    excerpt: excerpt(&body),
                });
            }
        };
        for (i, item) in items.iter().enumerate() {
            let row = match self.parse_item(item) {
                Ok(record) => Row::Valid(Box::new(record)),
                Err(reason) => Row::Invalid(Invalid {
                    position: format!("row {}", i + 1),
                    reason,
                    raw: crate::dlq::truncate(item.to_string(), crate::dlq::MAX_RAW_BYTES),
                }),
            };
            if !out(row) {
                break;
            }
        }
        Ok(())
    }
}

/// An object where the array was expected: AirNow's error document
/// (`{"WebServiceError":[{"Message":"Invalid API key"}]}`) or some other shape.
fn object_error(top: &serde_json::Map<String, Value>, body: &[u8]) -> PayloadError {
    let error = top
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("WebServiceError"));
    match error {
        Some((key, value)) => {
            let message = match value {
                Value::Array(items) => items
                    .iter()
                    .filter_map(|m| field_ci(m, "Message").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("; "),
                Value::Object(_) => field_ci(value, "Message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            PayloadError::Problem {
                title: if message.is_empty() {
                    "AirNow web service error".to_owned()
                } else {
                    message
                },
                status: key.clone(),
                excerpt: excerpt(body),
            }
        }
        None => PayloadError::UnexpectedJson {
            detail: "a JSON object where AirNow's array of observations was expected".to_owned(),
            excerpt: excerpt(body),
        },
    }
}

fn field_ci<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A row's fields by lower-case name, so the classic (`DateObserved`) and newer
/// (`dateObserved`) spellings read alike.
struct Fields<'a>(HashMap<String, (&'a str, &'a Value)>);

impl<'a> Fields<'a> {
    fn new(object: &'a serde_json::Map<String, Value>) -> Self {
        Fields(
            object
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (k.as_str(), v)))
                .collect(),
        )
    }

    /// The first of `names` present and not null, with the name as the payload spells it.
    fn get(&self, names: &[&str]) -> Option<(&'a str, &'a Value)> {
        names
            .iter()
            .filter_map(|n| self.0.get(&n.to_ascii_lowercase()).copied())
            .find(|(_, v)| !v.is_null())
    }

    fn text(&self, names: &[&str]) -> Result<Option<&'a str>, String> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
            Some((name, other)) => Err(format!("{name}: {other} is not text")),
        }
    }

    /// A number, with AirNow's −1/−999 read as missing.
    fn number(&self, names: &[&str]) -> Result<Option<f64>, String> {
        match self.get(names) {
            None => Ok(None),
            Some((name, Value::Number(n))) => match n.as_f64() {
                Some(x) if SENTINELS.contains(&x) => Ok(None),
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(format!("{name}: {n} is not a finite number")),
            },
            Some((name, other)) => Err(format!("{name}: {other} is not a number")),
        }
    }

    /// A plain number (coordinates): no sentinels.
    fn coordinate(&self, name: &str) -> Result<Option<f64>, String> {
        match self.get(&[name]) {
            None => Ok(None),
            Some((_, Value::Number(n))) => Ok(n.as_f64().filter(|x| x.is_finite())),
            Some((name, other)) => Err(format!("{name}: {other} is not a number")),
        }
    }
}

/// The pollutants AirNow reports, with the unit firestream keeps each in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parameter {
    Pm2_5,
    Pm10,
    O3,
    No2,
    Co,
    So2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ugm3,
    Ppb,
    Ppm,
}

impl Parameter {
    fn parse(text: &str) -> Option<Self> {
        let key: String = text
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_uppercase();
        Some(match key.as_str() {
            "PM25" => Parameter::Pm2_5,
            "PM10" => Parameter::Pm10,
            "O3" | "OZONE" => Parameter::O3,
            "NO2" => Parameter::No2,
            "CO" => Parameter::Co,
            "SO2" => Parameter::So2,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Parameter::Pm2_5 => "pm2_5",
            Parameter::Pm10 => "pm10",
            Parameter::O3 => "o3",
            Parameter::No2 => "no2",
            Parameter::Co => "co",
            Parameter::So2 => "so2",
        }
    }

    /// The unit a concentration of this parameter is stored in.
    fn unit(self) -> Unit {
        match self {
            Parameter::Pm2_5 | Parameter::Pm10 => Unit::Ugm3,
            Parameter::Co => Unit::Ppm,
            Parameter::O3 | Parameter::No2 | Parameter::So2 => Unit::Ppb,
        }
    }

    /// Accepted concentrations in [`Parameter::unit`]. Highs: PM beyond 10,000 µg/m³ is
    /// denser than the thickest wildfire smoke ever measured at a monitor (a few thousand);
    /// gases beyond 10,000 ppb (10 ppm) and CO beyond 1,000 ppm are far past any ambient
    /// reading (ozone records are below 1 ppm, CO in smoke some tens of ppm). Lows: monitors
    /// report small negatives in clean air (zero noise of a few units; the LA file has −3
    /// µg/m³), so the floor sits far below that, at −100 µg/m³, −100 ppb, −1 ppm.
    fn bounds(self) -> Bounds {
        match self.unit() {
            Unit::Ugm3 => Bounds::new(-100.0, 10_000.0, "µg/m³"),
            Unit::Ppb => Bounds::new(-100.0, 10_000.0, "ppb"),
            Unit::Ppm => Bounds::new(-1.0, 1_000.0, "ppm"),
        }
    }

    /// AQI from a concentration, where firestream has the breakpoint table.
    fn aqi(self, concentration: f64) -> Option<u16> {
        match self {
            Parameter::Pm2_5 => aqi::pm2_5(concentration),
            Parameter::Pm10 => aqi::pm10(concentration),
            _ => None,
        }
    }
}

impl Unit {
    fn parse(text: &str) -> Option<Self> {
        let key: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        Some(match key.as_str() {
            "ug/m3" | "µg/m3" | "µg/m³" | "ug/m³" | "ugm3" => Unit::Ugm3,
            "ppb" => Unit::Ppb,
            "ppm" => Unit::Ppm,
            _ => return None,
        })
    }

    fn suffix(self) -> &'static str {
        match self {
            Unit::Ugm3 => "ugm3",
            Unit::Ppb => "ppb",
            Unit::Ppm => "ppm",
        }
    }

    /// `value` in this unit expressed in `to`, when that is a conversion between mixing
    /// ratios or no conversion at all.
    fn convert(self, value: f64, to: Unit) -> Option<f64> {
        match (self, to) {
            (a, b) if a == b => Some(value),
            (Unit::Ppm, Unit::Ppb) => Some(round4(value * 1000.0)),
            (Unit::Ppb, Unit::Ppm) => Some(round4(value / 1000.0)),
            _ => None,
        }
    }
}

impl AirNowParser {
    fn parse_item(&self, item: &Value) -> Result<Record, String> {
        let Value::Object(object) = item else {
            return Err(format!("row is not a JSON object: {item}"));
        };
        let f = Fields::new(object);

        let parameter_text = f
            .text(&["Parameter", "ParameterName"])?
            .ok_or("Parameter/ParameterName is missing")?;
        let parameter = Parameter::parse(parameter_text).ok_or_else(|| {
            format!(
                "parameter {parameter_text:?} is not one of PM2.5, PM10, OZONE/O3, NO2, CO, SO2"
            )
        })?;
        let event_time = observed_at(&f)?;

        // Concentrations, converted to the parameter's unit.
        let value = f.number(&["Value"])?;
        let raw = f.number(&["RawConcentration"])?;
        let (value_stored, raw_stored) = if value.is_some() || raw.is_some() {
            let unit_text = f
                .text(&["Unit"])?
                .ok_or("Unit is missing for the concentration")?;
            let unit = Unit::parse(unit_text)
                .ok_or_else(|| format!("Unit {unit_text:?} is not UG/M3, PPB or PPM"))?;
            let to = parameter.unit();
            let convert = |name: &str, x: f64| {
                let converted = unit.convert(x, to).ok_or_else(|| {
                    format!(
                        "Unit {unit_text:?} does not fit {parameter_text} (kept in {})",
                        to.suffix()
                    )
                })?;
                parameter
                    .bounds()
                    .check(&format!("{name} ({parameter_text})"), converted)
            };
            (
                value.map(|x| convert("Value", x)).transpose()?,
                raw.map(|x| convert("RawConcentration", x)).transpose()?,
            )
        } else {
            (None, None)
        };

        let reported_aqi = match f.number(&["AQI", "nowcastAQI"])? {
            None => None,
            Some(x) if x < 0.0 || x.fract() != 0.0 => {
                return Err(format!("AQI {x} is not a whole number ≥ 0"));
            }
            Some(x) => Some(AQI_REPORTED.check("AQI", x)? as u16),
        };
        let aqi = value_stored.and_then(|c| parameter.aqi(c)).or(reported_aqi);
        let aqi_category = match aqi {
            Some(v) => Some(aqi::category_name(v).to_owned()),
            None => reported_category(&f)?,
        };

        let location = match (f.coordinate("Latitude")?, f.coordinate("Longitude")?) {
            (Some(lat), Some(lon)) => {
                Some(Location::new(lat, lon).map_err(|e| format!("Latitude/Longitude: {e}"))?)
            }
            (None, None) => None,
            (Some(_), None) => return Err("Latitude is given without Longitude".to_owned()),
            (None, Some(_)) => return Err("Longitude is given without Latitude".to_owned()),
        };
        let site = f.text(&["FullAQSCode", "IntlAQSCode", "siteID"])?;
        let reporting_area = f.text(&["ReportingArea", "reportingAreaName"])?;
        let area_id = reporting_area.map(|area| match f.text(&["StateCode"]) {
            Ok(Some(state)) => format!("{area}, {state}"),
            _ => area.to_owned(),
        });

        // Natural key (DESIGN §3): the site when AirNow names it, else where and what was
        // reported, so co-located monitors of one parameter stay apart.
        let hour = format_event_time(&event_time);
        let opt = |x: Option<f64>| x.map(key_number).unwrap_or_default();
        // Concentrations in the stored unit, so a PPM and a PPB report of one value agree.
        let reported = [
            reported_aqi.map(|a| a.to_string()).unwrap_or_default(),
            opt(value_stored),
            opt(raw_stored),
        ];
        let (sensor_id, key): (String, Vec<String>) = match (site, &location, &area_id) {
            (Some(site), _, _) => (site.to_owned(), vec![site.to_owned()]),
            (None, Some(loc), _) => {
                let (lat, lon) = (key_number(loc.lat), key_number(loc.lon));
                let id = area_id.clone().unwrap_or_else(|| format!("{lat},{lon}"));
                let mut key = vec![lat, lon];
                key.extend(reported.iter().cloned());
                (id, key)
            }
            (None, None, Some(area)) => {
                let mut key = vec![area.clone()];
                key.extend(reported.iter().cloned());
                (area.clone(), key)
            }
            (None, None, None) => {
                return Err(
                    "no site code, coordinates or reporting area identifies the monitor".to_owned(),
                );
            }
        };
        let mut parts: Vec<&str> = vec![parameter.name(), &hour];
        parts.extend(key.iter().map(String::as_str));
        let id = RecordId::from_natural_key(SourceType::Airnow, &parts);

        let mut concentrations = BTreeMap::new();
        let suffix = parameter.unit().suffix();
        let (mut pm2_5, mut pm10) = (None, None);
        match parameter {
            Parameter::Pm2_5 => pm2_5 = value_stored,
            Parameter::Pm10 => pm10 = value_stored,
            _ => {
                if let Some(v) = value_stored {
                    concentrations.insert(format!("{}_{suffix}", parameter.name()), v);
                }
            }
        }
        if let Some(r) = raw_stored {
            concentrations.insert(format!("{}_raw_{suffix}", parameter.name()), r);
        }

        let mut flags = Vec::new();
        // Every AirNow shape carries an AQI; a row without one says little.
        if aqi.is_none() {
            flags.push(QualityFlag::MissingFields);
        }
        let data = AirQuality {
            sensor_id,
            provider: "airnow",
            parameter: parameter.name().to_owned(),
            pm2_5_ugm3: pm2_5,
            pm2_5_a_ugm3: None,
            pm2_5_b_ugm3: None,
            pm10_ugm3: pm10,
            concentrations,
            aqi,
            aqi_category,
            temperature_c: None,
            relative_humidity_pct: None,
            pressure_pa: None,
            stale: false,
            reporting_area: reporting_area.map(str::to_owned),
        };
        Ok(Record {
            schema: (),
            id,
            source_id: self.source_id.clone(),
            source_type: SourceType::Airnow,
            kind: Kind::AirQuality,
            event_time,
            ingested_at: Utc::now(),
            location,
            priority: Priority::Normal,
            quality: Quality::from_flags(flags),
            data: Data::AirQuality(data),
        })
    }
}

/// The hour observed, in UTC: `UTC` (`/aq/data`), or `DateObserved` + `HourObserved` in
/// `LocalTimeZone` (observations).
fn observed_at(f: &Fields) -> Result<DateTime<Utc>, String> {
    if let Some(utc) = f.text(&["UTC"])? {
        return ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
            .iter()
            .find_map(|fmt| NaiveDateTime::parse_from_str(utc, fmt).ok())
            .map(|t| t.and_utc())
            .or_else(|| {
                DateTime::parse_from_rfc3339(utc)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            })
            .ok_or_else(|| format!("UTC {utc:?} is not like 2025-01-10T00:00"));
    }
    // `text` trims, which handles the reported trailing space in "2020-12-20 ".
    let date_text = f
        .text(&["DateObserved"])?
        .ok_or("neither UTC nor DateObserved is given")?;
    let date = NaiveDate::parse_from_str(date_text, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(date_text, "%m/%d/%Y"))
        .map_err(|_| format!("DateObserved {date_text:?} is not like 2020-12-20"))?;
    let time = match f.get(&["HourObserved"]) {
        None => return Err("HourObserved is missing".to_owned()),
        Some((name, Value::Number(n))) => n
            .as_u64()
            .and_then(|h| NaiveTime::from_hms_opt(u32::try_from(h).ok()?, 0, 0))
            .ok_or_else(|| format!("{name}: {n} is not an hour 0-23"))?,
        Some((name, Value::String(s))) => {
            let s = s.trim();
            s.parse::<u32>()
                .ok()
                .and_then(|h| NaiveTime::from_hms_opt(h, 0, 0))
                .or_else(|| NaiveTime::parse_from_str(s, "%H:%M").ok())
                .ok_or_else(|| format!("{name}: {s:?} is not an hour like 07:00"))?
        }
        Some((name, other)) => return Err(format!("{name}: {other} is not an hour")),
    };
    let zone = f
        .text(&["LocalTimeZone"])?
        .ok_or("LocalTimeZone is missing")?;
    let offset = zone_offset(zone).ok_or_else(|| {
        format!("LocalTimeZone {zone:?} is not a known zone (HST, AKST, PST, MST, CST, EST, AST and their daylight forms, SST, ChST, UTC)")
    })?;
    offset
        .from_local_datetime(&date.and_time(time))
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{date_text} {time} {zone} is not a valid local time"))
}

/// UTC offsets of the zone abbreviations AirNow uses (US states and territories, Canada).
fn zone_offset(zone: &str) -> Option<FixedOffset> {
    let minutes = match zone.trim().to_ascii_uppercase().as_str() {
        "UTC" | "GMT" | "UT" | "Z" => 0,
        "SST" => -11 * 60,
        "HST" => -10 * 60,
        "HDT" | "AKST" => -9 * 60,
        "AKDT" | "PST" => -8 * 60,
        "PDT" | "MST" => -7 * 60,
        "MDT" | "CST" => -6 * 60,
        "CDT" | "EST" => -5 * 60,
        "EDT" | "AST" => -4 * 60,
        "ADT" => -3 * 60,
        "NST" => -(3 * 60 + 30),
        "NDT" => -(2 * 60 + 30),
        "CHST" => 10 * 60,
        _ => return None,
    };
    FixedOffset::east_opt(minutes * 60)
}

/// The category AirNow reported, for rows without an AQI to derive it from.
fn reported_category(f: &Fields) -> Result<Option<String>, String> {
    if let Some(name) = f.text(&["aqiCategoryName"])? {
        return Ok(Some(name.to_owned()));
    }
    let number = match f.get(&["Category"]) {
        None => None,
        Some((_, category @ Value::Object(_))) => {
            if let Some(name) = field_ci(category, "Name").and_then(Value::as_str) {
                return Ok(Some(name.to_owned()));
            }
            field_ci(category, "Number").and_then(Value::as_f64)
        }
        Some((_, Value::Number(n))) => n.as_f64(),
        Some((name, other)) => return Err(format!("{name}: {other} is not a category")),
    };
    Ok(number
        .filter(|n| n.fract() == 0.0 && (1.0..=6.0).contains(n))
        .and_then(|n| aqi::Category::from_number(n as u8))
        .map(|c| c.name().to_owned()))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use serde_json::json;

    const CLASSIC: &str = "observation_latLong_current__2020-12-20_LA.json";
    const V2: &str = "observation_latLong_current_v2schema__2026-09-10_DC.json";
    const LA: &str = "aq_data_bbox_LA_PM25__2025-01-10.json";
    const EAST: &str = "aq_data_bbox_EasternUS__2021-09-21__first3000.json";

    fn real(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/real/airnow")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Vec<Row>, PayloadError> {
        let config = SourceConfig::defaults_for(SourceType::Airnow);
        let parser = AirNowParser::new(Arc::from("airnow"), &config);
        let mut rows = Vec::new();
        parser.parse(&mut text.as_bytes(), &mut |r| {
            rows.push(r);
            true
        })?;
        Ok(rows)
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

    /// Parses a one-row array built from `row`.
    fn one(row: Value) -> Result<Record, Invalid> {
        let mut rows = parse(&Value::Array(vec![row]).to_string()).unwrap();
        assert_eq!(rows.len(), 1);
        match rows.remove(0) {
            Row::Valid(r) => Ok(*r),
            Row::Invalid(i) => Err(i),
        }
    }

    fn aq(r: &Record) -> &AirQuality {
        match &r.data {
            Data::AirQuality(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// Row `n` (1-based) of a real file as JSON, to change one detail.
    fn real_row(file: &str, n: usize) -> Value {
        let doc: Value = serde_json::from_str(&real(file)).unwrap();
        doc[n - 1].clone()
    }

    #[test]
    fn classic_observations_convert_local_time_to_utc() {
        let rows = parse(&real(CLASSIC)).unwrap();
        let records = valid(&rows);
        assert_eq!(records.len(), 3);
        let o3 = records[0];
        // 2020-12-20 15:00 PST is 23:00 UTC.
        assert_eq!(format_event_time(&o3.event_time), "2020-12-20T23:00:00Z");
        assert_eq!(o3.id.to_string(), "335a9977045f6c0b5ec7b9b50536f916");
        let loc = o3.location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (34.0663, -118.2266));
        let expected = AirQuality {
            sensor_id: "Central LA CO, CA".to_owned(),
            provider: "airnow",
            parameter: "o3".to_owned(),
            pm2_5_ugm3: None,
            pm2_5_a_ugm3: None,
            pm2_5_b_ugm3: None,
            pm10_ugm3: None,
            concentrations: BTreeMap::new(),
            aqi: Some(44),
            aqi_category: Some("Good".to_owned()),
            temperature_c: None,
            relative_humidity_pct: None,
            pressure_pa: None,
            stale: false,
            reporting_area: Some("Central LA CO".to_owned()),
        };
        assert_eq!(aq(o3), &expected);
        assert!(o3.quality.flags.is_empty());
        // No concentration: the reported AQI is kept as it is.
        let (pm25, pm10) = (aq(records[1]), aq(records[2]));
        assert_eq!(
            (pm25.parameter.as_str(), pm25.aqi, pm25.pm2_5_ugm3),
            ("pm2_5", Some(37), None)
        );
        assert_eq!((pm10.parameter.as_str(), pm10.aqi), ("pm10", Some(11)));
        // Same place and hour, different parameters: different ids.
        assert_ne!(records[0].id, records[1].id);
    }

    #[test]
    fn trailing_space_in_date_observed_is_the_same_observation() {
        let clean = one(real_row(CLASSIC, 2)).unwrap();
        let mut row = real_row(CLASSIC, 2);
        row["DateObserved"] = json!("2020-12-20 ");
        let spaced = one(row).unwrap();
        assert_eq!(spaced.id, clean.id);
        assert_eq!(
            format_event_time(&spaced.event_time),
            "2020-12-20T23:00:00Z"
        );
    }

    #[test]
    fn time_zones_by_abbreviation_and_unknown_ones_are_invalid() {
        let at = |zone: &str| {
            let mut row = real_row(CLASSIC, 1);
            row["LocalTimeZone"] = json!(zone);
            one(row)
        };
        let utc = |zone: &str| format_event_time(&at(zone).unwrap().event_time);
        assert_eq!(utc("PDT"), "2020-12-20T22:00:00Z");
        assert_eq!(utc("EST"), "2020-12-20T20:00:00Z");
        assert_eq!(utc("akst"), "2020-12-21T00:00:00Z");
        assert_eq!(utc("HST"), "2020-12-21T01:00:00Z");
        assert_eq!(utc("ChST"), "2020-12-20T05:00:00Z");
        let bad = at("XST").unwrap_err();
        assert!(
            bad.reason
                .starts_with("LocalTimeZone \"XST\" is not a known zone"),
            "{}",
            bad.reason
        );
        assert_eq!(bad.position, "row 1");
        assert!(bad.raw.contains("\"LocalTimeZone\":\"XST\""), "{}", bad.raw);

        // The rest of a payload continues past the bad row.
        let mut doc: Value = serde_json::from_str(&real(CLASSIC)).unwrap();
        doc[1]["LocalTimeZone"] = json!("Mars/Olympus");
        let rows = parse(&doc.to_string()).unwrap();
        assert_eq!(valid(&rows).len(), 2);
        assert_eq!(invalid_rows(&rows)[0].position, "row 2");
    }

    #[test]
    fn newer_schema_has_no_location_and_hour_as_text() {
        let rows = parse(&real(V2)).unwrap();
        let records = valid(&rows);
        assert_eq!(records.len(), 3);
        let r = records[0];
        // 2026-09-10 07:00 EDT is 11:00 UTC.
        assert_eq!(format_event_time(&r.event_time), "2026-09-10T11:00:00Z");
        assert_eq!(r.location, None);
        assert_eq!(r.id.to_string(), "cedaa537e39fd40aa83fe7ca46c998ee");
        let d = aq(r);
        assert_eq!(d.sensor_id, "110010041");
        assert_eq!(d.parameter, "pm2_5");
        assert_eq!((d.aqi, d.aqi_category.as_deref()), (Some(34), Some("Good")));
        assert_eq!(
            d.reporting_area.as_deref(),
            Some("Northern Virginia and DC")
        );
        // OZONE is o3.
        let o3 = aq(records[1]);
        assert_eq!(
            (o3.parameter.as_str(), o3.sensor_id.as_str(), o3.aqi),
            ("o3", "110010041", Some(35))
        );
        let pm10 = aq(records[2]);
        assert_eq!(
            (pm10.parameter.as_str(), pm10.sensor_id.as_str(), pm10.aqi),
            ("pm10", "510590030", Some(12))
        );
    }

    #[test]
    fn aq_data_rows_recompute_pm2_5_aqi_and_keep_the_raw_hour() {
        let rows = parse(&real(LA)).unwrap();
        assert_eq!(rows.len(), 1457);
        let records = valid(&rows);
        assert_eq!(records.len(), 1457);

        // Row 1: RawConcentration −1 is missing, Value 0.0 is a real zero.
        let r = records[0];
        assert_eq!(r.id.to_string(), "651bfa226a75d0909ea6397a45c06926");
        assert_eq!(format_event_time(&r.event_time), "2025-01-10T00:00:00Z");
        let d = aq(r);
        assert_eq!(d.sensor_id, "34.27632,-118.68369");
        assert_eq!(d.pm2_5_ugm3, Some(0.0));
        assert!(d.concentrations.is_empty());
        assert_eq!((d.aqi, d.aqi_category.as_deref()), (Some(0), Some("Good")));
        assert_eq!(d.reporting_area, None);

        // Row 4: smoke from the Palisades and Eaton fires.
        let r = records[3];
        assert_eq!(r.id.to_string(), "6cd4132236c20d9b161e0b42d23cd0b8");
        let d = aq(r);
        assert_eq!(d.pm2_5_ugm3, Some(60.5));
        assert_eq!(
            d.concentrations,
            BTreeMap::from([("pm2_5_raw_ugm3".to_owned(), 53.2)])
        );
        assert_eq!(
            (d.aqi, d.aqi_category.as_deref()),
            (Some(155), Some("Unhealthy"))
        );

        // AirNow computed these with the 2024 breakpoints: ours agree on every row.
        let doc: Value = serde_json::from_str(&real(LA)).unwrap();
        let mut compared = 0;
        for (item, record) in doc.as_array().unwrap().iter().zip(&records) {
            let reported = item["AQI"].as_i64().unwrap();
            if reported >= 0 {
                assert_eq!(aq(record).aqi, Some(reported as u16), "{item}");
                compared += 1;
            }
        }
        assert_eq!(compared, 1453);
        let max = records.iter().filter_map(|r| aq(r).aqi).max();
        assert_eq!(max, Some(173));
        // Every row is its own observation.
        let ids: HashSet<_> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 1457);
    }

    #[test]
    fn sentinels_minus_1_and_minus_999_are_null() {
        // Row 123: Value, AQI and Category −999; RawConcentration −3.0 is a real reading.
        let r = one(real_row(LA, 123)).unwrap();
        let d = aq(&r);
        assert_eq!(d.pm2_5_ugm3, None);
        assert_eq!((d.aqi, d.aqi_category.as_deref()), (None, None));
        assert_eq!(
            d.concentrations,
            BTreeMap::from([("pm2_5_raw_ugm3".to_owned(), -3.0)])
        );
        assert_eq!(r.quality.flags, vec![QualityFlag::MissingFields]);
        // Row 10: RawConcentration −999.
        let d = aq(&one(real_row(LA, 10)).unwrap()).clone();
        assert_eq!((d.pm2_5_ugm3, d.aqi), (Some(0.0), Some(0)));
        assert!(d.concentrations.is_empty());
        // −1 as a Value and an AQI, built from row 2 (Value 2.9, AQI 16).
        let mut row = real_row(LA, 2);
        row["Value"] = json!(-1.0);
        row["AQI"] = json!(-1);
        let d = aq(&one(row).unwrap()).clone();
        assert_eq!((d.pm2_5_ugm3, d.aqi), (None, None));
        // The reported Category (1) still names the category when the AQI is missing.
        assert_eq!(d.aqi_category.as_deref(), Some("Good"));
        assert_eq!(
            d.concentrations,
            BTreeMap::from([("pm2_5_raw_ugm3".to_owned(), 1.2)])
        );
    }

    #[test]
    fn aqi_only_rows_keep_the_reported_aqi_and_co_located_monitors_stay_apart() {
        let rows = parse(&real(EAST)).unwrap();
        assert_eq!(rows.len(), 3000);
        let records = valid(&rows);
        assert_eq!(records.len(), 3000);
        let r = records[0];
        assert_eq!(r.id.to_string(), "2c9df136d337c64b1d15e6c64338591d");
        assert_eq!(format_event_time(&r.event_time), "2021-09-21T22:00:00Z");
        let d = aq(r);
        assert_eq!((d.parameter.as_str(), d.aqi), ("o3", Some(23)));
        assert!(d.concentrations.is_empty());
        assert_eq!(d.pm2_5_ugm3, None);
        // Rows 969 and 970: two PM2.5 monitors at one Montreal point, AQI 27 and 23.
        let (a, b) = (records[968], records[969]);
        assert_eq!(a.location, b.location);
        assert_eq!(a.event_time, b.event_time);
        assert_eq!((aq(a).aqi, aq(b).aqi), (Some(27), Some(23)));
        assert_ne!(a.id, b.id);
        let ids: HashSet<_> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 3000);
    }

    #[test]
    fn gas_concentrations_are_kept_in_one_unit_per_gas() {
        // Row 1 of the eastern file (OZONE, AQI 23) with a concentration added.
        let with = |value: f64, unit: &str| {
            let mut row = real_row(EAST, 1);
            row["Value"] = json!(value);
            row["Unit"] = json!(unit);
            one(row)
        };
        let ppb = with(31.0, "PPB").unwrap();
        let ppm = with(0.031, "PPM").unwrap();
        assert_eq!(
            aq(&ppb).concentrations,
            BTreeMap::from([("o3_ppb".to_owned(), 31.0)])
        );
        assert_eq!(aq(&ppm).concentrations, aq(&ppb).concentrations);
        assert_eq!(ppm.id, ppb.id);
        // No ozone breakpoint table here: the reported AQI stays.
        assert_eq!(aq(&ppb).aqi, Some(23));
        // CO stays in ppm.
        let mut row = real_row(EAST, 1);
        row["Parameter"] = json!("CO");
        row["Value"] = json!(400.0);
        let co = one(row).unwrap();
        assert_eq!(
            aq(&co).concentrations,
            BTreeMap::from([("co_ppm".to_owned(), 0.4)])
        );
        // A particulate concentration in ppb is a broken row.
        let mut row = real_row(LA, 2);
        row["Unit"] = json!("PPB");
        let bad = one(row).unwrap_err();
        assert_eq!(bad.reason, "Unit \"PPB\" does not fit PM2.5 (kept in ugm3)");
    }

    #[test]
    fn a_pre_2024_pm2_5_value_gets_the_2024_aqi() {
        // 10.0 µg/m³ was Good (AQI 42) before 2024 and is Moderate (AQI 53) since.
        let mut row = real_row(LA, 2);
        row["Value"] = json!(10.0);
        row["AQI"] = json!(42);
        let d = aq(&one(row).unwrap()).clone();
        assert_eq!(
            (d.aqi, d.aqi_category.as_deref()),
            (Some(53), Some("Moderate"))
        );
    }

    #[test]
    fn rows_that_fail_validation_say_where() {
        let mut row = real_row(LA, 2);
        row["Latitude"] = json!(134.1992);
        assert_eq!(
            one(row).unwrap_err().reason,
            "Latitude/Longitude: latitude 134.1992 is outside -90..90"
        );
        let mut row = real_row(LA, 2);
        row["Parameter"] = json!("BC");
        assert!(
            one(row)
                .unwrap_err()
                .reason
                .starts_with("parameter \"BC\" is not one of")
        );
        let mut row = real_row(LA, 2);
        row["Value"] = json!("2.9");
        assert_eq!(
            one(row).unwrap_err().reason,
            "Value: \"2.9\" is not a number"
        );
        let mut row = real_row(LA, 2);
        row["AQI"] = json!(-5);
        assert_eq!(
            one(row).unwrap_err().reason,
            "AQI -5 is not a whole number ≥ 0"
        );
        let mut row = real_row(V2, 1);
        row["hourObserved"] = json!("7 o'clock");
        assert_eq!(
            one(row).unwrap_err().reason,
            "hourObserved: \"7 o'clock\" is not an hour like 07:00"
        );
        let mut row = real_row(V2, 1);
        row.as_object_mut().unwrap().remove("siteID");
        row.as_object_mut().unwrap().remove("reportingAreaName");
        assert_eq!(
            one(row).unwrap_err().reason,
            "no site code, coordinates or reporting area identifies the monitor"
        );
        assert_eq!(
            one(json!(42)).unwrap_err().reason,
            "row is not a JSON object: 42"
        );
    }

    /// The reason a row built from `row` with `edits` is rejected, or `None` when it is valid.
    fn reason(mut row: Value, edits: &[(&str, Value)]) -> Option<String> {
        for (key, value) in edits {
            row[*key] = value.clone();
        }
        one(row).err().map(|i| i.reason)
    }

    #[test]
    fn concentrations_are_bounded_per_unit_at_the_exact_ends() {
        let pm = real_row(LA, 2);
        for key in ["Value", "RawConcentration"] {
            assert_eq!(reason(pm.clone(), &[(key, json!(10000.0))]), None);
            assert_eq!(reason(pm.clone(), &[(key, json!(-100.0))]), None);
            assert_eq!(
                reason(pm.clone(), &[(key, json!(10000.1))]),
                Some(format!(
                    "{key} (PM2.5) 10000.1 µg/m³ is outside the accepted range -100 to 10000 µg/m³"
                ))
            );
            assert_eq!(
                reason(pm.clone(), &[(key, json!(-100.1))]),
                Some(format!(
                    "{key} (PM2.5) -100.1 µg/m³ is outside the accepted range -100 to 10000 µg/m³"
                ))
            );
        }
        assert_eq!(
            reason(pm.clone(), &[("Value", json!(1e308))]).as_deref(),
            Some("Value (PM2.5) 1e308 µg/m³ is outside the accepted range -100 to 10000 µg/m³")
        );
        // Gases in ppb, bounded after conversion: 10 PPM is 10,000 ppb.
        let o3 = real_row(EAST, 1);
        let ppb =
            |v: f64, unit: &str| reason(o3.clone(), &[("Value", json!(v)), ("Unit", json!(unit))]);
        assert_eq!(ppb(10000.0, "PPB"), None);
        assert_eq!(ppb(10.0, "PPM"), None);
        assert_eq!(ppb(-100.0, "PPB"), None);
        assert_eq!(
            ppb(10000.1, "PPB").as_deref(),
            Some("Value (OZONE) 10000.1 ppb is outside the accepted range -100 to 10000 ppb")
        );
        assert_eq!(
            ppb(-100.1, "PPB").as_deref(),
            Some("Value (OZONE) -100.1 ppb is outside the accepted range -100 to 10000 ppb")
        );
        // CO in ppm.
        let co = |v: f64| {
            reason(
                o3.clone(),
                &[
                    ("Parameter", json!("CO")),
                    ("Unit", json!("PPM")),
                    ("Value", json!(v)),
                ],
            )
        };
        assert_eq!(co(1000.0), None);
        assert_eq!(co(-1.0), None, "-1 is AirNow's no-value marker");
        assert_eq!(co(-0.99), None);
        assert_eq!(
            co(1000.1).as_deref(),
            Some("Value (CO) 1000.1 ppm is outside the accepted range -1 to 1000 ppm")
        );
        assert_eq!(
            co(-1.01).as_deref(),
            Some("Value (CO) -1.01 ppm is outside the accepted range -1 to 1000 ppm")
        );
    }

    #[test]
    fn reported_aqi_beyond_500_is_kept_up_to_999() {
        // An ozone row: no breakpoint table here, so the reported AQI is what is kept.
        let o3 = real_row(EAST, 1);
        let r = one({
            let mut row = o3.clone();
            row["AQI"] = json!(999);
            row
        })
        .unwrap();
        assert_eq!(aq(&r).aqi, Some(999));
        assert_eq!(aq(&r).aqi_category.as_deref(), Some("Hazardous"));
        assert_eq!(reason(o3.clone(), &[("AQI", json!(0))]), None);
        assert_eq!(
            reason(o3.clone(), &[("AQI", json!(1000))]).as_deref(),
            Some("AQI 1000 is outside the accepted range 0 to 999")
        );
        assert_eq!(
            reason(o3, &[("AQI", json!(1e308))]).as_deref(),
            Some("AQI 1e308 is outside the accepted range 0 to 999")
        );
    }

    #[test]
    fn odd_values_in_any_field_give_one_row_not_a_panic() {
        let odd_values = [
            "null",
            "true",
            "\"x\"",
            "\" \"",
            "-1",
            "-999",
            "1e308",
            "-1e308",
            "1.5",
            "24",
            "[]",
            "{}",
            "18446744073709551615",
        ];
        for row in [real_row(CLASSIC, 1), real_row(V2, 1), real_row(LA, 4)] {
            for key in row.as_object().unwrap().keys() {
                for odd in odd_values {
                    let mut edited = row.clone();
                    edited[key] = serde_json::from_str(odd).unwrap();
                    let rows = parse(&Value::Array(vec![edited]).to_string()).unwrap();
                    assert_eq!(rows.len(), 1, "{key} = {odd}");
                }
            }
        }
    }

    #[test]
    fn error_documents_and_non_arrays_are_classified() {
        let err = parse(r#"{"WebServiceError":[{"Message":"Invalid API key"}]}"#).unwrap_err();
        match &err {
            PayloadError::Problem { title, status, .. } => {
                assert_eq!(title, "Invalid API key");
                assert_eq!(status, "WebServiceError");
            }
            other => panic!("{other:?}"),
        }
        let kind = |text: &str| parse(text).unwrap_err().kind();
        assert_eq!(kind(r#"{"Latitude": 34.0}"#), "unexpected_json");
        assert_eq!(kind("42"), "unexpected_json");
        assert_eq!(kind(""), "empty_payload");
        assert_eq!(
            kind("<!DOCTYPE html><html><title>503</title></html>"),
            "html_payload"
        );
        assert_eq!(kind("Service Unavailable"), "text_payload");
        assert_eq!(kind(r#"[{"UTC": "2025-01-10T00:00""#), "invalid_json");
        // An empty array is a real answer: no observations in the area.
        assert!(parse("[]").unwrap().is_empty());
    }
}
