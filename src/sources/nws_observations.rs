//! `nws_observations`: api.weather.gov station observations (GeoJSON Feature from
//! `/stations/{id}/observations/latest`, or a FeatureCollection from `/observations`).
//!
//! Quirks: every value is `{unitCode, value, qualityControl}`; `value` is often null (kept
//! null, QC code kept); unit codes carry a `wmoUnit:` or older `unit:` prefix and are converted
//! to SI by code, never assumed; timestamps carry offsets; the station id is the last segment
//! of the `station` URL.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{Parser, PayloadError, Row, SourceType, geojson};
use crate::record::{
    Data, Kind, Location, Priority, Quality, QualityFlag, Record, RecordId, WeatherObservation,
    format_event_time,
};

pub struct ObservationParser {
    source_id: Arc<str>,
}

impl ObservationParser {
    pub fn new(source_id: Arc<str>) -> Self {
        ObservationParser { source_id }
    }
}

impl Parser for ObservationParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        geojson::parse_features(input, "NWS observation GeoJSON", out, |f| {
            self.parse_feature(f)
        })
    }
}

/// An NWS quantity value.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Quantity {
    unit_code: Option<String>,
    value: Option<f64>,
    quality_control: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    station: Option<String>,
    station_id: Option<String>,
    timestamp: Option<String>,
    text_description: Option<String>,
    raw_message: Option<String>,
    #[serde(default)]
    temperature: Quantity,
    #[serde(default)]
    dewpoint: Quantity,
    #[serde(default)]
    relative_humidity: Quantity,
    #[serde(default)]
    wind_speed: Quantity,
    #[serde(default)]
    wind_gust: Quantity,
    #[serde(default)]
    wind_direction: Quantity,
    #[serde(default)]
    barometric_pressure: Quantity,
    #[serde(default)]
    sea_level_pressure: Quantity,
    #[serde(default)]
    visibility: Quantity,
    #[serde(default)]
    precipitation_last_hour: Quantity,
    #[serde(default)]
    heat_index: Quantity,
    #[serde(default)]
    wind_chill: Quantity,
}

/// The SI quantity a field is converted to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dimension {
    TemperatureC,
    SpeedMps,
    PressurePa,
    LengthM,
    PrecipitationMm,
    Percent,
    AngleDeg,
}

impl ObservationParser {
    fn parse_feature(&self, feature: &Value) -> Result<Record, String> {
        let props: Properties = geojson::properties(feature)?;

        let station_id = props
            .station
            .as_deref()
            .and_then(|url| url.trim_end_matches('/').rsplit('/').next())
            .filter(|s| !s.is_empty())
            .or(props.station_id.as_deref())
            .ok_or("observation has no station")?
            .to_owned();
        let timestamp_text = props
            .timestamp
            .as_deref()
            .ok_or("observation has no timestamp")?;
        let event_time = parse_time(timestamp_text)?;
        let (lon, lat) = geojson::point(feature).ok_or("observation has no Point geometry")?;
        let location = Location::new(lat, lon)?;

        let mut qc = BTreeMap::new();
        let mut convert = |name: &'static str, q: &Quantity, dim: Dimension| {
            if let Some(code) = &q.quality_control {
                qc.insert(name, code.clone());
            }
            convert(q, dim).map_err(|e| format!("{name}: {e}"))
        };
        let data = WeatherObservation {
            temperature_c: convert("temperature_c", &props.temperature, Dimension::TemperatureC)?,
            dewpoint_c: convert("dewpoint_c", &props.dewpoint, Dimension::TemperatureC)?,
            relative_humidity_pct: convert(
                "relative_humidity_pct",
                &props.relative_humidity,
                Dimension::Percent,
            )?,
            wind_speed_mps: convert("wind_speed_mps", &props.wind_speed, Dimension::SpeedMps)?,
            wind_gust_mps: convert("wind_gust_mps", &props.wind_gust, Dimension::SpeedMps)?,
            wind_direction_deg: convert(
                "wind_direction_deg",
                &props.wind_direction,
                Dimension::AngleDeg,
            )?,
            pressure_pa: convert(
                "pressure_pa",
                &props.barometric_pressure,
                Dimension::PressurePa,
            )?,
            sea_level_pressure_pa: convert(
                "sea_level_pressure_pa",
                &props.sea_level_pressure,
                Dimension::PressurePa,
            )?,
            visibility_m: convert("visibility_m", &props.visibility, Dimension::LengthM)?,
            precipitation_last_hour_mm: convert(
                "precipitation_last_hour_mm",
                &props.precipitation_last_hour,
                Dimension::PrecipitationMm,
            )?,
            heat_index_c: convert("heat_index_c", &props.heat_index, Dimension::TemperatureC)?,
            wind_chill_c: convert("wind_chill_c", &props.wind_chill, Dimension::TemperatureC)?,
            text_description: props.text_description.filter(|s| !s.is_empty()),
            raw_message: props.raw_message.filter(|s| !s.is_empty()),
            station_id,
            qc,
        };

