//! Configuration (DESIGN §6): one YAML or JSON file, parsed strictly (an unknown key is an
//! error with file, line and path), then checked as a whole so every problem is reported at
//! once. Relative paths resolve against the file's directory, so a config works from any
//! working directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::record::{GEOHASH_PRECISION, Priority};
use crate::secret::{Secret, UrlTemplate};
use crate::sources::SourceType;

pub mod layers;

pub use self::layers::Override;

/// The settings as written. It may hold secrets written inline, so it prints redacted.
#[derive(Clone)]
struct Written(yaml_serde::Value);

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", layers::redacted(&self.0))
    }
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}{location}: {message}")]
    Syntax {
        file: PathBuf,
        /// `:line:column` when known.
        location: String,
        message: String,
    },
    /// A profile or an environment override that cannot be applied.
    #[error("{file}: {message}")]
    Layer { file: PathBuf, message: String },
    #[error("{file}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        file: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub sink: SinkConfig,
    /// Keyed by stream id.
    #[serde(default, deserialize_with = "unique_keys")]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Lag-driven backpressure (off by default).
    #[serde(default)]
    pub throttle: crate::throttle::ThrottleConfig,
    #[serde(default)]
    pub dedupe: DedupeConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Topic settings; topics not listed get the defaults of [`TopicConfig`].
    #[serde(default, deserialize_with = "unique_keys")]
    pub topics: BTreeMap<String, TopicConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// The HTTP API of `run` (DESIGN §8).
    #[serde(default)]
    pub api: ApiConfig,
    /// Settings per profile, laid over the rest by `--profile` (see [`layers`]); taken out
    /// before use.
    #[serde(default)]
    pub profiles: Option<yaml_serde::Value>,
    /// The profile laid over the file, if any.
    #[serde(skip)]
    pub profile: Option<String>,
    /// The environment overrides applied (paths and variable names, never values).
    #[serde(skip)]
    pub overrides: Vec<Override>,
    /// The settings as written, layers applied and `profiles:` removed, before parsing: what
    /// [`Config::shown`] redacts.
    #[serde(skip)]
    written: Option<Written>,
    /// The file this came from (for messages); empty for configs built in code.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type", default)]
    pub kind: SinkKind,
    /// The local log: the sink itself with `type: log`, the DLQ fallback with `type: kafka`.
    #[serde(default)]
    pub log: LogSinkConfig,
    /// Required with `type: kafka`.
    pub kafka: Option<KafkaSinkConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// The embedded local log (DESIGN §7).
    #[default]
    Log,
    /// Apache Kafka through librdkafka.
    Kafka,
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkKind::Log => "log",
            SinkKind::Kafka => "kafka",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port…]` of the brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// librdkafka properties, passed through as given (they win over firestream's defaults).
    #[serde(default)]
    pub properties: KafkaProperties,
    /// How long start-up waits for a broker before reporting that none is reachable.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Records and checkpoints in Kafka transactions (README "Transactions").
    #[serde(default)]
    pub transactional: bool,
    /// This replica's name for its transactions: stable across its restarts, unique among
    /// replicas. Each producer's `transactional.id` derives from it.
    #[serde(default = "crate::sinks::kafka::default_transactional_id")]
    pub transactional_id: String,
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// librdkafka properties. Values may be written as strings, numbers or booleans; they are
/// handed to librdkafka as text. Debug output hides the values of secret properties.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    /// Whether a property holds a secret (passwords, keys, tokens): never printed.
    pub fn is_secret(name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        ["password", "secret", "jaas", "token", "credential"]
            .iter()
            .any(|s| name.contains(s))
            || name.ends_with("key.pem")
            || name == "ssl_key"
            || name == "sasl.oauthbearer.config"
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.0 {
            if KafkaProperties::is_secret(name) {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        let raw: BTreeMap<String, Scalar> = unique_keys(deserializer)?;
        Ok(KafkaProperties(
            raw.into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        Scalar::Text(s) => s,
                        Scalar::Int(n) => n.to_string(),
                        Scalar::Float(x) => x.to_string(),
                        Scalar::Bool(b) => b.to_string(),
                    };
                    (k, text)
                })
                .collect(),
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSinkConfig {
    /// Root directory of the log; relative to the config file.
    #[serde(default = "default_log_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// A segment file is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: Size,
    /// Closed segments whose newest record is older than this are deleted; `null` keeps
    /// everything.
    #[serde(default = "default_retention")]
    pub retention: Option<Dur>,
    /// Per partition: the oldest closed segments are deleted while the partition is larger.
    #[serde(default)]
    pub retention_bytes: Option<Size>,
    /// The sink refuses writes (not ready, retriable `disk_full`) while the file system has
    /// less free space than this, so a segment never hits a full disk; 0 turns it off.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: Size,
}

impl Default for LogSinkConfig {
    fn default() -> Self {
        LogSinkConfig {
            dir: default_log_dir(),
            fsync: FsyncPolicy::default(),
            segment_bytes: default_segment_bytes(),
            retention: default_retention(),
            retention_bytes: None,
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

fn default_retention() -> Option<Dur> {
    Some(Dur(Duration::from_secs(7 * 24 * 3600)))
}

fn default_min_free_bytes() -> Size {
    Size(64 * 1024 * 1024)
}

fn default_log_dir() -> PathBuf {
    PathBuf::from("data/log")
}

fn default_segment_bytes() -> Size {
    Size(64 * 1024 * 1024)
}

/// When the log sink forces data to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync every written segment after each delivered batch, before acknowledging it.
    #[default]
    Batch,
    /// Leave flushing to the OS: faster, but a power loss can lose acknowledged records.
    Never,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub source_type: SourceType,
    #[serde(default)]
    pub mode: ModeKind,
    /// `real_time` and polled `continuous_streaming`: time between polls.
    pub interval: Option<Dur>,
    /// `batch`: when to fetch.
    pub schedule: Option<Schedule>,
    /// What a full queue does to this source's records (default `queue.overflow`; file
    /// sources always block).
    pub overflow: Option<Overflow>,
    /// `continuous_streaming`: records held before they go to the queue (default 500).
    pub buffer_size: Option<usize>,
    /// `continuous_streaming`: longest a record waits in the buffer (default 1s).
    pub buffer_flush_interval: Option<Dur>,
    /// File transport: globs, relative to the config file; plain or gzip.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Overrides routing for every record of this source.
    pub topic: Option<String>,
    /// Overrides the priority rules for every record of this source.
    pub priority: Option<Priority>,
    /// `nasa_firms`: FRP (MW) from which a high-confidence detection is `high` priority.
    pub high_frp_mw: Option<f64>,
    /// `nws_alerts`: events delivered as `critical`.
    pub critical_events: Option<Vec<String>>,

    // ---- HTTP transport (every type but `mqtt`) ----
    /// The API's base URL (each type has its public default), or the endpoint for `http`.
    pub url: Option<UrlTemplate>,
    /// Per-request timeout (default 30s).
    pub timeout: Option<Dur>,
    /// Largest response body accepted (default 64MiB).
    pub max_body: Option<Size>,
    /// A response younger than this is not fetched again (default: none).
    pub cache_ttl: Option<Dur>,
    /// Retries of a failed request within one poll (default 3).
    pub retries: Option<u32>,
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Overrides `http.user_agent` (NWS blocks clients without a descriptive one).
    pub user_agent: Option<String>,
    /// Extra request headers; values may be `${VAR}` secrets.
    #[serde(default, deserialize_with = "unique_keys")]
    pub headers: BTreeMap<String, Secret>,

    // ---- nasa_firms ----
    pub map_key: Option<Secret>,
    /// FIRMS source, e.g. `VIIRS_SNPP_NRT`, `MODIS_NRT`.
    pub product: Option<String>,
    /// `[west, south, east, north]` in degrees (FIRMS, PurpleAir, AirNow `/aq/data`).
    pub bbox: Option<[f64; 4]>,
    /// FIRMS: days back from today (or from `date`), 1–10.
    pub day_range: Option<u32>,
    /// FIRMS: the last day of the range (`YYYY-MM-DD`); default today.
    pub date: Option<String>,

    // ---- nws_observations / nws_alerts ----
    /// `nws_observations`: station ids to poll.
    #[serde(default)]
    pub stations: Vec<String>,
    /// `nws_observations`: discover the stations of this state (`CA`) instead.
    pub state: Option<String>,
    /// `nws_alerts`: state or marine area code (`CA`, `PZ`).
    pub area: Option<String>,

    // ---- purpleair / airnow ----
    pub api_key: Option<Secret>,
    /// `purpleair`: fields requested (points are charged per field).
    #[serde(default)]
    pub fields: Vec<String>,
    /// `purpleair`: only sensors seen within this age.
    pub max_age: Option<Dur>,
    /// `purpleair`: a reading older than this against the response time is `stale` (default 1h).
    pub stale_after: Option<Dur>,
    /// `airnow`: observation point (with `distance_miles`), when no `bbox` is given.
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub distance_miles: Option<u32>,
    /// `airnow` with `bbox`: parameters for `/aq/data` (default PM25, OZONE).
    #[serde(default)]
    pub parameters: Vec<String>,

    // ---- mqtt ----
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: Option<String>,
    /// Topic filters subscribed with QoS 1.
    #[serde(default)]
    pub topics: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Default `firestream-<stream id>`; persistent session so unacked messages come back.
    pub client_id: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// How a JSON payload maps to a record (`mqtt`, `http`).
    pub mapping: Option<FieldMapping>,

    // ---- http ----
    pub format: Option<HttpFormat>,
    /// JSON pointer to the array of records (default: the document itself, or `/features`
    /// for GeoJSON).
    pub record_pointer: Option<String>,
    /// JSON pointer to the next page's URL (pagination ends when absent or null).
    pub next_link: Option<String>,
}

impl SourceConfig {
    /// A source of `source_type` with every setting at its default (for `ingest --source-type`).
    pub fn defaults_for(source_type: SourceType) -> Self {
        SourceConfig {
            source_type,
            ..SourceConfig::default()
        }
    }

    /// Whether the source fetches over HTTP (no `paths`, not MQTT).
    pub fn is_http(&self) -> bool {
        self.paths.is_empty() && self.source_type != SourceType::Mqtt
    }
}

/// Circuit breaker per source: after `failures` consecutive failed polls the source stops
/// calling upstream for `cooldown`, then one probe decides whether it closes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    #[serde(default = "default_circuit_failures")]
    pub failures: u32,
    #[serde(default = "default_circuit_cooldown")]
    pub cooldown: Dur,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: default_circuit_failures(),
            cooldown: default_circuit_cooldown(),
        }
    }
}

fn default_circuit_failures() -> u32 {
    5
}

fn default_circuit_cooldown() -> Dur {
    Dur(Duration::from_secs(300))
}

/// Where a record's fields are in a JSON object: a top-level field name, or a JSON pointer
/// (`/properties/time`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Event time (RFC 3339, or epoch seconds / milliseconds as a number).
    pub time: Option<String>,
    pub lat: Option<String>,
    pub lon: Option<String>,
    /// `mqtt`: device id field …
    pub device_id: Option<String>,
    /// … or the topic level holding it (0-based), e.g. 1 in `sensors/<device>/data`.
    pub device_topic_level: Option<usize>,
    /// `http`: the field that identifies a record (default: a hash of the whole record).
    pub id: Option<String>,
    /// `mqtt`: numeric fields kept as measurements (default: every numeric top-level field
    /// not mapped above).
    pub measurements: Option<Vec<String>>,
}

/// Body format of a generic `http` source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    #[default]
    Json,
    Csv,
    Geojson,
}

fn check_api(api: &ApiConfig, problems: &mut Vec<String>) {
    if !api.enabled {
        return;
    }
    if api
        .token
        .as_ref()
        .is_some_and(|t| t.expose().trim().is_empty())
    {
        problems.push(
            "api.token: is blank, so no request could match it; set a real token (e.g. `${FIRESTREAM_API_TOKEN}`) or leave it out".to_owned(),
        );
    }
    match api.bind.parse::<std::net::SocketAddr>() {
        Err(_) => problems.push(format!(
            "api.bind: {:?} is not an address and port, e.g. `127.0.0.1:8080` or `0.0.0.0:8080`",
            api.bind
        )),
        Ok(addr) => {
            let token = api
                .token
                .as_ref()
                .is_some_and(|t| !t.expose().trim().is_empty());
            if !addr.ip().is_loopback() && !token && !api.allow_unauthenticated {
                problems.push(format!(
                    "api.bind: {addr} is reachable from other machines and api.token is not set; set `token: ${{FIRESTREAM_API_TOKEN}}` (mutating endpoints then need `Authorization: Bearer <token>`), or `allow_unauthenticated: true` if a proxy in front of it authenticates"
                ));
            }
        }
    }
}

/// The HTTP API of `firestream run`: status, metrics and control.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address and port; loopback by default, so nothing is exposed unless asked for.
    #[serde(default = "default_api_bind")]
    pub bind: String,
    /// Bearer token required on every mutating endpoint when set (e.g. `${FIRESTREAM_API_TOKEN}`).
    pub token: Option<Secret>,
    /// Serve a non-loopback address without a token (anyone who can reach it can stop
    /// streams and push records). Off: such a bind is a config error.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// The largest body `POST /api/v1/ingest` takes; larger ones are refused with 413.
    #[serde(default = "default_api_max_body")]
    pub max_body: Size,
    /// Serve HTTPS with this certificate and key (PEM files, relative to the config file).
    pub tls: Option<ApiTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            bind: default_api_bind(),
            token: None,
            allow_unauthenticated: false,
            max_body: default_api_max_body(),
            tls: None,
        }
    }
}

fn default_api_max_body() -> Size {
    Size(16 * 1024 * 1024)
}

fn default_api_bind() -> String {
    "127.0.0.1:8080".to_owned()
}

fn yes() -> bool {
    true
}

/// Settings shared by every source on one upstream host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Sent with every request unless a source sets its own; say who you are and how to
    /// reach you (NWS refuses anonymous clients).
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Per-host limits, keyed by host name; known hosts have defaults (README).
    #[serde(default, deserialize_with = "unique_keys")]
    pub hosts: BTreeMap<String, HostConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            user_agent: default_user_agent(),
            hosts: BTreeMap::new(),
        }
    }
}

fn default_user_agent() -> String {
    concat!(
        "firestream/",
        env!("CARGO_PKG_VERSION"),
        " (wildfire data ingestion; https://github.com/firestream)"
    )
    .to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// At least this long between two requests to the host.
    pub min_interval: Option<Dur>,
    /// At most `requests` per `window` (FIRMS: 5000 per 10m per key).
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub requests: u32,
    pub window: Dur,
}

/// When a stream fetches (DESIGN §1, row 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeKind {
    /// Poll every `interval`; records keep the source's priority.
    #[default]
    RealTime,
    /// Fetch a whole window on a `schedule`; records are `low` priority unless overridden.
    Batch,
    /// Pushed (MQTT) or fast-polled records, buffered and flushed into the queue at
    /// `buffer_size` records or `buffer_flush_interval`; records keep their priority.
    ContinuousStreaming,
}

/// A batch source's schedule: exactly one of `every` and `cron`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Fetch at start, then every this long.
    pub every: Option<Dur>,
    /// A five-field cron expression (minute hour day-of-month month day-of-week), in UTC.
    pub cron: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Records waiting for delivery across the high, normal and low lanes.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Estimated bytes waiting across the high, normal and low lanes (see
    /// [`crate::queue::estimated_bytes`]).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Size,
    /// What a full queue does to a new record of a polled or pushed source (sources may
    /// override it; file sources and `ingest` always block).
    #[serde(default)]
    pub overflow: Overflow,
    /// Extra room only `critical` records may use, so they never wait for bulk space.
    #[serde(default = "default_critical_reserve")]
    pub critical_reserve: usize,
    /// Part of each bulk batch kept for each lower lane while a higher lane is busy, so
    /// `low` never starves (0 = strict priority; at most 0.5).
    #[serde(default = "default_starvation_share")]
    pub starvation_share: f64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            overflow: Overflow::default(),
            critical_reserve: default_critical_reserve(),
            starvation_share: default_starvation_share(),
        }
    }
}

fn default_max_bytes() -> Size {
    Size(256 * 1024 * 1024)
}

fn default_starvation_share() -> f64 {
    0.1
}

fn default_max_records() -> usize {
    100_000
}

fn default_critical_reserve() -> usize {
    1_000
}

/// What a full queue does to a new record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The source waits until there is room: nothing is lost.
    #[default]
    Block,
    /// Evict the oldest record of the lowest non-empty lane at or below the new record's
    /// priority; with none, refuse the new one. Every drop is a DLQ record.
    DropOldest,
    /// Refuse the new record. Every refusal is a DLQ record.
    DropNewest,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop_oldest",
            Overflow::DropNewest => "drop_newest",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// How long shutdown may spend draining the queue; what is left goes to the DLQ.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Times a record whose delivery failed with a retriable error is sent again; then it
    /// goes to the DLQ.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// No retry starts later than this after a record's first attempt.
    #[serde(default = "default_max_elapsed")]
    pub max_elapsed: Dur,
    /// Backoff before the first retry; it doubles per retry (full jitter: a random wait
    /// between 0 and the doubled value) up to `retry_backoff_max`.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Dur,
    #[serde(default = "default_retry_backoff_max")]
    pub retry_backoff_max: Dur,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            shutdown_timeout: default_shutdown_timeout(),
            max_retries: default_max_retries(),
            max_elapsed: default_max_elapsed(),
            retry_backoff: default_retry_backoff(),
            retry_backoff_max: default_retry_backoff_max(),
        }
    }
}

impl DeliveryConfig {
    fn check(&self, problems: &mut Vec<String>) {
        if self.max_elapsed.0.is_zero() {
            problems.push(
                "delivery.max_elapsed: must be longer than 0s (set delivery.max_retries: 0 to turn retries off)"
                    .to_owned(),
            );
        }
        if self.retry_backoff.0.is_zero() {
            problems
                .push("delivery.retry_backoff: must be longer than 0s (default 100ms)".to_owned());
        }
        if self.retry_backoff_max.0 < self.retry_backoff.0 {
            problems.push(format!(
                "delivery.retry_backoff_max: {} is shorter than delivery.retry_backoff ({}); make it at least as long",
                self.retry_backoff_max, self.retry_backoff
            ));
        }
    }
}

fn default_max_retries() -> u32 {
    10
}

fn default_max_elapsed() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_retry_backoff() -> Dur {
    Dur(Duration::from_millis(100))
}

fn default_retry_backoff_max() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// Where sources' checkpoints are kept (DESIGN §5 "Checkpoint store").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    #[serde(default)]
    pub store: CheckpointStoreKind,
    /// The directory of the `dir` store; default `checkpoints` beside `sink.log.dir`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often changed checkpoints are written; also written at shutdown.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Dur,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: CheckpointStoreKind::default(),
            dir: None,
            interval: default_checkpoint_interval(),
        }
    }
}

impl CheckpointConfig {
    /// The directory of the `dir` store.
    pub fn dir_for(&self, log_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| match log_dir.parent() {
            Some(parent) => parent.join("checkpoints"),
            None => PathBuf::from("checkpoints"),
        })
    }
}

fn default_checkpoint_interval() -> Dur {
    Dur(Duration::from_secs(5))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStoreKind {
    /// `kafka` when the sink is Kafka, else `dir`.
    #[default]
    Auto,
    /// Files in a local directory (temp file, fsync, rename).
    Dir,
    /// The compacted topic `firestream-checkpoints` (needs the Kafka sink).
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// How long a record id is remembered, measured against `ingested_at`.
    #[serde(default = "default_dedupe_window")]
    pub window: Dur,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window: default_dedupe_window(),
        }
    }
}

fn default_dedupe_window() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Geohash characters in the message key (4 ≈ 40 km): nearby events share a partition.
    #[serde(default = "default_key_precision")]
    pub geohash_key_precision: usize,
    /// First match wins; `match` is an exact source id or a glob.
    #[serde(default)]
    pub mappings: Vec<RouteMapping>,
    /// Where critical records are also copied; `null` turns the copy off.
    #[serde(default = "default_critical_topic")]
    pub critical_topic: Option<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            geohash_key_precision: default_key_precision(),
            mappings: Vec::new(),
            critical_topic: default_critical_topic(),
        }
    }
}

fn default_key_precision() -> usize {
    4
}

fn default_critical_topic() -> Option<String> {
    Some(crate::router::CRITICAL_TOPIC.to_owned())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMapping {
    #[serde(rename = "match")]
    pub pattern: String,
    pub topic: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Kafka: replicas per partition when firestream creates the topic (default: the
    /// broker's `default.replication.factor`).
    pub replication: Option<u16>,
    /// Kafka: the topic's `retention.ms` when created (default: the broker's).
    pub retention: Option<Dur>,
    /// Kafka: the codec firestream's producer uses for this topic, also set as the topic's
    /// `compression.type` when created.
    pub compression: Option<Compression>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: default_partitions(),
            replication: None,
            retention: None,
            compression: None,
        }
    }
}

/// A Kafka compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The name librdkafka and Kafka's topic config use.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

fn default_partitions() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,firestream::sinks=debug`; `RUST_LOG` wins.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A map whose keys must be unique: YAML (and serde's maps) let a repeated key silently
/// replace the first — a second source with the same id would make the first vanish.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "`{key}` is given twice; each key may appear once (the second would silently replace the first)"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(Unique(std::marker::PhantomData))
}

