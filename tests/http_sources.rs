//! Polled sources end to end: `firestream run` against a local server replaying real
//! upstream responses and faults, into a temporary local log. Each test asserts the records,
//! dead letters and stream status that came out.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::replay::{Replay, Reply};
use firestream::manager::{Report, StreamManager};
use firestream::stats::Stats;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Runs the config's streams until `done` says so (or 20 s pass), then stops and drains.
async fn run_until(
    config: firestream::config::Config,
    done: impl Fn(&Stats) -> bool,
) -> (Report, Arc<Stats>) {
    let manager = StreamManager::new(config).await.expect("sink opens");
    let stats = manager.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(manager.run(stop.clone()));
    let start = Instant::now();
    while !done(&stats) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "condition not reached; streams: {:?}",
            stats.streams()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    let report = run.await.unwrap().expect("run ends cleanly");
    (report, stats)
}

fn polls(stats: &Stats, stream: &str) -> u64 {
    let s = stats.streams().get(stream).copied().unwrap_or_default();
    s.polls_ok + s.polls_failed + s.polls_skipped
}

fn dead_letters(log: &std::path::Path) -> Vec<Value> {
    common::envelopes(log, "firestream-dlq")
}

fn read(relative: &str) -> Vec<u8> {
    std::fs::read(common::real(relative)).unwrap()
}

const FIRMS_KEY: &str = "f1e2d3c4b5a6f1e2d3c4b5a6f1e2d3c4";

fn firms_source(server: &Replay, extra: &str) -> String {
    format!(
        "sources:\n  firms_ca:\n    type: nasa_firms\n    interval: 1s\n    url: {}\n    map_key: {FIRMS_KEY}\n    product: VIIRS_NOAA21_NRT\n    bbox: [-124.48, 32.53, -114.13, 42.01]\n    day_range: 1\n    retries: 0\n{extra}",
        server.base
    )
}

const FIRMS_PATH: &str =
    "/api/area/csv/f1e2d3c4b5a6f1e2d3c4b5a6f1e2d3c4/VIIRS_NOAA21_NRT/-124.48,32.53,-114.13,42.01/1";

#[tokio::test]
async fn firms_area_api_records_arrive_and_the_key_stays_out_of_the_log() {
    let server = Replay::start().await;
    let csv = "firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv";
    server.script(FIRMS_PATH, vec![Reply::csv(read(csv))]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &firms_source(&server, ""));
    let (report, _) = run_until(config, |s| polls(s, "firms_ca") >= 2).await;
    let log = dir.path().join("log");
    let records = common::envelopes(&log, "wildfire-nasa-firms");
    let expected = common::csv_rows(&common::real(csv)).len();
    assert_eq!(records.len(), expected);
    assert!(records.iter().all(|r| r["source_id"] == "firms_ca"));
    // The second poll brought the same rows: all duplicates, nothing sent twice.
    let stream = report.streams["firms_ca"];
    assert_eq!(stream.enqueued, expected as u64);
    assert!(stream.duplicates >= expected as u64);
    assert!(dead_letters(&log).is_empty());
    let first = &server.seen()[0];
    assert!(first.headers["user-agent"].starts_with("firestream/"));
}