        let mut flags = Vec::new();
        // MADIS: Q questioned, X failed, B subjectively bad.
        if data
            .qc
            .values()
            .any(|code| matches!(code.as_str(), "Q" | "X" | "B"))
        {
            flags.push(QualityFlag::QcQuestioned);
        }
        // The fire-weather core: without these an observation says little about fire risk.
        if data.temperature_c.is_none()
            || data.relative_humidity_pct.is_none()
            || data.wind_speed_mps.is_none()
        {
            flags.push(QualityFlag::MissingFields);
        }

        let id = RecordId::from_natural_key(
            SourceType::NwsObservations,
            &[&data.station_id, &format_event_time(&event_time)],
        );
        Ok(Record {
            schema: (),
            id,
            source_id: self.source_id.clone(),
            source_type: SourceType::NwsObservations,
            kind: Kind::WeatherObservation,
            event_time,
            ingested_at: Utc::now(),
            location: Some(location),
            priority: Priority::Normal,
            quality: Quality::from_flags(flags),
            data: Data::WeatherObservation(data),
        })
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("timestamp {text:?} is not RFC 3339 with an offset"))
}

/// Converts a quantity to the field's SI unit by its `unitCode`. A null value stays null
/// whatever its unit; a value in a unit we do not know is an error, not a guess.
fn convert(q: &Quantity, dim: Dimension) -> Result<Option<f64>, String> {
    let Some(value) = q.value else {
        return Ok(None);
    };
    if !value.is_finite() {
        return Err(format!("value {value} is not a number"));
    }
    let code = q
        .unit_code
        .as_deref()
        .ok_or_else(|| format!("value {value} has no unitCode"))?;
    let unit = code
        .strip_prefix("wmoUnit:")
        .or_else(|| code.strip_prefix("unit:"))
        .or_else(|| code.strip_prefix("http://codes.wmo.int/common/unit/"))
        .unwrap_or(code);
    use Dimension::*;
    let converted = match (dim, unit) {
        (TemperatureC, "degC" | "Cel") => value,
        (TemperatureC, "degF") => (value - 32.0) * 5.0 / 9.0,
        (TemperatureC, "K") => value - 273.15,
        (SpeedMps, "m_s-1") => value,
        (SpeedMps, "km_h-1") => value / 3.6,
        (SpeedMps, "kt" | "kn") => value * 1852.0 / 3600.0,
        (SpeedMps, "mi_h-1") => value * 0.44704,
        (PressurePa, "Pa") => value,
        (PressurePa, "hPa") => value * 100.0,
        (PressurePa, "kPa") => value * 1000.0,
        (LengthM, "m") => value,
        (LengthM, "km") => value * 1000.0,
        (LengthM, "ft") => value * 0.3048,
        (LengthM, "mi") => value * 1609.344,
        (PrecipitationMm, "mm") => value,
        (PrecipitationMm, "m") => value * 1000.0,
        (PrecipitationMm, "cm") => value * 10.0,
        (PrecipitationMm, "in") => value * 25.4,
        (Percent, "percent" | "%") => value,
        (AngleDeg, "degree_(angle)" | "deg") => value,
        _ => return Err(format!("unsupported unitCode {code:?} for this field")),
    };
    // Converted values are rounded to 4 decimals so 7.56 km/h reads 2.1 m/s, not 2.0999…
    let converted = if converted == value {
        value
    } else {
        (converted * 1e4).round() / 1e4
    };
    let (low, high, unit_si) = dim.physical_range();
    if !(low..=high).contains(&converted) {
        return Err(format!(
            "{value} {code} = {converted} {unit_si} is outside the physically possible {low}..{high} {unit_si}; the upstream value or its unit is wrong"
        ));
    }
    Ok(Some(converted))
}

