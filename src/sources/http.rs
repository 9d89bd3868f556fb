//! `http`: a generic poller for any JSON, CSV or GeoJSON endpoint. Records are kept as the
//! upstream gave them (`kind: raw`); the config says where they are and which fields carry
//! time, location and identity.
//!
//! - Records: `record_pointer` (a JSON pointer) names the array of records; by default the
//!   document itself when it is an array, or the features of a GeoJSON Feature(Collection).
//!   A pointer to an object takes that object as the one record. A CSV row becomes an object
//!   of column → text.
//! - Fields (`mapping.time|lat|lon|id`): a top-level field name, or a JSON pointer starting
//!   with `/`. For GeoJSON a bare name is looked up in the feature's `properties` first.
//! - `event_time`: the mapped time, RFC 3339 with an offset or epoch seconds / milliseconds
//!   (number or numeric text). |n| ≥ 1e11 is milliseconds: 1e11 s is the year 5138, 1e11 ms is
//!   March 1973, so only millisecond times before 1973 would be misread. A mapped time that is
//!   missing or unreadable makes the record invalid. With no time mapped, `event_time` is the
//!   moment of parsing (`ingested_at`): the payload carries no better one.
//! - `id`: the natural key (`http`, source id, mapped id value); with no id mapped, the
//!   record's canonical JSON (keys sorted, no spaces) stands for it, so the same record
//!   polled twice gets the same id whatever its key order.
//! - `location`: the mapped lat/lon, else a GeoJSON Point geometry; optional, but out of
//!   range is invalid.

use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    Invalid, Parser, PayloadError, Row, SourceType, excerpt, geojson, read_to_end_capped,
    sniff_non_data,
};
use crate::config::{FieldMapping, HttpFormat, SourceConfig};
use crate::record::{Data, Kind, Location, Priority, Quality, Record, RecordId, key_number};

/// Largest body read into memory; the transport's `max_body` (default 64MiB) is smaller.
const MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;

/// Epoch values at or above this magnitude are milliseconds (see the module docs).
const MILLIS_FROM: f64 = 1e11;

pub struct HttpParser {
    source_id: Arc<str>,
    format: HttpFormat,
    record_pointer: Option<String>,
    mapping: FieldMapping,
}

impl HttpParser {
    pub fn new(source_id: Arc<str>, config: &SourceConfig) -> Self {
        HttpParser {
            source_id,
            format: config.format.unwrap_or_default(),
            record_pointer: config.record_pointer.clone(),
            mapping: config.mapping.clone().unwrap_or_default(),
        }
    }
}

impl Parser for HttpParser {
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError> {
        let body = read_to_end_capped(input, MAX_DOCUMENT_BYTES)?;
        match self.format {
            HttpFormat::Csv => self.parse_csv(&body, out),
            HttpFormat::Json => {
                let doc = json_document(&body, "JSON")?;
                let records = select(doc, self.record_pointer.as_deref(), &body)?;
                self.emit(records, "record", false, out);
                Ok(())
            }
            HttpFormat::Geojson => {
                let records = match self.record_pointer.as_deref() {
                    Some(pointer) => {
                        let doc = json_document(&body, "GeoJSON")?;
                        select(doc, Some(pointer), &body)?
                    }
                    None => geojson::features(&mut &body[..], "GeoJSON")?
                        .into_iter()
                        .map(|(_, f)| f)
                        .collect(),
                };
                self.emit(records, "feature", true, out);
                Ok(())
            }
        }
    }
}

/// Parses a whole JSON payload, classifying what is not JSON at all (HTML, plain text,
/// nothing) so the DLQ says why.
pub(crate) fn json_document(body: &[u8], expected: &'static str) -> Result<Value, PayloadError> {
    if let Some(err) = sniff_non_data(body, expected) {
        return Err(err);
    }
    let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(json).map_err(|e| {
        let first = json.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b == b'{' || *b == b'[') {
            PayloadError::InvalidJson {
                detail: e.to_string(),
                excerpt: excerpt(body),
            }
        } else {
            PayloadError::Text {
                expected,
                excerpt: excerpt(body),
            }
        }
    })
}

