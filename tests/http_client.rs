//! The shared HTTP client against a local server scripted with real payloads and the faults
//! upstream APIs produce: each test asserts what the client did and counted.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::replay::{Replay, Reply};
use firestream::config::{Budget, Dur, HostConfig, HttpConfig};
use firestream::http::{ApiClients, Expect, FetchError, Fetched, Request};
use firestream::secret::{Secret, redact};
use reqwest::header::HeaderMap;
use url::Url;

fn clients(hosts: &[(&str, HostConfig)]) -> ApiClients {
    let config = HttpConfig {
        hosts: hosts
            .iter()
            .map(|(h, c)| (h.to_string(), *c))
            .collect::<BTreeMap<_, _>>(),
        ..HttpConfig::default()
    };
    ApiClients::new(&config).unwrap()
}

fn request(url: &str, expect: Expect) -> Request {
    Request {
        url: Url::parse(url).unwrap(),
        shown: url.to_owned(),
        headers: HeaderMap::new(),
        expect,
        timeout: Duration::from_secs(5),
        max_body: 1 << 20,
        retries: 3,
        cache_ttl: None,
        cost: 1,
    }
}

fn firms_csv() -> Vec<u8> {
    std::fs::read(common::real(
        "firms/area_api_VIIRS_NOAA21_NRT__2026-10-01__first40_transcribed.csv",
    ))
    .unwrap()
}

#[tokio::test]
async fn server_errors_are_retried_until_the_third_try_succeeds() {
    let server = Replay::start().await;
    server.script(
        "/area",
        vec![
            Reply::status(500),
            Reply::status(503),
            Reply::csv(firms_csv()),
        ],
    );
    let clients = clients(&[]);
    let r = request(&format!("{}/area", server.base), Expect::Csv);
    let client = clients.for_url(&r.url);
    match client.fetch(&r).await.unwrap() {
        Fetched::Body { body, attempts, .. } => {
            assert_eq!(body.as_ref(), firms_csv().as_slice());
            assert_eq!(attempts, 3);
        }
        other => panic!("{other:?}"),
    }
    let snap = client.snapshot();
    assert_eq!(snap.requests, 3);
    assert_eq!(snap.retries, 2);
    assert_eq!(snap.responses_5xx, 2);
    assert_eq!(snap.responses_2xx, 1);
}

#[tokio::test]
async fn other_client_errors_are_not_retried_and_keep_the_page_start() {
    let server = Replay::start().await;
    let page = "<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body><p>Access denied. A User-Agent header identifying your application and a contact is required to use this service; see the API documentation for details.</p></body></html>";
    assert!(page.len() > 200);
    server.script("/stations", vec![Reply::new(403, "text/html", page)]);
    let clients = clients(&[]);
    let r = request(&format!("{}/stations", server.base), Expect::Json);
    let client = clients.for_url(&r.url);
    let e = client.fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "unauthorized");
    assert!(!e.is_retriable());
    assert!(e.is_bad_payload());
    assert_eq!(e.excerpt().unwrap(), &page[..200]);
    assert!(e.to_string().contains("HTTP 403 Forbidden"), "{e}");
    assert_eq!(client.snapshot().requests, 1);
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_every_source_on_the_host() {
    let server = Replay::start().await;
    server.script(
        "/a",
        vec![
            Reply::status(429).header("Retry-After", "2"),
            Reply::json("[]"),
        ],
    );
    server.script("/b", vec![Reply::json("[]")]);
    let clients = std::sync::Arc::new(clients(&[]));
    let a = request(&format!("{}/a", server.base), Expect::Json);
    let b = request(&format!("{}/b", server.base), Expect::Json);
    let first = {
        let clients = clients.clone();
        tokio::spawn(async move { clients.for_url(&a.url).fetch(&a).await })
    };
    server.wait_hits("/a", 1, Duration::from_secs(5)).await;
    // Another source on the same host, asking after the 429.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = clients.for_url(&b.url);
    assert!(client.snapshot().paused_for_s.is_some());
    assert!(matches!(client.fetch(&b).await, Ok(Fetched::Body { .. })));
    assert!(matches!(first.await.unwrap(), Ok(Fetched::Body { .. })));
    let seen = server.seen();
    let t429 = seen[0].at;
    for later in &seen[1..] {
        let waited = later.at.duration_since(t429);
        assert!(
            waited >= Duration::from_millis(1900),
            "{} asked {waited:?} after the 429",
            later.path
        );
    }
    assert_eq!(seen.len(), 3);
    assert!(client.snapshot().rate_limited_waits >= 2);
}