impl Dimension {
    /// Bounds no real observation crosses (records: −89.2 °C, 56.7 °C, a 113 m/s gust), so
    /// a value outside is a broken report or a wrong unit, never weather.
    fn physical_range(self) -> (f64, f64, &'static str) {
        match self {
            Dimension::TemperatureC => (-100.0, 100.0, "°C"),
            Dimension::SpeedMps => (0.0, 150.0, "m/s"),
            Dimension::PressurePa => (10_000.0, 120_000.0, "Pa"),
            Dimension::LengthM => (0.0, 1_000_000.0, "m"),
            Dimension::PrecipitationMm => (0.0, 1_000.0, "mm"),
            // MADIS reports relative humidity slightly over 100 in saturated air.
            Dimension::Percent => (0.0, 105.0, "%"),
            Dimension::AngleDeg => (0.0, 360.0, "°"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(unit: &str, value: f64) -> Quantity {
        Quantity {
            unit_code: Some(unit.to_owned()),
            value: Some(value),
            quality_control: None,
        }
    }

    #[test]
    fn units_convert_by_code_with_either_prefix() {
        use Dimension::*;
        assert_eq!(
            convert(&q("wmoUnit:degC", 22.8), TemperatureC),
            Ok(Some(22.8))
        );
        assert_eq!(convert(&q("unit:degC", 22.8), TemperatureC), Ok(Some(22.8)));
        assert_eq!(
            convert(&q("unit:degF", 73.04), TemperatureC),
            Ok(Some(22.8))
        );
        assert_eq!(
            convert(&q("wmoUnit:degF", 32.0), TemperatureC),
            Ok(Some(0.0))
        );
        assert_eq!(convert(&q("wmoUnit:km_h-1", 7.56), SpeedMps), Ok(Some(2.1)));
        assert_eq!(convert(&q("unit:m_s-1", 3.5), SpeedMps), Ok(Some(3.5)));
        assert_eq!(
            convert(&q("wmoUnit:m", 0.0254), PrecipitationMm),
            Ok(Some(25.4))
        );
        assert_eq!(
            convert(&q("wmoUnit:hPa", 1018.6), PressurePa),
            Ok(Some(101860.0))
        );
        let err = convert(&q("wmoUnit:furlong", 1.0), LengthM).unwrap_err();
        assert!(err.contains("wmoUnit:furlong"), "{err}");
        // A unit of the wrong dimension is not silently accepted either.
        assert!(convert(&q("wmoUnit:Pa", 1.0), TemperatureC).is_err());
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let parser = ObservationParser::new(Arc::from("t"));
        let feature = serde_json::json!({
            "geometry": {"type": "Point", "coordinates": [-80.15, 26.07]},
            "properties": {
                "station": "https://api.weather.gov/stations/KFLL",
                "timestamp": "2022-03-02T15:53:00+00:00",
                "temperature": {"unitCode": "wmoUnit:degC", "value": "22.8", "qualityControl": "V"}
            }
        });
        let err = parser.parse_feature(&feature).unwrap_err();
        assert!(
            err.starts_with("properties.temperature.value: invalid type: string \"22.8\""),
            "{err}"
        );
    }

    #[test]
    fn impossible_values_are_errors_naming_the_value_and_unit() {
        use Dimension::*;
        let err = convert(&q("wmoUnit:K", -10.0), TemperatureC).unwrap_err();
        assert!(
            err.starts_with(
                "-10 wmoUnit:K = -283.15 °C is outside the physically possible -100..100 °C"
            ),
            "{err}"
        );
        assert!(convert(&q("wmoUnit:degC", -500.0), TemperatureC).is_err());
        assert!(convert(&q("wmoUnit:degC", 1e308), TemperatureC).is_err());
        assert!(convert(&q("wmoUnit:percent", 250.0), Percent).is_err());
        assert!(convert(&q("wmoUnit:m_s-1", -5.6), SpeedMps).is_err());
        assert!(convert(&q("wmoUnit:degree_(angle)", 361.0), AngleDeg).is_err());
        // Real extremes pass.
        assert_eq!(
            convert(&q("wmoUnit:degC", 56.7), TemperatureC),
            Ok(Some(56.7))
        );
        assert_eq!(
            convert(&q("wmoUnit:percent", 100.0), Percent),
            Ok(Some(100.0))
        );
        assert_eq!(convert(&q("wmoUnit:m_s-1", 0.0), SpeedMps), Ok(Some(0.0)));
    }

    #[test]
    fn null_value_stays_null_whatever_the_unit() {
        let null = Quantity {
            unit_code: Some("wmoUnit:km_h-1".into()),
            value: None,
            quality_control: Some("Z".into()),
        };
        assert_eq!(convert(&null, Dimension::SpeedMps), Ok(None));
    }

    #[test]
    fn timestamps_with_offsets_become_utc() {
        assert_eq!(
            parse_time("2024-07-18T12:47:00-07:00")
                .unwrap()
                .to_rfc3339(),
            "2024-07-18T19:47:00+00:00"
        );
        assert!(parse_time("2024-07-18 12:47").is_err());
    }
}
