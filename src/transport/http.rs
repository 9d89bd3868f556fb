//! HTTP transport: what one poll of a source asks its upstream API, built from the source's
//! config (DESIGN §4), and fetched through the host's shared [`ApiClient`].
//!
//! Most sources make one request per poll. `nws_observations` makes one per station (the
//! stations listed, or those of a state, discovered from `/stations?state=XX` and its
//! pages, refreshed daily) and keeps each station's newest observation time, because
//! `/latest` can go backwards. Generic `http` sources follow a next-page link. A next link to
//! another host is not followed: the source's headers (its secrets) stay with its host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use serde_json::Value;
use tracing::{debug, info, warn};
use url::Url;

use crate::config::{HttpConfig, HttpFormat, SourceConfig};
use crate::http::{ApiClient, ApiClients, Expect, FetchError, Fetched, Request, Validators};
use crate::secret::{Secret, redact, shown_url};
use crate::sources::SourceType;

/// Default upstreams (DESIGN §4); `url:` replaces the base (tests point it at a local server).
pub fn default_base(source_type: SourceType) -> Option<&'static str> {
    match source_type {
        SourceType::NasaFirms => Some("https://firms.modaps.eosdis.nasa.gov"),
        SourceType::NwsObservations | SourceType::NwsAlerts => Some("https://api.weather.gov"),
        SourceType::Purpleair => Some("https://api.purpleair.com"),
        SourceType::Airnow => Some("https://www.airnowapi.org"),
        SourceType::CalfireIncidents => {
            Some("https://www.fire.ca.gov/api/sitecore/Incident/GetFiresForMap?showFeatured=false")
        }
        SourceType::Mqtt | SourceType::Http => None,
    }
}

/// FIRMS area-API sources (`SOURCE` in the URL).
pub const FIRMS_PRODUCTS: [&str; 8] = [
    "LANDSAT_NRT",
    "MODIS_NRT",
    "MODIS_SP",
    "VIIRS_NOAA20_NRT",
    "VIIRS_NOAA20_SP",
    "VIIRS_NOAA21_NRT",
    "VIIRS_SNPP_NRT",
    "VIIRS_SNPP_SP",
];

/// FIRMS accepts 1 to 5 days per request.
pub const FIRMS_MAX_DAY_RANGE: u32 = 5;

/// Pages followed in one poll at most, so a link loop cannot spin forever.
const MAX_PAGES: usize = 50;

/// How often the station list of a state is fetched again.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Why a source cannot build its requests (checked at validation, so rare at run time).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// One body to parse, and how to acknowledge it once parsed.
#[derive(Debug)]
pub struct Payload {
    /// The redacted URL, for messages and DLQ reasons.
    pub origin: String,
    pub body: Bytes,
    pub request: Request,
    pub validators: Validators,
    pub client: Arc<ApiClient>,
    /// `nws_observations`: the station, whose newest time so far filters older records.
    pub station: Option<String>,
    pub attempts: u32,
}

/// What one poll fetched.
#[derive(Debug, Default)]
pub struct PollFetch {
    pub payloads: Vec<Payload>,
    /// Requests answered "nothing new" (304 or cached).
    pub unchanged: usize,
    pub failures: Vec<FetchError>,
}

enum Plan {
    Single(Url),
    Stations {
        base: Url,
        listed: Vec<String>,
        state: Option<String>,
        discovered: Option<(Vec<String>, Instant)>,
    },
    Paged {
        first: Url,
        next_link: String,
    },
}

pub struct HttpTransport {
    source_id: Arc<str>,
    plan: Plan,
    headers: HeaderMap,
    secrets: Arc<[Secret]>,
    expect: Expect,
    timeout: Duration,
    max_body: u64,
    retries: u32,
    cache_ttl: Option<Duration>,
    /// FIRMS: a multi-day request costs that many transactions of the budget.
    cost: u32,
    clients: Arc<ApiClients>,
    /// `nws_observations`: newest observation time seen per station.
    newest: HashMap<String, DateTime<Utc>>,
}