/// A duration written like `30s`, `5m`, `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(Dur)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write it like 30s, 5m, 24h or 7d"
                ))
            })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size written like `64MiB`, `512KiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "invalid size {text:?} ({e}); write it like 64MiB or 1GiB"
                    ))
                }),
        }
    }
}

impl Config {
    /// Reads, parses and checks a config file, resolving relative paths against its directory.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Config::load_layered(file, None, std::iter::empty())
    }

    /// [`Config::load`] with profile `profile` and the `FIRESTREAM__…` variables among `env`
    /// laid over the file, in that order.
    pub fn load_layered(
        file: &Path,
        profile: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // The file as written first: its mistakes are reported with their lines.
        let mut config = Config::parse(&text, file)?;
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(layers::ENV_PREFIX))
            .collect();
        if profile.is_some() || !env.is_empty() {
            config = Config::layered(&text, file, profile, env)?;
        } else {
            let mut written: yaml_serde::Value = yaml_serde::from_str(&text).unwrap_or_default();
            let _ = layers::apply_profile(&mut written, None);
            config.written = Some(Written(written));
        }
        config.profiles = None;
        config.resolve_paths(base);
        config.check()?;
        Ok(config)
    }

    /// Parses config text; `file` names it in messages. Paths are left as written.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        // An empty file means "all defaults", like `{}`.
        let text = if text.trim().is_empty() { "{}" } else { text };
        // serde_path_to_error names the exact field (`sources.x.password`) where the YAML
        // error alone names only the enclosing map.
        let mut config: Config = serde_path_to_error::deserialize(
            yaml_serde::Deserializer::from_str(text),
        )
        .map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = strip_location(&inner.to_string());
            let message = match message.split_once(": ") {
                // yaml_serde already prefixed a (shorter) path: use the full one.
                Some((prefix, rest)) if path.starts_with(prefix) && !prefix.contains(' ') => {
                    format!("{path}: {rest}")
                }
                _ if path == "." || path.is_empty() => message,
                _ => format!("{path}: {message}"),
            };
            let location = inner.location().map(|l| {
                let key = path.rsplit('.').next().unwrap_or_default();
                key_position(text, l.line(), key).unwrap_or((l.line(), l.column()))
            });
            ConfigError::Syntax {
                file: file.to_owned(),
                location: location
                    .map(|(line, column)| format!(":{line}:{column}"))
                    .unwrap_or_default(),
                message,
            }
        })?;
        config.file = file.to_owned();
        Ok(config)
    }

    /// The effective configuration as it may be shown (`GET /api/v1/config`): secrets
    /// written inline and URL credentials redacted, `${VAR}` references kept.
    pub fn shown(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "profile": self.profile,
            "overrides": self.overrides.iter().map(|o| serde_json::json!({
                "setting": o.path.join("."),
                "variable": o.variable,
            })).collect::<Vec<_>>(),
            "config": self.written.as_ref().map(|w| layers::redacted(&w.0)),
        })
    }

    /// Source `id`'s settings as written (layers applied): what a reload compares to decide
    /// whether the source changed.
    pub fn written_source(&self, id: &str) -> Option<yaml_serde::Value> {
        self.written.as_ref()?.0.get("sources")?.get(id).cloned()
    }

    /// Every top-level section but `sources` as written, by name: a reload can apply only
    /// source changes and names the sections it cannot.
    pub fn written_sections(&self) -> BTreeMap<String, yaml_serde::Value> {
        let Some(yaml_serde::Value::Mapping(map)) = self.written.as_ref().map(|w| &w.0) else {
            return BTreeMap::new();
        };
        map.iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
            .filter(|(k, _)| k != "sources")
            .collect()
    }

    /// The file with its layers applied, parsed again.
    fn layered(
        text: &str,
        file: &Path,
        profile: Option<&str>,
        env: Vec<(String, String)>,
    ) -> Result<Config, ConfigError> {
        let layer = |e: layers::LayerError| ConfigError::Layer {
            file: file.to_owned(),
            message: e.to_string(),
        };
        let text = if text.trim().is_empty() { "{}" } else { text };
        let mut value: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
                file: file.to_owned(),
                location: String::new(),
                message: strip_location(&e.to_string()),
            })?;
        layers::apply_profile(&mut value, profile).map_err(layer)?;
        let overrides = layers::apply_env(&mut value, env).map_err(layer)?;
        let written = value.clone();
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = strip_location(&e.into_inner().to_string());
            // The override that set the setting, or one below the part that is wrong (a
            // source an override created by naming an id that does not exist).
            let from = overrides
                .iter()
                .find(|o| {
                    let set = o.path.join(".");
                    path.starts_with(&set) || set.starts_with(&path)
                })
                .map(|o| format!(" (set by {})", o.variable))
                .or_else(|| profile.map(|p| format!(" (with profile `{p}`)")))
                .unwrap_or_default();
            ConfigError::Layer {
                file: file.to_owned(),
                message: format!("{path}: {message}{from}"),
            }
        })?;
        config.file = file.to_owned();
        config.profile = profile.map(str::to_owned);
        config.overrides = overrides;
        config.written = Some(Written(written));
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.api.tls {
            for path in [&mut tls.cert, &mut tls.key] {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        if self.sink.log.dir.is_relative() {
            self.sink.log.dir = base.join(&self.sink.log.dir);
        }
        if let Some(dir) = &mut self.checkpoint.dir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        for source in self.sources.values_mut() {
            if let Some(ca) = &mut source.ca_file
                && ca.is_relative()
            {
                *ca = base.join(&*ca);
            }
            for pattern in &mut source.paths {
                if Path::new(pattern.as_str()).is_relative() {
                    *pattern = base.join(pattern.as_str()).to_string_lossy().into_owned();
                }
            }
        }
    }

    /// Checks what the types alone cannot; reports every problem, not only the first.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (id, source) in &self.sources {
            check_source(id, source, &mut problems);
        }
        let precision = self.routing.geohash_key_precision;
        if !(1..=GEOHASH_PRECISION).contains(&precision) {
            problems.push(format!(
                "routing.geohash_key_precision: {precision} is outside 1..={GEOHASH_PRECISION} (the envelope's geohash has {GEOHASH_PRECISION} characters)"
            ));
        }
        for (i, mapping) in self.routing.mappings.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(&mapping.pattern) {
                problems.push(format!(
                    "routing.mappings[{i}].match: {:?} is not a valid glob: {e}",
                    mapping.pattern
                ));
            }
            check_topic_name(
                &format!("routing.mappings[{i}].topic"),
                &mapping.topic,
                &mut problems,
            );
        }
        if let Some(topic) = &self.routing.critical_topic {
            check_topic_name("routing.critical_topic", topic, &mut problems);
        }
        check_api(&self.api, &mut problems);
        for (name, topic) in &self.topics {
            check_topic_name(&format!("topics.{name}"), name, &mut problems);
            if topic.partitions == 0 {
                problems.push(format!("topics.{name}.partitions: must be at least 1"));
            }
            if topic.partitions > i32::MAX as u32 {
                problems.push(format!(
                    "topics.{name}.partitions: {} is more than Kafka allows",
                    topic.partitions
                ));
            }
            if topic.replication == Some(0) {
                problems.push(format!("topics.{name}.replication: must be at least 1 (leave it out for the broker's default)"));
            }
            if topic.retention.is_some_and(|d| d.0.as_millis() == 0) {
                problems.push(format!("topics.{name}.retention: must be longer than 0s (leave it out for the broker's default)"));
            }
        }
        self.check_sink(&mut problems);
        crate::transport::http::check_http(&self.http, &mut problems);
        if self.queue.max_records == 0 {
            problems.push("queue.max_records: must be at least 1".to_owned());
        }
        if self.queue.max_bytes.0 == 0 {
            problems.push("queue.max_bytes: must be at least 1 byte (default 256MiB)".to_owned());
        }
        let share = self.queue.starvation_share;
        if !(0.0..=0.5).contains(&share) {
            problems.push(format!(
                "queue.starvation_share: {share} is outside 0..=0.5 (the part of a bulk batch kept for each lower lane; 0 = strict priority, default 0.1)"
            ));
        }
        if self.queue.critical_reserve == 0 {
            problems.push(
                "queue.critical_reserve: must be at least 1 so critical records never wait for bulk space"
                    .to_owned(),
            );
        }
        if self.sink.log.segment_bytes.0 < 4096 {
            problems.push(format!(
                "sink.log.segment_bytes: {} bytes is too small; use at least 4KiB (default 64MiB)",
                self.sink.log.segment_bytes.0
            ));
        }
        if self.sink.log.retention.is_some_and(|r| r.0.is_zero()) {
            problems.push(
                "sink.log.retention: must be longer than 0s (default 7d); write `null` to keep every segment"
                    .to_owned(),
            );
        }
        if let Some(bytes) = self.sink.log.retention_bytes
            && bytes.0 < self.sink.log.segment_bytes.0
        {
            problems.push(format!(
                "sink.log.retention_bytes: {} bytes is less than one segment (sink.log.segment_bytes {}); raise it or lower segment_bytes",
                bytes.0, self.sink.log.segment_bytes.0
            ));
        }
        if self.sink.log.dir.exists() && !self.sink.log.dir.is_dir() {
            problems.push(format!(
                "sink.log.dir: {} exists and is not a directory",
                self.sink.log.dir.display()
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "log.level: {:?} is not a log filter ({e}); write a level such as `info`, or `info,firestream::sinks=debug`",
                self.log.level
            ));
        }
        if self.dedupe.window.0.is_zero() {
            problems.push("dedupe.window: must be longer than 0s".to_owned());
        }
        if self.checkpoint.store == CheckpointStoreKind::Kafka && self.sink.kind != SinkKind::Kafka
        {
            problems.push(
                "checkpoint.store: `kafka` needs `sink.type: kafka`; use `dir` (or leave it out) with the log sink"
                    .to_owned(),
            );
        }
        if self.checkpoint.interval.0 < Duration::from_millis(100) {
            problems.push("checkpoint.interval: must be at least 100ms (default 5s)".to_owned());
        }
        let checkpoint_dir = self.checkpoint.dir_for(&self.sink.log.dir);
        if checkpoint_dir.exists() && !checkpoint_dir.is_dir() {
            problems.push(format!(
                "checkpoint.dir: {} exists and is not a directory",
                checkpoint_dir.display()
            ));
        }
        self.throttle.check(&mut problems);
        self.delivery.check(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                file: self.file.clone(),
                problems,
            })
        }
    }

    fn check_sink(&self, problems: &mut Vec<String>) {
        let Some(kafka) = &self.sink.kafka else {
            if self.sink.kind == SinkKind::Kafka {
                problems.push(
                    "sink.kafka: `type: kafka` needs the brokers, e.g. `kafka: {bootstrap_servers: \"localhost:9092\"}`"
                        .to_owned(),
                );
            }
            return;
        };
        let servers: Vec<&str> = kafka
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            problems.push("sink.kafka.bootstrap_servers: is empty; list the brokers as `host:port[,host:port…]`".to_owned());
        }
        for server in servers {
            let address = server.rsplit_once("://").map_or(server, |(_, a)| a);
            let port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                problems.push(format!(
                    "sink.kafka.bootstrap_servers: {server:?} is not `host:port`"
                ));
            }
        }
        if kafka.connect_timeout.0.is_zero() {
            problems.push("sink.kafka.connect_timeout: must be longer than 0s".to_owned());
        }
        problems.extend(crate::sinks::kafka::check_properties(&kafka.properties));
        problems.extend(crate::sinks::kafka::check_transactions(
            kafka,
            self.checkpoint.store,
        ));
    }

    /// Partitions of a topic: from `topics:`, else the default.
    pub fn partitions(&self, topic: &str) -> u32 {
        self.topics
            .get(topic)
            .map_or_else(default_partitions, |t| t.partitions)
    }
}

