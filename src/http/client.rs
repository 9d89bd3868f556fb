//! [`ApiClient`]: requests to one upstream host, made the way its operators ask.
//!
//! - pacing (governor's GCRA token bucket) and an optional budget of N requests per window
//!   (a sliding window we count ourselves, so the remaining budget can be shown);
//! - a `Retry-After` or 429 pauses every source on the host, not only the one request;
//! - retries with exponential backoff and full jitter on connect errors, timeouts, 429 and
//!   5xx; none on other 4xx; NWS `application/problem+json` handled by its `type`;
//! - conditional requests from the validators of the last *used* response (the caller
//!   [`ApiClient::remember`]s them only once it has parsed the body, so a body that failed
//!   to parse is fetched whole again rather than answered with 304);
//! - a TTL cache (moka): a URL fetched less than `cache_ttl` ago is not fetched again and
//!   nothing is re-emitted from it;
//! - a body-size cap enforced while streaming, and content checks (HTML or text where JSON
//!   or CSV was expected) with the first 200 bytes kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName};
use tracing::{debug, info};
use url::Url;

use super::FetchError;
use crate::config::{Budget, HostConfig, HttpConfig};
use crate::sources::{PayloadError, excerpt, sniff_non_data};

/// First retry waits up to this long; each further one doubles the ceiling.
const RETRY_BASE: Duration = Duration::from_millis(500);
/// Ceiling of one backoff wait.
const RETRY_CAP: Duration = Duration::from_secs(30);
/// Longest host pause a `Retry-After` can impose (a broken header must not stop a feed).
const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// Pause after a 429 without `Retry-After`.
const DEFAULT_429_PAUSE: Duration = Duration::from_secs(30);
/// NWS: a back-end outage usually clears within seconds.
const NWS_UNAVAILABLE_WAIT: Duration = Duration::from_secs(5);
/// NWS: an expired forecast grid is not coming back soon.
pub const NWS_GRID_EXPIRED_COOLDOWN: Duration = Duration::from_secs(3600);

/// What a body must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Json,
    Csv,
}

impl Expect {
    fn name(self) -> &'static str {
        match self {
            Expect::Json => "JSON",
            Expect::Csv => "CSV",
        }
    }
}

/// One request. `url` may carry secrets (FIRMS puts the MAP_KEY in the path); `shown` is
/// the same URL redacted, used in every message.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: Url,
    pub shown: String,
    pub headers: HeaderMap,
    pub expect: Expect,
    pub timeout: Duration,
    pub max_body: u64,
    pub retries: u32,
    pub cache_ttl: Option<Duration>,
    /// Transactions this request takes from the host's budget (FIRMS counts a multi-day
    /// query as one per day).
    pub cost: u32,
}

/// `ETag` / `Last-Modified` of a response, for the next conditional request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

#[derive(Debug)]
pub enum Fetched {
    Body {
        body: Bytes,
        validators: Validators,
        attempts: u32,
    },
    /// 304, or a cached response younger than `cache_ttl`: nothing new.
    NotModified { cached: bool },
}

/// Counters of one host, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostSnapshot {
    pub host: String,
    pub requests: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub transport_errors: u64,
    pub retries: u64,
    pub rate_limited_waits: u64,
    pub cache_hits: u64,
    pub not_modified: u64,
    pub budget_remaining: Option<u32>,
    /// Seconds until a `Retry-After` / 429 pause ends, when one is in force.
    pub paused_for_s: Option<u64>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    by_class: [AtomicU64; 4],
    transport_errors: AtomicU64,
    retries: AtomicU64,
    rate_limited_waits: AtomicU64,
    cache_hits: AtomicU64,
    not_modified: AtomicU64,
}

struct BudgetWindow {
    limit: Budget,
    sent: VecDeque<Instant>,
}