impl HttpTransport {
    pub fn new(
        source_id: Arc<str>,
        config: &SourceConfig,
        http: &HttpConfig,
        clients: Arc<ApiClients>,
    ) -> Result<Self, PlanError> {
        let base = match (&config.url, default_base(config.source_type)) {
            (Some(url), _) => url.expose().to_owned(),
            (None, Some(default)) => default.to_owned(),
            (None, None) => {
                return Err(PlanError(format!(
                    "sources.{source_id}.url: type {} needs a url",
                    config.source_type
                )));
            }
        };
        let mut secrets: Vec<Secret> = config.headers.values().cloned().collect();
        secrets.extend(config.map_key.iter().cloned());
        secrets.extend(config.api_key.iter().cloned());
        if let Some(url) = &config.url {
            secrets.extend(url.secrets().iter().cloned());
        }
        let parse = |text: &str| {
            Url::parse(text).map_err(|e| {
                PlanError(format!(
                    "sources.{source_id}.url: {:?} is not a URL: {e}",
                    shown_url(text, &secrets)
                ))
            })
        };
        let mut headers = HeaderMap::new();
        let user_agent = config.user_agent.as_deref().unwrap_or(&http.user_agent);
        headers.insert(
            USER_AGENT,
            HeaderValue::from_str(user_agent).map_err(|_| {
                PlanError(format!(
                    "sources.{source_id}.user_agent: not a valid header value"
                ))
            })?,
        );
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                PlanError(format!(
                    "sources.{source_id}.headers: {name:?} is not a valid header name"
                ))
            })?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                PlanError(format!(
                    "sources.{source_id}.headers.{name}: not a valid header value"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut expect = Expect::Json;
        let mut cost = 1;
        let plan = match config.source_type {
            SourceType::NasaFirms => {
                expect = Expect::Csv;
                let day_range = config.day_range.unwrap_or(1);
                cost = day_range;
                Plan::Single(parse(&firms_url(&base, config)?)?)
            }
            SourceType::NwsObservations => {
                headers.insert(ACCEPT, HeaderValue::from_static("application/geo+json"));
                Plan::Stations {
                    base: parse(&base)?,
                    listed: config.stations.clone(),
                    state: config.state.clone(),
                    discovered: None,
                }
            }
            SourceType::NwsAlerts => {
                headers.insert(ACCEPT, HeaderValue::from_static("application/geo+json"));
                let mut url = parse(&base)?;
                append_path(&mut url, "alerts/active");
                if let Some(area) = &config.area {
                    url.query_pairs_mut().append_pair("area", area);
                }
                Plan::Single(url)
            }
            SourceType::Purpleair => {
                let mut url = parse(&base)?;
                append_path(&mut url, "v1/sensors");
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("fields", &config.fields.join(","));
                    if let Some([w, s, e, n]) = config.bbox {
                        q.append_pair("nwlng", &w.to_string())
                            .append_pair("nwlat", &n.to_string())
                            .append_pair("selng", &e.to_string())
                            .append_pair("selat", &s.to_string());
                    }
                    if let Some(age) = config.max_age {
                        q.append_pair("max_age", &age.0.as_secs().to_string());
                    }
                }
                if let Some(key) = &config.api_key {
                    let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                        PlanError(format!(
                            "sources.{source_id}.api_key: not a valid header value"
                        ))
                    })?;
                    value.set_sensitive(true);
                    headers.insert(HeaderName::from_static("x-api-key"), value);
                }
                Plan::Single(url)
            }
            SourceType::Airnow => Plan::Single(parse(&airnow_url(&base, config, Utc::now()))?),
            SourceType::CalfireIncidents => Plan::Single(parse(&base)?),
            SourceType::Http => {
                expect = match config.format.unwrap_or_default() {
                    HttpFormat::Csv => Expect::Csv,
                    HttpFormat::Json | HttpFormat::Geojson => Expect::Json,
                };
                let first = parse(&base)?;
                match &config.next_link {
                    Some(pointer) => Plan::Paged {
                        first,
                        next_link: pointer.clone(),
                    },
                    None => Plan::Single(first),
                }
            }
            SourceType::Mqtt => {
                return Err(PlanError(format!(
                    "sources.{source_id}: mqtt sources do not poll over HTTP"
                )));
            }
        };
        Ok(HttpTransport {
            source_id,
            plan,
            headers,
            secrets: Arc::from(secrets),
            expect,
            timeout: config.timeout.map_or(Duration::from_secs(30), |d| d.0),
            max_body: config.max_body.map_or(64 << 20, |s| s.0),
            retries: config.retries.unwrap_or(3),
            cache_ttl: config.cache_ttl.map(|d| d.0),
            cost,
            clients,
            newest: HashMap::new(),
        })
    }

    /// The newest observation time seen for a station, below which `/latest` is not new.
    pub fn newest_for(&self, station: &str) -> Option<DateTime<Utc>> {
        self.newest.get(station).copied()
    }

    /// A payload was parsed and its records queued: remember its validators (so the next
    /// request is conditional) and, for a station, its newest observation time.
    pub fn used(&mut self, payload: &Payload, newest: Option<DateTime<Utc>>) {
        payload
            .client
            .remember(&payload.request, payload.validators.clone());
        if let (Some(station), Some(t)) = (&payload.station, newest) {
            let entry = self.newest.entry(station.clone()).or_insert(t);
            if t > *entry {
                *entry = t;
            }
        }
    }

    /// `text` (an upstream answer, an error) with this source's secrets redacted: an API
    /// may echo the key it was given.
    pub fn redact(&self, text: &str) -> String {
        redact(text, self.secrets.iter())
    }

    /// The secrets a payload of this source may echo.
    pub fn secrets(&self) -> Arc<[Secret]> {
        self.secrets.clone()
    }

    fn request(&self, url: Url) -> Request {
        let shown = shown_url(url.as_str(), self.secrets.iter());
        Request {
            url,
            shown,
            headers: self.headers.clone(),
            expect: self.expect,
            timeout: self.timeout,
            max_body: self.max_body,
            retries: self.retries,
            cache_ttl: self.cache_ttl,
            cost: self.cost,
        }
    }

    /// Everything one poll fetches. Failed requests are collected, not fatal: the other
    /// stations of a poll still count.
    pub async fn fetch(&mut self) -> PollFetch {
        let mut out = PollFetch::default();
        match &self.plan {
            Plan::Single(url) => {
                let request = self.request(url.clone());
                self.fetch_one(request, None, &mut out).await;
            }
            Plan::Paged { first, next_link } => {
                let next_link = next_link.clone();
                let mut url = first.clone();
                let mut seen = vec![url.clone()];
                for page in 1..=MAX_PAGES {
                    let request = self.request(url.clone());
                    let before = out.payloads.len();
                    self.fetch_one(request, None, &mut out).await;
                    let Some(payload) = out.payloads.get(before) else {
                        break;
                    };
                    match next_page(&payload.body, &next_link, &url) {
                        Ok(Some(next)) if seen.contains(&next) => break,
                        Ok(Some(next)) => {
                            if page == MAX_PAGES {
                                warn!(stream = %self.source_id, pages = MAX_PAGES, "stopped following next-page links; the rest comes next poll");
                            }
                            seen.push(next.clone());
                            url = next;
                        }
                        Ok(None) => break,
                        Err(reason) => {
                            out.failures.push(FetchError::Content {
                                url: shown_url(url.as_str(), self.secrets.iter()),
                                source: crate::sources::PayloadError::UnexpectedJson {
                                    detail: format!("next-page link not followed: {reason}"),
                                    excerpt: String::new(),
                                },
                            });
                            break;
                        }
                    }
                }
            }
            Plan::Stations { .. } => {
                let stations = match self.stations().await {
                    Ok(stations) => stations,
                    Err(e) => {
                        out.failures.push(e);
                        return out;
                    }
                };
                let Plan::Stations { base, .. } = &self.plan else {
                    unreachable!("matched above")
                };
                let base = base.clone();
                for station in stations {
                    let mut url = base.clone();
                    append_path(&mut url, &format!("stations/{station}/observations/latest"));
                    let request = self.request(url);
                    self.fetch_one(request, Some(station), &mut out).await;
                }
            }
        }
        out
    }

    async fn fetch_one(&self, request: Request, station: Option<String>, out: &mut PollFetch) {
        let client = self.clients.for_url(&request.url);
        match client.fetch(&request).await {
            Ok(Fetched::Body {
                body,
                validators,
                attempts,
            }) => out.payloads.push(Payload {
                origin: request.shown.clone(),
                body,
                request,
                validators,
                client,
                station,
                attempts,
            }),
            Ok(Fetched::NotModified { cached }) => {
                debug!(stream = %self.source_id, url = %request.shown, cached, "nothing new");
                out.unchanged += 1;
            }
            Err(e) => out.failures.push(e),
        }
    }

    /// The stations to poll: the listed ones, or the state's (discovered, refreshed daily).
    async fn stations(&mut self) -> Result<Vec<String>, FetchError> {
        let Plan::Stations {
            base,
            listed,
            state,
            discovered,
        } = &self.plan
        else {
            return Ok(Vec::new());
        };
        if !listed.is_empty() {
            return Ok(listed.clone());
        }
        let Some(state) = state.clone() else {
            return Ok(Vec::new());
        };
        if let Some((stations, at)) = discovered
            && at.elapsed() < DISCOVERY_REFRESH
        {
            return Ok(stations.clone());
        }
        let mut url = base.clone();
        append_path(&mut url, "stations");
        url.query_pairs_mut()
            .append_pair("state", &state)
            .append_pair("limit", "500");
        let mut found = Vec::new();
        let mut seen = vec![url.clone()];
        for _ in 0..MAX_PAGES {
            let mut request = self.request(url.clone());
            // Discovery must see the list even when it has not changed since last time.
            request.cache_ttl = None;
            let client = self.clients.for_url(&request.url);
            let body = match client.fetch(&request).await? {
                Fetched::Body { body, .. } => body,
                Fetched::NotModified { .. } => break,
            };
            let page: Value = serde_json::from_slice(&body).map_err(|e| FetchError::Content {
                url: request.shown.clone(),
                source: crate::sources::PayloadError::InvalidJson {
                    detail: e.to_string(),
                    excerpt: crate::sources::excerpt(&body),
                },
            })?;
            let features = page["features"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if features.is_empty() {
                break;
            }
            found.extend(features.iter().filter_map(|f| {
                f["properties"]["stationIdentifier"]
                    .as_str()
                    .map(str::to_owned)
            }));
            match next_page(&body, "/pagination/next", &url) {
                Ok(Some(next)) if !seen.contains(&next) => {
                    seen.push(next.clone());
                    url = next;
                }
                _ => break,
            }
        }
        found.sort();
        found.dedup();
        if found.is_empty() {
            // Every state has stations: an empty list is a wrong answer, not a fact to keep
            // for a day.
            return Err(FetchError::Content {
                url: shown_url(base.as_str(), self.secrets.iter()),
                source: crate::sources::PayloadError::UnexpectedJson {
                    detail: format!(
                        "station discovery for state {state} found no stations (expected a GeoJSON FeatureCollection of stations with properties.stationIdentifier)"
                    ),
                    excerpt: String::new(),
                },
            });
        }
        info!(stream = %self.source_id, state, stations = found.len(), "stations discovered");
        if let Plan::Stations { discovered, .. } = &mut self.plan {
            *discovered = Some((found.clone(), Instant::now()));
        }
        Ok(found)
    }
}

