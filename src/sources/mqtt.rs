//! `mqtt`: field IoT sensors publishing to an MQTT broker (DESIGN §4). The transport
//! (`transport::mqtt`) receives messages; [`MqttMapper`] turns one into a `sensor_reading`.
//!
//! Payloads:
//! - a JSON object: fields picked by `mapping` (a top-level name, or a JSON pointer such as
//!   `/meta/time`). `measurements` lists the numeric fields to keep; by default every
//!   top-level JSON *number* not mapped to time, lat, lon or device id. Numeric *strings*
//!   are kept only when listed: devices send versions and ids as strings (`"version":
//!   "7.02"`), which are not measurements.
//! - a plain number (`23.5`): one measurement named after the topic's last level.
//! - anything else (text, binary, an empty payload, a JSON array): an invalid row (DLQ).
//!
//! Time: RFC 3339 (any offset, stored as UTC), PurpleAir's `2023/09/22T16:04:07z`, or epoch
//! seconds / milliseconds (≥ 10^11 is read as ms). Without a time in the payload, the
//! receive time is used; when a configured time field is missing the record is also
//! flagged `missing_fields`. A payload time before 1970-01-01 or more than a day after the
//! receive time is a broken device clock: the row is invalid. Measurements are not bounded:
//! their units are whatever the device sends.
//!
//! Natural key: topic, device id and the payload's time; without a payload time, a SHA-256
//! of the payload, so a retained message re-sent after a reconnect gets the same id and is
//! deduplicated. The flip side: identical untimed payloads on one topic within the dedupe
//! window are one reading; map a time field when repeats matter.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Invalid, Row, SourceType, excerpt, not_in_future};
use crate::config::{FieldMapping, SourceConfig};
use crate::record::{
    Data, Kind, Location, Priority, Quality, QualityFlag, Record, RecordId, SensorReading,
    format_event_time,
};

/// Largest payload text kept whole in a DLQ record; longer ones are cut to an excerpt.
const MAX_RAW_BYTES: usize = 64 * 1024;

/// Largest payload mapped to a reading; a larger one is dead-lettered (with an excerpt).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Epoch numbers at or above this are milliseconds (10^11 s is the year 5138).
const EPOCH_MS_FROM: f64 = 1e11;

/// Maps one MQTT message to a record, with one source's `mapping`.
pub struct MqttMapper {
    source_id: Arc<str>,
    mapping: FieldMapping,
}

impl MqttMapper {
    pub fn new(source_id: Arc<str>, config: &SourceConfig) -> Self {
        MqttMapper {
            source_id,
            mapping: config.mapping.clone().unwrap_or_default(),
        }
    }

    /// One message as a row. `received_at` is the event time when the payload has none, and
    /// the record's `ingested_at`.
    pub fn map(
        &self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        received_at: DateTime<Utc>,
    ) -> Row {
        match self.reading(topic, payload, retained, received_at) {
            Ok(record) => Row::Valid(Box::new(record)),
            Err(reason) => Row::Invalid(Invalid {
                position: format!("topic {topic}"),
                reason,
                raw: raw_text(payload),
            }),
        }
    }

