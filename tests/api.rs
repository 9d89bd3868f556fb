//! The HTTP API end to end (DESIGN §8, issue #6): `firestream run` — the binary — on a free
//! port with a bearer token, driven over real HTTP: health, readiness, stream status,
//! stop and start (state and counters change), the token enforced, the error shapes, and
//! the Prometheus page parsed after a known ingest.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::real;
use common::service::{self, Service};
use reqwest::StatusCode;
use serde_json::Value;

const TOKEN: &str = "t0ken-for-the-api-test";

/// `firestream run` with two file sources and a token.
fn start(dir: &Path) -> Service {
    let feed = dir.join("feed");
    std::fs::create_dir_all(&feed).unwrap();
    std::fs::copy(real("firms/fire_nrt_M6_157509.csv"), feed.join("m6.csv")).unwrap();
    std::fs::write(
        dir.join("run.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n\
         api: {bind: \"127.0.0.1:0\", token: \"${FS_API_TEST_TOKEN}\", max_body: 1MiB}\n\
         sources:\n\
         \x20 firms_a: {type: nasa_firms, interval: 1h, paths: [\"feed/*.csv\"]}\n\
         \x20 firms_b: {type: nasa_firms, interval: 1h, paths: [\"nothing/*.csv\"]}\n",
    )
    .unwrap();
    service::start(dir, "run.yaml", &[("FS_API_TEST_TOKEN", TOKEN)], None)
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

async fn post(url: &str, token: Option<&str>) -> (StatusCode, Value, Option<String>) {
    let mut request = reqwest::Client::new().post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status();
    let body = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    (status, body, challenge)
}

async fn wait_for_state(base: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, view) = get(&format!("{base}/api/v1/streams/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["state"] == state {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {state}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_api_reports_streams_and_stops_and_starts_them_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path());
    let base = service.base.clone();

    let (status, body) = get(&format!("{base}/health")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = get(&format!("{base}/ready")).await;
    assert_eq!(
        (status, body["ready"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );

    // The effective config, secrets shown only as the variables that hold them.
    let (status, shown) = get(&format!("{base}/api/v1/config")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown["config"]["api"]["token"], "${FS_API_TEST_TOKEN}",
        "{shown}"
    );
    assert_eq!(
        shown["config"]["sources"]["firms_a"]["interval"], "1h",
        "{shown}"
    );
    assert!(!shown.to_string().contains(TOKEN), "{shown}");

    // Both streams run; the one with a file has read it.
    let a = wait_for_state(&base, "firms_a", "running").await;
    assert_eq!(a["source_type"], "nasa_firms");
    assert_eq!(a["mode"], "real_time");
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        let (_, a) = get(&format!("{base}/api/v1/streams/firms_a")).await;
        let polled = a["counters"]["polls_ok"].as_u64() == Some(1);
        if polled || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a["counters"]["rows"], 5_824, "{a}");
    assert_eq!(a["counters"]["enqueued"], 5_824, "{a}");
    assert_eq!(a["counters"]["polls_ok"], 1, "{a}");
    assert!(a["upstream"]["last_poll"].is_string(), "{a}");
    let (status, list) = get(&format!("{base}/api/v1/streams")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["firms_a", "firms_b"]);

    // Mutating endpoints need the token: none → 401 with a challenge, a wrong one → 403.
    let stop_a = format!("{base}/api/v1/streams/firms_a/stop");
    let (status, body, challenge) = post(&stop_a, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    let (status, body, _) = post(&stop_a, Some("wrong")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    wait_for_state(&base, "firms_a", "running").await;

    // Stop, then stop again (409), start, start again (409).
    let (status, body, _) = post(&stop_a, Some(TOKEN)).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("stopped")),
        "{body}"
    );
    let (status, body, _) = post(&stop_a, Some(TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_running"))
    );
    assert!(
        body["detail"].as_str().unwrap().contains("firms_a"),
        "{body}"
    );
    let start_a = format!("{base}/api/v1/streams/firms_a/start");
    let (status, _, _) = post(&start_a, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let a = wait_for_state(&base, "firms_a", "running").await;
    let (status, body, _) = post(&start_a, Some(TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_running"))
    );
    // The restarted stream polled again: nothing new.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut polls = a["counters"]["polls_ok"].as_u64().unwrap();
    while polls < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        polls = get(&format!("{base}/api/v1/streams/firms_a")).await.1["counters"]["polls_ok"]
            .as_u64()
            .unwrap();
    }
    let (_, a) = get(&format!("{base}/api/v1/streams/firms_a")).await;
    assert_eq!(a["counters"]["polls_ok"], 2, "{a}");
    // The file is read again only if its records were not all delivered before the stop
    // (then every row is a duplicate); either way nothing is queued twice.
    assert_eq!(a["counters"]["enqueued"], 5_824, "{a}");
    let rows = a["counters"]["rows"].as_u64().unwrap();
    assert!(rows == 5_824 || rows == 2 * 5_824, "{a}");
    assert_eq!(
        a["counters"]["duplicates"].as_u64().unwrap(),
        rows - 5_824,
        "{a}"
    );

    // All at once.
    let (status, body, _) = post(&format!("{base}/api/v1/streams/stop-all"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stopped"], serde_json::json!(["firms_a", "firms_b"]));
    let (status, body, _) = post(&format!("{base}/api/v1/streams/start-all"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["started"], serde_json::json!(["firms_a", "firms_b"]));

    // Unknown things are 404 with the JSON error shape.
    let (status, body) = get(&format!("{base}/api/v1/streams/nope")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(
        body["detail"].as_str().unwrap().contains("`nope`"),
        "{body}"
    );
    let (status, _, _) = post(&format!("{base}/api/v1/streams/nope/stop"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&format!("{base}/api/v2/whatever")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Pushed rows go through the source's own parser, validation and dedupe (rows of
    // another year: firms_a's records are already in the nasa_firms dedupe window).
    let text = std::fs::read_to_string(real("firms/modis_2000_Colombia.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().take(11).map(str::to_owned).collect();
    let (_, rest) = lines[2].split_once(',').unwrap();
    lines[2] = format!("95.1,{rest}");
    let body = lines.join("\n");
    let push = |source: &str, body: String, token: Option<&'static str>| {
        let url = format!("{base}/api/v1/ingest?source={source}");
        async move {
            let mut request = reqwest::Client::new().post(url).body(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, body)
        }
    };
    let (status, report) = push("firms_b", body.clone(), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (
            &report["rows"],
            &report["accepted"],
            &report["duplicates"],
            &report["invalid"]
        ),
        (
            &Value::from(10),
            &Value::from(9),
            &Value::from(0),
            &Value::from(1)
        ),
        "{report}"
    );
    assert_eq!(report["errors"][0]["position"], "line 3", "{report}");
    assert_eq!(
        report["errors"][0]["reason"], "latitude 95.1 is outside -90..90",
        "{report}"
    );
    // The same body again: nothing new.
    let (_, again) = push("firms_b", body.clone(), Some(TOKEN)).await;
    assert_eq!(
        (&again["accepted"], &again["duplicates"]),
        (&Value::from(0), &Value::from(9)),
        "{again}"
    );
    let (_, b) = get(&format!("{base}/api/v1/streams/firms_b")).await;
    assert_eq!(b["counters"]["enqueued"], 9, "{b}");
    // Not the source's format at all: 422, and a dead letter.
    let (status, report) = push("firms_b", "<html>busy</html>".to_owned(), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{report}");
    assert!(
        report["rejected"]
            .as_str()
            .unwrap()
            .starts_with("pushed body:"),
        "{report}"
    );
    // Refusals.
    let (status, body_) = push("firms_b", body.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body_}");
    let (status, body_) = push("nope", body.clone(), Some(TOKEN)).await;
    assert_eq!(
        (status, body_["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body_) = push("firms_b", "x".repeat(2 << 20), Some(TOKEN)).await;
    assert_eq!(
        (status, body_["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{body_}"
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/ingest"))
        .bearer_auth(TOKEN)
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A manual alert: queued in the critical lane (202), a resend with the same id is a
    // duplicate (200), a bad one says what is wrong (400), and the token is needed.
    let alert = |json: &'static str, token: Option<&'static str>| {
        let url = format!("{base}/api/v1/alerts");
        async move {
            let mut request = reqwest::Client::new().post(url).body(json);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, body)
        }
    };
    let evacuate = r#"{"headline": "Evacuate zone 4 now", "id": "evac-4", "severity": "Extreme",
        "latitude": 39.76, "longitude": -121.62, "area_desc": "Paradise, CA"}"#;
    let (status, accepted) = alert(evacuate, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(
        (&accepted["alert_id"], &accepted["duplicate"]),
        (&Value::from("evac-4"), &Value::from(false))
    );
    let (status, again) = alert(evacuate, Some(TOKEN)).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (StatusCode::OK, &Value::from(true))
    );
    let (status, body_) = alert(r#"{"headline": "x", "severity": "Bad"}"#, Some(TOKEN)).await;
    assert_eq!(
        (status, body_["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_alert"))
    );
    let (status, body_) = alert(r#"{"headlin": "x"}"#, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body_["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `headlin`"),
        "{body_}"
    );
    let (status, _) = alert(evacuate, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The scheme name is case-insensitive; a wrong method is a JSON 405.
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/streams/firms_b/start"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), StatusCode::UNAUTHORIZED);
    let response = reqwest::Client::new()
        .delete(format!("{base}/api/v1/streams"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    // Every route of the served OpenAPI document answers (an empty request may be refused,
    // but never with "no route" or "method not allowed").
    let response = reqwest::get(format!("{base}/api/v1/openapi.yaml"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: yaml_serde::Value = yaml_serde::from_str(&response.text().await.unwrap()).unwrap();
    let client = reqwest::Client::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap().replace("{id}", "firms_b");
        for method in item.as_mapping().unwrap().keys().filter_map(|m| m.as_str()) {
            let url = format!("{base}{path}");
            let request = match method {
                "get" => client.get(&url),
                "post" => client.post(&url).bearer_auth(TOKEN),
                other => panic!("{other} {path}: a method the test does not know"),
            };
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(!text.contains("no route"), "{method} {path}: {text}");
        }
    }

    // SIGTERM still stops the service cleanly.
    service.stop();
    // The alert was delivered once, to the alerts topic and the critical-alerts copy.
    let log = dir.path().join("out/log");
    for name in ["wildfire-weather-alerts", "wildfire-critical-alerts"] {
        let stored = common::topic(&log, name);
        assert_eq!(stored.len(), 1, "{name}: {stored:?}");
        let value = &stored[0]["value"];
        assert_eq!(value["id"], accepted["id"]);
        assert_eq!(value["priority"], "critical");
        assert_eq!(value["source_id"], "manual_alerts");
        assert_eq!(value["data"]["headline"], "Evacuate zone 4 now");
    }
}

/// A scrape of `/metrics` without a token, parsed by a Prometheus text-format parser.
struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
    /// The families the page declares (`# TYPE` lines), samples or not.
    families: std::collections::BTreeSet<String>,
}

impl Scrape {
    async fn get(base: &str) -> Scrape {
        let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = response.text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page");
        let families = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        Scrape {
            samples: scrape.samples,
            families,
        }
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
        found.first().map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
            .sum()
    }
}

/// The newest acquisition time of a FIRMS file (`acq_date`, `acq_time` HHMM), in seconds.
fn newest_acquisition(path: &Path) -> i64 {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (date, time) = (column("acq_date"), column("acq_time"));
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            let at = format!("{} {:0>4}", fields[date], fields[time]);
            chrono::NaiveDateTime::parse_from_str(&at, "%Y-%m-%d %H%M")
                .unwrap()
                .and_utc()
                .timestamp()
        })
        .max()
        .unwrap()
}

#[tokio::test]
async fn the_metrics_page_counts_a_known_ingest_with_bounded_labels() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path());
    let base = service.base.clone();
    let firms_a = [("stream", "firms_a"), ("source_type", "nasa_firms")];
    let topic = ("topic", "wildfire-nasa-firms");

    // The real FIRMS file: 5,824 rows, all valid. Wait until every record is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let page = Scrape::get(&base).await;
        let delivered = page.value(
            "firestream_delivery_records_total",
            &[topic, ("outcome", "delivered")],
        );
        if delivered == Some(5_824.0) {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered in time: {delivered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stream = |name: &str, extra: &[(&str, &str)]| {
        let labels: Vec<_> = firms_a.iter().chain(extra).copied().collect();
        page.value(name, &labels)
    };
    assert_eq!(
        stream("firestream_stream_rows_fetched_total", &[]),
        Some(5_824.0)
    );
    assert_eq!(
        stream("firestream_stream_records_emitted_total", &[]),
        Some(5_824.0)
    );
    assert_eq!(
        stream("firestream_stream_records_enqueued_total", &[]),
        Some(5_824.0)
    );
    assert_eq!(
        stream("firestream_stream_records_invalid_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        stream("firestream_stream_records_dropped_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        stream("firestream_stream_polls_total", &[("outcome", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        stream("firestream_stream_state", &[("state", "running")]),
        Some(1.0)
    );
    assert!(stream("firestream_stream_last_success_timestamp_seconds", &[]).is_some());
    let failed = page.value(
        "firestream_delivery_records_total",
        &[topic, ("outcome", "failed")],
    );
    assert_eq!(failed, Some(0.0));
    // Drained: nothing waits in any lane.
    assert_eq!(page.sum("firestream_queue_records", &[]), 0.0);
    assert_eq!(page.sum("firestream_queue_bytes", &[]), 0.0);
    // Histograms: the poll was timed, and every delivered record once (high and normal
    // priorities: FIRMS detections with high confidence and FRP ≥ 100 MW are high).
    let polls = stream("firestream_stream_poll_duration_seconds_count", &[]).unwrap();
    assert!(polls >= 1.0, "{polls}");
    let latencies = page.sum("firestream_delivery_latency_seconds_count", &[]);
    assert_eq!(latencies, 5_824.0);
    assert!(
        page.value(
            "firestream_delivery_latency_seconds_count",
            &[("priority", "high")]
        )
        .unwrap()
            > 0.0
    );
    // Freshness: the newest delivered event is the file's newest acquisition.
    let newest = newest_acquisition(&dir.path().join("feed/m6.csv"));
    assert_eq!(
        stream("firestream_stream_newest_event_timestamp_seconds", &[]),
        Some(newest as f64)
    );
    let age = stream("firestream_stream_data_age_seconds", &[]).unwrap();
    let expected = (chrono::Utc::now().timestamp() - newest) as f64;
    assert!(
        (expected - 60.0..=expected + 1.0).contains(&age),
        "{age} vs {expected}"
    );
    // The stream that read nothing has no freshness to show.
    let firms_b = [("stream", "firms_b")];
    assert_eq!(
        page.value("firestream_stream_data_age_seconds", &firms_b),
        None
    );
    assert_eq!(
        page.value("firestream_stream_rows_fetched_total", &firms_b),
        Some(0.0)
    );
    for stage in ["fetch", "parse", "validate", "queue", "deliver", "shutdown"] {
        assert_eq!(
            page.value("firestream_dlq_records_total", &[("stage", stage)]),
            Some(0.0)
        );
    }
    assert_eq!(
        page.value(
            "firestream_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(page.value("firestream_uptime_seconds", &[]).unwrap() > 0.0);

    // Labels are bounded: never a record id, a URL or a path.
    let envelopes = common::envelopes(&dir.path().join("out/log"), "wildfire-nasa-firms");
    let ids: std::collections::HashSet<&str> = envelopes
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5_824);
    for sample in &page.samples {
        for (name, value) in sample.labels.iter() {
            let hex_id = value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(
                !hex_id
                    && !ids.contains(value.as_str())
                    && !value.contains("://")
                    && !value.contains('/'),
                "{} has label {name}={value:?}",
                sample.metric
            );
        }
        if let Some(stream) = sample.labels.get("stream") {
            assert!(["firms_a", "firms_b"].contains(&stream), "{sample:?}");
        }
    }

    // The README's table lists exactly the families served.
    let readme = std::fs::read_to_string(common::repo("README.md")).unwrap();
    let listed: std::collections::BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `firestream_"))
        .flat_map(|l| {
            l.split('|')
                .nth(1)
                .unwrap()
                .split(',')
                .map(|n| n.trim().trim_matches('`').to_owned())
        })
        .collect();
    assert_eq!(listed, page.families);

    // OpenMetrics for a scraper that asks for it.
    let response = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(response.text().await.unwrap().ends_with("# EOF\n"));

    // A stop shows in the state gauge.
    let (status, _, _) = post(&format!("{base}/api/v1/streams/firms_a/stop"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let page = Scrape::get(&base).await;
    let state = |s: &str| page.value("firestream_stream_state", &[firms_a[0], ("state", s)]);
    assert_eq!((state("stopped"), state("running")), (Some(1.0), Some(0.0)));

    service.stop();
}

#[test]
fn a_port_in_use_is_a_usage_error_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(
        dir.path().join("run.yaml"),
        format!(
            "sink: {{type: log, log: {{dir: out/log}}}}\napi: {{bind: \"{addr}\"}}\n\
             sources:\n  f: {{type: nasa_firms, interval: 1h, paths: [\"x/*.csv\"]}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c", "run.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("api.bind: cannot listen on {addr}")),
        "{err}"
    );
    assert!(err.contains("api: {enabled: false}"), "{err}");
}

#[test]
fn a_remote_bind_without_a_token_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |api: &str| {
        std::fs::write(
            dir.path().join("c.yaml"),
            format!(
                "sink: {{type: log}}\napi: {api}\n\
                 sources:\n  f: {{type: nasa_firms, interval: 1h, paths: [\"x/*.csv\"]}}\n"
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_firestream"))
            .args(["validate", "-c", "c.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = validate("{bind: \"0.0.0.0:8080\"}");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "api.bind: 0.0.0.0:8080 is reachable from other machines and api.token is not set"
        ),
        "{err}"
    );
    assert!(
        validate("{bind: \"0.0.0.0:8080\", token: abcdefgh}")
            .status
            .success()
    );
    assert!(
        validate("{bind: \"0.0.0.0:8080\", allow_unauthenticated: true}")
            .status
            .success()
    );
    let out = validate("{bind: \"localhost\"}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("api.bind: \"localhost\" is not an address and port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `api.tls`: the API answers over HTTPS with the configured certificate (a client that
/// trusts it gets 200; one that does not, or plain HTTP, gets nothing), and a key that does
/// not exist is a usage error naming the setting.
#[tokio::test]
async fn the_api_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("run.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n\
         api: {bind: \"127.0.0.1:0\", tls: {cert: cert.pem, key: key.pem}}\n\
         sources:\n  f: {type: nasa_firms, interval: 1h, paths: [\"x/*.csv\"]}\n",
    )
    .unwrap();
    let service = service::start(dir.path(), "run.yaml", &[], None);
    assert!(
        service.listening.contains("scheme=https"),
        "{}",
        service.listening
    );
    let addr = service.base.trim_start_matches("http://").to_owned();
    let port = addr.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}/health");

    let trusted = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let response = trusted.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        reqwest::get(&url).await.is_err(),
        "an untrusted certificate is refused"
    );
    assert!(
        reqwest::get(format!("http://{addr}/health")).await.is_err(),
        "plain HTTP gets no answer"
    );
    service.stop();

    std::fs::remove_file(dir.path().join("key.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c", "run.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.tls.key"), "{err}");
    assert!(err.contains("key.pem"), "{err}");
}

/// A manual alert's id is remembered across a restart: the same id sent again after it is
/// a duplicate (its window comes back from the checkpoint before alerts are taken).
#[tokio::test]
async fn an_alert_id_is_still_known_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("run.yaml"),
        "sink: {type: log, log: {dir: out/log}}\napi: {bind: \"127.0.0.1:0\"}\n\
         sources:\n  f: {type: nasa_firms, interval: 1h, paths: [\"x/*.csv\"]}\n",
    )
    .unwrap();
    let send = |base: String| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = reqwest::Client::new()
                .post(format!("{base}/api/v1/alerts"))
                .body(r#"{"headline": "Evacuate zone 9", "id": "evac-9"}"#)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            // Right after a start the alerts' window may still be coming back.
            if status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return (status, body);
            }
            assert_eq!(body["error"], "recovering", "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let first = service::start(dir.path(), "run.yaml", &[], None);
    let (status, body) = send(first.base.clone()).await;
    assert_eq!(
        (status, &body["duplicate"]),
        (StatusCode::ACCEPTED, &Value::from(false))
    );
    first.stop();
    let second = service::start(dir.path(), "run.yaml", &[], None);
    let (status, body) = send(second.base.clone()).await;
    assert_eq!(
        (status, &body["duplicate"]),
        (StatusCode::OK, &Value::from(true)),
        "{body}"
    );
    second.stop();
    let stored = common::topic(&dir.path().join("out/log"), "wildfire-critical-alerts");
    assert_eq!(stored.len(), 1);
}