fn check_source(id: &str, s: &SourceConfig, problems: &mut Vec<String>) {
    let at = format!("sources.{id}");
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        problems.push(format!(
            "{at}: stream id must be 1-64 characters of letters, digits, `_` or `-`"
        ));
    }
    // An mqtt source is pushed by its broker: no interval or schedule (checked below).
    let polled = s.source_type != SourceType::Mqtt;
    let check_interval = |mode: &str, problems: &mut Vec<String>| match s.interval {
        None => problems.push(format!(
            "{at}.interval: mode {mode} needs an interval, e.g. `interval: 5m`"
        )),
        Some(Dur(d)) if d < Duration::from_secs(1) => problems.push(format!(
            "{at}.interval: {} is shorter than the 1s minimum",
            Dur(d)
        )),
        _ => {}
    };
    match s.mode {
        _ if !polled => {}
        ModeKind::RealTime | ModeKind::ContinuousStreaming => {
            let mode = if s.mode == ModeKind::RealTime {
                "real_time"
            } else {
                "continuous_streaming"
            };
            check_interval(mode, problems);
            if s.schedule.is_some() {
                problems.push(format!(
                    "{at}.schedule: only for mode batch; {mode} uses `interval`"
                ));
            }
        }
        ModeKind::Batch => {
            match &s.schedule {
                None => problems.push(format!(
                    "{at}.schedule: mode batch needs a schedule, e.g. `schedule: {{every: 3h}}` or `schedule: {{cron: \"0 */3 * * *\"}}`"
                )),
                Some(schedule) => check_schedule(&at, schedule, problems),
            }
            if s.interval.is_some() {
                problems.push(format!(
                    "{at}.interval: only for modes real_time and continuous_streaming; batch uses `schedule: {{every: …}}`"
                ));
            }
        }
    }
    if s.mode != ModeKind::ContinuousStreaming {
        for (field, set) in [
            ("buffer_size", s.buffer_size.is_some()),
            ("buffer_flush_interval", s.buffer_flush_interval.is_some()),
        ] {
            if set {
                problems.push(format!("{at}.{field}: only for mode continuous_streaming"));
            }
        }
    }
    if s.buffer_size == Some(0) {
        problems.push(format!(
            "{at}.buffer_size: must be at least 1 (default 500)"
        ));
    }
    if s.buffer_flush_interval.is_some_and(|d| d.0.is_zero()) {
        problems.push(format!(
            "{at}.buffer_flush_interval: must be longer than 0s (default 1s)"
        ));
    }
    if !s.paths.is_empty()
        && let Some(policy) = s.overflow.filter(|o| *o != Overflow::Block)
    {
        problems.push(format!(
            "{at}.overflow: {} is not for file sources: a file is read to its end and nothing in it is fresher than the rest, so file sources always block; remove it",
            policy.as_str()
        ));
    }
    crate::transport::http::check_config(&at, s, problems);
    crate::sources::http::check_config(&at, s, problems);
    for (i, pattern) in s.paths.iter().enumerate() {
        if let Err(e) = glob::Pattern::new(pattern) {
            problems.push(format!(
                "{at}.paths[{i}]: {pattern:?} is not a valid glob: {e}"
            ));
        }
    }
    if let Some(topic) = &s.topic {
        check_topic_name(&format!("{at}.topic"), topic, problems);
    }
    match s.source_type {
        SourceType::Mqtt => crate::sources::mqtt::check_config(&at, s, problems),
        SourceType::Purpleair => crate::sources::purpleair::check_config(&at, s, problems),
        _ => {}
    }
    let only_for = |field: &str, set: bool, ty: SourceType, problems: &mut Vec<String>| {
        if set && s.source_type != ty {
            problems.push(format!(
                "{at}.{field}: only applies to type {ty}, not {}",
                s.source_type
            ));
        }
    };
    only_for(
        "high_frp_mw",
        s.high_frp_mw.is_some(),
        SourceType::NasaFirms,
        problems,
    );
    only_for(
        "critical_events",
        s.critical_events.is_some(),
        SourceType::NwsAlerts,
        problems,
    );
    if let Some(frp) = s.high_frp_mw
        && (!frp.is_finite() || frp < 0.0)
    {
        problems.push(format!("{at}.high_frp_mw: {frp} must be a number ≥ 0"));
    }
}

