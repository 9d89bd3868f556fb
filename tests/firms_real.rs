//! Every real FIRMS capture through the whole pipeline into the local log: every row is
//! accounted for, and every record's values are checked against the test's own reading of
//! the CSV (plus literal spot checks, so a shared misreading cannot hide).

mod common;

use std::collections::HashMap;

use common::{csv_rows, envelopes, f64_of, real};
use firestream::manager::IngestTarget;
use firestream::sources::SourceType;
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Expect {
    file: &'static str,
    rows: u64,
    instrument: &'static str,
    satellites: &'static [&'static str],
}

const FILES: [Expect; 13] = [
    Expect {
        file: "MODIS_C6_1_Global_24h__2025-11-24.csv",
        rows: 13_423,
        instrument: "MODIS",
        satellites: &["Aqua", "Terra"],
    },
    Expect {
        file: "MODIS_C6_1_USA_contiguous_and_Hawaii_24h__2025-03-25.csv",
        rows: 1_049,
        instrument: "MODIS",
        satellites: &["Aqua", "Terra"],
    },
    Expect {
        file: "SUOMI_VIIRS_C2_USA_contiguous_and_Hawaii_7d__2025-11.csv",
        rows: 13_100,
        instrument: "VIIRS",
        satellites: &["Suomi-NPP"],
    },
    Expect {
        file: "J1_VIIRS_C2_USA_contiguous_and_Hawaii_7d__2020-10-03__first10000.csv",
        rows: 10_000,
        instrument: "VIIRS",
        satellites: &["NOAA-20"],
    },
    Expect {
        file: "fire_nrt_J1V-C2_157510__first8000.csv",
        rows: 8_000,
        instrument: "VIIRS",
        satellites: &["NOAA-20"],
    },
    Expect {
        file: "fire_nrt_M6_157509.csv",
        rows: 5_824,
        instrument: "MODIS",
        satellites: &["Aqua", "Terra"],
    },
    Expect {
        file: "MODIS_C6_South_America_24h__2020-10-03__first4000.csv",
        rows: 4_000,
        instrument: "MODIS",
        satellites: &["Aqua", "Terra"],
    },
    Expect {
        file: "fire_nrt_SV-C2_400448__first10000.csv",
        rows: 10_000,
        instrument: "VIIRS",
        satellites: &["Suomi-NPP"],
    },
    Expect {
        file: "fire_archive_M6_96619__first10000.csv",
        rows: 10_000,
        instrument: "MODIS",
        satellites: &["Aqua", "Terra"],
    },
    Expect {
        file: "modis_2000_Colombia.csv",
        rows: 1_372,
        instrument: "MODIS",
        satellites: &["Terra"],
    },
    Expect {
        file: "modis-fire-two-months__first5000.csv",
        rows: 5_000,
        instrument: "MODIS",
        satellites: &["Aqua", "Terra"],
    },
    Expect {
        file: "area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv",
        rows: 40,
        instrument: "VIIRS",
        satellites: &["NOAA-21"],
    },
    Expect {
        file: "area_api_VIIRS_NOAA20_SP__2026-04-04__first40_transcribed.csv",
        rows: 40,
        instrument: "VIIRS",
        satellites: &["NOAA-20"],
    },
];

fn canonical_satellite(code: &str) -> &'static str {
    match code {
        "T" | "Terra" => "Terra",
        "A" | "Aqua" => "Aqua",
        "N" => "Suomi-NPP",
        "1" | "N20" => "NOAA-20",
        "N21" => "NOAA-21",
        other => panic!("satellite code {other} not in the real data"),
    }
}

fn key_number(x: f64) -> String {
    let r = (x * 1e5).round() / 1e5;
    if r == 0.0 { "0".into() } else { format!("{r}") }
}