impl BudgetWindow {
    fn evict(&mut self, now: Instant) {
        while let Some(first) = self.sent.front() {
            if now.duration_since(*first) >= self.limit.window.0 {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }

    fn remaining(&mut self, now: Instant) -> u32 {
        self.evict(now);
        self.limit.requests.saturating_sub(self.sent.len() as u32)
    }

    /// Takes `cost` transactions from the budget, or says when enough of them have left
    /// the window.
    fn take(&mut self, now: Instant, cost: u32) -> Result<(), Duration> {
        self.evict(now);
        let cost = cost.clamp(1, self.limit.requests.max(1));
        let used = self.sent.len() as u32;
        if used + cost <= self.limit.requests {
            self.sent.extend(std::iter::repeat_n(now, cost as usize));
            return Ok(());
        }
        // The transaction whose expiry frees enough room.
        let freeing = (used + cost - self.limit.requests - 1) as usize;
        let at = self.sent.get(freeing).copied().unwrap_or(now);
        Err(self
            .limit
            .window
            .0
            .saturating_sub(now.duration_since(at))
            .max(Duration::from_secs(1)))
    }
}

#[derive(Clone)]
struct CacheEntry {
    fetched: Instant,
}

pub struct ApiClient {
    host: String,
    http: reqwest::Client,
    pacer: Option<DefaultDirectRateLimiter>,
    budget: Option<Mutex<BudgetWindow>>,
    pause_until: Mutex<Option<Instant>>,
    validators: Mutex<BTreeMap<String, Validators>>,
    cache: moka::sync::Cache<String, CacheEntry>,
    counters: Counters,
}

/// Limits for hosts whose operators publish them (README, "HTTP client"); a `http.hosts`
/// entry replaces them.
pub fn known_host_defaults(host: &str) -> HostConfig {
    use crate::config::Dur;
    let secs = |s| Some(Dur(Duration::from_secs(s)));
    match host {
        // 5,000 transactions per 10 minutes per MAP_KEY.
        "firms.modaps.eosdis.nasa.gov" => HostConfig {
            min_interval: Some(Dur(Duration::from_millis(200))),
            budget: Some(Budget {
                requests: 5000,
                window: Dur(Duration::from_secs(600)),
            }),
        },
        // No published number; be gentle.
        "api.weather.gov" => HostConfig {
            min_interval: Some(Dur(Duration::from_millis(250))),
            budget: None,
        },
        // Points are charged per field and request; PurpleAir asks for ≤ 1 request a minute.
        "api.purpleair.com" => HostConfig {
            min_interval: secs(60),
            budget: None,
        },
        // 500 requests per hour per key.
        "www.airnowapi.org" => HostConfig {
            min_interval: Some(Dur(Duration::from_millis(500))),
            budget: Some(Budget {
                requests: 500,
                window: Dur(Duration::from_secs(3600)),
            }),
        },
        _ => HostConfig {
            min_interval: None,
            budget: None,
        },
    }
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("host", &self.host)
            .finish()
    }
}

impl ApiClient {
    pub fn new(host: &str, limits: HostConfig, http: reqwest::Client) -> Self {
        let pacer = limits
            .min_interval
            .filter(|d| !d.0.is_zero())
            .and_then(|d| Quota::with_period(d.0))
            .map(RateLimiter::direct);
        ApiClient {
            host: host.to_owned(),
            http,
            pacer,
            budget: limits.budget.map(|limit| {
                Mutex::new(BudgetWindow {
                    limit,
                    sent: VecDeque::new(),
                })
            }),
            pause_until: Mutex::new(None),
            validators: Mutex::new(BTreeMap::new()),
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            counters: Counters::default(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn snapshot(&self) -> HostSnapshot {
        let now = Instant::now();
        let c = &self.counters;
        HostSnapshot {
            host: self.host.clone(),
            requests: c.requests.load(Relaxed),
            responses_2xx: c.by_class[0].load(Relaxed),
            responses_3xx: c.by_class[1].load(Relaxed),
            responses_4xx: c.by_class[2].load(Relaxed),
            responses_5xx: c.by_class[3].load(Relaxed),
            transport_errors: c.transport_errors.load(Relaxed),
            retries: c.retries.load(Relaxed),
            rate_limited_waits: c.rate_limited_waits.load(Relaxed),
            cache_hits: c.cache_hits.load(Relaxed),
            not_modified: c.not_modified.load(Relaxed),
            budget_remaining: self.budget_remaining(),
            paused_for_s: self
                .pause_until
                .lock()
                .expect("pause lock")
                .filter(|until| *until > now)
                .map(|until| (until - now).as_secs().max(1)),
        }
    }

    pub fn budget_remaining(&self) -> Option<u32> {
        self.budget
            .as_ref()
            .map(|b| b.lock().expect("budget lock").remaining(Instant::now()))
    }

    /// Stores the validators of a response whose body was used, for the next request.
    pub fn remember(&self, request: &Request, validators: Validators) {
        if validators.etag.is_some() || validators.last_modified.is_some() {
            self.validators
                .lock()
                .expect("validators lock")
                .insert(request.url.to_string(), validators);
        }
        if request.cache_ttl.is_some() {
            self.cache.insert(
                request.url.to_string(),
                CacheEntry {
                    fetched: Instant::now(),
                },
            );
        }
    }

    /// Pauses every request to this host for `wait` (a `Retry-After`, a 429).
    pub fn pause(&self, wait: Duration) {
        let wait = wait.min(MAX_PAUSE);
        let until = Instant::now() + wait;
        let mut pause = self.pause_until.lock().expect("pause lock");
        if pause.is_none_or(|current| current < until) {
            *pause = Some(until);
            info!(host = %self.host, wait_s = wait.as_secs_f64(), "upstream asked us to wait; every source on this host pauses");
        }
    }

    /// Fetches `request`, retrying what is worth retrying. Returns the body, or "nothing
    /// new" (304 or fresh in the cache).
    pub async fn fetch(&self, request: &Request) -> Result<Fetched, FetchError> {
        let key = request.url.to_string();
        if let Some(ttl) = request.cache_ttl
            && let Some(entry) = self.cache.get(&key)
            && entry.fetched.elapsed() < ttl
        {
            self.counters.cache_hits.fetch_add(1, Relaxed);
            return Ok(Fetched::NotModified { cached: true });
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.wait_turn(request.cost).await?;
            let result = self.attempt(request, attempt).await;
            match result {
                Err(e) if e.is_retriable() && attempt <= request.retries => {
                    self.counters.retries.fetch_add(1, Relaxed);
                    let wait = full_jitter(attempt);
                    // The error's text may echo a key from the response: only its kind is logged here;
                    // the stream logs the final error redacted.
                    debug!(host = %self.host, url = %request.shown, attempt, error_kind = e.kind(), wait_ms = wait.as_millis() as u64, "request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Waits for a host pause to end and for the pacer; takes one request from the budget.
    async fn wait_turn(&self, cost: u32) -> Result<(), FetchError> {
        loop {
            let pause = *self.pause_until.lock().expect("pause lock");
            match pause {
                Some(until) if until > Instant::now() => {
                    self.counters.rate_limited_waits.fetch_add(1, Relaxed);
                    tokio::time::sleep_until(until.into()).await;
                }
                _ => {}
            }
            if let Some(pacer) = &self.pacer
                && pacer.check().is_err()
            {
                self.counters.rate_limited_waits.fetch_add(1, Relaxed);
                pacer.until_ready().await;
            }
            // A pause that began while this request waited for its turn holds it too.
            let paused = self
                .pause_until
                .lock()
                .expect("pause lock")
                .is_some_and(|until| until > Instant::now());
            if !paused {
                break;
            }
        }
        if let Some(budget) = &self.budget {
            let mut budget = budget.lock().expect("budget lock");
            if let Err(resets_in) = budget.take(Instant::now(), cost) {
                return Err(FetchError::BudgetExhausted {
                    host: self.host.clone(),
                    requests: budget.limit.requests,
                    window: budget.limit.window.to_string(),
                    resets_in,
                });
            }
        }
        Ok(())
    }

    async fn attempt(&self, request: &Request, attempt: u32) -> Result<Fetched, FetchError> {
        let url = &request.shown;
        let mut builder = self
            .http
            .get(request.url.clone())
            .headers(request.headers.clone())
            .timeout(request.timeout);
        if let Some(v) = self
            .validators
            .lock()
            .expect("validators lock")
            .get(request.url.as_str())
        {
            if let Some(etag) = &v.etag {
                builder = builder.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &v.last_modified {
                builder = builder.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        self.counters.requests.fetch_add(1, Relaxed);
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                self.counters.transport_errors.fetch_add(1, Relaxed);
                return Err(transport_error(e, url, request.timeout));
            }
        };
        let status = response.status().as_u16();
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.counters.by_class[class].fetch_add(1, Relaxed);
        let headers = response.headers().clone();
        if status == 304 {
            self.counters.not_modified.fetch_add(1, Relaxed);
            return Ok(Fetched::NotModified { cached: false });
        }
        if status == 429 || status == 503 {
            let wait = retry_after(&headers).or((status == 429).then_some(DEFAULT_429_PAUSE));
            if let Some(wait) = wait {
                self.pause(wait);
            }
        }
        let body = read_capped(response, request, url).await?;
        if !(200..300).contains(&status) {
            return Err(self.status_error(status, &headers, &body, url));
        }
        check_content(&headers, &body, request.expect).map_err(|source| FetchError::Content {
            url: url.clone(),
            source,
        })?;
        let header = |name: HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Fetched::Body {
            body,
            validators: Validators {
                etag: header(reqwest::header::ETAG),
                last_modified: header(reqwest::header::LAST_MODIFIED),
            },
            attempts: attempt,
        })
    }

    fn status_error(&self, status: u16, headers: &HeaderMap, body: &[u8], url: &str) -> FetchError {
        let is_problem = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/problem+json"));
        if is_problem && let Ok(problem) = serde_json::from_slice::<serde_json::Value>(body) {
            let problem_type = problem["type"].as_str().unwrap_or("").to_owned();
            let short = problem_type.rsplit('/').next().unwrap_or("").to_owned();
            match short.as_str() {
                "UnavailableWebService" | "UnexpectedProblem" => self.pause(NWS_UNAVAILABLE_WAIT),
                "ForecastGridExpired" => {}
                _ => {}
            }
            return FetchError::Problem {
                url: url.to_owned(),
                status,
                problem_type: short,
                title: problem["title"]
                    .as_str()
                    .or(problem["detail"].as_str())
                    .unwrap_or("")
                    .to_owned(),
                excerpt: excerpt(body),
            };
        }
        FetchError::Status {
            url: url.to_owned(),
            status,
            excerpt: excerpt(body),
        }
    }
}

/// Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): a uniform wait
/// in `[0, min(cap, base·2^(attempt-1))]`. Written here because the backoff crates add
/// jitter on top of the exponential delay rather than drawing the whole delay.
fn full_jitter(attempt: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(RETRY_CAP);
    let millis = rand::random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(millis)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

fn transport_error(e: reqwest::Error, url: &str, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        return FetchError::Timeout {
            url: url.to_owned(),
            after: timeout,
        };
    }
    let connect = e.is_connect();
    // reqwest's Display includes the URL, which can hold a key: strip it, and walk the
    // sources for the cause (refused, DNS, TLS).
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    if connect {
        FetchError::Connect {
            url: url.to_owned(),
            detail,
        }
    } else {
        FetchError::Request {
            url: url.to_owned(),
            detail,
        }
    }
}

/// Reads the body, refusing it as soon as it passes `max_body` (a `Content-Length` over
/// the limit is refused before reading).
async fn read_capped(
    mut response: reqwest::Response,
    request: &Request,
    url: &str,
) -> Result<Bytes, FetchError> {
    let limit = request.max_body;
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    let mut body = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(FetchError::TooLarge {
                        url: url.to_owned(),
                        limit,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) if e.is_timeout() => {
                return Err(FetchError::Timeout {
                    url: url.to_owned(),
                    after: request.timeout,
                });
            }
            Err(e) if is_corrupt_encoding(&e) => {
                // A Content-Encoding (gzip, …) that does not decode: damaged, not cut off.
                let e = e.without_url();
                return Err(FetchError::Content {
                    url: url.to_owned(),
                    source: PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the compressed body does not decode: {e}"),
                    )),
                });
            }
            Err(e) => {
                let e = e.without_url();
                let mut detail = e.to_string();
                if let Some(s) = std::error::Error::source(&e) {
                    detail = format!("{detail}: {s}");
                }
                return Err(FetchError::Truncated {
                    url: url.to_owned(),
                    received: body.len(),
                    detail,
                    excerpt: excerpt(&body),
                });
            }
        }
    }
}

/// A body whose Content-Encoding does not decode. reqwest calls a body cut off by the
/// server a decode error too, so `is_decode` cannot tell them apart; the first I/O error in
/// the chain can: the decompressor's own (`Other`, `InvalidData`) versus the connection's
/// (`UnexpectedEof`, resets, inside hyper's error).
fn is_corrupt_encoding(e: &reqwest::Error) -> bool {
    if !e.is_decode() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::Other
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::InvalidInput
            );
        }
        source = s.source();
    }
    false
}

/// An HTML page, an empty body, or plain text where JSON was expected, is an error here;
/// finer checks (invalid JSON, a CSV without its columns) are the parser's.
fn check_content(headers: &HeaderMap, body: &[u8], expect: Expect) -> Result<(), PayloadError> {
    if let Some(e) = sniff_non_data(body, expect.name()) {
        return Err(e);
    }
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("text/html") {
        return Err(PayloadError::Html {
            expected: expect.name(),
            excerpt: excerpt(body),
        });
    }
    let first = body
        .iter()
        .find(|b| !b.is_ascii_whitespace() && **b != 0xEF && **b != 0xBB && **b != 0xBF);
    if expect == Expect::Json && !matches!(first, Some(b'{') | Some(b'[')) {
        return Err(PayloadError::Text {
            expected: expect.name(),
            excerpt: excerpt(body),
        });
    }
    Ok(())
}

/// Follows up to 5 redirects within the same scheme, host and port only. reqwest strips
/// `Authorization` on a cross-host redirect but not a custom key header (`X-API-Key`), and a
/// redirect elsewhere would also leave the host's rate limits behind: such a redirect ends
/// the request, and the 3xx is reported as a client error.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if same {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Every host's client, created on first use with the host's limits, and shared by every
/// source that calls that host.
pub struct ApiClients {
    http: reqwest::Client,
    config: HttpConfig,
    clients: Mutex<BTreeMap<String, Arc<ApiClient>>>,
}

impl ApiClients {
    pub fn new(config: &HttpConfig) -> Result<Self, FetchError> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(Duration::from_secs(10))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| FetchError::Request {
                url: String::new(),
                detail: format!("cannot build the HTTP client: {}", e.without_url()),
            })?;
        let mut config = config.clone();
        config.hosts = config
            .hosts
            .into_iter()
            .map(|(host, limits)| (host.to_ascii_lowercase(), limits))
            .collect();
        Ok(ApiClients {
            http,
            config,
            clients: Mutex::new(BTreeMap::new()),
        })
    }

