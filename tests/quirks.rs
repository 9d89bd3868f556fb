//! Documented quirks that the real captures do not contain, each built from a real payload
//! by changing only that detail, and run through the whole pipeline.

mod common;

use std::path::{Path, PathBuf};

use common::{envelopes, real, topic};
use firestream::manager::{IngestTarget, Report};
use firestream::sources::SourceType;
use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn ingest(dir: &Path, t: SourceType, file: PathBuf) -> Report {
    common::ingest(
        common::config(dir, ""),
        IngestTarget::SourceType(t),
        &[file],
    )
    .await
}

/// The NOAA-21 area-API capture with its first row's `acq_time` (`614`) replaced.
fn n21_with_first_time(replacement: &str) -> String {
    let text = std::fs::read_to_string(real(
        "firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv",
    ))
    .unwrap();
    let original = "2026-10-01,614,N21";
    assert!(text.contains(original));
    text.replacen(original, &format!("2026-10-01,{replacement},N21"), 1)
}

async fn first_row_time(replacement: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "n21.csv", &n21_with_first_time(replacement));
    let report = ingest(dir.path(), SourceType::NasaFirms, file).await;
    assert_eq!(report.totals().records, 40);
    let stored = envelopes(&dir.path().join("log"), "wildfire-nasa-firms");
    stored
        .iter()
        .find(|e| e["location"]["lat"] == 28.03833)
        .unwrap()["event_time"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acq_time_with_both_leading_zeros_lost() {
    assert_eq!(first_row_time("45").await, "2026-10-01T00:45:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acq_time_as_space_padded_hh_mm() {
    assert_eq!(first_row_time(" 09:32").await, "2026-10-01T09:32:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_coordinate_goes_to_the_dlq_and_the_file_continues() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real("firms/fire_nrt_M6_157509.csv")).unwrap();
    // Third data row (line 4): blank its latitude.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let original = lines[3].clone();
    let (_, rest) = original.split_once(',').unwrap();
    lines[3] = format!(",{rest}");
    let file = write(dir.path(), "m6.csv", &(lines.join("\n") + "\n"));
    let report = ingest(dir.path(), SourceType::NasaFirms, file.clone()).await;
    let t = report.totals();
    assert_eq!((t.rows, t.records, t.invalid), (5_824, 5_823, 1));
    assert_eq!(report.topics["wildfire-nasa-firms"].delivered, 5_823);
    assert_eq!(report.topics["firestream-dlq"].delivered, 1);
    assert_eq!(report.dead_letters["validate"], 1);

    let dlq = topic(&dir.path().join("log"), "firestream-dlq");
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0]["value"];
    assert_eq!(d["stage"], "validate");
    assert_eq!(d["error_kind"], "invalid_row");
    assert_eq!(
        d["reason"],
        format!("{} line 4: latitude is empty", file.display())
    );
    assert_eq!(d["raw_excerpt"], lines[3]);
    assert_eq!(d["source_id"], "ingest_nasa_firms");
    assert_eq!(dlq[0]["headers"]["firestream-dlq-stage"], "validate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temperature_in_unit_degf_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real(
        "noaa/stations_KFLL_observations_latest__2022-03-02.json",
    ))
    .unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    // Only the unit changes: 22.8 read as °F is -5.1111 °C.
    doc["properties"]["temperature"]["unitCode"] = "unit:degF".into();
    // And the older prefix on a unit that needs no conversion.
    doc["properties"]["dewpoint"]["unitCode"] = "unit:degC".into();
    let file = write(dir.path(), "obs.json", &doc.to_string());
    ingest(dir.path(), SourceType::NwsObservations, file).await;
    let stored = envelopes(&dir.path().join("log"), "wildfire-weather-data");
    assert_eq!(stored[0]["data"]["temperature_c"], -5.1111);
    assert_eq!(stored[0]["data"]["dewpoint_c"], 18.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_unit_code_is_a_dlq_row_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real(
        "noaa/stations_KFLL_observations_latest__2022-03-02.json",
    ))
    .unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["properties"]["windSpeed"]["unitCode"] = "wmoUnit:furlong_fortnight-1".into();
    let file = write(dir.path(), "obs.json", &doc.to_string());
    let report = ingest(dir.path(), SourceType::NwsObservations, file).await;
    assert_eq!(report.totals().invalid, 1);
    let dlq = envelopes(&dir.path().join("log"), "firestream-dlq");
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(reason.ends_with("feature 1: wind_speed_mps: unsupported unitCode \"wmoUnit:furlong_fortnight-1\" for this field"), "{reason}");
    // The raw feature is kept for replay.
    let raw: Value = serde_json::from_str(dlq[0]["raw_excerpt"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw["properties"]["station"],
        "https://api.weather.gov/stations/KFLL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_flag_warning_is_critical_and_copied_to_the_critical_topic() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real(
        "noaa/alerts_active_point_33.25_-112.30__2024-07-18.json",
    ))
    .unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["features"][0]["properties"]["event"] = "Red Flag Warning".into();
    let file = write(dir.path(), "alerts.json", &doc.to_string());
    let report = ingest(dir.path(), SourceType::NwsAlerts, file).await;
    assert_eq!(report.topics["wildfire-weather-alerts"].delivered, 2);
    assert_eq!(report.topics["wildfire-critical-alerts"].delivered, 1);
    let log = dir.path().join("log");
    let alerts = envelopes(&log, "wildfire-weather-alerts");
    let red = alerts
        .iter()
        .find(|e| e["data"]["event"] == "Red Flag Warning")
        .unwrap();
    // Critical even in a bulk ingest.
    assert_eq!(red["priority"], "critical");
    let other = alerts
        .iter()
        .find(|e| e["data"]["event"] == "Air Quality Alert")
        .unwrap();
    assert_eq!(other["priority"], "low");
    // The copy is the same record (same id) in another topic.
    let copies = topic(&log, "wildfire-critical-alerts");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["value"], *red);
    assert_eq!(copies[0]["headers"]["firestream-id"], red["id"]);
}