/// Which types a type-specific setting applies to, for "only applies to" messages.
pub(crate) fn setting_types(s: &SourceConfig) -> Vec<(&'static str, bool, &'static [SourceType])> {
    use SourceType::*;
    vec![
        ("map_key", s.map_key.is_some(), &[NasaFirms]),
        ("product", s.product.is_some(), &[NasaFirms]),
        ("day_range", s.day_range.is_some(), &[NasaFirms]),
        ("date", s.date.is_some(), &[NasaFirms]),
        ("bbox", s.bbox.is_some(), &[NasaFirms, Purpleair, Airnow]),
        ("stations", !s.stations.is_empty(), &[NwsObservations]),
        ("state", s.state.is_some(), &[NwsObservations]),
        ("area", s.area.is_some(), &[NwsAlerts]),
        ("api_key", s.api_key.is_some(), &[Purpleair, Airnow]),
        ("fields", !s.fields.is_empty(), &[Purpleair]),
        ("max_age", s.max_age.is_some(), &[Purpleair]),
        ("stale_after", s.stale_after.is_some(), &[Purpleair]),
        ("latitude", s.latitude.is_some(), &[Airnow]),
        ("longitude", s.longitude.is_some(), &[Airnow]),
        ("distance_miles", s.distance_miles.is_some(), &[Airnow]),
        ("parameters", !s.parameters.is_empty(), &[Airnow]),
        ("format", s.format.is_some(), &[Http]),
        ("record_pointer", s.record_pointer.is_some(), &[Http]),
        ("next_link", s.next_link.is_some(), &[Http]),
        ("mapping", s.mapping.is_some(), &[Http, Mqtt]),
        ("broker", s.broker.is_some(), &[Mqtt]),
        ("topics", !s.topics.is_empty(), &[Mqtt]),
        ("username", s.username.is_some(), &[Mqtt]),
        ("password", s.password.is_some(), &[Mqtt]),
        ("client_id", s.client_id.is_some(), &[Mqtt]),
        ("ca_file", s.ca_file.is_some(), &[Mqtt]),
    ]
}

