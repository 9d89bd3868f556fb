//! Connectors: one file per source type holding its parser and the tests that pin its quirks.
//!
//! A parser turns one payload (a file, later an HTTP body) into rows. A row is either a valid
//! [`Record`] or an [`Invalid`] row with its reason and raw text, which the pipeline sends to
//! the DLQ; the rest of the payload continues. A payload that is not the expected format at
//! all (an HTML error page, `Invalid MAP_KEY.`) is a [`PayloadError`], never "zero rows".
//!
//! Adding a connector: a new file here, a variant in [`SourceType`], a line in
//! [`build_parser`].

pub mod airnow;
pub mod calfire;
pub mod catalog;
mod csv_lines;
mod geojson;
pub mod http;
pub mod mqtt;
pub mod nasa_firms;
pub mod nws_alerts;
pub mod nws_observations;
pub mod purpleair;

use std::fmt;
use std::io::BufRead;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::SourceConfig;
use crate::record::{Kind, Record};

/// The connector types this build knows (DESIGN §4).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    #[default]
    NasaFirms,
    NwsObservations,
    NwsAlerts,
    Purpleair,
    Airnow,
    CalfireIncidents,
    Mqtt,
    Http,
}

impl SourceType {
    pub const ALL: [SourceType; 8] = [
        SourceType::NasaFirms,
        SourceType::NwsObservations,
        SourceType::NwsAlerts,
        SourceType::Purpleair,
        SourceType::Airnow,
        SourceType::CalfireIncidents,
        SourceType::Mqtt,
        SourceType::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::NasaFirms => "nasa_firms",
            SourceType::NwsObservations => "nws_observations",
            SourceType::NwsAlerts => "nws_alerts",
            SourceType::Purpleair => "purpleair",
            SourceType::Airnow => "airnow",
            SourceType::CalfireIncidents => "calfire_incidents",
            SourceType::Mqtt => "mqtt",
            SourceType::Http => "http",
        }
    }

    /// Topic used when neither the source nor a routing rule names one (DESIGN §10).
    /// `http` has none: its sources must name a topic (checked at validation).
    pub fn default_topic(self) -> Option<&'static str> {
        match self {
            SourceType::NasaFirms => Some("wildfire-nasa-firms"),
            SourceType::NwsObservations => Some("wildfire-weather-data"),
            SourceType::NwsAlerts => Some("wildfire-weather-alerts"),
            SourceType::Purpleair | SourceType::Airnow => Some("wildfire-air-quality"),
            SourceType::CalfireIncidents => Some("wildfire-incidents"),
            SourceType::Mqtt => Some("wildfire-iot-sensors"),
            SourceType::Http => None,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            SourceType::NasaFirms => Kind::FireDetection,
            SourceType::NwsObservations => Kind::WeatherObservation,
            SourceType::NwsAlerts => Kind::WeatherAlert,
            SourceType::Purpleair | SourceType::Airnow => Kind::AirQuality,
            SourceType::CalfireIncidents => Kind::FireIncident,
            SourceType::Mqtt => Kind::SensorReading,
            SourceType::Http => Kind::Raw,
        }
    }
}

impl fmt::Display for SourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SourceType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourceType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = SourceType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown source type `{s}`; known types: {}",
                    known.join(", ")
                )
            })
    }
}

/// A row that failed validation: it goes to the DLQ with `stage: validate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Where in the payload, e.g. `line 12` or `feature 3`.
    pub position: String,
    pub reason: String,
    /// The row as the source gave it.
    pub raw: String,
}

/// One parsed row.
#[derive(Debug)]
pub enum Row {
    Valid(Box<Record>),
    Invalid(Invalid),
}

