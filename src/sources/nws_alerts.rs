//! `nws_alerts`: api.weather.gov active alerts (GeoJSON FeatureCollection of CAP alerts).
//!
//! Quirks: geometry is often null (the area is given by UGC zones), then `location` is null;
//! an Update or Cancel is a new alert id that references earlier ones; `expires` may precede
//! `onset` (not an error); times carry offsets. Fire-weather events are `critical`.

use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{Parser, PayloadError, Row, SourceType, geojson};
use crate::config::SourceConfig;
use crate::record::{Data, Kind, Location, Priority, Quality, Record, RecordId, WeatherAlert};

/// Events delivered as `critical` unless a source configures its own list.
pub const DEFAULT_CRITICAL_EVENTS: [&str; 5] = [
    "Red Flag Warning",
    "Fire Weather Watch",
    "Fire Warning",
    "Extreme Fire Danger",
    "Evacuation Immediate",
];

pub struct AlertParser {
    source_id: Arc<str>,
    critical_events: Vec<String>,
}

impl AlertParser {
    pub fn new(source_id: Arc<str>, config: &SourceConfig) -> Self {
        let critical_events = match &config.critical_events {
            Some(list) => list.clone(),
            None => DEFAULT_CRITICAL_EVENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        AlertParser {
            source_id,
            critical_events,
        }
    }

    fn is_critical(&self, event: &str) -> bool {
        self.critical_events
            .iter()
            .any(|e| e.eq_ignore_ascii_case(event.trim()))
    }
}

impl Parser for AlertParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        geojson::parse_features(input, "NWS alerts GeoJSON", out, |f| self.parse_feature(f))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    id: Option<String>,
    event: Option<String>,
    message_type: Option<String>,
    severity: Option<String>,
    urgency: Option<String>,
    certainty: Option<String>,
    headline: Option<String>,
    area_desc: Option<String>,
    #[serde(default)]
    geocode: Geocode,
    sent: Option<String>,
    effective: Option<String>,
    onset: Option<String>,
    expires: Option<String>,
    ends: Option<String>,
    sender_name: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
struct Geocode {
    #[serde(default)]
    ugc: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Reference {
    identifier: Option<String>,
    #[serde(rename = "@id")]
    url: Option<String>,
}

impl AlertParser {
    fn parse_feature(&self, feature: &Value) -> Result<Record, String> {
        let props: Properties = geojson::properties(feature)?;
        let alert_id = props
            .id
            .clone()
            .or_else(|| feature.get("id").and_then(Value::as_str).map(str::to_owned))
            .filter(|s| !s.is_empty())
            .ok_or("alert has no id")?;

        let time = |name: &str, text: &Option<String>| -> Result<Option<DateTime<Utc>>, String> {
            text.as_deref()
                .filter(|t| !t.trim().is_empty())
                .map(|t| {
                    DateTime::parse_from_rfc3339(t.trim())
                        .map(|d| d.with_timezone(&Utc))
                        .map_err(|_| format!("{name} {t:?} is not RFC 3339 with an offset"))
                })
                .transpose()
        };
        let sent = time("sent", &props.sent)?;
        let effective = time("effective", &props.effective)?;
        let onset = time("onset", &props.onset)?;
        let expires = time("expires", &props.expires)?;
        let ends = time("ends", &props.ends)?;
        let event_time = sent
            .or(effective)
            .ok_or("alert has neither sent nor effective time")?;

        let geometry = feature.get("geometry").filter(|g| !g.is_null()).cloned();
        let location = match &geometry {
            Some(g) => {
                if let Some(coordinates) = g.get("coordinates") {
                    check_positions(coordinates, &mut "geometry.coordinates".to_owned())?;
                }
                let (lon, lat) = centroid(g)?;
                Some(Location::new(lat, lon)?)
            }
            None => None,
        };

        let priority = if props.event.as_deref().is_some_and(|e| self.is_critical(e)) {
            Priority::Critical
        } else {
            Priority::Normal
        };
        let references = props
            .references
            .into_iter()
            .filter_map(|r| r.identifier.or(r.url))
            .collect();

        Ok(Record {
            schema: (),
            id: RecordId::from_natural_key(SourceType::NwsAlerts, &[&alert_id]),
            source_id: self.source_id.clone(),
            source_type: SourceType::NwsAlerts,
            kind: Kind::WeatherAlert,
            event_time,
            ingested_at: Utc::now(),
            location,
            priority,
            quality: Quality::from_flags(Vec::new()),
            data: Data::WeatherAlert(WeatherAlert {
                alert_id,
                event: props.event,
                message_type: props.message_type,
                severity: props.severity,
                urgency: props.urgency,
                certainty: props.certainty,
                headline: props.headline,
                area_desc: props.area_desc,
                ugc_zones: props.geocode.ugc,
                sent,
                effective,
                onset,
                expires,
                ends,
                sender_name: props.sender_name,
                references,
                geometry,
            }),
        })
    }
}

/// Every `[lon, lat]` vertex is on the globe: one outside would move the representative point
/// (a vertex at latitude 95 shifts the mean by degrees) and break consumers of the geometry.
/// The error names the vertex by its path. Positions that are not numbers are left to
/// [`centroid`], which rejects them.
fn check_positions(value: &Value, path: &mut String) -> Result<(), String> {
    let Some(items) = value.as_array() else {
        return Ok(());
    };
    if items.first().is_some_and(|v| !v.is_array()) {
        if let (Some(lon), Some(lat)) = (
            items.first().and_then(Value::as_f64),
            items.get(1).and_then(Value::as_f64),
        ) {
            Location::new(lat, lon)
                .map_err(|e| format!("alert geometry vertex {path} {value}: {e}"))?;
        }
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        let len = path.len();
        path.push_str(&format!("[{i}]"));
        check_positions(item, path)?;
        path.truncate(len);
    }
    Ok(())
}

/// Mean of a geometry's vertices as `(lon, lat)`: a representative point for routing, not a
/// true area centroid. Closing vertices of rings are counted once. A geometry across the
/// antimeridian (Alaska, the Pacific) is averaged on the side where it lies, not across the
/// globe. A position that is not `[lon, lat, …]` numbers makes the geometry unusable: a
/// dropped vertex would silently move the alert.
fn centroid(geometry: &Value) -> Result<(f64, f64), &'static str> {
    const BAD: &str = "alert geometry has a position that is not [longitude, latitude] numbers";
    fn collect(value: &Value, out: &mut Vec<(f64, f64)>) -> Result<(), &'static str> {
        let items = value.as_array().ok_or(BAD)?;
        if items.first().is_some_and(|v| !v.is_array()) {
            return match (
                items.first().and_then(Value::as_f64),
                items.get(1).and_then(Value::as_f64),
            ) {
                (Some(lon), Some(lat)) => {
                    out.push((lon, lat));
                    Ok(())
                }
                _ => Err(BAD),
            };
        }
        let start = out.len();
        for item in items {
            collect(item, out)?;
        }
        // A closed ring repeats its first vertex last.
        if out.len() - start > 1 && out[start] == out[out.len() - 1] {
            out.pop();
        }
        Ok(())
    }
    let mut points = Vec::new();
    collect(
        geometry
            .get("coordinates")
            .ok_or("alert geometry has no coordinates")?,
        &mut points,
    )?;
    if points.is_empty() {
        return Err("alert geometry has no usable coordinates");
    }
    let (min, max) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (lon, _)| {
            (lo.min(*lon), hi.max(*lon))
        });
    let across_antimeridian = max - min > 180.0;
    let n = points.len() as f64;
    let (sum_lon, sum_lat) = points.iter().fold((0.0, 0.0), |(a, b), (lon, lat)| {
        let lon = if across_antimeridian && *lon < 0.0 {
            lon + 360.0
        } else {
            *lon
        };
        (a + lon, b + lat)
    });
    let mut lon = sum_lon / n;
    if lon > 180.0 {
        lon -= 360.0;
    }
    Ok((lon, sum_lat / n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn centroid_of_closed_ring_counts_each_vertex_once() {
        let square = json!({"type": "Polygon", "coordinates": [[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [0.0, 0.0]]]});
        assert_eq!(centroid(&square), Ok((1.0, 1.0)));
        let point = json!({"type": "Point", "coordinates": [-120.5, 38.25]});
        assert_eq!(centroid(&point), Ok((-120.5, 38.25)));
        assert!(centroid(&json!({"type": "Polygon", "coordinates": []})).is_err());
    }

    #[test]
    fn centroid_across_the_antimeridian_stays_on_its_side() {
        let ring = json!({"type": "Polygon", "coordinates": [[[179.0, 51.0], [-179.0, 51.0], [-179.0, 53.0], [179.0, 53.0], [179.0, 51.0]]]});
        assert_eq!(centroid(&ring), Ok((180.0, 52.0)));
        let ring = json!({"type": "Polygon", "coordinates": [[[179.0, 51.0], [-177.0, 51.0], [-177.0, 53.0], [179.0, 53.0], [179.0, 51.0]]]});
        assert_eq!(centroid(&ring), Ok((-179.0, 52.0)));
    }

    #[test]
    fn a_position_that_is_not_two_numbers_is_an_error_not_a_dropped_vertex() {
        let ring = json!({"type": "Polygon", "coordinates": [[[-112.0, 33.0], ["x", 33.5], [-111.0, 34.0], [-112.0, 33.0]]]});
        assert_eq!(
            centroid(&ring),
            Err("alert geometry has a position that is not [longitude, latitude] numbers")
        );
    }

    fn alert_with(geometry: Value) -> Result<Record, String> {
        let parser = AlertParser {
            source_id: Arc::from("t"),
            critical_events: Vec::new(),
        };
        parser.parse_feature(&json!({
            "id": "urn:oid:test",
            "geometry": geometry,
            "properties": {"id": "urn:oid:test", "sent": "2024-07-18T12:47:00-07:00", "event": "Red Flag Warning"}
        }))
    }

    #[test]
    fn a_vertex_off_the_globe_makes_the_alert_invalid_and_is_named() {
        let ring = |lon: f64, lat: f64| json!({"type": "Polygon", "coordinates": [[[-112.0, 33.0], [-111.0, 33.5], [lon, lat], [-112.0, 33.0]]]});
        // The exact edges are on the globe.
        for (lon, lat) in [(-180.0, 90.0), (180.0, -90.0)] {
            assert!(alert_with(ring(lon, lat)).is_ok(), "{lon}, {lat}");
        }
        assert_eq!(
            alert_with(ring(-112.0, 95.0)).unwrap_err(),
            "alert geometry vertex geometry.coordinates[0][2] [-112.0,95.0]: latitude 95 is outside -90..90"
        );
        assert_eq!(
            alert_with(ring(-112.0, 90.001)).unwrap_err(),
            "alert geometry vertex geometry.coordinates[0][2] [-112.0,90.001]: latitude 90.001 is outside -90..90"
        );
        assert_eq!(
            alert_with(ring(-112.0, -90.001)).unwrap_err(),
            "alert geometry vertex geometry.coordinates[0][2] [-112.0,-90.001]: latitude -90.001 is outside -90..90"
        );
        assert_eq!(
            alert_with(ring(180.001, 33.0)).unwrap_err(),
            "alert geometry vertex geometry.coordinates[0][2] [180.001,33.0]: longitude 180.001 is outside -180..180"
        );
        assert_eq!(
            alert_with(ring(-180.001, 33.0)).unwrap_err(),
            "alert geometry vertex geometry.coordinates[0][2] [-180.001,33.0]: longitude -180.001 is outside -180..180"
        );
        // MultiPolygon paths name the polygon too.
        let multi = json!({"type": "MultiPolygon", "coordinates": [
            [[[-112.0, 33.0], [-111.0, 33.5], [-111.0, 34.0], [-112.0, 33.0]]],
            [[[-110.0, 33.0], [-109.0, 33.5], [-109.0, 34.0], [-110.0, 95.0]]]
        ]});
        assert!(alert_with(multi).unwrap_err().starts_with(
            "alert geometry vertex geometry.coordinates[1][0][3] [-110.0,95.0]: latitude 95"
        ));
        // A Point too.
        assert_eq!(
            alert_with(json!({"type": "Point", "coordinates": [200.0, 33.0]})).unwrap_err(),
            "alert geometry vertex geometry.coordinates [200.0,33.0]: longitude 200 is outside -180..180"
        );
    }

    #[test]
    fn critical_events_match_case_insensitively() {
        let parser = AlertParser {
            source_id: Arc::from("t"),
            critical_events: DEFAULT_CRITICAL_EVENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        assert!(parser.is_critical("Red Flag Warning"));
        assert!(parser.is_critical("red flag warning "));
        assert!(!parser.is_critical("Excessive Heat Warning"));
    }
}