/// Checks a source's transport settings against the upstream API's limits; every problem
/// is reported, with the field and what to do.
pub fn check_config(at: &str, s: &SourceConfig, problems: &mut Vec<String>) {
    for (field, set, types) in setting_types(s) {
        if set && !types.contains(&s.source_type) {
            let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            problems.push(format!(
                "{at}.{field}: only applies to type {}, not {}",
                names.join(" or "),
                s.source_type
            ));
        }
    }
    if s.source_type == SourceType::Mqtt {
        return;
    }
    if !s.paths.is_empty() {
        if s.url.is_some() {
            problems.push(format!(
                "{at}.url: a source reads either files (`paths`) or an API (`url`), not both"
            ));
        }
        return;
    }
    if let Some(url) = &s.url {
        match Url::parse(url.expose()) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => problems.push(format!(
                "{at}.url: scheme {:?} is not supported; use http:// or https://",
                u.scheme()
            )),
            Err(e) => problems.push(format!("{at}.url: not a URL ({e})")),
        }
    } else if default_base(s.source_type).is_none() {
        problems.push(format!(
            "{at}.url: type {} has no default upstream; give the endpoint (or `paths:` to read files)",
            s.source_type
        ));
    }
    if s.timeout.is_some_and(|d| d.0.is_zero()) {
        problems.push(format!("{at}.timeout: must be longer than 0s"));
    }
    if s.max_body.is_some_and(|b| b.0 == 0) {
        problems.push(format!("{at}.max_body: must be at least 1 byte"));
    }
    if s.circuit.failures == 0 {
        problems.push(format!("{at}.circuit.failures: must be at least 1"));
    }
    if s.user_agent
        .as_deref()
        .is_some_and(|ua| ua.trim().is_empty())
    {
        problems.push(format!(
            "{at}.user_agent: is empty; NWS refuses clients without a descriptive User-Agent, e.g. \"(my-agency.gov, ops@my-agency.gov)\""
        ));
    }
    if let Some(bbox) = s.bbox {
        check_bbox(&format!("{at}.bbox"), bbox, problems);
    }
    for (name, value) in &s.headers {
        let lower = name.to_ascii_lowercase();
        if s.headers
            .keys()
            .filter(|h| h.to_ascii_lowercase() == lower)
            .count()
            > 1
        {
            problems.push(format!(
                "{at}.headers.{name}: given twice (header names are not case-sensitive; one value would be lost)"
            ));
        }
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!(
                "{at}.headers: {name:?} is not a valid header name (letters, digits and `-`, no spaces)"
            ));
        } else if HeaderValue::from_str(value.expose()).is_err() {
            // Never echo the value: it may be a secret.
            problems.push(format!(
                "{at}.headers.{name}: the value is not a valid header value (no line breaks or control characters)"
            ));
        }
    }
    if let Some(ua) = &s.user_agent
        && HeaderValue::from_str(ua).is_err()
    {
        problems.push(format!(
            "{at}.user_agent: not a valid header value (no line breaks or control characters)"
        ));
    }
    let missing_secret = |field: &str, secret: &Option<Secret>, hint: &str| {
        if secret.as_ref().is_none_or(Secret::is_empty) {
            Some(format!("{at}.{field}: required to call the API; {hint}"))
        } else {
            None
        }
    };
    match s.source_type {
        SourceType::NasaFirms => {
            problems.extend(missing_secret(
                "map_key",
                &s.map_key,
                "get one at https://firms.modaps.eosdis.nasa.gov/api/map_key/ and write `map_key: ${FIRMS_MAP_KEY}`",
            ));
            if let Some(product) = &s.product
                && !FIRMS_PRODUCTS.contains(&product.as_str())
            {
                problems.push(format!(
                    "{at}.product: {product:?} is not a FIRMS source; use one of {}",
                    FIRMS_PRODUCTS.join(", ")
                ));
            }
            if let Some(days) = s.day_range
                && !(1..=FIRMS_MAX_DAY_RANGE).contains(&days)
            {
                problems.push(format!(
                    "{at}.day_range: {days} is outside the 1–{FIRMS_MAX_DAY_RANGE} days FIRMS accepts per request"
                ));
            }
            if let Some(date) = &s.date
                && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_err()
            {
                problems.push(format!("{at}.date: {date:?} is not a date like 2026-08-01"));
            }
        }
        SourceType::NwsObservations => {
            match (s.stations.is_empty(), &s.state) {
                (true, None) => problems.push(format!(
                    "{at}.stations: list station ids (`stations: [KSAC, KRDD]`) or give `state: CA` to discover them"
                )),
                (false, Some(_)) => problems.push(format!(
                    "{at}.state: give `stations` or `state`, not both"
                )),
                _ => {}
            }
            for (i, station) in s.stations.iter().enumerate() {
                if station.is_empty()
                    || station.len() > 10
                    || !station.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    problems.push(format!(
                        "{at}.stations[{i}]: {station:?} is not a station id like KSAC"
                    ));
                }
            }
            if let Some(state) = &s.state {
                check_area(&format!("{at}.state"), state, problems);
            }
        }
        SourceType::NwsAlerts => {
            if let Some(area) = &s.area {
                check_area(&format!("{at}.area"), area, problems);
            }
        }
        SourceType::Purpleair => {
            problems.extend(missing_secret(
                "api_key",
                &s.api_key,
                "write `api_key: ${PURPLEAIR_API_KEY}` (a READ key)",
            ));
        }
        SourceType::Airnow => {
            problems.extend(missing_secret(
                "api_key",
                &s.api_key,
                "write `api_key: ${AIRNOW_API_KEY}`",
            ));
            match (s.bbox, s.latitude, s.longitude) {
                (Some(_), None, None) => {}
                (None, Some(lat), Some(lon)) => {
                    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                        problems.push(format!(
                            "{at}.latitude: ({lat}, {lon}) is not a point on Earth"
                        ));
                    }
                }
                (Some(_), _, _) => problems.push(format!(
                    "{at}.bbox: give `bbox` (for /aq/data) or `latitude`/`longitude` (current observations), not both"
                )),
                _ => problems.push(format!(
                    "{at}.bbox: give `bbox: [west, south, east, north]` or `latitude` and `longitude`"
                )),
            }
        }
        SourceType::Http | SourceType::CalfireIncidents | SourceType::Mqtt => {}
    }
}