/// A payload that is not what the source type expects. Classified so operators can tell an
/// expired key from an outage page from a format change.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload where {expected} was expected")]
    Empty { expected: &'static str },
    #[error("an HTML page where {expected} was expected; it begins: {excerpt:?}")]
    Html {
        expected: &'static str,
        excerpt: String,
    },
    #[error("plain text where {expected} was expected; it begins: {excerpt:?}")]
    Text {
        expected: &'static str,
        excerpt: String,
    },
    #[error("CSV header lacks required column(s) {missing}; it begins: {excerpt:?}")]
    MissingColumns { missing: String, excerpt: String },
    #[error("invalid JSON ({detail}); it begins: {excerpt:?}")]
    InvalidJson { detail: String, excerpt: String },
    #[error("JSON of an unexpected shape ({detail}); it begins: {excerpt:?}")]
    UnexpectedJson { detail: String, excerpt: String },
    #[error("upstream error document: {title} (status {status}); it begins: {excerpt:?}")]
    Problem {
        title: String,
        status: String,
        excerpt: String,
    },
    #[error("CSV could not be read: {detail}")]
    Csv { detail: String },
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

impl PayloadError {
    /// The DLQ `error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            PayloadError::Empty { .. } => "empty_payload",
            PayloadError::Html { .. } => "html_payload",
            PayloadError::Text { .. } => "text_payload",
            PayloadError::MissingColumns { .. } => "missing_columns",
            PayloadError::InvalidJson { .. } => "invalid_json",
            PayloadError::UnexpectedJson { .. } => "unexpected_json",
            PayloadError::Problem { .. } => "upstream_problem",
            PayloadError::Csv { .. } => "csv_error",
            PayloadError::Io(e)
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().starts_with("payload larger") =>
            {
                "payload_too_large"
            }
            PayloadError::Io(e) if is_corrupt(e) => "corrupt_payload",
            PayloadError::Io(_) => "io_error",
        }
    }

    /// Whether reading it again can help: only a failed read, not a damaged payload.
    pub fn is_retriable(&self) -> bool {
        matches!(self, PayloadError::Io(e) if !is_corrupt(e) && self.kind() == "io_error")
    }

    /// The first bytes of the payload, for the DLQ record.
    pub fn excerpt(&self) -> Option<&str> {
        match self {
            PayloadError::Html { excerpt, .. }
            | PayloadError::Text { excerpt, .. }
            | PayloadError::MissingColumns { excerpt, .. }
            | PayloadError::InvalidJson { excerpt, .. }
            | PayloadError::UnexpectedJson { excerpt, .. }
            | PayloadError::Problem { excerpt, .. } => Some(excerpt),
            _ => None,
        }
    }
}

/// A read error that means the bytes are damaged (a cut or garbled gzip stream, a line no
/// parser accepts), not that the read failed.
fn is_corrupt(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::InvalidInput
    )
}

/// Parses one payload of a source type into rows.
pub trait Parser: Send + Sync {
    /// Reads `input` to its end, handing each row to `out`; stops early when `out` returns
    /// false (shutdown). Returns an error only when the payload as a whole is unusable; rows
    /// already handed out stay valid.
    fn parse(
        &self,
        input: &mut dyn BufRead,
        out: &mut dyn FnMut(Row) -> bool,
    ) -> Result<(), PayloadError>;
}

/// The parser for a source, with that source's settings.
pub fn build_parser(source_id: Arc<str>, config: &SourceConfig) -> Arc<dyn Parser> {
    match config.source_type {
        SourceType::NasaFirms => Arc::new(nasa_firms::FirmsParser::new(source_id, config)),
        SourceType::NwsObservations => {
            Arc::new(nws_observations::ObservationParser::new(source_id))
        }
        SourceType::NwsAlerts => Arc::new(nws_alerts::AlertParser::new(source_id, config)),
        SourceType::CalfireIncidents => Arc::new(calfire::CalfireParser::new(source_id, config)),
        SourceType::Http => Arc::new(http::HttpParser::new(source_id, config)),
        SourceType::Purpleair => Arc::new(purpleair::PurpleAirParser::new(source_id, config)),
        SourceType::Airnow => Arc::new(airnow::AirNowParser::new(source_id, config)),
        // A file for mqtt is a capture of messages (JSON lines); live messages are mapped
        // one by one by the transport.
        SourceType::Mqtt => Arc::new(mqtt::MqttCaptureParser::new(source_id, config)),
    }
}

/// The accepted range of a measured value: a value outside cannot be physically real (a
/// broken row or a wrong unit), so its row goes to the DLQ instead of being delivered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub low: f64,
    pub high: f64,
    /// The low end itself is rejected (a pixel of size 0).
    pub low_exclusive: bool,
    pub unit: &'static str,
}

