//! GeoJSON helpers shared by the NWS parsers.

use std::io::BufRead;

use serde_json::Value;

use crate::record::Record;
use crate::sources::{Invalid, PayloadError, Row, excerpt, read_to_end_capped, sniff_non_data};

/// Largest GeoJSON document read into memory (a whole state's alerts are a few MB).
const MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;

/// The features of a Feature or FeatureCollection, each with its position in the payload.
pub fn features(
    input: &mut dyn BufRead,
    expected: &'static str,
) -> Result<Vec<(String, Value)>, PayloadError> {
    let body = read_to_end_capped(input, MAX_DOCUMENT_BYTES)?;
    if let Some(err) = sniff_non_data(&body, expected) {
        return Err(err);
    }
    let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
    let mut doc: Value = serde_json::from_slice(json).map_err(|e| {
        if json.first().is_some_and(|b| !b"{[ \t\r\n".contains(b)) {
            PayloadError::Text {
                expected,
                excerpt: excerpt(&body),
            }
        } else {
            PayloadError::InvalidJson {
                detail: e.to_string(),
                excerpt: excerpt(&body),
            }
        }
    })?;
    match doc.get("type").and_then(Value::as_str) {
        Some("Feature") => Ok(vec![("feature 1".to_owned(), doc)]),
        Some("FeatureCollection") => match doc.get_mut("features").map(Value::take) {
            Some(Value::Array(items)) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, f)| (format!("feature {}", i + 1), f))
                .collect()),
            _ => Err(PayloadError::UnexpectedJson {
                detail: "FeatureCollection without a features array".to_owned(),
                excerpt: excerpt(&body),
            }),
        },
        _ if doc.get("status").is_some() && doc.get("title").is_some() => {
            // application/problem+json, api.weather.gov's error shape.
            Err(PayloadError::Problem {
                title: doc["title"].as_str().unwrap_or_default().to_owned(),
                status: doc["status"].to_string(),
                excerpt: excerpt(&body),
            })
        }
        _ => Err(PayloadError::UnexpectedJson {
            detail: "not a GeoJSON Feature or FeatureCollection".to_owned(),
            excerpt: excerpt(&body),
        }),
    }
}

/// Parses each feature of a GeoJSON payload with `parse_feature`, handing rows to `out`.
pub fn parse_features(
    input: &mut dyn BufRead,
    expected: &'static str,
    out: &mut dyn FnMut(Row) -> bool,
    parse_feature: impl Fn(&Value) -> Result<Record, String>,
) -> Result<(), PayloadError> {
    for (position, feature) in features(input, expected)? {
        let row = match parse_feature(&feature) {
            Ok(record) => Row::Valid(Box::new(record)),
            Err(reason) => Row::Invalid(Invalid {
                position,
                reason,
                raw: raw(&feature),
            }),
        };
        if !out(row) {
            break;
        }
    }
    Ok(())
}

/// `(lon, lat)` of a Point geometry.
pub fn point(feature: &Value) -> Option<(f64, f64)> {
    let geometry = feature.get("geometry")?;
    if geometry.get("type")?.as_str()? != "Point" {
        return None;
    }
    let coords = geometry.get("coordinates")?.as_array()?;
    Some((coords.first()?.as_f64()?, coords.get(1)?.as_f64()?))
}

/// A feature's `properties` as `T`; an error names the field that did not fit, e.g.
/// `properties.temperature.value: invalid type: string "22.8", expected f64`.
pub fn properties<T: serde::de::DeserializeOwned>(feature: &Value) -> Result<T, String> {
    let properties = feature
        .get("properties")
        .ok_or("feature has no properties")?;
    serde_path_to_error::deserialize(properties).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            "properties".to_owned()
        } else {
            format!("properties.{path}")
        };
        format!("{at}: {}", e.into_inner())
    })
}

/// The feature as compact JSON, capped for the DLQ.
pub fn raw(feature: &Value) -> String {
    crate::dlq::truncate(feature.to_string(), crate::dlq::MAX_RAW_BYTES)
}