    fn reading(
        &self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        received_at: DateTime<Utc>,
    ) -> Result<Record, String> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "payload of {} bytes is larger than the {MAX_PAYLOAD_BYTES} bytes a sensor reading may be",
                payload.len()
            ));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| "payload is not UTF-8 text (binary payloads are not supported)")?;
        if text.trim().is_empty() {
            return Err("empty payload (an MQTT \"clear retained message\" carries none)".into());
        }
        let parsed = serde_json::from_str::<Value>(text);
        let fields = match parsed {
            Ok(Value::Object(object)) => self.object_fields(topic, &object)?,
            Ok(Value::Number(n)) => plain_number(topic, n.as_f64())?,
            Ok(other) => {
                return Err(format!(
                    "JSON payload is {}, expected an object or a number",
                    json_type(&other)
                ));
            }
            // Numbers JSON does not accept (`+5`, `.5`); never NaN or infinity.
            Err(e) => match text.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => plain_number(topic, Some(x))?,
                _ => {
                    return Err(format!(
                        "payload is neither JSON ({e}) nor a plain number; it begins: {:?}",
                        excerpt(payload)
                    ));
                }
            },
        };

        let device_id = fields
            .device_id
            .or_else(|| {
                let level = self.mapping.device_topic_level?;
                topic
                    .split('/')
                    .nth(level)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| topic.to_owned());
        if let Some(t) = fields.time {
            let name = self.mapping.time.as_deref().unwrap_or("time");
            plausible_time(name, t, received_at)?;
        }
        let event_time = fields.time.unwrap_or(received_at);
        let stamp = match fields.time {
            Some(t) => format_event_time(&t),
            None => hex_sha256(payload),
        };
        let id = RecordId::from_natural_key(SourceType::Mqtt, &[topic, &device_id, &stamp]);
        Ok(Record {
            schema: (),
            id,
            source_id: self.source_id.clone(),
            source_type: SourceType::Mqtt,
            kind: Kind::SensorReading,
            event_time,
            ingested_at: received_at,
            location: fields.location,
            priority: Priority::Normal,
            quality: Quality::from_flags(fields.flags),
            data: Data::SensorReading(SensorReading {
                device_id,
                topic: topic.to_owned(),
                retained,
                measurements: fields.measurements,
            }),
        })
    }

    fn object_fields(&self, topic: &str, object: &Map<String, Value>) -> Result<Fields, String> {
        let m = &self.mapping;
        let root = Value::Object(object.clone());
        let mut fields = Fields::default();

        if let Some(spec) = &m.time {
            match lookup(&root, spec) {
                Some(v) => fields.time = Some(parse_time(v).map_err(|e| format!("{spec}: {e}"))?),
                None => fields.flags.push(QualityFlag::MissingFields),
            }
        }

        if let (Some(lat_spec), Some(lon_spec)) = (&m.lat, &m.lon) {
            let lat = number_field(&root, lat_spec)?;
            let lon = number_field(&root, lon_spec)?;
            fields.location = match (lat, lon) {
                (Some(lat), Some(lon)) => Some(
                    Location::new(lat, lon).map_err(|e| format!("{lat_spec}/{lon_spec}: {e}"))?,
                ),
                (None, None) => {
                    fields.flags.push(QualityFlag::MissingFields);
                    None
                }
                (Some(_), None) => {
                    return Err(format!("{lat_spec} is given but {lon_spec} is not"));
                }
                (None, Some(_)) => {
                    return Err(format!("{lon_spec} is given but {lat_spec} is not"));
                }
            };
        }

        if let Some(spec) = &m.device_id {
            match lookup(&root, spec) {
                Some(Value::String(s)) if !s.trim().is_empty() => {
                    fields.device_id = Some(s.trim().to_owned())
                }
                Some(Value::Number(n)) => fields.device_id = Some(n.to_string()),
                Some(other) => {
                    return Err(format!(
                        "{spec}: device id is {}, expected text or a number",
                        json_type(other)
                    ));
                }
                None => fields.flags.push(QualityFlag::MissingFields),
            }
        }

        match &m.measurements {
            Some(specs) => {
                for spec in specs {
                    match number_field(&root, spec)? {
                        Some(x) => {
                            fields.measurements.insert(measurement_name(spec), x);
                        }
                        None => fields.flags.push(QualityFlag::MissingFields),
                    }
                }
            }
            None => {
                let mapped: Vec<&str> = [&m.time, &m.lat, &m.lon, &m.device_id]
                    .into_iter()
                    .flatten()
                    .map(|spec| top_level_name(spec))
                    .collect();
                for (name, value) in object {
                    if mapped.contains(&name.as_str()) {
                        continue;
                    }
                    if let Some(x) = value.as_f64().filter(|x| x.is_finite()) {
                        fields.measurements.insert(name.clone(), x);
                    }
                }
            }
        }
        if fields.measurements.is_empty() {
            return Err(format!(
                "no numeric measurement in the payload on {topic} (mapping.measurements lists the fields to keep)"
            ));
        }
        Ok(fields)
    }
}

/// What a payload gave, before the device id fallbacks.
#[derive(Default)]
struct Fields {
    time: Option<DateTime<Utc>>,
    location: Option<Location>,
    device_id: Option<String>,
    measurements: BTreeMap<String, f64>,
    flags: Vec<QualityFlag>,
}

fn plain_number(topic: &str, value: Option<f64>) -> Result<Fields, String> {
    let x = value
        .filter(|x| x.is_finite())
        .ok_or("payload number is out of range")?;
    let name = topic
        .rsplit('/')
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or("value");
    Ok(Fields {
        measurements: [(name.to_owned(), x)].into(),
        ..Fields::default()
    })
}

/// A field by top-level name or JSON pointer; `null` counts as absent.
fn lookup<'a>(root: &'a Value, spec: &str) -> Option<&'a Value> {
    let value = if spec.starts_with('/') {
        root.pointer(spec)
    } else {
        root.get(spec)
    };
    value.filter(|v| !v.is_null())
}