/// Exactly one of `every` and `cron`; `every` at least 1s; `cron` a valid expression.
fn check_schedule(at: &str, schedule: &Schedule, problems: &mut Vec<String>) {
    match (&schedule.every, &schedule.cron) {
        (Some(_), Some(_)) => problems.push(format!(
            "{at}.schedule: give either `every` or `cron`, not both"
        )),
        (None, None) => problems.push(format!(
            "{at}.schedule: needs `every` (e.g. `every: 3h`) or `cron` (e.g. `cron: \"0 */3 * * *\"`)"
        )),
        (Some(Dur(d)), None) if *d < Duration::from_secs(1) => problems.push(format!(
            "{at}.schedule.every: {} is shorter than the 1s minimum",
            Dur(*d)
        )),
        (None, Some(expr)) => {
            if let Err(e) = crate::mode::parse_cron(expr) {
                problems.push(format!("{at}.schedule.cron: {e}"));
            }
        }
        _ => {}
    }
}

/// Kafka's rules for topic names, so a config that works on the log works on Kafka (and a
/// name is never a path outside the log directory).
pub fn is_valid_topic_name(name: &str) -> bool {
    let legal = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    !name.is_empty() && name.len() <= 249 && legal && name != "." && name != ".."
}

fn check_topic_name(at: &str, name: &str, problems: &mut Vec<String>) {
    if !is_valid_topic_name(name) {
        problems.push(format!(
            "{at}: {name:?} is not a valid topic name (1-249 characters of letters, digits, `.`, `_`, `-`)"
        ));
    }
}

