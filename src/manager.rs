//! StreamManager: builds streams from config, runs them and delivery, and shuts down in
//! order (stop sources → drain the queue → close the sink). The CLI is a thin layer over it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::config::SinkKind;
use crate::config::{Config, SourceConfig};
use crate::dedupe::DedupeRegistry;
use crate::delivery::Delivery;
use crate::dlq::Stage;
use crate::http::{ApiClients, CircuitBreaker};
use crate::mode::{Mode, PriorityPolicy};
use crate::queue::Queue;
use crate::router::Router;
use crate::sinks::{self, Readiness, Sink, SinkError};
use crate::sources::{self, SourceType};
use crate::stats::{Stats, StreamSnapshot, TopicCounts};
use crate::stream::{HttpSource, Stream, Transport};
use crate::transport::file::FileTransport;
use crate::transport::http::HttpTransport;
use crate::transport::mqtt::MqttTransport;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error("no sources configured in {0}; add one under `sources:` (see README)")]
    NoSources(PathBuf),
    #[error(
        "delivery stopped unexpectedly ({detail}); {queued} record(s) were still queued and not delivered (a bug: please report it with the log)"
    )]
    DeliveryFailed { detail: String, queued: usize },
    #[error("the {sink} sink cannot deliver: {detail}; nothing was ingested")]
    SinkNotReady { sink: &'static str, detail: String },
    #[error("{0}")]
    Source(String),
    #[error("cannot start the HTTP client: {0}")]
    Http(#[from] crate::http::FetchError),
    #[error("unknown source `{id}` in {file}; configured sources: {known}")]
    UnknownSource {
        id: String,
        file: PathBuf,
        known: String,
    },
}

/// What to backfill with `firestream ingest`.
#[derive(Debug, Clone)]
pub enum IngestTarget {
    /// Parse with the type's defaults; route by the type's default topic.
    SourceType(SourceType),
    /// Parse and route as this configured source does, but only the given paths.
    Source(String),
}

impl IngestTarget {
    /// Whether the target exists in `config`: checked before the sink is opened.
    pub fn check(&self, config: &Config) -> Result<(), ManagerError> {
        match self {
            IngestTarget::Source(id) if !config.sources.contains_key(id) => {
                let known = if config.sources.is_empty() {
                    "(none)".to_owned()
                } else {
                    config
                        .sources
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Err(ManagerError::UnknownSource {
                    id: id.clone(),
                    file: config.file.clone(),
                    known,
                })
            }
            IngestTarget::SourceType(t) if t.default_topic().is_none() => {
                Err(ManagerError::Source(format!(
                    "--source-type {t}: this type has no defaults to parse with (no mapping, no topic); configure a source of type {t} and use --source ID"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The fate of every row of an ingest or run: the numbers the CLI prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub streams: BTreeMap<String, StreamSnapshot>,
    pub topics: BTreeMap<String, TopicCounts>,
    pub dead_letters: BTreeMap<String, u64>,
    /// Dead letters the sink could not store (also logged with their content).
    pub lost: u64,
    /// Dead letters the sink refused that went to the local log's DLQ instead.
    pub dlq_fallback: u64,
    /// The sink and whether it could deliver, as last seen at the end of the run.
    pub sink: SinkStatus,
    /// `ingest` only: files a signal kept from being read to the end (the first may be
    /// partly read; its records so far were delivered).
    pub not_read: Vec<String>,
    /// Each polled stream's view of its upstream: circuit, last error, pause.
    pub upstream: BTreeMap<String, crate::stats::UpstreamStatus>,
    /// Requests, retries, waits and budget per upstream host.
    pub hosts: Vec<crate::http::HostSnapshot>,
    pub elapsed_s: f64,
}

/// Which sink a run used and its readiness as last seen at the end of the run (a broker
/// lost mid-run shows here, not the state at start-up).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkStatus {
    pub name: &'static str,
    pub ready: bool,
    pub detail: String,
}

impl Report {
    fn collect(stats: &Stats, sink: SinkStatus, started: Instant) -> Self {
        Report {
            streams: stats.streams(),
            topics: stats.topics(),
            dead_letters: stats
                .dead_letters()
                .into_iter()
                .map(|(stage, n)| (stage.as_str().to_owned(), n))
                .collect(),
            lost: stats
                .dlq_write_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            dlq_fallback: stats
                .dlq_fallback
                .load(std::sync::atomic::Ordering::Relaxed),
            sink,
            not_read: Vec::new(),
            upstream: stats
                .upstream()
                .into_iter()
                .filter(|(_, s)| s.circuit.is_some())
                .collect(),
            hosts: Vec::new(),
            elapsed_s: started.elapsed().as_secs_f64(),
        }
    }

    /// Sum over streams.
    pub fn totals(&self) -> StreamSnapshot {
        let mut t = StreamSnapshot::default();
        for s in self.streams.values() {
            t.rows += s.rows;
            t.records += s.records;
            t.duplicates += s.duplicates;
            t.invalid += s.invalid;
            t.enqueued += s.enqueued;
            t.payload_errors += s.payload_errors;
            t.polls_ok += s.polls_ok;
            t.polls_failed += s.polls_failed;
        }
        t
    }
}

struct DeliveryTask {
    /// Yields the failure, if delivery died.
    supervisor: tokio::task::JoinHandle<Option<String>>,
    failed: CancellationToken,
}

pub struct StreamManager {
    config: Config,
    sink: Arc<dyn Sink>,
    dlq_fallback: Option<Arc<dyn Sink>>,
    /// Readiness when the sink was opened.
    started_with: Readiness,
    queue: Arc<Queue>,
    dedupe: Arc<DedupeRegistry>,
    stats: Arc<Stats>,
    /// One client per upstream host, shared by the sources on it.
    clients: Arc<ApiClients>,
}

impl StreamManager {
    /// Opens the configured sink; fails fast when it is unusable (an unreachable Kafka
    /// cluster is reported, not fatal: see [`StreamManager::ingest`]).
    pub async fn new(config: Config) -> Result<Self, ManagerError> {
        let sinks = sinks::build(&config).await?;
        let readiness = sinks.main.readiness();
        if readiness.ready {
            info!(sink = sinks.main.name(), detail = %readiness.detail, "sink ready");
        } else {
            warn!(sink = sinks.main.name(), detail = %readiness.detail, "sink not ready");
        }
        warn_about_unused_settings(&config);
        let mut manager = Self::with_sink(config, sinks.main)?;
        manager.dlq_fallback = sinks.dlq_fallback;
        Ok(manager)
    }

    /// A manager delivering into an already opened sink.
    pub fn with_sink(config: Config, sink: Arc<dyn Sink>) -> Result<Self, ManagerError> {
        Ok(StreamManager {
            clients: Arc::new(ApiClients::new(&config.http)?),
            started_with: sink.readiness(),
            dlq_fallback: None,
            queue: Arc::new(Queue::new(
                config.queue.max_records,
                config.queue.critical_reserve,
            )),
            dedupe: Arc::new(DedupeRegistry::new(config.dedupe.window.0)),
            stats: Arc::new(Stats::default()),
            sink,
            config,
        })
    }

    /// Request counters, budget and pauses per upstream host.
    pub fn hosts(&self) -> Vec<crate::http::HostSnapshot> {
        self.clients.snapshots()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// A file stream over `paths` (`ingest`, or a source with `paths:`).
    fn stream(&self, id: &str, source: &SourceConfig, mode: Mode, paths: Vec<String>) -> Stream {
        self.stream_over(id, source, mode, Transport::File(FileTransport::new(paths)))
    }

    /// A configured source's stream, on the transport its config names.
    fn configured_stream(&self, id: &str, source: &SourceConfig) -> Result<Stream, ManagerError> {
        let mode = Mode::of(source);
        if source.source_type == SourceType::Mqtt {
            let mqtt = MqttTransport::new(
                Arc::from(id),
                source,
                self.config.delivery.shutdown_timeout.0,
            );
            return Ok(self.stream_over(id, source, mode, Transport::Mqtt(Box::new(mqtt))));
        }
        if !source.is_http() {
            return Ok(self.stream(id, source, mode, source.paths.clone()));
        }
        let transport = HttpTransport::new(
            Arc::from(id),
            source,
            &self.config.http,
            self.clients.clone(),
        )
        .map_err(|e| ManagerError::Source(e.0))?;
        let http = HttpSource {
            transport,
            breaker: CircuitBreaker::new(source.circuit.failures, source.circuit.cooldown.0),
            paused_until: None,
        };
        Ok(self.stream_over(id, source, mode, Transport::Http(Box::new(http))))
    }

    fn stream_over(
        &self,
        id: &str,
        source: &SourceConfig,
        mode: Mode,
        transport: Transport,
    ) -> Stream {
        let id: Arc<str> = Arc::from(id);
        Stream {
            parser: sources::build_parser(id.clone(), source),
            id,
            source_type: source.source_type,
            mode,
            transport,
            priority: PriorityPolicy {
                source_override: source.priority,
                bulk: mode.is_bulk(),
            },
            dedupe: self.dedupe.for_type(source.source_type),
            queue: self.queue.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Starts delivery under a supervisor: if delivery dies, the queue closes (so no source
    /// waits forever for room) and `failed` fires.
    fn start_delivery(&self, router: Router, deadline: CancellationToken) -> DeliveryTask {
        let delivery = Delivery {
            queue: self.queue.clone(),
            router: Arc::new(router),
            sink: self.sink.clone(),
            dlq_fallback: self.dlq_fallback.clone(),
            stats: self.stats.clone(),
            dedupe: self.dedupe.clone(),
            retry: crate::retry::RetryPolicy::new(&self.config.delivery),
        };
        let failed = CancellationToken::new();
        let worker = tokio::spawn(delivery.run(deadline));
        let queue = self.queue.clone();
        let on_failure = failed.clone();
        let supervisor = tokio::spawn(async move {
            let error = worker.await.err()?;
            let detail = error.to_string();
            tracing::error!(error = %detail, "delivery stopped unexpectedly; stopping intake");
            queue.close();
            on_failure.cancel();
            Some(detail)
        });
        DeliveryTask { supervisor, failed }
    }

    /// Closes the queue, lets delivery drain it, closes the sink. The drain is cut short
    /// only `shutdown_timeout` after `signalled` fires: a stop that was asked for. A one-shot
    /// ingest that ends by itself waits for every outcome, however slow the sink.
    async fn finish(
        &self,
        delivery: DeliveryTask,
        deadline: CancellationToken,
        signalled: CancellationToken,
    ) -> Result<(), ManagerError> {
        self.queue.close();
        let timeout: Duration = self.config.delivery.shutdown_timeout.0;
        let timer = {
            let deadline = deadline.clone();
            tokio::spawn(async move {
                signalled.cancelled().await;
                tokio::time::sleep(timeout).await;
                deadline.cancel();
            })
        };
        let failure = delivery
            .supervisor
            .await
            .unwrap_or_else(|e| Some(e.to_string()));
        timer.abort();
        if let Err(e) = self.sink.close().await {
            warn!(error = %e, "sink did not close cleanly");
        }
        if let Some(fallback) = &self.dlq_fallback
            && let Err(e) = fallback.close().await
        {
            warn!(error = %e, "the DLQ fallback did not close cleanly");
        }
        match failure {
            None => Ok(()),
            Some(detail) => {
                let left = self.queue.drain();
                Err(ManagerError::DeliveryFailed {
                    detail,
                    queued: left.records.len() + left.dead_letters.len(),
                })
            }
        }
    }

    /// Runs every configured stream until `shutdown` fires, then drains and stops.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Report, ManagerError> {
        if self.config.sources.is_empty() {
            return Err(ManagerError::NoSources(self.config.file.clone()));
        }
        let started = Instant::now();
        let deadline = CancellationToken::new();
        let delivery = self.start_delivery(Router::new(&self.config), deadline.clone());
        let stop = CancellationToken::new();
        let mut streams = JoinSet::new();
        for (id, source) in &self.config.sources {
            let stream = match self.configured_stream(id, source) {
                Ok(stream) => stream,
                Err(e) => {
                    stop.cancel();
                    self.finish(delivery, deadline, shutdown).await?;
                    return Err(e);
                }
            };
            streams.spawn(stream.run(stop.child_token()));
        }
        info!(
            streams = self.config.sources.len(),
            "running; stop with Ctrl-C or SIGTERM"
        );
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = delivery.failed.cancelled() => {}
        }
        stop.cancel();
        info!("shutting down: stopping sources");
        while let Some(result) = streams.join_next().await {
            if let Err(e) = result {
                warn!(error = %e, "stream task ended abnormally");
            }
        }
        info!(queued = ?self.queue.depth(), "sources stopped; draining the queue");
        // Stopping was asked for (or delivery died, and then there is nothing to wait for).
        self.finish(delivery, deadline, shutdown).await?;
        let mut report = Report::collect(&self.stats, self.sink_status(), started);
        report.hosts = self.clients.snapshots();
        for (stream, status) in &report.upstream {
            info!(
                stream,
                circuit = status.circuit.unwrap_or("none"),
                consecutive_failures = status.consecutive_failures,
                last_error = status.last_error.as_deref().unwrap_or(""),
                paused = status.paused.as_deref().unwrap_or(""),
                "upstream status"
            );
        }
        for host in &report.hosts {
            info!(
                host = %host.host,
                requests = host.requests,
                retries = host.retries,
                not_modified = host.not_modified,
                cache_hits = host.cache_hits,
                rate_limited_waits = host.rate_limited_waits,
                budget_remaining = ?host.budget_remaining,
                paused_for_s = ?host.paused_for_s,
                "upstream host"
            );
        }
        info!(
            delivered = report.topics.values().map(|t| t.delivered).sum::<u64>(),
            dead_letters = report.dead_letters.values().sum::<u64>(),
            "stopped"
        );
        Ok(report)
    }

    fn sink_status(&self) -> SinkStatus {
        let now = self.sink.readiness();
        SinkStatus {
            name: self.sink.name(),
            ready: now.ready,
            detail: now.detail,
        }
    }

    /// One-shot backfill: parses `paths` through the whole pipeline and returns when every
    /// record is delivered, deduplicated or in the DLQ. `shutdown` interrupts it. A sink that
    /// cannot deliver at the start (no Kafka broker reachable) fails it before any file is
    /// read, instead of parking every record until librdkafka's message timeout.
    pub async fn ingest(
        self,
        target: IngestTarget,
        paths: Vec<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Report, ManagerError> {
        let started = Instant::now();
        if !self.started_with.ready {
            let _ = self.sink.close().await;
            return Err(ManagerError::SinkNotReady {
                sink: self.sink.name(),
                detail: self.started_with.detail.clone(),
            });
        }
        target.check(&self.config)?;
        let mut router = Router::new(&self.config);
        let (id, source) = match target {
            IngestTarget::SourceType(t) => {
                let id = format!("ingest_{t}");
                let topic = router.topic(&id, t);
                router.set_source_topic(&id, &topic);
                (id, SourceConfig::defaults_for(t))
            }
            IngestTarget::Source(id) => {
                let source = self.config.sources[&id].clone();
                (id, source)
            }
        };
        let deadline = CancellationToken::new();
        let delivery = self.start_delivery(router, deadline.clone());
        let paths = paths
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        // One file at a time, in the order given, so a file given twice is deduplicated
        // against its first reading.
        let span = tracing::info_span!("stream", stream = %id, source_type = %source.source_type, mode = Mode::Once.name());
        let mut not_read = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let mut stream =
                self.stream(&id, &source, Mode::Once, vec![glob::Pattern::escape(path)]);
            let outcome = stream.poll_once(&shutdown).instrument(span.clone()).await;
            if outcome.interrupted || shutdown.is_cancelled() {
                not_read = paths[i..].to_vec();
                warn!(
                    files_not_read = not_read.len(),
                    "ingest interrupted; records already queued are still delivered"
                );
                break;
            }
        }
        self.finish(delivery, deadline, shutdown).await?;
        let mut report = Report::collect(&self.stats, self.sink_status(), started);
        report.not_read = not_read;
        Ok(report)
    }
}

/// Counts DLQ records by stage name, with every stage present (zeros included).
pub fn dead_letters_by_stage(report: &Report) -> Vec<(&'static str, u64)> {
    Stage::ALL
        .iter()
        .map(|s| {
            (
                s.as_str(),
                report.dead_letters.get(s.as_str()).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// Settings the configured sink does not use, said once at start rather than ignored.
fn warn_about_unused_settings(config: &Config) {
    let default_agent = crate::config::HttpConfig::default().user_agent;
    for (id, source) in &config.sources {
        let nws = matches!(
            source.source_type,
            SourceType::NwsObservations | SourceType::NwsAlerts
        );
        if nws
            && source.is_http()
            && source.user_agent.is_none()
            && config.http.user_agent == default_agent
        {
            warn!(
                stream = %id,
                "NWS asks every client for a User-Agent that names the application and a contact; set `http.user_agent: \"(your-agency.example.org, ops@your-agency.example.org)\"`"
            );
        }
    }
    if config.sink.kind != SinkKind::Log {
        return;
    }
    for (name, topic) in &config.topics {
        if topic.replication.is_some() || topic.retention.is_some() || topic.compression.is_some() {
            warn!(
                topic = %name,
                "topics.{name}: replication, retention and compression apply to Kafka topics; the local log in this build keeps every record uncompressed"
            );
        }
    }
}