/// A numeric field: a JSON number, or a string holding one. `None` when absent.
fn number_field(root: &Value, spec: &str) -> Result<Option<f64>, String> {
    let Some(value) = lookup(root, spec) else {
        return Ok(None);
    };
    let x = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match x.filter(|x| x.is_finite()) {
        Some(x) => Ok(Some(x)),
        None => Err(format!("{spec}: {value} is not a number")),
    }
}

/// The measurement name of a field spec: the name itself, or a pointer's segments joined
/// with `.` (`/pm/2.5` → `pm.2.5`).
fn measurement_name(spec: &str) -> String {
    match spec.strip_prefix('/') {
        Some(pointer) => pointer
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect::<Vec<_>>()
            .join("."),
        None => spec.to_owned(),
    }
}

/// The top-level field a spec reads (a pointer's first segment).
fn top_level_name(spec: &str) -> &str {
    match spec.strip_prefix('/') {
        Some(pointer) => pointer.split('/').next().unwrap_or(pointer),
        None => spec,
    }
}

/// A payload time no real device clock gives is rejected: before the Unix epoch (a negative
/// epoch number, or a clock that never synchronised and counts from before 1970), or more
/// than a day after the message was received.
fn plausible_time(
    name: &str,
    t: DateTime<Utc>,
    received_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    if t < DateTime::UNIX_EPOCH {
        return Err(format!(
            "{name} {} is before 1970-01-01, the Unix epoch",
            format_event_time(&t)
        ));
    }
    not_in_future(name, t, received_at, "the receive time")
}

/// An event time: RFC 3339, PurpleAir's local `YYYY/MM/DDTHH:MM:SSz`, or epoch s / ms.
fn parse_time(value: &Value) -> Result<DateTime<Utc>, String> {
    let epoch = |x: f64| -> Result<DateTime<Utc>, String> {
        let ms = if x.abs() >= EPOCH_MS_FROM {
            x
        } else {
            x * 1000.0
        };
        if !ms.is_finite() || ms.abs() > 8.0e15 {
            return Err(format!("epoch time {x} is out of range"));
        }
        Utc.timestamp_millis_opt(ms.round() as i64)
            .single()
            .ok_or_else(|| format!("epoch time {x} is out of range"))
    };
    match value {
        Value::Number(n) => epoch(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(t.with_timezone(&Utc));
            }
            if let Some(naive) = s
                .strip_suffix(['z', 'Z'])
                .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y/%m/%dT%H:%M:%S").ok())
            {
                return Ok(naive.and_utc());
            }
            match s.parse::<f64>() {
                Ok(x) => epoch(x),
                Err(_) => Err(format!(
                    "{s:?} is not an RFC 3339 time with offset or an epoch number"
                )),
            }
        }
        other => Err(format!(
            "time is {}, expected text or a number",
            json_type(other)
        )),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The payload as text for the DLQ: whole when it is modest UTF-8, else an excerpt.
fn raw_text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if text.len() <= MAX_RAW_BYTES => text.to_owned(),
        _ => excerpt(payload),
    }
}