    /// The client for `url`'s host (`host` or `host:port` as keyed in `http.hosts`).
    pub fn for_url(&self, url: &Url) -> Arc<ApiClient> {
        // Url lower-cases host names; http.hosts keys are matched the same way.
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let mut clients = self.clients.lock().expect("clients lock");
        clients
            .entry(authority.clone())
            .or_insert_with(|| {
                let limits = self
                    .config
                    .hosts
                    .get(&authority)
                    .or_else(|| self.config.hosts.get(&host))
                    .copied()
                    .unwrap_or_else(|| known_host_defaults(&host));
                Arc::new(ApiClient::new(&authority, limits, self.http.clone()))
            })
            .clone()
    }

    pub fn snapshots(&self) -> Vec<HostSnapshot> {
        let clients: Vec<_> = self
            .clients
            .lock()
            .expect("clients lock")
            .values()
            .cloned()
            .collect();
        clients.iter().map(|c| c.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use reqwest::header::HeaderValue;

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        for attempt in 1..20 {
            let ceiling = RETRY_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(RETRY_CAP);
            for _ in 0..50 {
                assert!(full_jitter(attempt) <= ceiling);
            }
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(115) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn budget_window_counts_and_refills() {
        let t0 = Instant::now();
        let mut b = BudgetWindow {
            limit: Budget {
                requests: 2,
                window: Dur(Duration::from_secs(10)),
            },
            sent: VecDeque::new(),
        };
        assert_eq!(b.remaining(t0), 2);
        assert!(b.take(t0, 1).is_ok());
        assert!(b.take(t0 + Duration::from_secs(4), 1).is_ok());
        assert_eq!(b.remaining(t0 + Duration::from_secs(5)), 0);
        assert_eq!(
            b.take(t0 + Duration::from_secs(5), 1),
            Err(Duration::from_secs(5))
        );
        assert_eq!(b.remaining(t0 + Duration::from_secs(10)), 1);
        // Two transactions need both old ones gone.
        assert_eq!(
            b.take(t0 + Duration::from_secs(10), 2),
            Err(Duration::from_secs(4))
        );
        assert!(b.take(t0 + Duration::from_secs(14), 2).is_ok());
        assert_eq!(b.remaining(t0 + Duration::from_secs(14)), 0);
    }

    #[test]
    fn content_checks() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        let e = check_content(&h, b"Invalid MAP_KEY.", Expect::Json).unwrap_err();
        assert_eq!(e.kind(), "text_payload");
        assert_eq!(e.excerpt(), Some("Invalid MAP_KEY."));
        // CSV expectations leave text to the parser, which knows its columns.
        assert!(check_content(&h, b"latitude,longitude\n", Expect::Csv).is_ok());
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        assert_eq!(
            check_content(&h, b"Service unavailable", Expect::Csv)
                .unwrap_err()
                .kind(),
            "html_payload"
        );
        assert!(check_content(&HeaderMap::new(), b" [1]", Expect::Json).is_ok());
        assert_eq!(
            check_content(&HeaderMap::new(), b"", Expect::Json)
                .unwrap_err()
                .kind(),
            "empty_payload"
        );
    }

    #[test]
    fn known_hosts_have_their_published_limits() {
        let firms = known_host_defaults("firms.modaps.eosdis.nasa.gov");
        assert_eq!(firms.budget.unwrap().requests, 5000);
        assert_eq!(firms.budget.unwrap().window, Dur(Duration::from_secs(600)));
        assert_eq!(
            known_host_defaults("api.purpleair.com").min_interval,
            Some(Dur(Duration::from_secs(60)))
        );
        assert_eq!(known_host_defaults("example.org").budget, None);
    }
}