/// Checks `http:`: the default User-Agent and each host's limits.
pub fn check_http(http: &HttpConfig, problems: &mut Vec<String>) {
    if http.user_agent.trim().is_empty() || HeaderValue::from_str(&http.user_agent).is_err() {
        problems.push(
            "http.user_agent: must be a non-empty header value that names you and a contact, e.g. \"firestream (agency.example.org, ops@agency.example.org)\""
                .to_owned(),
        );
    }
    for (host, limits) in &http.hosts {
        let at = format!("http.hosts.{host}");
        let valid_host = !host.contains(['/', '@'])
            && !host.ends_with(':')
            && Url::parse(&format!("http://{host}/"))
                .ok()
                .is_some_and(|u| u.host_str().is_some() && u.path() == "/");
        let lower = host.to_ascii_lowercase();
        if http
            .hosts
            .keys()
            .filter(|h| h.to_ascii_lowercase() == lower)
            .count()
            > 1
        {
            problems.push(format!(
                "{at}: given twice (host names are not case-sensitive)"
            ));
        }
        if !valid_host {
            problems.push(format!(
                "{at}: {host:?} is not a host name (write `api.example.org` or `api.example.org:8443`)"
            ));
        }
        if let Some(budget) = limits.budget {
            if budget.requests == 0 {
                problems.push(format!(
                    "{at}.budget.requests: must be at least 1 (leave `budget` out for no budget)"
                ));
            }
            if budget.window.0.is_zero() {
                problems.push(format!("{at}.budget.window: must be longer than 0s"));
            }
        }
    }
}