/// Checks an `mqtt` source's settings (called from `config::check_source`).
pub fn check_config(at: &str, s: &SourceConfig, problems: &mut Vec<String>) {
    match s.broker.as_deref() {
        None => problems.push(format!(
            "{at}.broker: required for type mqtt, e.g. `broker: mqtt://localhost:1883`"
        )),
        Some(broker) => {
            if let Err(e) = BrokerUrl::parse(broker) {
                problems.push(format!("{at}.broker: {e}"));
            }
        }
    }
    if s.topics.is_empty() {
        problems.push(format!(
            "{at}.topics: list at least one topic filter, e.g. `topics: [\"sensors/+/data\"]`"
        ));
    }
    for (i, filter) in s.topics.iter().enumerate() {
        if let Err(e) = check_filter(filter) {
            problems.push(format!("{at}.topics[{i}]: {filter:?} {e}"));
        }
    }
    if let Some(ca) = &s.ca_file {
        let tls = s
            .broker
            .as_deref()
            .and_then(|b| BrokerUrl::parse(b).ok())
            .is_some_and(|b| b.tls);
        if !tls {
            problems.push(format!("{at}.ca_file: only for an mqtts:// broker (TLS)"));
        }
        if !ca.is_file() {
            problems.push(format!(
                "{at}.ca_file: {} does not exist or is not a file",
                ca.display()
            ));
        }
    }
    if s.password.is_some() && s.username.is_none() {
        problems.push(format!("{at}.password: needs a username"));
    }
    if let Some(id) = &s.client_id
        && (id.is_empty() || id.len() > 65_535)
    {
        problems.push(format!("{at}.client_id: must not be empty"));
    }
    if !s.paths.is_empty() {
        problems.push(format!(
            "{at}.paths: not for type mqtt; messages come from `broker` and `topics`"
        ));
    }
    if s.url.is_some() {
        problems.push(format!(
            "{at}.url: not for type mqtt; use `broker: mqtt://host:port`"
        ));
    }
    if s.interval.is_some() || s.schedule.is_some() || s.mode == crate::config::ModeKind::Batch {
        problems.push(format!(
            "{at}: mqtt messages are pushed by the broker as they arrive; remove `interval`, `schedule` and `mode: batch`"
        ));
    }
    if let Some(m) = &s.mapping {
        if m.lat.is_some() != m.lon.is_some() {
            problems.push(format!(
                "{at}.mapping: lat and lon go together; set both or neither"
            ));
        }
        if m.id.is_some() {
            problems.push(format!(
                "{at}.mapping.id: only for type http (mqtt ids come from topic, device and time)"
            ));
        }
        let specs = [&m.time, &m.lat, &m.lon, &m.device_id]
            .into_iter()
            .flatten()
            .chain(m.measurements.iter().flatten());
        for spec in specs {
            if spec.is_empty() {
                problems.push(format!("{at}.mapping: a field name is empty"));
            }
        }
        if m.measurements.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "{at}.mapping.measurements: empty; leave it out to keep every numeric field"
            ));
        }
    }
}

/// A broker address from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| {
            format!(
                "{text:?} is not a URL ({e}); write it like mqtt://host:1883 or mqtts://host:8883"
            )
        })?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!("scheme {other:?} is not mqtt:// or mqtts://"));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{text:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "credentials do not belong in the broker URL; use `username` and `password: ${VAR}`"
                    .to_owned(),
            );
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!(
                "{text:?} has a path or query; an MQTT broker is only host and port"
            ));
        }
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        if port == 0 {
            return Err(format!("{text:?}: port 0 is not a broker port"));
        }
        Ok(BrokerUrl { host, port, tls })
    }
}

/// MQTT topic filter rules: non-empty, `#` only as the whole last level, `+` only as a
/// whole level, no NUL.
fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("is empty");
    }
    if filter.len() > 65_535 {
        return Err("is longer than MQTT allows");
    }
    if filter.contains('\0') {
        return Err("contains a NUL character");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("uses `#` other than as the whole last level");
        }
        if level.contains('+') && *level != "+" {
            return Err("uses `+` other than as a whole level");
        }
    }
    Ok(())
}

/// Recorded MQTT messages, one JSON object per line — `{"topic": "…", "payload": …,
/// "retained": false, "received_at": "2026-12-04T08:00:00Z"}` — for backfills with
/// `firestream ingest --source-type mqtt` and for replaying a capture. `payload` is the
/// message text as a JSON string, or the JSON document itself; `retained` and
/// `received_at` are optional (default false and the time of reading).
pub struct MqttCaptureParser {
    mapper: MqttMapper,
}

impl MqttCaptureParser {
    pub fn new(source_id: Arc<str>, config: &SourceConfig) -> Self {
        MqttCaptureParser {
            mapper: MqttMapper::new(source_id, config),
        }
    }