/// yaml_serde appends " at line L column C"; we print the location in front instead.
/// Where `key` is written at or after `line` (1-based), before the mapping that holds it
/// ends: a value's error (a duration, a size, an unset variable) is reported by the parser at
/// the start of the enclosing mapping, which may be lines above the key itself.
fn key_position(text: &str, line: usize, key: &str) -> Option<(usize, usize)> {
    if key.is_empty() || key.contains(['[', ']', '?']) {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(line.checked_sub(1)?)?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let base = indent(first);
    // The parser points at a mapping's parent key (`a:`) or at its first key (`type: …`):
    // the mapping ends at a line indented like the parent, or less than its keys.
    let parent = first.trim_end().ends_with(':');
    for (i, l) in lines.iter().enumerate().skip(line - 1) {
        let body = l.trim_start();
        let ended = if parent {
            indent(l) <= base
        } else {
            indent(l) < base
        };
        if i >= line && !body.is_empty() && !body.starts_with('#') && ended {
            break;
        }
        let bytes = l.as_bytes();
        let mut from = 0;
        while let Some(found) = l[from..].find(key) {
            let at = from + found;
            let before_ok = at == 0 || matches!(bytes[at - 1], b' ' | b'{' | b',' | b'\t');
            let after = l[at + key.len()..].trim_start();
            if before_ok && after.starts_with(':') {
                return Some((i + 1, at + 1));
            }
            from = at + key.len();
        }
    }
    None
}

fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_reported_at_its_own_line() {
        let text = "sources:\n  a:\n    type: nasa_firms\n    paths: [x.csv]\n\n    interval: 10 minutes please\n  b: {type: nasa_firms, interval: 5m, paths: [y.csv]}\n";
        let err = Config::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.yaml:6:5: sources.a.interval: invalid duration"),
            "{err}"
        );
        // In a flow mapping, the key's column on its line.
        let text = "sources:\n  a: {type: nasa_firms, paths: [x.csv], interval: 5 lightyears}\n";
        let err = Config::parse(text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:2:41: sources.a.interval:"), "{err}");
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(text, Path::new("test.yaml"))?;
        config.check()?;
        Ok(config)
    }

    #[test]
    fn minimal_config_has_documented_defaults() {
        let c = parse("sink: {type: log, log: {dir: /tmp/x}}").unwrap();
        assert_eq!(c.sink.log.dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.sink.log.fsync, FsyncPolicy::Batch);
        assert_eq!(c.sink.log.segment_bytes, Size(64 << 20));
        assert_eq!(c.queue.max_records, 100_000);
        assert_eq!(c.queue.critical_reserve, 1_000);
        assert_eq!(c.dedupe.window, Dur(Duration::from_secs(86_400)));
        assert_eq!(c.routing.geohash_key_precision, 4);
        assert_eq!(
            c.routing.critical_topic.as_deref(),
            Some("wildfire-critical-alerts")
        );
        assert_eq!(c.partitions("anything"), 4);
        assert!(c.sources.is_empty());
        assert!(parse("").is_ok());
    }

    #[test]
    fn log_retention_and_free_space_settings() {
        let c = parse("").unwrap();
        assert_eq!(
            c.sink.log.retention,
            Some(Dur(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(c.sink.log.retention_bytes, None);
        assert_eq!(c.sink.log.min_free_bytes, Size(64 << 20));
        let c = parse("sink: {log: {retention: null, retention_bytes: 1GiB, min_free_bytes: 0}}")
            .unwrap();
        assert_eq!(c.sink.log.retention, None);
        assert_eq!(c.sink.log.retention_bytes, Some(Size(1 << 30)));
        assert_eq!(c.sink.log.min_free_bytes, Size(0));
        let err = parse("sink: {log: {retention: 0s, retention_bytes: 1KiB}}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink.log.retention: must be longer than 0s"),
            "{err}"
        );
        assert!(
            err.contains("sink.log.retention_bytes: 1024 bytes is less than one segment"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_line_and_path() {
        let err = parse("sink:\n  type: log\n  log:\n    dir: x\n    retension: 7d\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.yaml:5:"), "{text}");
        assert!(text.contains("sink.log"), "{text}");
        assert!(text.contains("unknown field `retension`"), "{text}");
    }

    #[test]
    fn a_missing_secret_names_the_field_and_the_variable() {
        let err = parse("sources:\n  f:\n    type: nasa_firms\n    interval: 5m\n    map_key: ${FIRESTREAM_TEST_UNSET_KEY}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "sources.f.map_key: environment variable FIRESTREAM_TEST_UNSET_KEY is not set"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_key_given_twice_is_an_error_not_a_silent_replacement() {
        let err = parse("sources:\n  a: {type: nasa_firms, interval: 5m, paths: [x.csv]}\n  a: {type: nws_alerts, interval: 5m, paths: [y.json]}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sources: `a` is given twice"), "{err}");
        let err = parse("topics:\n  t: {partitions: 1}\n  t: {partitions: 2}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`t` is given twice"), "{err}");
    }

    #[test]
    fn wrong_variant_lists_the_valid_ones() {
        let err = parse("sources:\n  a:\n    type: nasa_firms\n    mode: streaming\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("test.yaml:4:"), "{text}");
        assert!(text.contains("real_time"), "{text}");
    }

    #[test]
    fn bad_duration_and_size_say_how_to_write_them() {
        let err = parse("dedupe: {window: 5 parsecs}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("write it like 30s"), "{err}");
        let err = parse("sink: {log: {segment_bytes: lots}}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("write it like 64MiB"), "{err}");
        assert_eq!(
            parse("sink: {log: {segment_bytes: 1MiB}}")
                .unwrap()
                .sink
                .log
                .segment_bytes,
            Size(1 << 20)
        );
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
sources:
  "bad id!":
    type: nasa_firms
    paths: ["x.csv"]
    interval: 5m
  alerts:
    type: nws_alerts
    mode: batch
    interval: 5m
    high_frp_mw: 50
  obs:
    type: nws_observations
    interval: 1m
    topic: "no spaces allowed"
routing:
  geohash_key_precision: 9
  mappings: [{match: "[", topic: ok}]
topics:
  t: {partitions: 0}
"#;
        let err = parse(text).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let all = problems.join("\n");
        for expected in [
            "sources.bad id!: stream id must be",
            "sources.alerts.schedule: mode batch needs a schedule",
            "sources.alerts.interval: only for modes real_time and continuous_streaming",
            "sources.alerts.high_frp_mw: only applies to type nasa_firms, not nws_alerts",
            "sources.obs.stations: list station ids",
            "sources.obs.topic: \"no spaces allowed\" is not a valid topic name",
            "routing.geohash_key_precision: 9 is outside 1..=5",
            "routing.mappings[0].match: \"[\" is not a valid glob",
            "topics.t.partitions: must be at least 1",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 9, "{all}");
    }

    #[test]
    fn queue_defaults_and_schedule_overflow_and_buffer_checks() {
        let c = parse("").unwrap();
        assert_eq!(c.queue.max_bytes, Size(256 * 1024 * 1024));
        assert_eq!(c.queue.starvation_share, 0.1);
        assert_eq!(c.queue.overflow, Overflow::Block);
        let c = parse(
            r#"
queue: {max_bytes: 1MiB, overflow: drop_oldest, starvation_share: 0.25}
sources:
  alerts:
    type: nws_alerts
    area: CA
    mode: batch
    schedule: {cron: "0 */3 * * *"}
    overflow: drop_newest
  obs:
    type: nws_observations
    stations: [KSAC]
    mode: continuous_streaming
    interval: 5s
    buffer_size: 100
    buffer_flush_interval: 2s
"#,
        )
        .unwrap();
        assert_eq!(c.queue.max_bytes, Size(1024 * 1024));
        assert_eq!(c.queue.overflow, Overflow::DropOldest);
        assert_eq!(c.sources["alerts"].overflow, Some(Overflow::DropNewest));
        assert_eq!(
            c.sources["alerts"]
                .schedule
                .as_ref()
                .unwrap()
                .cron
                .as_deref(),
            Some("0 */3 * * *")
        );
        assert_eq!(c.sources["obs"].mode, ModeKind::ContinuousStreaming);
        assert_eq!(c.sources["obs"].buffer_size, Some(100));

        let err = parse(
            r#"
queue: {starvation_share: 0.6, max_bytes: 0}
sources:
  both:
    type: nws_alerts
    area: CA
    mode: batch
    schedule: {every: 1h, cron: "0 * * * *"}
  neither:
    type: nws_alerts
    area: CA
    mode: batch
    schedule: {}
  bad_cron:
    type: nws_alerts
    area: CA
    mode: batch
    schedule: {cron: "0 */3 * *"}
    buffer_size: 10
  files:
    type: nws_alerts
    paths: ["alerts/*.json"]
    interval: 1m
    overflow: drop_oldest
  stream:
    type: nws_alerts
    area: CA
    mode: continuous_streaming
    buffer_size: 0
    buffer_flush_interval: 0s
"#,
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let all = problems.join("\n");
        for expected in [
            "queue.starvation_share: 0.6 is outside 0..=0.5",
            "queue.max_bytes: must be at least 1 byte",
            "sources.both.schedule: give either `every` or `cron`, not both",
            "sources.neither.schedule: needs `every` (e.g. `every: 3h`) or `cron`",
            "sources.bad_cron.schedule.cron: \"0 */3 * *\" is not a cron expression (",
            "sources.bad_cron.buffer_size: only for mode continuous_streaming",
            "sources.files.overflow: drop_oldest is not for file sources",
            "sources.stream.interval: mode continuous_streaming needs an interval",
            "sources.stream.buffer_size: must be at least 1 (default 500)",
            "sources.stream.buffer_flush_interval: must be longer than 0s (default 1s)",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 10, "{all}");
    }

    #[test]
    fn connector_settings_are_checked_against_the_upstream_apis() {
        let text = r#"
sources:
  firms:
    type: nasa_firms
    interval: 10m
    map_key: ""
    product: VIIRS_SNPP
    bbox: [-114.13, 32.53, -124.48, 42.01]
    day_range: 10
    stations: [KSAC]
  pa:
    type: purpleair
    interval: 10m
    api_key: k-0123456789
  obs:
    type: nws_observations
    interval: 5m
    state: California
  an:
    type: airnow
    interval: 30m
    api_key: k-0123456789
  raw:
    type: http
    interval: 5m
    url: "ftp://example.org/x"
    headers: {"Bad Header": x, X-Token: "a\nb"}
http:
  hosts:
    "bad host!": {}
    api.example.org: {budget: {requests: 0, window: 0s}}
"#;
        let err = parse(text).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let all = problems.join("\n");
        for expected in [
            "sources.firms.map_key: required to call the API",
            "sources.firms.product: \"VIIRS_SNPP\" is not a FIRMS source",
            "sources.firms.bbox: [-114.13, 32.53, -124.48, 42.01] is empty or reversed",
            "sources.firms.day_range: 10 is outside the 1–5 days FIRMS accepts",
            "sources.firms.stations: only applies to type nws_observations, not nasa_firms",
            "sources.pa.fields: list the fields to request",
            "sources.obs.state: \"California\" is not a two-letter state",
            "sources.an.bbox: give `bbox: [west, south, east, north]` or `latitude` and `longitude`",
            "sources.raw.url: scheme \"ftp\" is not supported",
            "sources.raw.topic: type http has no default topic",
            "sources.raw.headers: \"Bad Header\" is not a valid header name",
            "sources.raw.headers.X-Token: the value is not a valid header value",
            "http.hosts.bad host!: \"bad host!\" is not a host name",
            "http.hosts.api.example.org.budget.requests: must be at least 1",
            "http.hosts.api.example.org.budget.window: must be longer than 0s",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 15, "{all}");
    }

    #[test]
    fn an_invalid_log_level_is_a_config_error() {
        let err = parse("log: {level: \"info,firestream=loud\"}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log.level: \"info,firestream=loud\" is not a log filter"),
            "{err}"
        );
        assert!(parse("log: {level: \"info,firestream::sinks=debug\"}").is_ok());
    }

    #[test]
    fn critical_topic_null_turns_the_copy_off() {
        let c = parse("routing: {critical_topic: null}").unwrap();
        assert_eq!(c.routing.critical_topic, None);
    }

    #[test]
    fn json_is_accepted() {
        let c = parse(
            r#"{"sink": {"type": "log", "log": {"dir": "d"}}, "queue": {"max_records": 10}}"#,
        )
        .unwrap();
        assert_eq!(c.queue.max_records, 10);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "sink: {log: {dir: ../data/log}}\nsources:\n  f:\n    type: nasa_firms\n    interval: 1m\n    paths: [\"samples/*.csv\", \"/abs/*.csv\"]\n",
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.sink.log.dir, dir.path().join("../data/log"));
        assert_eq!(
            c.sources["f"].paths,
            vec![
                dir.path()
                    .join("samples/*.csv")
                    .to_string_lossy()
                    .into_owned(),
                "/abs/*.csv".to_owned()
            ]
        );
    }
}
