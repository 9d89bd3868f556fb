//! Manual alerts (`POST /api/v1/alerts`): an operator's warning becomes a critical
//! `weather_alert` record, queued in the critical lane so it is delivered ahead of every
//! backlog, to the alerts topic and its copy in the critical-alerts topic.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dedupe::Dedupe;
use crate::queue::Queue;
use crate::record::{Data, Kind, Location, Priority, Quality, Record, RecordId, WeatherAlert};
use crate::sources::SourceType;
use crate::stats::Stats;

/// The stream id manual alerts carry (`source_id`, counters, logs).
pub const MANUAL_ALERTS: &str = "manual_alerts";

/// What an operator sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRequest {
    /// What to do, in one line: "Evacuate zones 4 and 5 now".
    pub headline: String,
    /// A caller's id makes a resend of the same alert a duplicate; without one each request is
    /// a new alert.
    pub id: Option<String>,
    #[serde(default = "default_event")]
    pub event: String,
    pub severity: Option<String>,
    pub urgency: Option<String>,
    pub area_desc: Option<String>,
    pub description: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// RFC 3339, e.g. `2026-12-05T06:00:00Z`.
    pub expires: Option<String>,
    /// Who issued it; "firestream API" when not given.
    pub sender_name: Option<String>,
}

fn default_event() -> String {
    "Manual alert".to_owned()
}

/// The answer: the record's id and whether it was queued or already known.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AlertAccepted {
    pub id: String,
    pub alert_id: String,
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlertError {
    #[error("{0}")]
    Invalid(String),
    #[error("the service is shutting down; the alert was not queued")]
    Closed,
    #[error("manual alerts are still restoring their checkpoint; retry in a moment")]
    Recovering,
}

/// CAP's severities (the NWS alerts' `severity`).
const SEVERITIES: [&str; 5] = ["Extreme", "Severe", "Moderate", "Minor", "Unknown"];
const MAX_TEXT: usize = 4_000;

/// Where manual alerts go in.
#[derive(Clone)]
pub struct AlertIntake {
    pub queue: Arc<Queue>,
    pub dedupe: Arc<Dedupe>,
    pub stats: Arc<Stats>,
    /// Whether the alerts' dedupe window is restored from their checkpoint.
    pub recovered: Arc<std::sync::atomic::AtomicBool>,
}

impl AlertIntake {
    /// Validates, builds and queues the alert in the critical lane.
    pub async fn submit(&self, request: AlertRequest) -> Result<AlertAccepted, AlertError> {
        let record = build(request, Utc::now())?;
        if !self.recovered.load(std::sync::atomic::Ordering::Acquire) {
            return Err(AlertError::Recovering);
        }
        let accepted = AlertAccepted {
            id: record.id.to_string(),
            alert_id: match &record.data {
                Data::WeatherAlert(a) => a.alert_id.clone(),
                _ => String::new(),
            },
            duplicate: false,
        };
        let counters = self.stats.stream(MANUAL_ALERTS);
        counters.rows.fetch_add(1, Relaxed);
        counters.records.fetch_add(1, Relaxed);
        if !self.dedupe.insert_if_new(record.id, record.ingested_at) {
            counters.duplicates.fetch_add(1, Relaxed);
            return Ok(AlertAccepted {
                duplicate: true,
                ..accepted
            });
        }
        let id = record.id;
        if self.queue.push(record).await.is_err() {
            self.dedupe.forget(&id);
            return Err(AlertError::Closed);
        }
        counters.enqueued.fetch_add(1, Relaxed);
        tracing::warn!(stream = MANUAL_ALERTS, id = %accepted.id, "manual alert queued ahead of everything else");
        Ok(accepted)
    }
}