/// The records `pointer` names: an array's elements, or an object as the one record. Without a
/// pointer the document must itself be an array.
fn select(mut doc: Value, pointer: Option<&str>, body: &[u8]) -> Result<Vec<Value>, PayloadError> {
    let unexpected = |detail: String| PayloadError::UnexpectedJson {
        detail,
        excerpt: excerpt(body),
    };
    let Some(pointer) = pointer else {
        return match doc {
            Value::Array(items) => Ok(items),
            Value::Object(map) => {
                let keys: Vec<&str> = map.keys().map(String::as_str).take(10).collect();
                Err(unexpected(format!(
                    "an object, not an array of records; set record_pointer to the array (top-level keys: {})",
                    keys.join(", ")
                )))
            }
            other => Err(unexpected(format!(
                "{}, not an array of records",
                type_name(&other)
            ))),
        };
    };
    match doc.pointer_mut(pointer).map(Value::take) {
        None => Err(unexpected(format!(
            "record_pointer {pointer:?} resolves to nothing"
        ))),
        Some(Value::Array(items)) => Ok(items),
        Some(record @ Value::Object(_)) => Ok(vec![record]),
        Some(other) => Err(unexpected(format!(
            "record_pointer {pointer:?} is {}, not an array of records",
            type_name(&other)
        ))),
    }
}

/// The next page's URL at `pointer` (as given; relative links are the caller's to resolve).
/// Null, "" or no value there ends the pagination; anything else there is an error.
pub fn next_link(body: &[u8], pointer: &str) -> Result<Option<String>, PayloadError> {
    let doc = json_document(body, "JSON")?;
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(other) => Err(PayloadError::UnexpectedJson {
            detail: format!("next_link {pointer:?} is {}, not a URL", type_name(other)),
            excerpt: excerpt(body),
        }),
    }
}

/// Config problems of the `http` settings; also flags them on types they do not apply to.
pub fn check_config(at: &str, s: &SourceConfig, problems: &mut Vec<String>) {
    if s.source_type != SourceType::Http {
        for (field, set) in [
            ("format", s.format.is_some()),
            ("record_pointer", s.record_pointer.is_some()),
            ("next_link", s.next_link.is_some()),
        ] {
            if set {
                problems.push(format!(
                    "{at}.{field}: only applies to type http, not {}",
                    s.source_type
                ));
            }
        }
        if s.source_type == SourceType::CalfireIncidents && s.mapping.is_some() {
            problems.push(format!(
                "{at}.mapping: only applies to types mqtt and http, not calfire_incidents"
            ));
        }
        return;
    }
    if s.topic.is_none() {
        problems.push(format!(
            "{at}.topic: type http has no default topic; name one, e.g. `topic: wildfire-custom`"
        ));
    }
    for (field, pointer) in [
        ("record_pointer", &s.record_pointer),
        ("next_link", &s.next_link),
    ] {
        if let Some(p) = pointer
            && let Err(e) = check_pointer(p)
        {
            problems.push(format!("{at}.{field}: {p:?} {e}"));
        }
    }
    if s.format == Some(HttpFormat::Csv) {
        if s.record_pointer.is_some() {
            problems.push(format!(
                "{at}.record_pointer: not used with format csv (every row is a record)"
            ));
        }
        if s.next_link.is_some() {
            problems.push(format!(
                "{at}.next_link: format csv has no JSON to find a next link in"
            ));
        }
    }
    let Some(m) = &s.mapping else { return };
    for (field, value) in [
        ("time", &m.time),
        ("lat", &m.lat),
        ("lon", &m.lon),
        ("id", &m.id),
    ] {
        match value.as_deref() {
            Some(v) if v.trim().is_empty() => problems.push(format!(
                "{at}.mapping.{field}: is empty; name a field, or a JSON pointer such as `/properties/{field}`"
            )),
            Some(v) if v.starts_with('/') => {
                if let Err(e) = check_pointer(v) {
                    problems.push(format!("{at}.mapping.{field}: {v:?} {e}"));
                }
            }
            _ => {}
        }
    }
    if m.lat.is_some() != m.lon.is_some() {
        problems.push(format!(
            "{at}.mapping: lat and lon go together; set both or neither"
        ));
    }
    for (field, set) in [
        ("device_id", m.device_id.is_some()),
        ("device_topic_level", m.device_topic_level.is_some()),
        ("measurements", m.measurements.is_some()),
    ] {
        if set {
            problems.push(format!(
                "{at}.mapping.{field}: only applies to type mqtt, not http"
            ));
        }
    }
}