#[tokio::test]
async fn an_etag_makes_the_next_request_conditional_and_304_is_nothing_new() {
    let server = Replay::start().await;
    server.script(
        "/alerts/active",
        vec![
            Reply::json("{\"features\": []}").header("ETag", "\"v1\""),
            Reply::new(304, "application/json", ""),
        ],
    );
    let clients = clients(&[]);
    let r = request(&format!("{}/alerts/active", server.base), Expect::Json);
    let client = clients.for_url(&r.url);
    let Fetched::Body { validators, .. } = client.fetch(&r).await.unwrap() else {
        panic!("first fetch has a body")
    };
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    client.remember(&r, validators);
    assert!(matches!(
        client.fetch(&r).await.unwrap(),
        Fetched::NotModified { cached: false }
    ));
    let seen = server.seen();
    assert_eq!(seen[0].headers.get("if-none-match"), None);
    assert_eq!(seen[1].headers.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(client.snapshot().not_modified, 1);
}

#[tokio::test]
async fn a_fresh_cached_response_is_not_fetched_again() {
    let server = Replay::start().await;
    server.script("/list", vec![Reply::json("[1]")]);
    let clients = clients(&[]);
    let mut r = request(&format!("{}/list", server.base), Expect::Json);
    r.cache_ttl = Some(Duration::from_secs(60));
    let client = clients.for_url(&r.url);
    let Fetched::Body { validators, .. } = client.fetch(&r).await.unwrap() else {
        panic!()
    };
    client.remember(&r, validators);
    assert!(matches!(
        client.fetch(&r).await.unwrap(),
        Fetched::NotModified { cached: true }
    ));
    assert_eq!(server.hits("/list"), 1);
    assert_eq!(client.snapshot().cache_hits, 1);
}

#[tokio::test]
async fn plain_text_where_json_was_expected_is_classified_with_its_text() {
    let server = Replay::start().await;
    server.script(
        "/x",
        vec![Reply::new(200, "text/plain", "Invalid MAP_KEY.")],
    );
    let clients = clients(&[]);
    let r = request(&format!("{}/x", server.base), Expect::Json);
    let e = clients.for_url(&r.url).fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "text_payload");
    assert_eq!(e.excerpt(), Some("Invalid MAP_KEY."));
    assert!(e.is_bad_payload());
}

