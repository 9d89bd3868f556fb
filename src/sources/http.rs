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

use super::csv_lines::quote_left_open;
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
    // Settings set on another type are reported by the transport's check.
    if s.source_type != SourceType::Http {
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
            .from_reader(std::io::Cursor::new(text));
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
            match reader.read_byte_record(&mut bytes) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    let after = reader.position().byte() as usize;
                    let (start, line) =
                        record_start(text, bytes.position().expect("records carry a position"));
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
                    // A quoted field may hold line breaks, but when the row it makes is
                    // invalid, or its quote is still open at the end of the body, the quote
                    // was most likely never closed and has swallowed the lines after it:
                    // only its first line is dead-lettered, the rest are read again as rows.
                    let spans = bytes
                        .iter()
                        .any(|f| f.contains(&b'\n') || f.contains(&b'\r'));
                    let open_at_end = after == text.len() && quote_left_open(&text[start..]);
                    let row = if open_at_end || (spans && checked.is_err()) {
                        let (line_end, next) = line_end(text, start);
                        let last = line
                            + text[start..after]
                                .trim_ascii_end()
                                .iter()
                                .filter(|&&b| b == b'\n')
                                .count() as u64;
                        let mut next_pos = csv::Position::new();
                        next_pos
                            .set_byte(next as u64)
                            .set_line(line + u64::from(text[line_end..next].contains(&b'\n')));
                        reader.seek(next_pos).map_err(|e| PayloadError::Csv {
                            detail: e.to_string(),
                        })?;
                        let fails = match (open_at_end, checked) {
                            (true, Ok(_)) => "is still open at the end of the body".to_owned(),
                            (true, Err(reason)) => format!(
                                "is still open at the end of the body, and the row fails: {reason}"
                            ),
                            (false, Err(reason)) => {
                                format!("runs to line {last}, and the row fails: {reason}")
                            }
                            (false, Ok(_)) => unreachable!("a valid row is kept unless open"),
                        };
                        Row::Invalid(Invalid {
                            position: format!("line {line}"),
                            reason: format!(
                                "unterminated quote: a quoted field opens on this line and {fails}; this line is dead-lettered alone and the lines after it are read as rows"
                            ),
                            raw: crate::dlq::truncate(
                                String::from_utf8_lossy(&text[start..line_end]).into_owned(),
                                crate::dlq::MAX_RAW_BYTES,
                            ),
                        })
                    } else {
                        match checked {
                            Ok(record) => Row::Valid(Box::new(record)),
                            Err(reason) => Row::Invalid(Invalid {
                                position: format!("line {line}"),
                                reason,
                                raw: crate::dlq::truncate(
                                    bytes
                                        .iter()
                                        .map(String::from_utf8_lossy)
                                        .collect::<Vec<_>>()
                                        .join(","),
                                    crate::dlq::MAX_RAW_BYTES,
                                ),
                            }),
                        }
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

/// Where a CSV record really starts: the csv crate's position is where the previous record
/// ended, before any blank lines in between.
fn record_start(text: &[u8], pos: &csv::Position) -> (usize, u64) {
    let from = (pos.byte() as usize).min(text.len());
    let blank = text[from..]
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    let skipped_lines = text[from..from + blank]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    (from + blank, pos.line() + skipped_lines as u64)
}

/// The end of the physical line starting at `start`, and where the next line starts (after
/// `\n`, `\r\n` or a lone `\r`).
fn line_end(text: &[u8], start: usize) -> (usize, usize) {
    match text[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) => {
            let end = start + i;
            let crlf = text[end] == b'\r' && text.get(end + 1) == Some(&b'\n');
            (end, end + 1 + usize::from(crlf))
        }
        None => (text.len(), text.len()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::format_event_time;
    use serde_json::json;

    fn real(path: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/real")
            .join(path);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn config(format: HttpFormat, pointer: Option<&str>, mapping: FieldMapping) -> SourceConfig {
        SourceConfig {
            source_type: SourceType::Http,
            format: Some(format),
            record_pointer: pointer.map(str::to_owned),
            mapping: Some(mapping),
            topic: Some("wildfire-custom".to_owned()),
            ..SourceConfig::default()
        }
    }

    fn map(
        time: Option<&str>,
        lat: Option<&str>,
        lon: Option<&str>,
        id: Option<&str>,
    ) -> FieldMapping {
        FieldMapping {
            time: time.map(str::to_owned),
            lat: lat.map(str::to_owned),
            lon: lon.map(str::to_owned),
            id: id.map(str::to_owned),
            ..FieldMapping::default()
        }
    }

    fn parse(config: &SourceConfig, body: &[u8]) -> Result<Vec<Row>, PayloadError> {
        let parser = HttpParser::new(Arc::from("custom"), config);
        let mut rows = Vec::new();
        parser.parse(&mut &body[..], &mut |row| {
            rows.push(row);
            true
        })?;
        Ok(rows)
    }

    fn valid(rows: Vec<Row>) -> Vec<Record> {
        rows.into_iter()
            .map(|r| match r {
                Row::Valid(r) => *r,
                Row::Invalid(i) => panic!("{i:?}"),
            })
            .collect()
    }

    fn invalid(rows: Vec<Row>) -> Vec<Invalid> {
        rows.into_iter()
            .filter_map(|r| match r {
                Row::Invalid(i) => Some(i),
                Row::Valid(_) => None,
            })
            .collect()
    }

    fn raw(record: &Record) -> &Value {
        match &record.data {
            Data::Raw(v) => v,
            other => panic!("{other:?}"),
        }
    }

    /// A real AirNow `/aq/data` row with its `UTC` replaced.
    fn airnow_row(utc: Value) -> Vec<u8> {
        let row = json!({"Latitude": 34.1992, "Longitude": -118.5331, "UTC": utc, "Parameter": "PM2.5", "Unit": "UG/M3", "Value": 2.9, "RawConcentration": 1.2, "AQI": 16, "Category": 1});
        serde_json::to_vec(&json!([row])).unwrap()
    }

    #[test]
    fn a_json_array_keeps_each_record_as_given() {
        let c = config(
            HttpFormat::Json,
            None,
            map(None, Some("Latitude"), Some("Longitude"), None),
        );
        let records =
            valid(parse(&c, &real("airnow/aq_data_bbox_LA_PM25__2025-01-10.json")).unwrap());
        assert_eq!(records.len(), 1457);
        let r = &records[1];
        assert_eq!(r.kind, Kind::Raw);
        assert_eq!(r.source_type, SourceType::Http);
        assert_eq!(&*r.source_id, "custom");
        assert_eq!(
            raw(r),
            &json!({"Latitude": 34.1992, "Longitude": -118.5331, "UTC": "2025-01-10T00:00", "Parameter": "PM2.5", "Unit": "UG/M3", "Value": 2.9, "RawConcentration": 1.2, "AQI": 16, "Category": 1})
        );
        let loc = r.location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (34.1992, -118.5331));
        // No time mapped: the moment of parsing.
        assert_eq!(r.event_time, r.ingested_at);
        // No id mapped: the canonical JSON, so 1457 distinct rows give 1457 ids.
        let ids: std::collections::HashSet<_> = records.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 1457);
    }

    #[test]
    fn a_time_without_offset_is_invalid_naming_the_field() {
        // AirNow's real `UTC` has no offset; RFC 3339 needs one.
        let c = config(HttpFormat::Json, None, map(Some("UTC"), None, None, None));
        let rows = parse(&c, &real("airnow/aq_data_bbox_LA_PM25__2025-01-10.json")).unwrap();
        assert_eq!(rows.len(), 1457);
        let bad = invalid(rows);
        assert_eq!(bad.len(), 1457);
        assert_eq!(bad[1].position, "record 2");
        assert_eq!(
            bad[1].reason,
            "time field UTC: \"2025-01-10T00:00\" is not RFC 3339 with an offset or an epoch number"
        );
        assert!(bad[1].raw.contains("\"Value\":2.9"), "{}", bad[1].raw);
    }

    #[test]
    fn time_as_rfc3339_epoch_seconds_or_milliseconds() {
        let c = config(HttpFormat::Json, None, map(Some("UTC"), None, None, None));
        for (utc, expected) in [
            (json!("2025-01-10T00:00:00-08:00"), "2025-01-10T08:00:00Z"),
            (json!("2025-01-10T08:00:00Z"), "2025-01-10T08:00:00Z"),
            (json!(1736496000), "2025-01-10T08:00:00Z"),
            (json!("1736496000"), "2025-01-10T08:00:00Z"),
            (json!(1736496000.5), "2025-01-10T08:00:00.500Z"),
            (json!(1736496000000_i64), "2025-01-10T08:00:00Z"),
            (json!("1736496000123"), "2025-01-10T08:00:00.123Z"),
            // Below 1e11 is seconds: 99999999999 s is in the year 5138.
            (json!(99_999_999_999_i64), "5138-11-16T09:46:39Z"),
            (json!(0), "1970-01-01T00:00:00Z"),
        ] {
            let records = valid(parse(&c, &airnow_row(utc.clone())).unwrap());
            assert_eq!(format_event_time(&records[0].event_time), expected, "{utc}");
        }
        for (utc, reason) in [
            (Value::Null, "time field UTC is missing"),
            (json!(""), "time field UTC is missing"),
            (json!(true), "time field UTC: true is not a time"),
            (
                json!(1736496000000000_i64),
                "time field UTC: 1736496000000000 is not epoch seconds or milliseconds (beyond year 9999)",
            ),
        ] {
            let bad = invalid(parse(&c, &airnow_row(utc.clone())).unwrap());
            assert_eq!(bad.len(), 1, "{utc}");
            assert_eq!(bad[0].reason, reason, "{utc}");
        }
        // A record without the field at all.
        let body = br#"[{"Latitude": 34.1992, "Longitude": -118.5331}]"#;
        let bad = invalid(parse(&c, body).unwrap());
        assert_eq!(bad[0].reason, "time field UTC is missing");
    }

    #[test]
    fn the_99999999999_case_really_is_seconds() {
        // Guards the threshold itself: 1e11 is the first millisecond value.
        assert_eq!(
            format_event_time(&epoch(1e11).unwrap()),
            "1973-03-03T09:46:40Z"
        );
        assert_eq!(
            format_event_time(&epoch(99_999_999_999.0).unwrap()),
            "5138-11-16T09:46:39Z"
        );
    }

    #[test]
    fn a_nested_record_pointer_and_pointer_fields() {
        let c = config(
            HttpFormat::Json,
            Some("/features"),
            map(
                None,
                Some("/geometry/coordinates/1"),
                Some("/geometry/coordinates/0"),
                Some("/properties/stationIdentifier"),
            ),
        );
        let records = valid(parse(&c, &real("noaa/gridpoints_stations_KCMH_area.json")).unwrap());
        assert_eq!(records.len(), 41);
        let kcmh = &records[0];
        assert_eq!(
            kcmh.id,
            RecordId::from_natural_key(SourceType::Http, &["custom", "KCMH"])
        );
        let loc = kcmh.location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (39.9906999, -82.87691));
        assert_eq!(
            raw(kcmh)["properties"]["name"],
            "John Glenn Columbus International Airport"
        );

        // A pointer to an object takes it as the one record; epoch seconds from PurpleAir.
        let c = config(
            HttpFormat::Json,
            Some("/sensor"),
            map(
                Some("last_seen"),
                Some("latitude"),
                Some("longitude"),
                Some("sensor_index"),
            ),
        );
        let records =
            valid(parse(&c, &real("purpleair/v1_sensors_131075__2022-11-05.json")).unwrap());
        assert_eq!(records.len(), 1);
        assert_eq!(
            format_event_time(&records[0].event_time),
            "2022-11-05T16:36:02Z"
        );
        assert_eq!(
            records[0].id,
            RecordId::from_natural_key(SourceType::Http, &["custom", "131075"])
        );
        assert_eq!(raw(&records[0])["name"], "Mariners Bluff");
    }

    #[test]
    fn a_pointer_to_nothing_or_the_wrong_shape_is_a_payload_error() {
        let body = real("noaa/gridpoints_stations_KCMH_area.json");
        let c = config(HttpFormat::Json, Some("/data"), FieldMapping::default());
        match parse(&c, &body) {
            Err(PayloadError::UnexpectedJson { detail, excerpt }) => {
                assert_eq!(detail, "record_pointer \"/data\" resolves to nothing");
                assert!(excerpt.starts_with("{\n    \"@context\": ["), "{excerpt}");
            }
            other => panic!("{other:?}"),
        }
        let c = config(HttpFormat::Json, Some("/type"), FieldMapping::default());
        match parse(&c, &body) {
            Err(PayloadError::UnexpectedJson { detail, .. }) => {
                assert_eq!(
                    detail,
                    "record_pointer \"/type\" is a string, not an array of records"
                )
            }
            other => panic!("{other:?}"),
        }
        // No pointer, and the document is an object.
        let c = config(HttpFormat::Json, None, FieldMapping::default());
        match parse(&c, &body) {
            Err(PayloadError::UnexpectedJson { detail, .. }) => assert_eq!(
                detail,
                "an object, not an array of records; set record_pointer to the array (top-level keys: @context, features, observationStations, pagination, type)"
            ),
            other => panic!("{other:?}"),
        }
        let html = b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>";
        assert!(matches!(parse(&c, html), Err(PayloadError::Html { .. })));
        assert!(matches!(
            parse(&c, b"Too many requests, slow down."),
            Err(PayloadError::Text { .. })
        ));
        assert!(matches!(
            parse(&c, b"[{\"a\": 1},"),
            Err(PayloadError::InvalidJson { .. })
        ));
        // Elements that are not objects are invalid rows; the rest continue.
        let rows = parse(&c, b"[{\"a\": 1}, 7]").unwrap();
        assert_eq!(rows.len(), 2);
        let bad = invalid(rows);
        assert_eq!(bad[0].position, "record 2");
        assert_eq!(bad[0].reason, "record is a number, not an object");
    }

    #[test]
    fn geojson_properties_by_name_and_point_locations() {
        let c = config(
            HttpFormat::Geojson,
            None,
            map(Some("sent"), None, None, Some("id")),
        );
        let body = real("noaa/alerts_active_point_33.25_-112.30__2024-07-18.json");
        let records = valid(parse(&c, &body).unwrap());
        assert_eq!(records.len(), 2);
        assert_eq!(
            format_event_time(&records[0].event_time),
            "2024-07-18T19:47:00Z"
        );
        assert_eq!(
            format_event_time(&records[1].event_time),
            "2024-07-18T15:13:00Z"
        );
        // properties.id, not the feature's URL id.
        assert_eq!(
            records[0].id,
            RecordId::from_natural_key(
                SourceType::Http,
                &[
                    "custom",
                    "urn:oid:2.49.0.1.840.0.505a7220d91b00eb1d75a3fb4f339f825496a522.004.1"
                ]
            )
        );
        // Null geometry: no location.
        assert_eq!(records[0].location, None);
        assert_eq!(raw(&records[1])["properties"]["event"], "Air Quality Alert");

        // Point geometries become locations when lat/lon are not mapped.
        let c = config(HttpFormat::Geojson, None, FieldMapping::default());
        let records = valid(parse(&c, &real("noaa/gridpoints_stations_KCMH_area.json")).unwrap());
        assert_eq!(records.len(), 41);
        let loc = records[0].location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (39.9906999, -82.87691));

        // Not GeoJSON at all.
        assert!(matches!(
            parse(&c, br#"{"type": "Topology"}"#),
            Err(PayloadError::UnexpectedJson { .. })
        ));
    }

    /// Header and first three rows of a real FIRMS MODIS file.
    const FIRMS: &str = "latitude,longitude,brightness,scan,track,acq_date,acq_time,satellite,confidence,version,bright_t31,frp,daynight
20.04031,-77.49902,301.84,1.01,1.01,2025-03-25,0228,T,45,6.1NRT,291.75,3.93,N
20.23616,-76.92883,302.58,1.04,1.02,2025-03-25,0228,T,50,6.1NRT,292.02,4.44,N
20.47002,-76.11165,304.81,1.12,1.06,2025-03-25,0228,T,29,6.1NRT,292.19,5.87,N
";

    #[test]
    fn csv_rows_become_objects_of_text() {
        let real_head: String = String::from_utf8(real(
            "firms/MODIS_C6_1_USA_contiguous_and_Hawaii_24h__2025-03-25.csv",
        ))
        .unwrap()
        .lines()
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
        assert_eq!(real_head, FIRMS);
        let c = config(
            HttpFormat::Csv,
            None,
            map(None, Some("latitude"), Some("longitude"), None),
        );
        let records = valid(parse(&c, FIRMS.as_bytes()).unwrap());
        assert_eq!(records.len(), 3);
        assert_eq!(
            raw(&records[0]),
            &json!({"latitude": "20.04031", "longitude": "-77.49902", "brightness": "301.84", "scan": "1.01", "track": "1.01", "acq_date": "2025-03-25", "acq_time": "0228", "satellite": "T", "confidence": "45", "version": "6.1NRT", "bright_t31": "291.75", "frp": "3.93", "daynight": "N"})
        );
        let loc = records[0].location.as_ref().unwrap();
        assert_eq!((loc.lat, loc.lon), (20.04031, -77.49902));

        // A cut row is invalid with its line; the rest continue.
        let cut = FIRMS.replace(
            "302.58,1.04,1.02,2025-03-25,0228,T,50,6.1NRT,292.02,4.44,N",
            "302.58",
        );
        let rows = parse(&c, cut.as_bytes()).unwrap();
        assert_eq!(rows.len(), 3);
        let bad = invalid(rows);
        assert_eq!(bad[0].position, "line 3");
        assert_eq!(bad[0].reason, "row has 3 field(s), the header has 13");
        assert_eq!(bad[0].raw, "20.23616,-76.92883,302.58");

        // Out of range is invalid, naming the fields.
        let far = FIRMS.replace("20.04031,", "120.04031,");
        let bad = invalid(parse(&c, far.as_bytes()).unwrap());
        assert_eq!(
            bad[0].reason,
            "latitude/longitude: latitude 120.04031 is outside -90..90"
        );

        // An epoch-seconds column, as text.
        let c = config(
            HttpFormat::Csv,
            None,
            map(Some("t"), None, None, Some("name")),
        );
        let records = valid(parse(&c, b"name,t\nKCMH,1736496000\n").unwrap());
        assert_eq!(
            format_event_time(&records[0].event_time),
            "2025-01-10T08:00:00Z"
        );
    }

    /// Row kinds in order: `V` valid, or the invalid row's position.
    fn outline(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|r| match r {
                Row::Valid(_) => "V".to_owned(),
                Row::Invalid(i) => i.position.clone(),
            })
            .collect()
    }

    #[test]
    fn an_unterminated_quote_costs_its_line_and_the_rows_after_it_are_read() {
        let c = config(
            HttpFormat::Csv,
            None,
            map(None, Some("latitude"), Some("longitude"), None),
        );
        let open = "20.23616,-76.92883,302.58,1.04,1.02,2025-03-25,0228,T,50,6.1NRT,292.02,4.44,N,\"unterminated";
        let text = FIRMS.replacen(
            "20.23616,-76.92883,302.58,1.04,1.02,2025-03-25,0228,T,50,6.1NRT,292.02,4.44,N",
            open,
            1,
        );
        let text = format!(
            "{text}{}",
            FIRMS.lines().nth(1).unwrap().replace("20.04", "21.04")
        );
        let rows = parse(&c, text.as_bytes()).unwrap();
        assert_eq!(outline(&rows), ["V", "line 3", "V", "V"]);
        let bad = invalid(rows);
        assert_eq!(
            bad[0].reason,
            "unterminated quote: a quoted field opens on this line and is still open at the end of the body, and the row fails: row has 14 field(s), the header has 13; this line is dead-lettered alone and the lines after it are read as rows"
        );
        assert_eq!(bad[0].raw, open);

        // Closed by a stray quote lines later: that merged row fails, its first line is
        // dead-lettered, and the lines after it are read again (one opening a quote itself).
        let c3 = config(HttpFormat::Csv, None, FieldMapping::default());
        let rows = parse(&c3, b"a,b\n1,2,\"open\n2,x\n3,\"y\n4,z\n").unwrap();
        assert_eq!(outline(&rows), ["line 2", "V", "line 4", "V"]);
        let bad = invalid(rows);
        assert_eq!(
            bad[0].reason,
            "unterminated quote: a quoted field opens on this line and runs to line 4, and the row fails: row has 3 field(s), the header has 2; this line is dead-lettered alone and the lines after it are read as rows"
        );
        assert_eq!(bad[0].raw, "1,2,\"open");
        assert_eq!(bad[1].raw, "3,\"y");

        // With CRLF line ends, and the quote on the last line.
        let crlf = format!("{FIRMS}{open}").replace('\n', "\r\n");
        let rows = parse(&c, crlf.as_bytes()).unwrap();
        assert_eq!(outline(&rows), ["V", "V", "V", "line 5"]);
        assert_eq!(invalid(rows)[0].raw, open);

        // A quote left open in a row that is otherwise valid (no mapping checks the last
        // column) still does not swallow the rows after it.
        let c = config(HttpFormat::Csv, None, FieldMapping::default());
        let text = "a,b\n1,\"open\n2,x\n3,y\n";
        let rows = parse(&c, text.as_bytes()).unwrap();
        assert_eq!(outline(&rows), ["line 2", "V", "V"]);
        assert_eq!(
            invalid(rows)[0].reason,
            "unterminated quote: a quoted field opens on this line and is still open at the end of the body; this line is dead-lettered alone and the lines after it are read as rows"
        );

        // A quoted field that holds a line break and is closed is one record, as in CSV.
        let rows = parse(&c, b"a,b\n1,\"two\nlines\"\n2,x\n").unwrap();
        let records = valid(rows);
        assert_eq!(records.len(), 2);
        assert_eq!(raw(&records[0])["b"], "two\nlines");
    }

    #[test]
    fn csv_line_numbers_count_blank_lines() {
        let c = config(
            HttpFormat::Csv,
            None,
            map(None, Some("latitude"), Some("longitude"), None),
        );
        let text = FIRMS
            .replacen("\n20.23616", "\n\n\n20.23616", 1)
            .replace(",4.44,N", "");
        let rows = parse(&c, text.as_bytes()).unwrap();
        assert_eq!(outline(&rows), ["V", "line 5", "V"]);
    }

    #[test]
    fn csv_that_lacks_a_mapped_column_is_not_this_feed() {
        let c = config(
            HttpFormat::Csv,
            None,
            map(
                Some("acq_datetime"),
                Some("latitude"),
                Some("longitude"),
                None,
            ),
        );
        match parse(&c, FIRMS.as_bytes()) {
            Err(PayloadError::MissingColumns { missing, .. }) => {
                assert_eq!(missing, "`acq_datetime`")
            }
            other => panic!("{other:?}"),
        }
        match parse(&c, b"Invalid MAP_KEY.") {
            Err(PayloadError::MissingColumns { missing, excerpt }) => {
                assert_eq!(missing, "`acq_datetime`, `latitude`, `longitude`");
                assert_eq!(excerpt, "Invalid MAP_KEY.");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&c, b"<html><body>Service Unavailable</body></html>"),
            Err(PayloadError::Html { .. })
        ));
    }

    #[test]
    fn the_hash_id_ignores_key_order_and_whitespace() {
        let c = config(HttpFormat::Json, None, FieldMapping::default());
        let body = br#"[
            {"Latitude": 34.1992, "Longitude": -118.5331, "UTC": "2025-01-10T00:00", "Value": 2.9, "Category": {"Number": 1, "Name": "Good"}},
            {"Category": {"Name": "Good", "Number": 1}, "Value": 2.9, "UTC": "2025-01-10T00:00", "Longitude": -118.5331, "Latitude": 34.1992},
            {"Latitude": 34.1992, "Longitude": -118.5331, "UTC": "2025-01-10T00:00", "Value": 3.0, "Category": {"Number": 1, "Name": "Good"}}
        ]"#;
        let records = valid(parse(&c, body).unwrap());
        assert_eq!(records[0].id, records[1].id);
        assert_ne!(records[0].id, records[2].id);
        assert_eq!(
            canonical_json(raw(&records[1])),
            r#"{"Category":{"Name":"Good","Number":1},"Latitude":34.1992,"Longitude":-118.5331,"UTC":"2025-01-10T00:00","Value":2.9}"#
        );
        assert_eq!(
            records[0].id,
            RecordId::from_natural_key(
                SourceType::Http,
                &["custom", &canonical_json(raw(&records[1]))]
            )
        );
        // The same payload parsed again gives the same ids.
        let again = valid(parse(&c, body).unwrap());
        assert_eq!(again[2].id, records[2].id);
        // A mapped id that is missing is invalid.
        let c = config(
            HttpFormat::Json,
            None,
            map(None, None, None, Some("siteId")),
        );
        let bad = invalid(parse(&c, body).unwrap());
        assert_eq!(bad.len(), 3);
        assert_eq!(bad[0].reason, "id field siteId is missing");
    }

    #[test]
    fn next_link_found_null_or_absent() {
        let stations = real("noaa/gridpoints_stations_KCMH_area.json");
        let next = next_link(&stations, "/pagination/next").unwrap().unwrap();
        assert!(
            next.starts_with("https://api.weather.gov/stations?id%5B0%5D=KAID&"),
            "{next}"
        );
        assert!(next.ends_with("&cursor=eyJzIjo1MDB9"), "{next}");
        // Absent: the alerts response has no pagination.
        let alerts = real("noaa/alerts_active_point_33.25_-112.30__2024-07-18.json");
        assert_eq!(next_link(&alerts, "/pagination/next").unwrap(), None);
        // Null: the last page.
        let mut doc: Value = serde_json::from_slice(&stations).unwrap();
        doc["pagination"]["next"] = Value::Null;
        let last = serde_json::to_vec(&doc).unwrap();
        assert_eq!(next_link(&last, "/pagination/next").unwrap(), None);
        doc["pagination"]["next"] = json!(2);
        let odd = serde_json::to_vec(&doc).unwrap();
        match next_link(&odd, "/pagination/next") {
            Err(PayloadError::UnexpectedJson { detail, .. }) => {
                assert_eq!(
                    detail,
                    "next_link \"/pagination/next\" is a number, not a URL"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            next_link(b"<html><body>oops</body></html>", "/next"),
            Err(PayloadError::Html { .. })
        ));
    }

    #[test]
    fn check_config_reports_http_problems() {
        let check = |s: &SourceConfig| {
            let mut problems = Vec::new();
            check_config("sources.x", s, &mut problems);
            problems
        };
        let good = config(
            HttpFormat::Json,
            Some("/features"),
            map(
                Some("/properties/sent"),
                Some("lat"),
                Some("lon"),
                Some("id"),
            ),
        );
        assert_eq!(check(&good), Vec::<String>::new());
        let mut bad = config(
            HttpFormat::Json,
            Some("features"),
            FieldMapping {
                time: Some(" ".to_owned()),
                lat: Some("lat".to_owned()),
                id: Some("/a~2b".to_owned()),
                device_id: Some("dev".to_owned()),
                ..FieldMapping::default()
            },
        );
        bad.topic = None;
        bad.next_link = Some("/links/next".to_owned());
        assert_eq!(
            check(&bad),
            vec![
                "sources.x.topic: type http has no default topic; name one, e.g. `topic: wildfire-custom`",
                "sources.x.record_pointer: \"features\" is not a JSON pointer: it must start with `/` (or be empty)",
                "sources.x.mapping.time: is empty; name a field, or a JSON pointer such as `/properties/time`",
                "sources.x.mapping.id: \"/a~2b\" is not a JSON pointer: `~` must be written `~0`, `/` as `~1`",
                "sources.x.mapping: lat and lon go together; set both or neither",
                "sources.x.mapping.device_id: only applies to type mqtt, not http",
            ]
        );
        let csv = SourceConfig {
            next_link: Some("/next".to_owned()),
            ..config(HttpFormat::Csv, Some("/rows"), FieldMapping::default())
        };
        assert_eq!(
            check(&csv),
            vec![
                "sources.x.record_pointer: not used with format csv (every row is a record)",
                "sources.x.next_link: format csv has no JSON to find a next link in",
            ]
        );
        let calfire = SourceConfig {
            source_type: SourceType::CalfireIncidents,
            ..config(HttpFormat::Json, None, FieldMapping::default())
        };
        // Settings given to another type are reported once, by the transport's check.
        assert_eq!(check(&calfire), Vec::<String>::new());
        let mut problems = Vec::new();
        crate::transport::http::check_config("sources.x", &calfire, &mut problems);
        assert_eq!(
            problems,
            vec![
                "sources.x.format: only applies to type http, not calfire_incidents",
                "sources.x.mapping: only applies to type http or mqtt, not calfire_incidents",
            ]
        );
        assert_eq!(
            check(&SourceConfig::defaults_for(SourceType::CalfireIncidents)),
            Vec::<String>::new()
        );
    }
}