/// The id rule of DESIGN §3, computed independently of the crate.
fn expected_id(row: &HashMap<String, String>) -> String {
    let time = format!("{:0>4}", row["acq_time"].trim());
    let key = format!(
        "nasa_firms|{}|{}|{}|{}|{}",
        canonical_satellite(row["satellite"].trim()),
        row["acq_date"],
        time,
        key_number(f64_of(&row["latitude"])),
        key_number(f64_of(&row["longitude"])),
    );
    Sha256::digest(key.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn number(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// Checks one envelope against its CSV row, field by field.
fn check_against_row(env: &Value, row: &HashMap<String, String>, expect: &Expect) {
    let d = &env["data"];
    let ctx = format!("{} row {row:?}", expect.file);
    assert_eq!(env["schema"], "firestream.record.v1", "{ctx}");
    assert_eq!(env["kind"], "fire_detection", "{ctx}");
    assert_eq!(env["source_type"], "nasa_firms", "{ctx}");
    assert_eq!(env["priority"], "low", "ingest is bulk traffic: {ctx}");
    assert_eq!(
        number(&env["location"]["lat"]),
        f64_of(&row["latitude"]),
        "{ctx}"
    );
    assert_eq!(
        number(&env["location"]["lon"]),
        f64_of(&row["longitude"]),
        "{ctx}"
    );
    assert_eq!(
        env["location"]["geohash"].as_str().unwrap().len(),
        5,
        "{ctx}"
    );
    let time = format!("{:0>4}", row["acq_time"].trim());
    assert_eq!(
        env["event_time"],
        format!("{}T{}:{}:00Z", row["acq_date"], &time[..2], &time[2..]),
        "{ctx}"
    );
    assert_eq!(d["instrument"], expect.instrument, "{ctx}");
    assert_eq!(
        d["satellite"],
        canonical_satellite(row["satellite"].trim()),
        "{ctx}"
    );
    let b1 = row.get("bright_ti4").or(row.get("brightness")).unwrap();
    let b2 = row.get("bright_ti5").or(row.get("bright_t31")).unwrap();
    assert_eq!(number(&d["brightness_k"]), f64_of(b1), "{ctx}");
    assert_eq!(number(&d["brightness_2_k"]), f64_of(b2), "{ctx}");
    assert!(
        number(&d["brightness_k"]) > 200.0,
        "brightness is a real temperature: {ctx}"
    );
    assert_eq!(number(&d["frp_mw"]), f64_of(&row["frp"]), "{ctx}");
    assert_eq!(number(&d["scan_km"]), f64_of(&row["scan"]), "{ctx}");
    assert_eq!(number(&d["track_km"]), f64_of(&row["track"]), "{ctx}");
    assert_eq!(d["version"], row["version"].as_str(), "{ctx}");
    let confidence = row["confidence"].as_str();
    let (class, pct) = match confidence {
        "l" | "low" => ("low", Value::Null),
        "n" | "nominal" => ("nominal", Value::Null),
        "h" | "high" => ("high", Value::Null),
        n => {
            let n: u64 = n.parse().unwrap();
            let class = if n < 30 {
                "low"
            } else if n < 80 {
                "nominal"
            } else {
                "high"
            };
            (class, Value::from(n))
        }
    };
    assert_eq!(d["confidence"], class, "{ctx}");
    assert_eq!(d["confidence_pct"], pct, "{ctx}");
    let night = row["daynight"] == "N";
    assert_eq!(d["daynight"], if night { "night" } else { "day" }, "{ctx}");
    let flags: Vec<&str> = env["quality"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(flags.contains(&"night"), night, "{ctx}");
    assert_eq!(flags.contains(&"low_confidence"), class == "low", "{ctx}");
    let expected_score =
        1.0 - if night { 0.1 } else { 0.0 } - if class == "low" { 0.3 } else { 0.0 };
    assert!(
        (number(&env["quality"]["score"]) - expected_score).abs() < 1e-9,
        "{ctx}"
    );
    let detection_type = match row.get("type").map(String::as_str) {
        None => Value::Null,
        Some("0") => "vegetation_fire".into(),
        Some("1") => "volcano".into(),
        Some("2") => "static_land_source".into(),
        Some("3") => "offshore".into(),
        Some(other) => panic!("type {other}"),
    };
    assert_eq!(d["detection_type"], detection_type, "{ctx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_firms_file_is_fully_accounted_for_and_matches_its_csv() {
    for expect in &FILES {
        let dir = tempfile::tempdir().unwrap();
        let path = real(&format!("firms/{}", expect.file));
        let report = common::ingest(
            common::config(dir.path(), ""),
            IngestTarget::SourceType(SourceType::NasaFirms),
            std::slice::from_ref(&path),
        )
        .await;
        let t = report.totals();
        // rows in = records + rejects; records = new + duplicates.
        assert_eq!(t.rows, expect.rows, "{}", expect.file);
        assert_eq!(t.records, expect.rows, "{}", expect.file);
        assert_eq!(t.invalid, 0, "{}", expect.file);
        assert_eq!(t.duplicates, 0, "{}", expect.file);
        assert_eq!(t.payload_errors, 0, "{}", expect.file);
        assert_eq!(
            report.topics["wildfire-nasa-firms"].delivered, expect.rows,
            "{}",
            expect.file
        );
        assert!(
            report.dead_letters.is_empty(),
            "{}: {:?}",
            expect.file,
            report.dead_letters
        );

        let stored = envelopes(&dir.path().join("log"), "wildfire-nasa-firms");
        assert_eq!(stored.len() as u64, expect.rows);
        let by_id: HashMap<&str, &Value> = stored
            .iter()
            .map(|e| (e["id"].as_str().unwrap(), e))
            .collect();
        assert_eq!(by_id.len() as u64, expect.rows, "ids are unique");
        let mut satellites: Vec<&str> = stored
            .iter()
            .map(|e| e["data"]["satellite"].as_str().unwrap())
            .collect();
        satellites.sort();
        satellites.dedup();
        assert_eq!(satellites, expect.satellites, "{}", expect.file);
        for row in csv_rows(&path) {
            let id = expected_id(&row);
            let env = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{}: no record with id {id} for {row:?}", expect.file));
            check_against_row(env, &row, expect);
        }
    }
}

/// Literal values read off the files by eye, independent of any mapping code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_checks_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        real("firms/fire_nrt_M6_157509.csv"),
        real("firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv"),
        real("firms/fire_nrt_J1V-C2_157510__first8000.csv"),
        real("firms/modis_2000_Colombia.csv"),
        real("firms/modis-fire-two-months__first5000.csv"),
    ];
    common::ingest(
        common::config(dir.path(), ""),
        IngestTarget::SourceType(SourceType::NasaFirms),
        &files,
    )
    .await;
    let stored = envelopes(&dir.path().join("log"), "wildfire-nasa-firms");
    let find = |lat: f64, lon: f64| -> &Value {
        stored
            .iter()
            .find(|e| e["location"]["lat"] == lat && e["location"]["lon"] == lon)
            .unwrap_or_else(|| panic!("no record at {lat},{lon}"))
    };

    // fire_nrt_M6 row 1: -9.774,-35.884,308.8,3.1,1.7,2020-10-02,0025,Terra,MODIS,76,6.0NRT,292.3,42.8,N
    let m6 = find(-9.774, -35.884);
    assert_eq!(m6["event_time"], "2020-10-02T00:25:00Z");
    assert_eq!(m6["data"]["brightness_k"], 308.8);
    assert_eq!(m6["data"]["brightness_2_k"], 292.3);
    assert_eq!(m6["data"]["frp_mw"], 42.8);
    assert_eq!(m6["data"]["confidence"], "nominal");
    assert_eq!(m6["data"]["confidence_pct"], 76);
    assert_eq!(m6["data"]["instrument"], "MODIS");
    assert_eq!(m6["quality"]["flags"], serde_json::json!(["night"]));
    assert_eq!(m6["quality"]["score"], 0.9);

    // NOAA-21 area API row 1: acq_time 614 → 06:14Z.
    let n21 = find(28.03833, 96.14342);
    assert_eq!(n21["event_time"], "2026-10-01T06:14:00Z");
    assert_eq!(n21["data"]["satellite"], "NOAA-21");
    assert_eq!(n21["data"]["brightness_k"], 339.68);
    // Row 2: 750 → 07:50Z, confidence l → low.
    let n21b = find(8.19165, 81.0044);
    assert_eq!(n21b["event_time"], "2026-10-01T07:50:00Z");
    assert_eq!(n21b["data"]["confidence"], "low");
    assert_eq!(
        n21b["quality"]["flags"],
        serde_json::json!(["low_confidence"])
    );

    // J1V archive download: VIIRS data under brightness/bright_t31, satellite 1.
    let j1 = find(0.22305, -50.98979);
    assert_eq!(j1["data"]["instrument"], "VIIRS");
    assert_eq!(j1["data"]["satellite"], "NOAA-20");
    assert_eq!(j1["data"]["brightness_k"], 305.3);
    assert_eq!(j1["data"]["brightness_2_k"], 288.7);
    assert_eq!(j1["data"]["frp_mw"], 1.0);

    // Colombia 2000 archive: type 2 and confidence 26.
    let co = find(11.0912, -72.6625);
    assert_eq!(co["data"]["detection_type"], "static_land_source");
    assert_eq!(co["data"]["confidence"], "low");
    assert_eq!(co["data"]["confidence_pct"], 26);
    assert_eq!(co["event_time"], "2000-11-01T14:58:00Z");

    // Two-months file row 1: frp 0 stays 0 (a real zero), confidence 94 → high.
    let zero = find(-38.19234, -69.09102);
    assert_eq!(zero["data"]["frp_mw"], 0.0);
    assert_eq!(zero["data"]["confidence"], "high");
    assert_eq!(zero["data"]["satellite"], "Aqua");
}