#[tokio::test]
async fn a_truncated_body_is_retried_then_classified_with_what_arrived() {
    let server = Replay::start().await;
    let body = std::fs::read(common::real(
        "noaa/stations_KFLL_observations_latest__2022-03-02.json",
    ))
    .unwrap();
    server.script("/latest", vec![Reply::json(body.clone()).cut_at(300)]);
    let clients = clients(&[]);
    let mut r = request(&format!("{}/latest", server.base), Expect::Json);
    r.retries = 1;
    let client = clients.for_url(&r.url);
    let e = client.fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "truncated_body", "{e}");
    assert_eq!(
        e.excerpt().unwrap(),
        firestream::sources::excerpt(&body[..300])
    );
    assert_eq!(server.hits("/latest"), 2);
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_fails_as_a_timeout() {
    let server = Replay::start().await;
    server.script(
        "/slow",
        vec![Reply::json("[]").delay(Duration::from_secs(3))],
    );
    let clients = clients(&[]);
    let mut r = request(&format!("{}/slow", server.base), Expect::Json);
    r.timeout = Duration::from_millis(300);
    r.retries = 0;
    let e = clients.for_url(&r.url).fetch(&r).await.unwrap_err();
    assert!(matches!(e, FetchError::Timeout { .. }), "{e:?}");
    assert_eq!(e.kind(), "timeout");
    assert!(e.is_retriable());
    assert!(!e.is_bad_payload());
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_refused() {
    let server = Replay::start().await;
    server.script("/big", vec![Reply::csv(firms_csv())]);
    let clients = clients(&[]);
    let mut r = request(&format!("{}/big", server.base), Expect::Csv);
    r.max_body = 1000;
    let e = clients.for_url(&r.url).fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "payload_too_large");
    assert!(e.to_string().contains("1000-byte limit"), "{e}");
    assert_eq!(server.hits("/big"), 1);
}

#[tokio::test]
async fn a_used_up_budget_refuses_requests_and_shows_what_is_left() {
    let server = Replay::start().await;
    server.script("/api/area/csv", vec![Reply::csv(firms_csv())]);
    let host = server.base.trim_start_matches("http://").to_owned();
    let clients = clients(&[(
        &host,
        HostConfig {
            min_interval: None,
            budget: Some(Budget {
                requests: 5,
                window: Dur(Duration::from_secs(600)),
            }),
        },
    )]);
    let mut r = request(&format!("{}/api/area/csv", server.base), Expect::Csv);
    // A two-day FIRMS query costs two transactions.
    r.cost = 2;
    let client = clients.for_url(&r.url);
    assert_eq!(client.budget_remaining(), Some(5));
    assert!(client.fetch(&r).await.is_ok());
    assert!(client.fetch(&r).await.is_ok());
    assert_eq!(client.budget_remaining(), Some(1));
    let e = client.fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "budget_exhausted");
    assert!(!e.trips_breaker());
    assert!(e.to_string().contains("budget of 5 per 10m"), "{e}");
    assert_eq!(server.hits("/api/area/csv"), 2);
    assert_eq!(client.snapshot().budget_remaining, Some(1));
}