#[tokio::test]
async fn an_html_error_page_is_a_fetch_dead_letter_with_its_first_bytes() {
    let server = Replay::start().await;
    let page = "<!DOCTYPE html><html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>";
    server.script(FIRMS_PATH, vec![Reply::new(200, "text/html", page)]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &firms_source(&server, ""));
    let (_, stats) = run_until(config, |s| polls(s, "firms_ca") >= 1).await;
    let dead = dead_letters(&dir.path().join("log"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "fetch");
    assert_eq!(dead[0]["error_kind"], "html_payload");
    assert_eq!(dead[0]["source_id"], "firms_ca");
    assert_eq!(
        dead[0]["raw_excerpt"],
        firestream::sources::excerpt(page.as_bytes())
    );
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(!reason.contains(FIRMS_KEY), "{reason}");
    assert!(
        reason.contains("/api/area/csv/<redacted>/VIIRS_NOAA21_NRT"),
        "{reason}"
    );
    let status = stats.stream("firms_ca").status();
    assert_eq!(status.last_error_kind, Some("html_payload"));
    assert!(!status.last_error.unwrap().contains(FIRMS_KEY));
}

#[tokio::test]
async fn invalid_map_key_text_is_a_classified_error_never_zero_rows() {
    let server = Replay::start().await;
    server.script(
        FIRMS_PATH,
        vec![Reply::new(200, "text/plain", "Invalid MAP_KEY.")],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &firms_source(&server, ""));
    let (report, _) = run_until(config, |s| polls(s, "firms_ca") >= 1).await;
    let dead = dead_letters(&dir.path().join("log"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "fetch");
    assert_eq!(dead[0]["raw_excerpt"], "Invalid MAP_KEY.");
    assert_eq!(report.streams["firms_ca"].polls_ok, 0);
    assert_eq!(report.streams["firms_ca"].rows, 0);
}

#[tokio::test]
async fn a_header_only_csv_is_no_fires_not_an_error() {
    let server = Replay::start().await;
    let csv = read("firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv");
    let header = csv.split(|b| *b == b'\n').next().unwrap().to_vec();
    server.script(
        FIRMS_PATH,
        vec![Reply::csv([header, b"\n".to_vec()].concat())],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &firms_source(&server, ""));
    let (report, stats) = run_until(config, |s| polls(s, "firms_ca") >= 1).await;
    let s = report.streams["firms_ca"];
    assert_eq!((s.rows, s.enqueued, s.payload_errors), (0, 0, 0));
    assert!(s.polls_ok >= 1);
    assert!(dead_letters(&dir.path().join("log")).is_empty());
    assert_eq!(stats.stream("firms_ca").status().circuit, Some("closed"));
}

#[tokio::test]
async fn a_failing_upstream_opens_the_circuit_and_polls_stop_until_the_probe() {
    let server = Replay::start().await;
    server.script(FIRMS_PATH, vec![Reply::status(500)]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        &firms_source(&server, "    circuit: {failures: 2, cooldown: 1h}\n"),
    );
    let (report, stats) = run_until(config, |s| polls(s, "firms_ca") >= 4).await;
    let s = report.streams["firms_ca"];
    // Two failed polls opened the circuit; the rest were skipped without a request.
    assert_eq!(s.polls_failed, 2);
    assert!(s.polls_skipped >= 2);
    assert_eq!(server.hits(FIRMS_PATH), 2);
    let status = stats.stream("firms_ca").status();
    assert_eq!(status.circuit, Some("open"));
    assert_eq!(status.consecutive_failures, 2);
    assert_eq!(status.last_error_kind, Some("server_error"));
    // Server errors are an outage, not bad data: no dead letters.
    assert!(dead_letters(&dir.path().join("log")).is_empty());
}

#[tokio::test]
async fn nws_latest_going_backwards_is_not_new() {
    let server = Replay::start().await;
    let newer = read("noaa/stations_KFLL_observations_latest__2022-03-02.json");
    let doc: Value = serde_json::from_slice(&newer).unwrap();
    let time = doc["properties"]["timestamp"].as_str().unwrap().to_owned();
    // The same observation an hour earlier: what `/latest` returns when it goes backwards.
    let older_time =
        chrono::DateTime::parse_from_rfc3339(&time).unwrap() - chrono::Duration::hours(1);
    let older = String::from_utf8(newer.clone())
        .unwrap()
        .replace(&time, &older_time.to_rfc3339());
    server.script(
        "/stations/KFLL/observations/latest",
        vec![Reply::json(newer.clone()), Reply::json(older)],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        &format!(
            "sources:\n  obs:\n    type: nws_observations\n    interval: 1s\n    url: {}\n    stations: [KFLL]\n    user_agent: \"(firestream tests, ops@example.org)\"\n",
            server.base
        ),
    );
    let (report, _) = run_until(config, |s| polls(s, "obs") >= 3).await;
    let records = common::envelopes(&dir.path().join("log"), "wildfire-weather-data");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["event_time"],
        chrono::DateTime::parse_from_rfc3339(&time)
            .unwrap()
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(report.streams["obs"].enqueued, 1);
    let seen = server.seen();
    assert_eq!(
        seen[0].headers["user-agent"],
        "(firestream tests, ops@example.org)"
    );
    assert_eq!(seen[0].headers["accept"], "application/geo+json");
}

#[tokio::test]
async fn nws_stations_are_discovered_across_pages() {
    let server = Replay::start().await;
    let latest = read("noaa/stations_KFLL_observations_latest__2022-03-02.json");
    let page = |ids: &[&str], next: Option<String>| {
        let features: Vec<Value> = ids
            .iter()
            .map(|id| serde_json::json!({"type": "Feature", "properties": {"stationIdentifier": id}}))
            .collect();
        serde_json::json!({"type": "FeatureCollection", "features": features, "pagination": {"next": next}})
            .to_string()
    };
    // The real API always gives a next link; the last page is the empty one.
    server.script(
        "/stations",
        vec![
            Reply::json(page(
                &["KAAA", "KBBB"],
                Some(format!("{}/stations?state=FL&cursor=2", server.base)),
            )),
            Reply::json(page(
                &["KFLL"],
                Some(format!("{}/stations?state=FL&cursor=3", server.base)),
            )),
            Reply::json(page(
                &[],
                Some(format!("{}/stations?state=FL&cursor=4", server.base)),
            )),
        ],
    );
    for station in ["KAAA", "KBBB", "KFLL"] {
        server.script(
            &format!("/stations/{station}/observations/latest"),
            vec![Reply::json(
                String::from_utf8(latest.clone())
                    .unwrap()
                    .replace("/stations/KFLL\"", &format!("/stations/{station}\"")),
            )],
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        &format!(
            "sources:\n  obs_fl:\n    type: nws_observations\n    interval: 1h\n    url: {}\n    state: FL\n",
            server.base
        ),
    );
    let (_, _) = run_until(config, |s| {
        s.streams().get("obs_fl").is_some_and(|x| x.enqueued == 3)
    })
    .await;
    assert_eq!(server.hits("/stations"), 3);
    let records = common::envelopes(&dir.path().join("log"), "wildfire-weather-data");
    let mut stations: Vec<&str> = records
        .iter()
        .map(|r| r["data"]["station_id"].as_str().unwrap())
        .collect();
    stations.sort();
    assert_eq!(stations, ["KAAA", "KBBB", "KFLL"]);
    assert!(server.seen()[0].target.contains("state=FL"));
}

#[tokio::test]
async fn payment_required_pauses_the_stream_with_a_clear_status() {
    let server = Replay::start().await;
    let body = r#"{"api_version": "V1.0.11-0.0.42", "time_stamp": 1667674000, "error": "PaymentRequiredError", "description": "Your account has run out of points."}"#;
    server.script(
        "/v1/sensors",
        vec![Reply::new(402, "application/json", body)],
    );
    let dir = tempfile::tempdir().unwrap();
    let host = server.base.trim_start_matches("http://");
    let config = common::config(
        dir.path(),
        &format!(
            "http: {{hosts: {{\"{host}\": {{}}}}}}\nsources:\n  pa:\n    type: purpleair\n    interval: 1s\n    url: {}\n    api_key: PA-READ-KEY-0001\n    fields: [name, latitude, longitude, last_seen, pm2.5_atm]\n",
            server.base
        ),
    );
    let (report, stats) = run_until(config, |s| polls(s, "pa") >= 3).await;
    assert_eq!(
        server.hits("/v1/sensors"),
        1,
        "a paused stream makes no requests"
    );
    let s = report.streams["pa"];
    assert_eq!(
        (s.polls_failed, s.polls_skipped),
        (1, polls(&stats, "pa") - 1)
    );
    let status = stats.stream("pa").status();
    assert_eq!(status.last_error_kind, Some("payment_required"));
    let paused = status.paused.expect("paused");
    assert!(paused.contains("payment is required"), "{paused}");
    // A refused payment is not an outage: the circuit stays closed.
    assert_eq!(status.circuit, Some("closed"));
    assert_eq!(server.seen()[0].headers["x-api-key"], "PA-READ-KEY-0001");
}

/// A source of `yaml` (indented under `sources:`) polled once an hour, run until `records`
/// have been queued.
async fn poll_once_into_log(yaml: &str, stream: &str, records: u64) -> (tempfile::TempDir, Report) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &format!("sources:\n{yaml}"));
    let stream = stream.to_owned();
    let (report, _) = run_until(config, move |s| {
        s.streams()
            .get(&stream)
            .is_some_and(|x| x.enqueued >= records)
    })
    .await;
    (dir, report)
}

#[tokio::test]
async fn purpleair_sensors_in_a_bbox_with_only_the_configured_fields() {
    let server = Replay::start().await;
    let body = read("purpleair/v1_sensors_bbox_SanJuanMtns_CO__2026-07-02.json");
    server.script("/v1/sensors", vec![Reply::json(body)]);
    let fields = "sensor_index, last_seen, name, latitude, longitude, humidity, temperature, pm2.5_atm, pm2.5_atm_a, pm2.5_atm_b";
    let (dir, report) = poll_once_into_log(
        &format!(
            "  pa_co:\n    type: purpleair\n    interval: 1h\n    url: {}\n    api_key: PA-READ-KEY-0001\n    fields: [{fields}]\n    bbox: [-108.2, 37.6, -107.4, 38.2]\n    max_age: 1h\n",
            server.base
        ),
        "pa_co",
        7,
    )
    .await;
    assert_eq!(report.streams["pa_co"].invalid, 0);
    let records = common::envelopes(&dir.path().join("log"), "wildfire-air-quality");
    assert_eq!(records.len(), 7);
    assert!(
        records
            .iter()
            .all(|r| r["kind"] == "air_quality" && r["data"]["provider"] == "purpleair")
    );
    let target = &server.seen()[0].target;
    assert_eq!(
        target,
        "/v1/sensors?fields=sensor_index%2Clast_seen%2Cname%2Clatitude%2Clongitude%2Chumidity%2Ctemperature%2Cpm2.5_atm%2Cpm2.5_atm_a%2Cpm2.5_atm_b&nwlng=-108.2&nwlat=38.2&selng=-107.4&selat=37.6&max_age=3600"
    );
}

#[tokio::test]
async fn airnow_aq_data_over_a_bbox_with_the_key_redacted_in_errors() {
    let server = Replay::start().await;
    let body = read("airnow/aq_data_bbox_LA_PM25__2025-01-10.json");
    let rows = serde_json::from_slice::<Vec<Value>>(&body).unwrap().len() as u64;
    server.script("/aq/data/", vec![Reply::json(body)]);
    let (dir, report) = poll_once_into_log(
        &format!(
            "  an_la:\n    type: airnow\n    interval: 1h\n    url: {}\n    api_key: AIRNOW-KEY-0001\n    bbox: [-118.9, 33.6, -117.6, 34.4]\n    parameters: [PM25]\n",
            server.base
        ),
        "an_la",
        rows,
    )
    .await;
    let s = report.streams["an_la"];
    assert_eq!((s.rows, s.invalid, s.enqueued), (rows, 0, rows));
    let records = common::envelopes(&dir.path().join("log"), "wildfire-air-quality");
    assert_eq!(records.len() as u64, rows);
    let target = &server.seen()[0].target;
    assert!(
        target.contains("BBOX=-118.9%2C33.6%2C-117.6%2C34.4"),
        "{target}"
    );
    assert!(target.contains("parameters=PM25"), "{target}");
    assert!(target.ends_with("API_KEY=AIRNOW-KEY-0001"), "{target}");
}

#[tokio::test]
async fn calfire_incident_list_over_http() {
    let server = Replay::start().await;
    let body = read("incidents/calfire_GetFiresForMap__2024-06-18.json");
    server.script(
        "/api/sitecore/Incident/GetFiresForMap",
        vec![Reply::json(body)],
    );
    let (dir, _) = poll_once_into_log(
        &format!(
            "  calfire:\n    type: calfire_incidents\n    interval: 1h\n    url: {}/api/sitecore/Incident/GetFiresForMap?showFeatured=false\n",
            server.base
        ),
        "calfire",
        19,
    )
    .await;
    let records = common::envelopes(&dir.path().join("log"), "wildfire-incidents");
    assert_eq!(records.len(), 19);
    let post = records
        .iter()
        .find(|r| r["data"]["name"] == "Post Fire")
        .expect("the Post Fire is in the list");
    assert_eq!(post["data"]["acres_burned"], 15611.0);
}

#[tokio::test]
async fn generic_http_follows_next_links_on_the_same_host() {
    let server = Replay::start().await;
    let page = |ids: &[u32], next: Value| {
        let items: Vec<Value> = ids
            .iter()
            .map(|id| serde_json::json!({"zone_id": format!("Z{id}"), "updated_at": "2026-08-01T19:00:00Z", "centroid": {"lat": 38.5, "lon": -121.5}, "status": "order"}))
            .collect();
        serde_json::json!({"data": {"items": items}, "links": {"next": next}}).to_string()
    };
    server.script(
        "/zones",
        vec![
            Reply::json(page(&[1, 2], Value::from("/zones?page=2"))),
            Reply::json(page(&[3], Value::Null)),
        ],
    );
    let (dir, _) = poll_once_into_log(
        &format!(
            "  zones:\n    type: http\n    interval: 1h\n    url: {}/zones\n    record_pointer: /data/items\n    next_link: /links/next\n    headers: {{Authorization: \"Bearer tok-0123456789\"}}\n    mapping: {{id: zone_id, time: updated_at, lat: /centroid/lat, lon: /centroid/lon}}\n    topic: wildfire-evacuations\n",
            server.base
        ),
        "zones",
        3,
    )
    .await;
    let records = common::envelopes(&dir.path().join("log"), "wildfire-evacuations");
    let mut zones: Vec<&str> = records
        .iter()
        .map(|r| r["data"]["zone_id"].as_str().unwrap())
        .collect();
    zones.sort();
    assert_eq!(zones, ["Z1", "Z2", "Z3"]);
    assert_eq!(records[0]["kind"], "raw");
    assert_eq!(records[0]["location"]["lat"], 38.5);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].target, "/zones?page=2");
    assert!(
        seen.iter()
            .all(|s| s.headers["authorization"] == "Bearer tok-0123456789")
    );
}