fn check_area(at: &str, code: &str, problems: &mut Vec<String>) {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        problems.push(format!(
            "{at}: {code:?} is not a two-letter state or marine area code like CA"
        ));
    }
}

fn check_bbox(at: &str, [w, s, e, n]: [f64; 4], problems: &mut Vec<String>) {
    let lon = -180.0..=180.0;
    let lat = -90.0..=90.0;
    if !(lon.contains(&w) && lon.contains(&e) && lat.contains(&s) && lat.contains(&n)) {
        problems.push(format!(
            "{at}: [{w}, {s}, {e}, {n}] is outside [-180, -90, 180, 90]; write [west, south, east, north]"
        ));
    } else if w >= e || s >= n {
        problems.push(format!(
            "{at}: [{w}, {s}, {e}, {n}] is empty or reversed; write [west, south, east, north] with west < east and south < north"
        ));
    }
}

/// The URL at `pointer` in a JSON body, resolved against `current`; only on the same host.
fn next_page(body: &[u8], pointer: &str, current: &Url) -> Result<Option<Url>, String> {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let link = match doc.pointer(pointer) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(link)) => link,
        Some(other) => {
            return Err(format!(
                "the value at {pointer} is {other}, not a URL string; pagination stops here"
            ));
        }
    };
    if link.is_empty() {
        return Ok(None);
    }
    let next = current
        .join(link)
        .map_err(|e| format!("{link:?} is not a URL: {e}"))?;
    if next.origin() != current.origin() {
        return Err(format!(
            "it leads to another host ({}); the source's headers stay with its own host",
            next.host_str().unwrap_or("?")
        ));
    }
    Ok(Some(next))
}