#[tokio::test]
async fn nws_problem_documents_are_handled_by_type() {
    let server = Replay::start().await;
    let unavailable = r#"{"correlationId": "1a2b", "title": "Unexpected Problem", "type": "https://api.weather.gov/problems/UnavailableWebService", "status": 503, "detail": "An unexpected problem has occurred."}"#;
    server.script(
        "/obs",
        vec![
            Reply::new(503, "application/problem+json", unavailable),
            Reply::json("{\"features\": []}"),
        ],
    );
    let expired = r#"{"correlationId": "3c4d", "title": "Forecast Grid Expired", "type": "https://api.weather.gov/problems/ForecastGridExpired", "status": 503, "detail": "The requested forecast grid was issued 2022-02-04T10:41:08+00:00 and has expired."}"#;
    server.script(
        "/grid",
        vec![Reply::new(503, "application/problem+json", expired)],
    );
    let clients = clients(&[]);
    // UnavailableWebService: a short host pause, then the retry succeeds.
    let r = request(&format!("{}/obs", server.base), Expect::Json);
    assert!(matches!(
        clients.for_url(&r.url).fetch(&r).await.unwrap(),
        Fetched::Body { .. }
    ));
    let seen = server.seen();
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(4900));
    // ForecastGridExpired: classified, and the stream takes its long cool-down.
    let mut r = request(&format!("{}/grid", server.base), Expect::Json);
    r.retries = 0;
    match clients.for_url(&r.url).fetch(&r).await.unwrap_err() {
        FetchError::Problem {
            problem_type,
            title,
            status,
            ..
        } => {
            assert_eq!(problem_type, "ForecastGridExpired");
            assert_eq!(title, "Forecast Grid Expired");
            assert_eq!(status, 503);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_key_in_the_url_never_reaches_an_error_message() {
    let key = Secret::new("0123456789abcdef0123456789abcdef");
    let port = common::free_port();
    let url = format!(
        "http://127.0.0.1:{port}/api/area/csv/{}/VIIRS_SNPP_NRT/world/1",
        key.expose()
    );
    let mut r = request(&url, Expect::Csv);
    r.shown = redact(&url, [&key]);
    r.retries = 0;
    let clients = clients(&[]);
    let e = clients.for_url(&r.url).fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "connect");
    let text = format!("{e} {e:?}");
    assert!(!text.contains(key.expose()), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[tokio::test]
async fn redirects_are_followed_on_the_same_host_only() {
    let server = Replay::start().await;
    server.script(
        "/old",
        vec![Reply::new(301, "text/plain", "moved").header("Location", "/new")],
    );
    server.script("/new", vec![Reply::json("[1]")]);
    server.script(
        "/away",
        vec![Reply::new(302, "text/plain", "moved").header("Location", "http://192.0.2.1/steal")],
    );
    let clients = clients(&[]);
    let mut r = request(&format!("{}/old", server.base), Expect::Json);
    r.headers.insert(
        "x-api-key",
        reqwest::header::HeaderValue::from_static("KEY-1"),
    );
    assert!(matches!(
        clients.for_url(&r.url).fetch(&r).await.unwrap(),
        Fetched::Body { .. }
    ));
    assert_eq!(server.hits("/new"), 1);
    let r = request(&format!("{}/away", server.base), Expect::Json);
    let e = clients.for_url(&r.url).fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "redirect_refused", "{e}");
    assert!(
        e.to_string().contains("HTTP 302 redirect to another host"),
        "{e}"
    );
}

#[tokio::test]
async fn a_body_whose_gzip_does_not_decode_is_corrupt_not_cut_off() {
    let server = Replay::start().await;
    // A gzip header followed by garbage.
    let mut body = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03];
    body.extend_from_slice(b"this is not deflate data at all, not even close");
    server.script(
        "/gz",
        vec![Reply::json(body).header("Content-Encoding", "gzip")],
    );
    let clients = clients(&[]);
    let mut r = request(&format!("{}/gz", server.base), Expect::Json);
    r.retries = 0;
    let e = clients.for_url(&r.url).fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), "corrupt_payload", "{e}");
    assert!(e.is_bad_payload());
}

#[tokio::test]
async fn a_pause_that_starts_while_a_request_waits_for_its_turn_holds_it_too() {
    let server = Replay::start().await;
    server.script(
        "/a",
        vec![
            Reply::status(429).header("Retry-After", "3"),
            Reply::json("[]"),
        ],
    );
    server.script("/b", vec![Reply::json("[]")]);
    let host = server.base.trim_start_matches("http://").to_owned();
    let clients = std::sync::Arc::new(clients(&[(
        &host,
        HostConfig {
            min_interval: Some(Dur(Duration::from_secs(1))),
            budget: None,
        },
    )]));
    let a = request(&format!("{}/a", server.base), Expect::Json);
    let b = request(&format!("{}/b", server.base), Expect::Json);
    let first = {
        let clients = clients.clone();
        tokio::spawn(async move { clients.for_url(&a.url).fetch(&a).await })
    };
    server.wait_hits("/a", 1, Duration::from_secs(5)).await;
    // `b` waits about a second for its turn; the 429's pause began before that.
    assert!(clients.for_url(&b.url).fetch(&b).await.is_ok());
    assert!(first.await.unwrap().is_ok());
    let seen = server.seen();
    let t429 = seen[0].at;
    let b_at = seen.iter().find(|s| s.path == "/b").unwrap().at;
    assert!(
        b_at.duration_since(t429) >= Duration::from_millis(2900),
        "/b asked {:?} after the 429",
        b_at.duration_since(t429)
    );
}