#[tokio::test]
async fn a_stop_does_not_wait_for_a_slow_upstream() {
    let server = Replay::start().await;
    server.script(
        FIRMS_PATH,
        vec![Reply::csv("latitude,longitude\n").delay(Duration::from_secs(30))],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), &firms_source(&server, "    timeout: 60s\n"));
    let manager = StreamManager::new(config).await.unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(manager.run(stop.clone()));
    server
        .wait_hits(FIRMS_PATH, 1, Duration::from_secs(10))
        .await;
    let asked = Instant::now();
    stop.cancel();
    let report = run.await.unwrap().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        asked.elapsed()
    );
    assert_eq!(report.streams["firms_ca"].rows, 0);
}

#[tokio::test]
async fn keys_echoed_by_upstream_never_reach_the_dlq_or_the_status() {
    let server = Replay::start().await;
    let firms_key = FIRMS_KEY;
    let pa_key = "PA-ECHO-KEY-0123456789";
    let an_key = "AN-KEY/with+odd&chars=";
    let encoded: String = url::form_urlencoded::byte_serialize(an_key.as_bytes()).collect();
    server.script(
        FIRMS_PATH,
        vec![Reply::new(
            400,
            "text/html",
            format!("<html><body>Invalid MAP_KEY: {FIRMS_PATH}</body></html>"),
        )],
    );
    server.script(
        "/v1/sensors",
        vec![Reply::json(format!(
            r#"{{"api_version": "V1.0.11", "error": "ApiKeyInvalidError", "description": "The key {pa_key} is not valid."}}"#
        ))],
    );
    server.script(
        "/aq/data/",
        vec![Reply::new(
            200,
            "text/plain",
            format!("Invalid API key: API_KEY={encoded}"),
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}  pa:\n    type: purpleair\n    interval: 1h\n    url: {base}\n    api_key: {pa_key}\n    fields: [last_seen, pm2.5_atm]\n    retries: 0\n  an:\n    type: airnow\n    interval: 1h\n    url: {base}\n    api_key: \"{an_key}\"\n    bbox: [-118.9, 33.6, -117.6, 34.4]\n    retries: 0\n",
        firms_source(&server, ""),
        base = server.base
    );
    let config = common::config(dir.path(), &yaml);
    let (_, stats) = run_until(config, |s| {
        ["firms_ca", "pa", "an"].iter().all(|id| polls(s, id) >= 1)
    })
    .await;
    let dead = dead_letters(&dir.path().join("log"));
    assert_eq!(dead.len(), 3, "{dead:?}");
    let mut everything = serde_json::to_string(&dead).unwrap();
    for id in ["firms_ca", "pa", "an"] {
        everything.push_str(&format!("{:?}", stats.stream(id).status()));
    }
    for secret in [firms_key, pa_key, an_key, encoded.as_str()] {
        assert!(!everything.contains(secret), "{secret} in {everything}");
    }
    assert!(everything.contains("<redacted>"), "{everything}");
}

#[tokio::test]
async fn a_url_takes_secrets_from_the_environment_and_shows_them_redacted() {
    let server = Replay::start().await;
    server.script("/feed", vec![Reply::status(403)]);
    let dir = tempfile::tempdir().unwrap();
    // An unset variable with a default: the default is substituted, and treated as the
    // secret it stands for.
    let config = common::config(
        dir.path(),
        &format!(
            "sources:\n  feed:\n    type: http\n    interval: 1h\n    url: \"http://reader:pw-0123456789@{}/feed?format=json&token=${{FIRESTREAM_TEST_UNSET_TOKEN:-tok-ENV-0123456789}}\"\n    topic: wildfire-feed\n    retries: 0\n",
            server.base.trim_start_matches("http://")
        ),
    );
    let (_, stats) = run_until(config, |s| polls(s, "feed") >= 1).await;
    assert!(
        server.seen()[0]
            .target
            .ends_with("token=tok-ENV-0123456789")
    );
    let dead = dead_letters(&dir.path().join("log"));
    let everything = format!("{dead:?} {:?}", stats.stream("feed").status());
    assert!(!everything.contains("tok-ENV-0123456789"), "{everything}");
    assert!(!everything.contains("pw-0123456789"), "{everything}");
    assert!(everything.contains("token=<redacted>"), "{everything}");
}

#[tokio::test]
async fn a_station_discovery_that_finds_nothing_fails_the_poll_and_is_asked_again() {
    let server = Replay::start().await;
    server.script("/stations", vec![Reply::json("[]")]);
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        dir.path(),
        &format!(
            "sources:\n  obs_ca:\n    type: nws_observations\n    interval: 1s\n    url: {}\n    state: CA\n",
            server.base
        ),
    );
    let (report, stats) = run_until(config, |s| polls(s, "obs_ca") >= 2).await;
    assert!(report.streams["obs_ca"].polls_failed >= 2);
    // Not cached as "no stations" for a day: asked again on the next poll.
    assert!(server.hits("/stations") >= 2);
    let status = stats.stream("obs_ca").status();
    assert_eq!(status.last_error_kind, Some("unexpected_json"));
    assert!(status.last_error.unwrap().contains("found no stations"));
}