    fn message(&self, line: &str) -> Result<(String, Vec<u8>, bool, DateTime<Utc>), String> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        let topic = value["topic"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("missing `topic` (a non-empty string)")?
            .to_owned();
        let payload = match &value["payload"] {
            Value::Null => return Err("missing `payload`".to_owned()),
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let retained = match &value["retained"] {
            Value::Null => false,
            Value::Bool(b) => *b,
            other => return Err(format!("`retained` must be true or false, not {other}")),
        };
        let received_at = match &value["received_at"] {
            Value::Null => Utc::now(),
            Value::String(text) => DateTime::parse_from_rfc3339(text)
                .map_err(|e| format!("`received_at` {text:?} is not an RFC 3339 time: {e}"))?
                .with_timezone(&Utc),
            other => {
                return Err(format!(
                    "`received_at` must be an RFC 3339 string, not {other}"
                ));
            }
        };
        Ok((topic, payload, retained, received_at))
    }
}

impl super::Parser for MqttCaptureParser {
    fn parse(
        &self,
        input: &mut dyn std::io::BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), super::PayloadError> {
        let head = super::read_head(input, 1024)?;
        if let Some(e) = super::sniff_non_data(&head, "MQTT capture (JSON lines)") {
            return Err(e);
        }
        let mut input = std::io::Read::chain(head.as_slice(), input);
        let mut reader = std::io::BufReader::new(&mut input);
        let mut line = String::new();
        let mut number = 0usize;
        loop {
            line.clear();
            if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 {
                return Ok(());
            }
            number += 1;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let row = match self.message(text) {
                Ok((topic, payload, retained, received_at)) => {
                    match self.mapper.map(&topic, &payload, retained, received_at) {
                        Row::Invalid(mut invalid) => {
                            invalid.position = format!("line {number} ({})", invalid.position);
                            Row::Invalid(invalid)
                        }
                        valid => valid,
                    }
                }
                Err(reason) => Row::Invalid(Invalid {
                    position: format!("line {number}"),
                    reason,
                    raw: excerpt(text.as_bytes()),
                }),
            };
            if !out(row) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn real(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/real/iot")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const SINGLE: &str = "purpleair_local_json_PA-II_single__2023-09-22.json";
    const DUAL: &str = "purpleair_local_json_PA-II_dual__2026-05-17.json";

    fn mapper(yaml: &str) -> MqttMapper {
        let config: SourceConfig = yaml_serde::from_str(yaml).unwrap();
        MqttMapper::new(Arc::from("iot"), &config)
    }

    fn received() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()
    }

    fn valid(row: Row) -> Record {
        match row {
            Row::Valid(r) => *r,
            Row::Invalid(i) => panic!("invalid: {i:?}"),
        }
    }

    fn invalid(row: Row) -> Invalid {
        match row {
            Row::Invalid(i) => i,
            Row::Valid(r) => panic!("valid: {r:?}"),
        }
    }

    fn reading(r: &Record) -> &SensorReading {
        match &r.data {
            Data::SensorReading(s) => s,
            other => panic!("{other:?}"),
        }
    }

    const PA_MAPPING: &str = "type: mqtt\nmapping: {time: DateTime, device_id: SensorId, measurements: [pm2_5_atm, pm10_0_atm, current_temp_f, current_humidity, pressure]}";

    #[test]
    fn real_purpleair_payload_with_a_mapping() {
        let m = mapper(PA_MAPPING);
        let r = valid(m.map("purpleair/lan/json", &real(SINGLE), false, received()));
        assert_eq!(format_event_time(&r.event_time), "2023-09-22T16:04:07Z");
        assert_eq!(r.ingested_at, received());
        assert_eq!(r.kind, Kind::SensorReading);
        assert_eq!(r.location, None);
        let s = reading(&r);
        assert_eq!(s.device_id, "de:ad:be:ef:12:34");
        assert_eq!(s.topic, "purpleair/lan/json");
        assert!(!s.retained);
        let expected: BTreeMap<String, f64> = [
            ("pm2_5_atm", 0.04),
            ("pm10_0_atm", 0.44),
            ("current_temp_f", 79.0),
            ("current_humidity", 31.0),
            ("pressure", 924.57),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(s.measurements, expected);
        assert_eq!(r.quality.flags, vec![]);
        // Key: topic, device, payload time.
        assert_eq!(
            r.id,
            RecordId::from_natural_key(
                SourceType::Mqtt,
                &[
                    "purpleair/lan/json",
                    "de:ad:be:ef:12:34",
                    "2023-09-22T16:04:07Z"
                ]
            )
        );
    }

    #[test]
    fn default_measurements_are_top_level_numbers_not_numeric_strings() {
        let m = mapper("type: mqtt\nmapping: {time: DateTime, device_id: SensorId}");
        let r = valid(m.map("pa/1", &real(SINGLE), true, received()));
        let s = reading(&r);
        assert!(s.retained);
        // "Adc": 0.0 is a real zero and stays 0.
        assert_eq!(s.measurements["Adc"], 0.0);
        assert_eq!(s.measurements["pm2.5_aqi"], 0.0);
        assert_eq!(s.measurements["p_0_3_um"], 147.71);
        assert_eq!(s.measurements["lat"], 123.123);
        // Strings ("7.02", "2.0"), the mapped time and device are not measurements.
        for name in [
            "version",
            "hardwareversion",
            "DateTime",
            "SensorId",
            "place",
        ] {
            assert!(!s.measurements.contains_key(name), "{name}");
        }
        // Every top-level number of the real payload, and nothing else.
        let object: Map<String, Value> = serde_json::from_slice(&real(SINGLE)).unwrap();
        let numbers = object.values().filter(|v| v.is_number()).count();
        assert_eq!(s.measurements.len(), numbers);
        assert_eq!(numbers, 45);
    }

    #[test]
    fn out_of_range_mapped_coordinates_are_invalid() {
        // The real files' redacted coordinates (lat 123.123) are not a place on Earth.
        let m = mapper("type: mqtt\nmapping: {lat: lat, lon: lon}");
        let bad = invalid(m.map("pa/1", &real(SINGLE), false, received()));
        assert_eq!(bad.position, "topic pa/1");
        assert!(
            bad.reason
                .starts_with("lat/lon: latitude 123.123 is outside"),
            "{}",
            bad.reason
        );
        assert!(bad.raw.contains("\"SensorId\": \"de:ad:be:ef:12:34\""));
        // The same record with real coordinates (only lat/lon changed) has a location.
        let text = String::from_utf8(real(SINGLE))
            .unwrap()
            .replace("\"lat\": 123.123", "\"lat\": 38.58")
            .replace("\"lon\": -123.123", "\"lon\": -121.49");
        let r = valid(m.map("pa/1", text.as_bytes(), false, received()));
        let loc = r.location.clone().unwrap();
        assert_eq!((loc.lat, loc.lon), (38.58, -121.49));
        assert!(!reading(&r).measurements.contains_key("lat"));
    }

    #[test]
    fn dual_laser_payload_without_mapping() {
        let m = mapper("type: mqtt");
        let payload = real(DUAL);
        let r = valid(m.map("home/pa2", &payload, false, received()));
        // No time mapped: received time, id from the payload hash, device is the topic.
        assert_eq!(r.event_time, received());
        assert_eq!(reading(&r).device_id, "home/pa2");
        assert_eq!(
            r.id,
            RecordId::from_natural_key(
                SourceType::Mqtt,
                &["home/pa2", "home/pa2", &hex_sha256(&payload)]
            )
        );
        let object: Map<String, Value> = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            reading(&r).measurements["pm2_5_atm_b"],
            object["pm2_5_atm_b"].as_f64().unwrap()
        );
        // The same payload received later (a retained message after a reconnect): same id.
        let later = valid(m.map(
            "home/pa2",
            &payload,
            true,
            received() + chrono::Duration::hours(1),
        ));
        assert_eq!(later.id, r.id);
    }

    #[test]
    fn plain_numbers_are_named_after_the_last_topic_level() {
        let m = mapper("type: mqtt\nmapping: {device_topic_level: 1}");
        let r = valid(m.map(
            "sensors/tower-7/temperature_c",
            b"23.5\n",
            false,
            received(),
        ));
        let s = reading(&r);
        assert_eq!(s.device_id, "tower-7");
        assert_eq!(s.measurements, [("temperature_c".to_owned(), 23.5)].into());
        // Forms JSON refuses but are plainly numbers; a real 0 stays 0.
        let r = valid(m.map("sensors/t/rain_mm", b"+0", false, received()));
        assert_eq!(reading(&r).measurements["rain_mm"], 0.0);
        // Topic too short for the level: the whole topic is the device.
        let r = valid(m.map("wind", b".5", false, received()));
        assert_eq!(reading(&r).device_id, "wind");
    }

    #[test]
    fn non_data_payloads_are_invalid_with_an_excerpt() {
        let m = mapper("type: mqtt");
        for (payload, expect) in [
            (&b"device rebooted"[..], "neither JSON"),
            (b"NaN", "neither JSON"),
            (b"", "empty payload"),
            (b"[1,2]", "JSON payload is an array"),
            (b"\"on\"", "JSON payload is a string"),
            (b"{\"state\": \"ok\"}", "no numeric measurement"),
            (b"\xff\xfe\x00", "not UTF-8"),
        ] {
            let bad = invalid(m.map("s/x", payload, false, received()));
            assert!(bad.reason.contains(expect), "{payload:?}: {}", bad.reason);
        }
        let bad = invalid(m.map("s/x", b"device rebooted", false, received()));
        assert_eq!(bad.raw, "device rebooted");
        assert!(bad.reason.contains("\"device rebooted\""), "{}", bad.reason);
    }

    #[test]
    fn times_in_every_accepted_form() {
        let m = mapper("type: mqtt\nmapping: {time: ts}");
        let at = |ts: &str| {
            let r = m.map(
                "s/x",
                format!("{{\"ts\": {ts}, \"v\": 1}}").as_bytes(),
                false,
                received(),
            );
            valid(r).event_time
        };
        let expected = Utc.with_ymd_and_hms(2023, 9, 22, 16, 2, 8).unwrap();
        assert_eq!(at("1695398528"), expected);
        assert_eq!(at("1695398528000"), expected);
        assert_eq!(at("\"1695398528\""), expected);
        assert_eq!(at("\"2023-09-22T09:02:08-07:00\""), expected);
        assert_eq!(at("\"2023/09/22T16:02:08z\""), expected);
        let bad = invalid(m.map(
            "s/x",
            b"{\"ts\": \"2023-09-22 16:02:08\", \"v\": 1}",
            false,
            received(),
        ));
        assert!(bad.reason.starts_with("ts: "), "{}", bad.reason);
        // A configured time that is missing: receive time, flagged, keyed by payload hash.
        let r = valid(m.map("s/x", b"{\"v\": 1}", false, received()));
        assert_eq!(r.event_time, received());
        assert_eq!(r.quality.flags, vec![QualityFlag::MissingFields]);
    }

    #[test]
    fn a_payload_time_before_1970_or_over_a_day_after_receipt_is_invalid() {
        let m = mapper("type: mqtt\nmapping: {time: ts}");
        let map = |ts: &str| {
            m.map(
                "s/x",
                format!("{{\"ts\": {ts}, \"v\": 1e300}}").as_bytes(),
                false,
                received(),
            )
        };
        // The epoch itself and exactly a day after receipt (2026-05-02T12:00:00Z) are valid.
        assert_eq!(valid(map("0")).event_time, DateTime::UNIX_EPOCH);
        assert_eq!(
            format_event_time(&valid(map("\"2026-05-02T12:00:00Z\"")).event_time),
            "2026-05-02T12:00:00Z"
        );
        // Measurements are not bounded: units are unknown.
        assert_eq!(
            reading(&valid(map("0"))).measurements.get("v"),
            Some(&1e300)
        );
        assert_eq!(
            invalid(map("-1")).reason,
            "ts 1969-12-31T23:59:59Z is before 1970-01-01, the Unix epoch"
        );
        assert_eq!(
            invalid(map("\"2026-05-02T12:00:01Z\"")).reason,
            "ts 2026-05-02T12:00:01Z is in the future: the latest accepted is the receive time + 1 day = 2026-05-02T12:00:00Z"
        );
        // Epoch milliseconds alike: 1777809601000 ms is 2026-05-03T12:00:01Z.
        assert!(
            invalid(map("1777809601000"))
                .reason
                .starts_with("ts 2026-05-03T12:00:01Z is in the future")
        );
    }

    #[test]
    fn pointers_and_listed_fields() {
        let m = mapper(
            "type: mqtt\nmapping: {time: /meta/t, device_id: /meta/dev, lat: /pos/0, lon: /pos/1, measurements: [/env/temp_c, rh, missing]}",
        );
        let payload = br#"{"meta": {"t": "2026-05-01T10:00:00Z", "dev": 42}, "pos": [38.5, -121.5], "env": {"temp_c": 31.5}, "rh": "12.5", "other": 3}"#;
        let r = valid(m.map("s/x", payload, false, received()));
        let s = reading(&r);
        assert_eq!(s.device_id, "42");
        assert_eq!(
            s.measurements,
            [("env.temp_c".to_owned(), 31.5), ("rh".to_owned(), 12.5)].into()
        );
        assert_eq!(r.quality.flags, vec![QualityFlag::MissingFields]);
        assert_eq!(r.location.unwrap().geohash, "9qce5");
        let bad = invalid(m.map("s/x", br#"{"pos": [38.5], "rh": 1}"#, false, received()));
        assert_eq!(bad.reason, "/pos/0 is given but /pos/1 is not");
        let bad = invalid(m.map("s/x", br#"{"rh": true}"#, false, received()));
        assert_eq!(bad.reason, "rh: true is not a number");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://broker.local").unwrap(),
            BrokerUrl {
                host: "broker.local".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(BrokerUrl::parse("mqtts://b:9000").unwrap().port, 9000);
        assert_eq!(BrokerUrl::parse("mqtts://b").unwrap().port, 8883);
        for bad in [
            "broker:1883",
            "http://b",
            "mqtt://",
            "mqtt://u:p@b",
            "mqtt://b/x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_filters() {
        for ok in ["a/b", "a/+/c", "#", "a/#", "+", "+/+/#", "/a"] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "+a/b", "a/##"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_problems_are_all_reported() {
        let check = |yaml: &str| {
            let mut s: SourceConfig = yaml_serde::from_str(yaml).unwrap();
            s.ca_file = s.ca_file.map(|p| PathBuf::from("/nonexistent").join(p));
            let mut problems = Vec::new();
            check_config("sources.iot", &s, &mut problems);
            problems
        };
        assert_eq!(
            check("type: mqtt\nbroker: mqtt://b\ntopics: [\"s/+/data\"]"),
            Vec::<String>::new()
        );
        let all = check(
            "type: mqtt\nbroker: mqtt://b\ntopics: [\"a/#/b\"]\nca_file: ca.pem\npaths: [x]\ninterval: 5m\npassword: p\nmapping: {lat: la}",
        )
        .join("\n");
        for expected in [
            "sources.iot.topics[0]: \"a/#/b\" uses `#`",
            "sources.iot.ca_file: only for an mqtts:// broker",
            "sources.iot.ca_file: /nonexistent/ca.pem does not exist",
            "sources.iot.paths: not for type mqtt",
            "sources.iot: mqtt messages are pushed",
            "sources.iot.password: needs a username",
            "sources.iot.mapping: lat and lon go together",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        let all = check("type: mqtt").join("\n");
        assert!(all.contains("sources.iot.broker: required"), "{all}");
        assert!(
            all.contains("sources.iot.topics: list at least one"),
            "{all}"
        );
    }

    #[test]
    fn a_config_with_an_mqtt_source_needs_no_interval_or_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "sources:\n  iot:\n    type: mqtt\n    broker: mqtts://b\n    topics: [\"s/#\"]\n    ca_file: ca.pem\n",
        )
        .unwrap();
        let config = crate::config::Config::load(&file).unwrap();
        assert_eq!(
            config.sources["iot"].ca_file.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        let err = crate::config::Config::parse(
            "sources: {iot: {type: mqtt, interval: 1m}}",
            Path::new("t.yaml"),
        )
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
        assert!(err.contains("sources.iot.broker: required"), "{err}");
        assert!(err.contains("remove `interval`"), "{err}");
        assert!(!err.contains("sources.iot.paths"), "{err}");
    }

    #[test]
    fn a_capture_file_replays_messages_and_dead_letters_bad_lines() {
        use crate::sources::Parser;
        let config: SourceConfig = yaml_serde::from_str(
            "{type: mqtt, broker: \"mqtt://localhost:1883\", topics: [\"sensors/#\"], mapping: {device_id: id, time: t}}",
        )
        .unwrap();
        let parser = MqttCaptureParser::new(Arc::from("field"), &config);
        let capture = concat!(
            r#"{"topic": "sensors/wx1", "payload": {"id": "wx1", "t": "2026-08-01T12:00:00-07:00", "temp_c": 31.5}, "retained": true}"#,
            "\n\n",
            r#"{"topic": "sensors/wx1/rh", "payload": "18.5", "received_at": "2026-08-01T19:00:05Z"}"#,
            "\n",
            r#"{"payload": "1"}"#,
            "\n",
            r#"{"topic": "sensors/wx2", "payload": "not a reading"}"#,
            "\n",
        );
        let mut rows = Vec::new();
        parser
            .parse(&mut capture.as_bytes(), &mut |row| {
                rows.push(row);
                true
            })
            .unwrap();
        assert_eq!(rows.len(), 4);
        let Row::Valid(first) = &rows[0] else {
            panic!("{:?}", rows[0])
        };
        assert_eq!(format_event_time(&first.event_time), "2026-08-01T19:00:00Z");
        let Data::SensorReading(reading) = &first.data else {
            panic!()
        };
        assert_eq!(reading.device_id, "wx1");
        assert!(reading.retained);
        assert_eq!(reading.measurements["temp_c"], 31.5);
        let Row::Valid(second) = &rows[1] else {
            panic!("{:?}", rows[1])
        };
        let Data::SensorReading(rh) = &second.data else {
            panic!()
        };
        assert_eq!(rh.measurements["rh"], 18.5);
        assert_eq!(
            format_event_time(&second.event_time),
            "2026-08-01T19:00:05Z"
        );
        let Row::Invalid(missing) = &rows[2] else {
            panic!()
        };
        assert_eq!(missing.position, "line 4");
        assert!(missing.reason.contains("topic"), "{}", missing.reason);
        let Row::Invalid(text) = &rows[3] else {
            panic!()
        };
        assert!(
            text.position.starts_with("line 5 (topic sensors/wx2)"),
            "{}",
            text.position
        );
    }
}