/// RFC 6901: empty (the whole document) or `/`-separated, with `~` only in `~0` and `~1`.
fn check_pointer(pointer: &str) -> Result<(), &'static str> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err("is not a JSON pointer: it must start with `/` (or be empty)");
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("is not a JSON pointer: `~` must be written `~0`, `/` as `~1`");
        }
    }
    Ok(())
}

impl HttpParser {
    fn emit(
        &self,
        records: Vec<Value>,
        noun: &str,
        geojson: bool,
        out: &mut dyn FnMut(Row) -> bool,
    ) {
        for (i, value) in records.into_iter().enumerate() {
            let row = match self.record(&value, geojson) {
                Ok(record) => Row::Valid(Box::new(record)),
                Err(reason) => Row::Invalid(Invalid {
                    position: format!("{noun} {}", i + 1),
                    reason,
                    raw: crate::dlq::truncate(value.to_string(), crate::dlq::MAX_RAW_BYTES),
                }),
            };
            if !out(row) {
                return;
            }
        }
    }

    fn parse_csv(&self, body: &[u8], out: &mut dyn FnMut(Row) -> bool) -> Result<(), PayloadError> {
        if let Some(err) = sniff_non_data(body, "CSV") {
            return Err(err);
        }
        let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(text);
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| PayloadError::Csv {
                detail: e.to_string(),
            })?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        for (i, name) in header.iter().enumerate() {
            if header[..i].contains(name) {
                return Err(PayloadError::Csv {
                    detail: format!("column {name:?} appears twice in the header"),
                });
            }
        }
        // A mapped column the header lacks: most likely not this CSV at all (an error text).
        let missing: Vec<String> = self
            .mapped()
            .filter(|(_, f)| !f.starts_with('/') && !header.iter().any(|h| h == f))
            .map(|(_, f)| format!("`{f}`"))
            .collect();
        if !missing.is_empty() {
            return Err(PayloadError::MissingColumns {
                missing: missing.join(", "),
                excerpt: excerpt(body),
            });
        }
        let mut bytes = csv::ByteRecord::new();
        loop {
            let fallback_line = reader.position().line() + 1;
            match reader.read_byte_record(&mut bytes) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    let line = bytes.position().map_or(fallback_line, |p| p.line());
                    let raw = bytes
                        .iter()
                        .map(String::from_utf8_lossy)
                        .collect::<Vec<_>>()
                        .join(",");
                    let checked = if bytes.len() != header.len() {
                        Err(format!(
                            "row has {} field(s), the header has {}",
                            bytes.len(),
                            header.len()
                        ))
                    } else {
                        bytes
                            .iter()
                            .zip(&header)
                            .map(|(v, name)| {
                                std::str::from_utf8(v)
                                    .map(|v| (name.clone(), Value::String(v.to_owned())))
                                    .map_err(|_| format!("column {name} is not valid UTF-8"))
                            })
                            .collect::<Result<Map<String, Value>, String>>()
                            .and_then(|row| self.record(&Value::Object(row), false))
                    };
                    let row = match checked {
                        Ok(record) => Row::Valid(Box::new(record)),
                        Err(reason) => Row::Invalid(Invalid {
                            position: format!("line {line}"),
                            reason,
                            raw: crate::dlq::truncate(raw, crate::dlq::MAX_RAW_BYTES),
                        }),
                    };
                    if !out(row) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    return Err(PayloadError::Csv {
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    /// The mapped fields, by mapping name.
    fn mapped(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("time", &self.mapping.time),
            ("lat", &self.mapping.lat),
            ("lon", &self.mapping.lon),
            ("id", &self.mapping.id),
        ]
        .into_iter()
        .filter_map(|(name, field)| field.as_deref().map(|f| (name, f)))
    }

    fn record(&self, value: &Value, geojson: bool) -> Result<Record, String> {
        if !value.is_object() {
            return Err(format!("record is {}, not an object", type_name(value)));
        }
        let get = |field: &str| lookup(value, field, geojson);
        let ingested_at = Utc::now();

        let event_time = match &self.mapping.time {
            Some(field) => {
                let time = get(field).ok_or_else(|| format!("time field {field} is missing"))?;
                parse_time(time).map_err(|e| format!("time field {field}: {e}"))?
            }
            None => ingested_at,
        };

        let location = match (&self.mapping.lat, &self.mapping.lon) {
            (Some(lat_field), Some(lon_field)) => match (get(lat_field), get(lon_field)) {
                (None, None) => None,
                (Some(lat), Some(lon)) => {
                    let lat = number(lat)
                        .ok_or_else(|| format!("lat field {lat_field} {lat} is not a number"))?;
                    let lon = number(lon)
                        .ok_or_else(|| format!("lon field {lon_field} {lon} is not a number"))?;
                    Some(
                        Location::new(lat, lon)
                            .map_err(|e| format!("{lat_field}/{lon_field}: {e}"))?,
                    )
                }
                (Some(_), None) => {
                    return Err(format!("lon field {lon_field} is missing (lat is given)"));
                }
                (None, Some(_)) => {
                    return Err(format!("lat field {lat_field} is missing (lon is given)"));
                }
            },
            _ if geojson => match geojson::point(value) {
                Some((lon, lat)) => {
                    Some(Location::new(lat, lon).map_err(|e| format!("geometry: {e}"))?)
                }
                None => None,
            },
            _ => None,
        };

        let id = match &self.mapping.id {
            Some(field) => {
                let id = get(field).ok_or_else(|| format!("id field {field} is missing"))?;
                let key = match id {
                    Value::String(s) => s.trim().to_owned(),
                    // Integers exactly: an f64 would merge ids above 2^53.
                    Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                    Value::Number(n) => key_number(n.as_f64().unwrap_or(f64::NAN)),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(format!(
                            "id field {field} is {}, not a string or number",
                            type_name(other)
                        ));
                    }
                };
                RecordId::from_natural_key(SourceType::Http, &[&self.source_id, &key])
            }
            None => RecordId::from_natural_key(
                SourceType::Http,
                &[&self.source_id, &canonical_json(value)],
            ),
        };

        Ok(Record {
            schema: (),
            id,
            source_id: self.source_id.clone(),
            source_type: SourceType::Http,
            kind: Kind::Raw,
            event_time,
            ingested_at,
            location,
            priority: Priority::Normal,
            quality: Quality::from_flags(Vec::new()),
            data: Data::Raw(value.clone()),
        })
    }
}

/// A mapped field's value: a JSON pointer, or a top-level name (for GeoJSON, in `properties`
/// first). Null and blank text count as missing.
fn lookup<'a>(record: &'a Value, field: &str, geojson: bool) -> Option<&'a Value> {
    let value = if field.starts_with('/') {
        record.pointer(field)
    } else if geojson {
        record
            .get("properties")
            .and_then(|p| p.get(field))
            .filter(|v| !v.is_null())
            .or_else(|| record.get(field))
    } else {
        record.get(field)
    };
    value.filter(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    })
}