async fn rejected_payload(name: &str, body: &str, t: SourceType) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), name, body);
    let report = ingest(dir.path(), t, file.clone()).await;
    let totals = report.totals();
    assert_eq!(totals.rows, 0, "a rejected payload is never parsed as rows");
    assert_eq!(totals.payload_errors, 1);
    assert_eq!(report.dead_letters["parse"], 1);
    assert!(
        !dir.path()
            .join("log")
            .join(t.default_topic().unwrap())
            .exists()
    );
    let dlq = envelopes(&dir.path().join("log"), "firestream-dlq");
    assert_eq!(dlq.len(), 1);
    let d = dlq[0].clone();
    assert_eq!(d["stage"], "parse");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .starts_with(&file.display().to_string())
    );
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_map_key_body_is_a_classified_error() {
    let d = rejected_payload("firms.csv", "Invalid MAP_KEY.", SourceType::NasaFirms).await;
    assert_eq!(d["error_kind"], "text_payload");
    assert_eq!(d["raw_excerpt"], "Invalid MAP_KEY.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_page_is_a_classified_error_for_csv_and_geojson() {
    let page = "<!DOCTYPE html>\n<html><head><title>Access Denied</title></head>\n<body><h1>Access Denied</h1><p>You don't have permission to access this resource. A User-Agent is required.</p></body></html>\n";
    let d = rejected_payload("firms.csv", page, SourceType::NasaFirms).await;
    assert_eq!(d["error_kind"], "html_payload");
    assert!(d["raw_excerpt"].as_str().unwrap().contains("Access Denied"));
    let d = rejected_payload("obs.json", page, SourceType::NwsObservations).await;
    assert_eq!(d["error_kind"], "html_payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_firms_payload_is_success_with_zero_records() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(real("firms/fire_nrt_M6_157509.csv")).unwrap();
    let header = text.lines().next().unwrap();
    let file = write(dir.path(), "empty.csv", &format!("{header}\n"));
    let report = ingest(dir.path(), SourceType::NasaFirms, file).await;
    let t = report.totals();
    assert_eq!((t.rows, t.payload_errors), (0, 0));
    assert!(report.dead_letters.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_geojson_is_a_classified_error() {
    let text = std::fs::read_to_string(real(
        "noaa/alerts_active_point_33.25_-112.30__2024-07-18.json",
    ))
    .unwrap();
    let d = rejected_payload("cut.json", &text[..text.len() / 2], SourceType::NwsAlerts).await;
    assert_eq!(d["error_kind"], "invalid_json");
}