impl Bounds {
    /// `low..=high`.
    pub const fn new(low: f64, high: f64, unit: &'static str) -> Self {
        Bounds {
            low,
            high,
            low_exclusive: false,
            unit,
        }
    }

    /// More than `low`, at most `high`.
    pub const fn above(low: f64, high: f64, unit: &'static str) -> Self {
        Bounds {
            low,
            high,
            low_exclusive: true,
            unit,
        }
    }

    pub fn contains(&self, value: f64) -> bool {
        let low_ok = if self.low_exclusive {
            value > self.low
        } else {
            value >= self.low
        };
        low_ok && value <= self.high
    }

    /// `value`, or an error naming `field`, the value and the accepted range.
    pub fn check(&self, field: &str, value: f64) -> Result<f64, String> {
        if self.contains(value) {
            return Ok(value);
        }
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        Err(format!(
            "{field} {}{unit} is outside the accepted range {self}",
            show_number(value)
        ))
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (low, high) = (show_number(self.low), show_number(self.high));
        if self.low_exclusive {
            write!(f, "above {low} up to {high}")?;
        } else {
            write!(f, "{low} to {high}")?;
        }
        if !self.unit.is_empty() {
            write!(f, " {}", self.unit)?;
        }
        Ok(())
    }
}

/// A number for a message: plain, or in exponent form when huge or tiny (`1e308`, not 309
/// digits).
pub fn show_number(x: f64) -> String {
    if x != 0.0 && !(1e-6..1e9).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Clock skew tolerated between a source and us. DESIGN §3.1: old data is valid data, but a
/// time further in the future than this cannot be a real observation; it is a broken clock or
/// a broken row.
pub const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// `time` unless it is later than `reference` + [`MAX_CLOCK_SKEW`]; the error names `field`,
/// the time and the latest time accepted.
pub(crate) fn not_in_future(
    field: &str,
    time: chrono::DateTime<chrono::Utc>,
    reference: chrono::DateTime<chrono::Utc>,
    reference_name: &str,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let latest = reference + MAX_CLOCK_SKEW;
    if time > latest {
        return Err(format!(
            "{field} {} is in the future: the latest accepted is {reference_name} + 1 day = {}",
            crate::record::format_event_time(&time),
            // Whole seconds: a wall-clock reference would otherwise print nanoseconds.
            latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    Ok(time)
}

/// Longest payload excerpt kept in errors and DLQ records.
pub const EXCERPT_BYTES: usize = 200;

/// The first [`EXCERPT_BYTES`] of a payload as text (lossy; cut on a character boundary).
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(EXCERPT_BYTES)];
    let text = String::from_utf8_lossy(cut);
    text.trim_end_matches('\u{FFFD}').trim().to_owned()
}

/// Recognises payloads that are plainly not data: empty bodies and HTML pages.
pub(crate) fn sniff_non_data(head: &[u8], expected: &'static str) -> Option<PayloadError> {
    let text = String::from_utf8_lossy(&head[..head.len().min(1024)]);
    let trimmed = text.trim_start_matches('\u{FEFF}').trim_start();
    if trimmed.is_empty() {
        return Some(PayloadError::Empty { expected });
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("<!doctype html")
        || lower.starts_with("<html")
        || lower.starts_with("<?xml")
        || lower.starts_with("<head")
        || lower.starts_with("<body")
        || (lower.starts_with('<') && lower.contains("<html"))
    {
        return Some(PayloadError::Html {
            expected,
            excerpt: excerpt(head),
        });
    }
    None
}

/// Reads up to `n` bytes from the start of a payload, however the reader chunks its data,
/// so format checks never judge a payload by a short first read.
pub(crate) fn read_head(input: &mut dyn BufRead, n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(n);
    input.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads a whole payload into memory, capped so a runaway file cannot exhaust memory.
/// JSON formats need the whole document; CSV streams instead.
pub(crate) fn read_to_end_capped(
    input: &mut dyn BufRead,
    cap: u64,
) -> Result<Vec<u8>, PayloadError> {
    use std::io::Read;
    let mut body = Vec::new();
    input.take(cap + 1).read_to_end(&mut body)?;
    if body.len() as u64 > cap {
        return Err(PayloadError::Io(std::io::Error::other(format!(
            "payload larger than {} bytes; split it or raise the limit",
            cap
        ))));
    }
    Ok(body)
}

/// Reads a whole JSON payload (capped), classifying a body that is not JSON at all: empty,
/// HTML, plain text or broken JSON. Returns the bytes too, for excerpts in later errors.
pub(crate) fn read_json(
    input: &mut dyn BufRead,
    cap: u64,
    expected: &'static str,
) -> Result<(Vec<u8>, serde_json::Value), PayloadError> {
    let body = read_to_end_capped(input, cap)?;
    if let Some(err) = sniff_non_data(&body, expected) {
        return Err(err);
    }
    let json = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
    match serde_json::from_slice(json) {
        Ok(doc) => Ok((body, doc)),
        Err(e) => {
            let first = json.iter().find(|b| !b.is_ascii_whitespace());
            Err(if first.is_some_and(|b| !b"{[".contains(b)) {
                PayloadError::Text {
                    expected,
                    excerpt: excerpt(&body),
                }
            } else {
                PayloadError::InvalidJson {
                    detail: e.to_string(),
                    excerpt: excerpt(&body),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_type_names_round_trip() {
        for t in SourceType::ALL {
            assert_eq!(t.as_str().parse::<SourceType>().unwrap(), t);
        }
        let err = "firms".parse::<SourceType>().unwrap_err();
        assert!(err.contains("nasa_firms"), "{err}");
    }

    #[test]
    fn sniffs_html_and_empty_bodies() {
        assert!(matches!(
            sniff_non_data(b"  \n", "CSV"),
            Some(PayloadError::Empty { .. })
        ));
        let html = b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head></html>";
        match sniff_non_data(html, "CSV") {
            Some(PayloadError::Html { excerpt, .. }) => assert!(excerpt.contains("403 Forbidden")),
            other => panic!("{other:?}"),
        }
        assert!(sniff_non_data(b"latitude,longitude\n", "CSV").is_none());
    }

    #[test]
    fn a_time_more_than_a_day_ahead_is_rejected_at_the_exact_boundary() {
        use chrono::{TimeDelta, TimeZone, Utc};
        let now = Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap();
        let edge = now + TimeDelta::days(1);
        assert_eq!(not_in_future("t", edge, now, "now"), Ok(edge));
        assert_eq!(
            not_in_future("t", edge + TimeDelta::seconds(1), now, "now"),
            Err("t 2026-05-02T12:00:01Z is in the future: the latest accepted is now + 1 day = 2026-05-02T12:00:00Z".to_owned())
        );
        // Old is fine.
        let old = Utc.with_ymd_and_hms(1990, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(not_in_future("t", old, now, "now"), Ok(old));
    }

    #[test]
    fn bounds_accept_their_ends_and_name_field_value_and_range() {
        let frp = Bounds::new(0.0, 100_000.0, "MW");
        assert_eq!(frp.check("frp", 0.0), Ok(0.0));
        assert_eq!(frp.check("frp", 100_000.0), Ok(100_000.0));
        assert_eq!(
            frp.check("frp", 1e300),
            Err("frp 1e300 MW is outside the accepted range 0 to 100000 MW".to_owned())
        );
        let scan = Bounds::above(0.0, 10.0, "km");
        assert_eq!(
            scan.check("scan", 0.0),
            Err("scan 0 km is outside the accepted range above 0 up to 10 km".to_owned())
        );
        assert_eq!(scan.check("scan", 1e-9), Ok(1e-9));
        let aqi = Bounds::new(0.0, 999.0, "");
        assert_eq!(
            aqi.check("AQI", 1000.0),
            Err("AQI 1000 is outside the accepted range 0 to 999".to_owned())
        );
        assert_eq!(show_number(-295.5556), "-295.5556");
        assert_eq!(show_number(1e20), "1e20");
    }

    #[test]
    fn excerpt_is_capped() {
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).len(), EXCERPT_BYTES);
    }
}