/// A number, or text that is one (CSV cells are text).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite())
}

/// RFC 3339 with an offset, or epoch seconds / milliseconds (number or numeric text).
fn parse_time(value: &Value) -> Result<DateTime<Utc>, String> {
    if let Some(n) = number(value) {
        return epoch(n);
    }
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| format!("{s:?} is not RFC 3339 with an offset or an epoch number")),
        other => Err(format!("{other} is not a time")),
    }
}

fn epoch(n: f64) -> Result<DateTime<Utc>, String> {
    let millis = if n.abs() >= MILLIS_FROM {
        n
    } else {
        n * 1000.0
    };
    let millis = millis.round();
    // Beyond year 9999 RFC 3339 cannot write it: microseconds or nanoseconds, not a time.
    const MAX_MILLIS: f64 = 253_402_300_799_999.0;
    if millis.abs() > MAX_MILLIS {
        return Err(format!(
            "{n} is not epoch seconds or milliseconds (beyond year 9999)"
        ));
    }
    DateTime::from_timestamp_millis(millis as i64)
        .ok_or_else(|| format!("{n} is not a representable epoch time"))
}

/// JSON with object keys sorted at every level and no whitespace, written here rather than
/// relying on serde_json's map order (a dependency enabling `preserve_order` would change it).
fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