fn append_path(url: &mut Url, tail: &str) {
    let mut path = url.path().trim_end_matches('/').to_owned();
    path.push('/');
    path.push_str(tail);
    url.set_path(&path);
}

/// `{base}/api/area/csv/{MAP_KEY}/{SOURCE}/{west,south,east,north}/{DAY_RANGE}[/{DATE}]`.
fn firms_url(base: &str, config: &SourceConfig) -> Result<String, PlanError> {
    let key = config
        .map_key
        .as_ref()
        .map(|k| k.expose())
        .unwrap_or_default();
    let product = config.product.as_deref().unwrap_or("VIIRS_SNPP_NRT");
    let area = match config.bbox {
        Some([w, s, e, n]) => format!("{w},{s},{e},{n}"),
        None => "world".to_owned(),
    };
    let day_range = config.day_range.unwrap_or(1);
    let mut url = format!(
        "{}/api/area/csv/{}/{product}/{area}/{day_range}",
        base.trim_end_matches('/'),
        url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
    );
    if let Some(date) = &config.date {
        url.push('/');
        url.push_str(date);
    }
    Ok(url)
}

/// AirNow: `/aq/data/` over a bbox for the last two hours, or the current observations
/// near a point.
fn airnow_url(base: &str, config: &SourceConfig, now: DateTime<Utc>) -> String {
    let key = config
        .api_key
        .as_ref()
        .map(|k| k.expose())
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    let mut url =
        Url::parse(base).unwrap_or_else(|_| Url::parse("http://invalid/").expect("static"));
    if let Some([w, s, e, n]) = config.bbox {
        append_path(&mut url, "aq/data/");
        let parameters = if config.parameters.is_empty() {
            "PM25,OZONE".to_owned()
        } else {
            config.parameters.join(",")
        };
        let start = (now - chrono::Duration::hours(2)).format("%Y-%m-%dT%H");
        let end = now.format("%Y-%m-%dT%H");
        url.query_pairs_mut()
            .append_pair("startDate", &start.to_string())
            .append_pair("endDate", &end.to_string())
            .append_pair("parameters", &parameters)
            .append_pair("BBOX", &format!("{w},{s},{e},{n}"))
            .append_pair("dataType", "B")
            .append_pair("format", "application/json")
            .append_pair("verbose", "1")
            .append_pair("includerawconcentrations", "1")
            .append_pair("API_KEY", key);
    } else {
        append_path(&mut url, "aq/observation/latLong/current/");
        url.query_pairs_mut()
            .append_pair("format", "application/json")
            .append_pair("latitude", &config.latitude.unwrap_or_default().to_string())
            .append_pair(
                "longitude",
                &config.longitude.unwrap_or_default().to_string(),
            )
            .append_pair("distance", &config.distance_miles.unwrap_or(25).to_string())
            .append_pair("API_KEY", key);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: &str) -> SourceConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    fn transport(yaml: &str) -> HttpTransport {
        let clients = Arc::new(ApiClients::new(&HttpConfig::default()).unwrap());
        HttpTransport::new(
            Arc::from("s"),
            &source(yaml),
            &HttpConfig::default(),
            clients,
        )
        .unwrap()
    }

    fn single(t: &HttpTransport) -> Request {
        match &t.plan {
            Plan::Single(url) => t.request(url.clone()),
            _ => panic!("not a single request"),
        }
    }

    #[test]
    fn firms_url_has_the_key_in_the_path_and_shows_it_redacted() {
        let t = transport(
            "{type: nasa_firms, map_key: abcd1234efgh, product: VIIRS_NOAA20_NRT, bbox: [-124.48, 32.53, -114.13, 42.01], day_range: 2}",
        );
        let r = single(&t);
        assert_eq!(
            r.url.as_str(),
            "https://firms.modaps.eosdis.nasa.gov/api/area/csv/abcd1234efgh/VIIRS_NOAA20_NRT/-124.48,32.53,-114.13,42.01/2"
        );
        assert_eq!(
            r.shown,
            "https://firms.modaps.eosdis.nasa.gov/api/area/csv/<redacted>/VIIRS_NOAA20_NRT/-124.48,32.53,-114.13,42.01/2"
        );
        assert_eq!(r.expect, Expect::Csv);
        assert_eq!(r.cost, 2);
    }

    #[test]
    fn purpleair_asks_only_for_its_fields_with_the_key_in_a_header() {
        let t = transport(
            "{type: purpleair, api_key: KEY-123456, fields: [name, pm2.5_atm, last_seen], bbox: [-108, 37.7, -107.5, 38.1], max_age: 1h}",
        );
        let r = single(&t);
        assert_eq!(
            r.url.as_str(),
            "https://api.purpleair.com/v1/sensors?fields=name%2Cpm2.5_atm%2Clast_seen&nwlng=-108&nwlat=38.1&selng=-107.5&selat=37.7&max_age=3600"
        );
        let key = r.headers.get("x-api-key").unwrap();
        assert!(key.is_sensitive());
        assert!(!format!("{:?}", r.headers).contains("KEY-123456"));
    }

    #[test]
    fn alerts_and_airnow_urls() {
        let t = transport("{type: nws_alerts, area: CA, url: 'http://127.0.0.1:9/base/'}");
        assert_eq!(
            single(&t).url.as_str(),
            "http://127.0.0.1:9/base/alerts/active?area=CA"
        );
        let c = source("{type: airnow, api_key: SECRETKEY, bbox: [-118.7, 33.6, -117.6, 34.4]}");
        let now = DateTime::parse_from_rfc3339("2025-01-10T09:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let url = airnow_url("https://www.airnowapi.org", &c, now);
        assert!(url.starts_with("https://www.airnowapi.org/aq/data/?startDate=2025-01-10T07&endDate=2025-01-10T09&parameters=PM25%2COZONE&BBOX=-118.7%2C33.6%2C-117.6%2C34.4"), "{url}");
        assert!(!redact(&url, [c.api_key.as_ref().unwrap()]).contains("SECRETKEY"));
    }

    #[test]
    fn next_page_stays_on_the_same_host() {
        let here = Url::parse("http://127.0.0.1:8080/items?page=1").unwrap();
        let body = br#"{"links": {"next": "/items?page=2"}}"#;
        assert_eq!(
            next_page(body, "/links/next", &here)
                .unwrap()
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/items?page=2"
        );
        assert_eq!(
            next_page(br#"{"links": {"next": null}}"#, "/links/next", &here),
            Ok(None)
        );
        assert_eq!(next_page(b"{}", "/links/next", &here), Ok(None));
        let away = br#"{"links": {"next": "https://evil.example/items?page=2"}}"#;
        assert!(next_page(away, "/links/next", &here).is_err());
        let number = br#"{"links": {"next": 5}}"#;
        assert!(
            next_page(number, "/links/next", &here)
                .unwrap_err()
                .contains("is 5, not a URL string")
        );
    }

    #[test]
    fn host_keys_and_headers_that_differ_only_in_case_or_cannot_match_are_refused() {
        let http: HttpConfig = yaml_serde::from_str(
            "{hosts: {a.com: {}, A.COM: {}, \"user@b.com\": {}, \"c.com:\": {}}}",
        )
        .unwrap();
        let mut problems = Vec::new();
        check_http(&http, &mut problems);
        let all = problems.join("\n");
        assert!(all.contains("http.hosts.A.COM: given twice"), "{all}");
        assert!(
            all.contains("http.hosts.user@b.com: \"user@b.com\" is not a host name"),
            "{all}"
        );
        assert!(
            all.contains("http.hosts.c.com:: \"c.com:\" is not a host name"),
            "{all}"
        );
        let s = source("{type: http, url: 'http://h/x', topic: t, headers: {X-A: one, x-a: two}}");
        let mut problems = Vec::new();
        check_config("sources.s", &s, &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("headers.X-A: given twice")),
            "{problems:?}"
        );
    }
}
