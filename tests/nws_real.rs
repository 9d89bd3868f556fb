//! The real NWS observation and alert captures through the pipeline, values asserted.

mod common;

use common::{envelopes, real, topic};
use firestream::manager::IngestTarget;
use firestream::sources::SourceType;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn id_of(key: &str) -> String {
    Sha256::digest(key.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfll_observation_in_si_units_with_nulls_and_qc_kept() {
    let dir = tempfile::tempdir().unwrap();
    let report = common::ingest(
        common::config(dir.path(), ""),
        IngestTarget::SourceType(SourceType::NwsObservations),
        &[real(
            "noaa/stations_KFLL_observations_latest__2022-03-02.json",
        )],
    )
    .await;
    let t = report.totals();
    assert_eq!((t.rows, t.records, t.invalid, t.duplicates), (1, 1, 0, 0));
    let stored = envelopes(&dir.path().join("log"), "wildfire-weather-data");
    assert_eq!(stored.len(), 1);
    let e = &stored[0];
    assert_eq!(e["id"], id_of("nws_observations|KFLL|2022-03-02T23:53:00Z"));
    assert_eq!(e["kind"], "weather_observation");
    assert_eq!(e["event_time"], "2022-03-02T23:53:00Z");
    assert_eq!(e["location"]["lat"], 26.07);
    assert_eq!(e["location"]["lon"], -80.15);
    let d = &e["data"];
    assert_eq!(d["station_id"], "KFLL");
    assert_eq!(d["temperature_c"], 22.8);
    assert_eq!(d["dewpoint_c"], 18.3);
    // 7.56 km/h → 2.1 m/s.
    assert_eq!(d["wind_speed_mps"], 2.1);
    assert_eq!(d["wind_direction_deg"], 20.0);
    assert_eq!(d["wind_gust_mps"], Value::Null);
    assert_eq!(d["pressure_pa"], 101860.0);
    assert_eq!(d["sea_level_pressure_pa"], 101870.0);
    assert_eq!(d["visibility_m"], 16090.0);
    assert_eq!(d["precipitation_last_hour_mm"], Value::Null);
    assert_eq!(d["relative_humidity_pct"], 75.770935807607);
    assert_eq!(d["heat_index_c"], 23.11401887942111);
    assert_eq!(d["wind_chill_c"], Value::Null);
    assert_eq!(d["text_description"], "Mostly Cloudy");
    assert!(
        d["raw_message"]
            .as_str()
            .unwrap()
            .starts_with("KFLL 022353Z")
    );
    // Null values keep their QC code; every field with a code has it.
    assert_eq!(
        d["qc"],
        json!({
            "temperature_c": "V", "dewpoint_c": "V", "wind_direction_deg": "V",
            "wind_speed_mps": "V", "wind_gust_mps": "Z", "pressure_pa": "V",
            "sea_level_pressure_pa": "V", "visibility_m": "C",
            "precipitation_last_hour_mm": "Z", "relative_humidity_pct": "V",
            "wind_chill_c": "V", "heat_index_c": "V"
        })
    );
    assert_eq!(e["quality"], json!({"score": 1.0, "flags": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_alerts_keep_times_in_utc_references_and_zones() {
    let dir = tempfile::tempdir().unwrap();
    let report = common::ingest(
        common::config(dir.path(), ""),
        IngestTarget::SourceType(SourceType::NwsAlerts),
        &[
            real("noaa/alerts_active_point_33.25_-112.30__2024-07-18.json"),
            real("noaa/alerts_active_zone_ORZ004__2019-12-20.json"),
        ],
    )
    .await;
    let t = report.totals();
    assert_eq!((t.rows, t.records, t.invalid, t.duplicates), (3, 3, 0, 0));
    assert_eq!(report.topics["wildfire-weather-alerts"].delivered, 3);
    let log = dir.path().join("log");
    let lines = topic(&log, "wildfire-weather-alerts");
    assert_eq!(lines.len(), 3);
    let heat = lines
        .iter()
        .find(|l| l["value"]["data"]["event"] == "Excessive Heat Warning")
        .unwrap();
    let v = &heat["value"];
    let alert_id = "urn:oid:2.49.0.1.840.0.505a7220d91b00eb1d75a3fb4f339f825496a522.004.1";
    assert_eq!(v["id"], id_of(&format!("nws_alerts|{alert_id}")));
    // No location: the key is the record id.
    assert_eq!(v["location"], Value::Null);
    assert_eq!(heat["key"], v["id"]);
    assert_eq!(v["event_time"], "2024-07-18T19:47:00Z");
    let d = &v["data"];
    assert_eq!(d["alert_id"], alert_id);
    assert_eq!(d["message_type"], "Update");
    assert_eq!(d["sent"], "2024-07-18T19:47:00Z");
    assert_eq!(d["onset"], "2024-07-19T17:00:00Z");
    // expires before onset, as NWS sends it: kept, not an error.
    assert_eq!(d["expires"], "2024-07-19T10:00:00Z");
    assert_eq!(d["ends"], "2024-07-21T03:00:00Z");
    assert_eq!(d["severity"], "Severe");
    assert_eq!(d["sender_name"], "NWS Phoenix AZ");
    assert_eq!(d["ugc_zones"].as_array().unwrap().len(), 9);
    assert_eq!(d["ugc_zones"][0], "AZZ537");
    assert_eq!(
        d["references"],
        json!(["urn:oid:2.49.0.1.840.0.2852349b8f25500975c692db29cb2f047ff20a7c.004.2"])
    );
    assert_eq!(d["geometry"], Value::Null);
    // Not a critical event; ingest traffic is low priority.
    assert_eq!(v["priority"], "low");

    let aq = lines
        .iter()
        .find(|l| l["value"]["data"]["event"] == "Air Quality Alert")
        .unwrap();
    assert_eq!(aq["value"]["data"]["ends"], Value::Null);
    let flood = lines
        .iter()
        .find(|l| l["value"]["data"]["event"] == "Flood Watch")
        .unwrap();
    let f = &flood["value"]["data"];
    assert_eq!(f["ugc_zones"].as_array().unwrap().len(), 11);
    assert_eq!(f["ugc_zones"][5], "ORZ004");
    assert_eq!(f["sent"], "2019-12-20T21:34:00Z");
    assert_eq!(f["references"].as_array().unwrap().len(), 4);
    assert_eq!(f["references"][0], "NWS-IDP-PROD-3964821-3368352");
    // Nothing critical, so nothing copied.
    assert!(topic(&log, "wildfire-critical-alerts").is_empty());
}