fn text(field: &str, value: Option<String>) -> Result<Option<String>, AlertError> {
    match value {
        Some(v) if v.chars().count() > MAX_TEXT => Err(AlertError::Invalid(format!(
            "{field}: longer than {MAX_TEXT} characters"
        ))),
        Some(v) if v.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// The alert as a critical record; `now` is its event and ingest time.
fn build(request: AlertRequest, now: DateTime<Utc>) -> Result<Record, AlertError> {
    let headline = text("headline", Some(request.headline))?
        .ok_or_else(|| AlertError::Invalid("headline: must not be empty".to_owned()))?;
    if let Some(severity) = &request.severity
        && !SEVERITIES.contains(&severity.as_str())
    {
        return Err(AlertError::Invalid(format!(
            "severity: {severity:?} is not one of {}",
            SEVERITIES.join(", ")
        )));
    }
    let location = match (request.latitude, request.longitude) {
        (Some(lat), Some(lon)) => Some(Location::new(lat, lon).map_err(AlertError::Invalid)?),
        (None, None) => None,
        _ => {
            return Err(AlertError::Invalid(
                "latitude and longitude: give both or neither".to_owned(),
            ));
        }
    };
    let expires = match request.expires {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| {
                    AlertError::Invalid(format!(
                        "expires: {text:?} is not an RFC 3339 time ({e}), e.g. 2026-12-05T06:00:00Z"
                    ))
                })?
                .with_timezone(&Utc),
        ),
    };
    if expires.is_some_and(|e| e <= now) {
        return Err(AlertError::Invalid(
            "expires: already in the past".to_owned(),
        ));
    }
    let alert_id = match text("id", request.id)? {
        Some(id) => id,
        None => uuid::Uuid::new_v4().to_string(),
    };
    Ok(Record {
        schema: (),
        id: RecordId::from_natural_key(SourceType::NwsAlerts, &[MANUAL_ALERTS, &alert_id]),
        source_id: Arc::from(MANUAL_ALERTS),
        source_type: SourceType::NwsAlerts,
        kind: Kind::WeatherAlert,
        event_time: now,
        ingested_at: now,
        location,
        priority: Priority::Critical,
        quality: Quality::from_flags(Vec::new()),
        data: Data::WeatherAlert(WeatherAlert {
            alert_id,
            event: text("event", Some(request.event))?,
            message_type: Some("Alert".to_owned()),
            severity: request.severity,
            urgency: text("urgency", request.urgency)?,
            certainty: None,
            headline: Some(match text("description", request.description)? {
                Some(description) => format!("{headline} — {description}"),
                None => headline,
            }),
            area_desc: text("area_desc", request.area_desc)?,
            ugc_zones: Vec::new(),
            sent: Some(now),
            effective: Some(now),
            onset: None,
            expires,
            ends: None,
            sender_name: Some(
                text("sender_name", request.sender_name)?
                    .unwrap_or_else(|| "firestream API".to_owned()),
            ),
            references: Vec::new(),
            geometry: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> AlertRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_alert_is_a_critical_weather_alert_record() {
        let now = Utc::now();
        let record = build(
            request(
                r#"{"headline": "Evacuate zone 4", "id": "evac-4", "severity": "Extreme",
                    "latitude": 39.76, "longitude": -121.62, "area_desc": "Paradise, CA"}"#,
            ),
            now,
        )
        .unwrap();
        assert_eq!(record.priority, Priority::Critical);
        assert_eq!(record.kind, Kind::WeatherAlert);
        assert_eq!(&*record.source_id, MANUAL_ALERTS);
        assert_eq!(
            record.id,
            RecordId::from_natural_key(SourceType::NwsAlerts, &[MANUAL_ALERTS, "evac-4"])
        );
        assert_eq!(record.location.as_ref().unwrap().geohash, "9r1d0");
        let Data::WeatherAlert(alert) = &record.data else {
            panic!("not an alert")
        };
        assert_eq!(alert.headline.as_deref(), Some("Evacuate zone 4"));
        assert_eq!(alert.event.as_deref(), Some("Manual alert"));
        assert_eq!(alert.sender_name.as_deref(), Some("firestream API"));
    }

    #[test]
    fn mistakes_are_named() {
        let now = Utc::now();
        let cases = [
            (r#"{"headline": " "}"#, "headline: must not be empty"),
            (
                r#"{"headline": "x", "severity": "Bad"}"#,
                "severity: \"Bad\" is not one of Extreme, Severe, Moderate, Minor, Unknown",
            ),
            (
                r#"{"headline": "x", "latitude": 39.7}"#,
                "latitude and longitude: give both or neither",
            ),
            (
                r#"{"headline": "x", "latitude": 99.0, "longitude": 1.0}"#,
                "latitude 99 is outside -90..90",
            ),
            (
                r#"{"headline": "x", "expires": "2001-01-01T00:00:00Z"}"#,
                "expires: already in the past",
            ),
            (
                r#"{"headline": "x", "expires": "tomorrow"}"#,
                "expires: \"tomorrow\" is not an RFC 3339 time (premature end of input), e.g. 2026-12-05T06:00:00Z",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(
                build(request(json), now).unwrap_err(),
                AlertError::Invalid(expected.to_owned()),
                "{json}"
            );
        }
    }
}
