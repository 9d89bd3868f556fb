//! The dead-letter record (DESIGN §5): everything that could not be fetched, parsed,
//! validated, queued or delivered is written to `firestream-dlq` in this one shape, with the
//! reason, so nothing disappears silently.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::receipt::Receipt;
use crate::record::serialize_millis;

/// The DLQ topic, in the same sink as the data.
pub const DLQ_TOPIC: &str = "firestream-dlq";

/// Longest `raw_excerpt` kept: enough for any real row or feature, bounded for garbage.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

/// Longest `reason` kept (a reason quotes the offending value, which may be huge).
pub const MAX_REASON_BYTES: usize = 2 * 1024;

/// `text` cut to at most `max` bytes on a character boundary, saying how much was cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!("…({} of {total} bytes cut)", total - cut));
    text
}

/// Where in the pipeline a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Fetch,
    Parse,
    Validate,
    Queue,
    Deliver,
    Shutdown,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Fetch,
        Stage::Parse,
        Stage::Validate,
        Stage::Queue,
        Stage::Deliver,
        Stage::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Parse => "parse",
            Stage::Validate => "validate",
            Stage::Queue => "queue",
            Stage::Deliver => "deliver",
            Stage::Shutdown => "shutdown",
        }
    }
}

/// One DLQ record. Carries either the failed envelope (`record`) or the raw input
/// (`raw_excerpt`) when there was no envelope yet.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub dlq_id: String,
    #[serde(serialize_with = "serialize_millis")]
    pub failed_at: DateTime<Utc>,
    pub stage: Stage,
    pub error_kind: String,
    pub reason: String,
    pub attempts: u32,
    pub source_id: Option<Arc<str>>,
    /// The topic the record was meant for, when known.
    pub topic: Option<String>,
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_excerpt: Option<String>,
    /// The receipt of the record this dead letter stands for (a record the queue dropped):
    /// released once the dead letter is stored, abandoned when no sink stores it.
    #[serde(skip)]
    pub receipt: Option<Receipt>,
}

impl DeadLetter {
    /// A dead letter for input that never became an envelope.
    pub fn raw(
        stage: Stage,
        error_kind: impl Into<String>,
        reason: impl Into<String>,
        source_id: Arc<str>,
        raw_excerpt: String,
    ) -> Self {
        DeadLetter {
            dlq_id: uuid::Uuid::new_v4().to_string(),
            failed_at: Utc::now(),
            stage,
            error_kind: error_kind.into(),
            reason: truncate(reason.into(), MAX_REASON_BYTES),
            attempts: 1,
            source_id: Some(source_id),
            topic: None,
            key: None,
            record: None,
            raw_excerpt: Some(truncate(raw_excerpt, MAX_RAW_BYTES)),
            receipt: None,
        }
    }

    /// A dead letter for an envelope that could not be delivered.
    #[allow(clippy::too_many_arguments)]
    pub fn envelope(
        stage: Stage,
        error_kind: impl Into<String>,
        reason: impl Into<String>,
        attempts: u32,
        source_id: Arc<str>,
        topic: String,
        key: String,
        envelope_json: &[u8],
    ) -> Self {
        let record = std::str::from_utf8(envelope_json)
            .ok()
            .and_then(|text| RawValue::from_string(text.to_owned()).ok());
        let raw_excerpt = match record {
            Some(_) => None,
            None => Some(truncate(
                String::from_utf8_lossy(envelope_json).into_owned(),
                MAX_RAW_BYTES,
            )),
        };
        DeadLetter {
            dlq_id: uuid::Uuid::new_v4().to_string(),
            failed_at: Utc::now(),
            stage,
            error_kind: error_kind.into(),
            reason: truncate(reason.into(), MAX_REASON_BYTES),
            attempts,
            source_id: Some(source_id),
            topic: Some(topic),
            key: Some(key),
            record,
            raw_excerpt,
            receipt: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("dead letter serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_dead_letter_has_the_documented_shape() {
        let d = DeadLetter::raw(
            Stage::Validate,
            "invalid_row",
            "line 3: latitude is empty",
            Arc::from("firms_ca"),
            ",-35.884,308.8".to_owned(),
        );
        let v: serde_json::Value = serde_json::from_slice(&d.to_json()).unwrap();
        assert_eq!(v["stage"], "validate");
        assert_eq!(v["error_kind"], "invalid_row");
        assert_eq!(v["reason"], "line 3: latitude is empty");
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["source_id"], "firms_ca");
        assert_eq!(v["topic"], serde_json::Value::Null);
        assert_eq!(v["raw_excerpt"], ",-35.884,308.8");
        assert!(v.get("record").is_none());
        assert_eq!(v["dlq_id"].as_str().unwrap().len(), 36);
        assert!(v["failed_at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn huge_reasons_and_excerpts_are_cut_with_a_note() {
        let value = "9".repeat(1_000_000);
        let d = DeadLetter::raw(
            Stage::Validate,
            "invalid_row",
            format!("latitude {value:?} is not a number"),
            Arc::from("s"),
            format!("{value},1,2"),
        );
        assert!(d.reason.len() < MAX_REASON_BYTES + 64, "{}", d.reason.len());
        assert!(
            d.reason.ends_with("bytes cut)"),
            "{}",
            &d.reason[d.reason.len() - 40..]
        );
        let raw = d.raw_excerpt.unwrap();
        assert!(raw.starts_with("999"));
        assert!(
            raw.ends_with(&format!(
                "…({} of 1000004 bytes cut)",
                1_000_004 - MAX_RAW_BYTES
            )),
            "{}",
            &raw[raw.len() - 40..]
        );
        // Multi-byte characters are never split.
        assert_eq!(truncate("ééé".to_owned(), 3), "é…(4 of 6 bytes cut)");
        assert_eq!(truncate("short".to_owned(), 10), "short");
    }

    #[test]
    fn envelope_dead_letter_embeds_the_record_as_json() {
        let d = DeadLetter::envelope(
            Stage::Deliver,
            "io_error",
            "disk full",
            1,
            Arc::from("s"),
            "wildfire-nasa-firms".into(),
            "6ve1".into(),
            br#"{"id":"abc"}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&d.to_json()).unwrap();
        assert_eq!(v["record"]["id"], "abc");
        assert_eq!(v["topic"], "wildfire-nasa-firms");
        assert!(v.get("raw_excerpt").is_none());
    }
}
