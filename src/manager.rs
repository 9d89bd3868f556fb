//! StreamManager: builds streams from config, runs them and delivery, and shuts down in
//! order (stop sources → drain the queue → close the sink). The CLI is a thin layer over it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::buffer::Buffer;
use crate::checkpoint::{CheckpointError, Checkpoints, OffsetLedger, Recovery, SourceInfo};
use crate::config::SinkKind;
use crate::config::{Config, SourceConfig};
use crate::control::Control;
use crate::dedupe::DedupeRegistry;
use crate::delivery::Delivery;
use crate::dlq::Stage;
use crate::http::{ApiClients, CircuitBreaker};
use crate::mode::{Mode, PriorityPolicy};
use crate::queue::{Queue, QueueSettings};
use crate::router::Router;
use crate::sinks::{self, Readiness, Sink, SinkError};
use crate::sources::{self, SourceType};
use crate::stats::{Stats, StreamSnapshot, ThrottleStatus, TopicCounts};
use crate::stream::{HttpSource, Stream, Transport};
use crate::throttle::Throttle;
use crate::throttle::lag::{KafkaLagProbe, LagProbe, LogLagProbe};
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
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("throttle: cannot create the Kafka lag probe: {0}")]
    LagProbe(#[from] rdkafka::error::KafkaError),
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
    /// Lines of the local log found not to be records (skipped by every reader, each logged
    /// once with its segment and line; see README "The local log").
    pub damaged_log_lines: u64,
    /// The sink and whether it could deliver, as last seen at the end of the run.
    pub sink: SinkStatus,
    /// `ingest` only: files a signal kept from being read to the end (the first may be
    /// partly read; its records so far were delivered).
    pub not_read: Vec<String>,
    /// Each polled stream's view of its upstream: circuit, last error, pause.
    pub upstream: BTreeMap<String, crate::stats::UpstreamStatus>,
    /// Requests, retries, waits and budget per upstream host.
    pub hosts: Vec<crate::http::HostSnapshot>,
    /// Each throttled topic's level, rate and lag at the end (empty when the throttle is off).
    pub throttle: BTreeMap<String, ThrottleStatus>,
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
            damaged_log_lines: crate::sinks::log::damaged_lines(),
            sink,
            not_read: Vec::new(),
            upstream: stats
                .upstream()
                .into_iter()
                .filter(|(_, s)| s.circuit.is_some())
                .collect(),
            hosts: Vec::new(),
            throttle: stats.throttle(),
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
            t.dropped += s.dropped;
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
    /// The lag probe's sampling task, stopped once delivery has ended.
    probe: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
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
    ledger: Arc<OffsetLedger>,
    /// Without them (a sink handed in by a test), nothing survives a restart.
    checkpoints: Option<Arc<Checkpoints>>,
    /// `throttle.enabled`: the throttle delivery waits on and the probe that drives it.
    throttle: Option<ThrottleParts>,
    /// When it was built: the service's start, for the uptime metrics.
    started: std::time::SystemTime,
    /// Set once manual alerts' dedupe window is restored (at once without checkpoints).
    alerts_recovered: Arc<std::sync::atomic::AtomicBool>,
}

/// The throttle delivery waits on, and the probe whose samples drive it.
type ThrottleParts = (Arc<Throttle>, Arc<dyn LagProbe>);

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
        manager.checkpoints = Some(Arc::new(Checkpoints::open(
            &manager.config,
            manager.ledger.clone(),
            manager.dedupe.clone(),
            sinks.checkpoint_writer,
        )?));
        Ok(manager)
    }

    /// A manager delivering into an already opened sink.
    pub fn with_sink(config: Config, sink: Arc<dyn Sink>) -> Result<Self, ManagerError> {
        let stats = Arc::new(Stats::default());
        Ok(StreamManager {
            throttle: throttle_for(&config, &stats)?,
            clients: Arc::new(ApiClients::new(&config.http)?),
            started_with: sink.readiness(),
            dlq_fallback: None,
            queue: Arc::new(Queue::with_settings(QueueSettings::of(&config.queue))),
            dedupe: Arc::new(DedupeRegistry::new(config.dedupe.window.0)),
            stats,
            ledger: Arc::default(),
            checkpoints: None,
            alerts_recovered: Arc::default(),
            sink,
            config,
            started: std::time::SystemTime::now(),
        })
    }

    /// Writes the final checkpoints once delivery has settled everything.
    async fn save_checkpoints(&self) {
        if let Some(checkpoints) = &self.checkpoints {
            match checkpoints.save().await {
                Ok(n) => {
                    info!(checkpoints = n, store = %checkpoints.describe(), "checkpoints written")
                }
                Err(e) => {
                    warn!(error = %e, "cannot write the final checkpoints; the next start reads the topics' tails back further")
                }
            }
        }
    }

    fn checkpointer(&self) -> Option<(tokio::task::JoinHandle<()>, CancellationToken)> {
        let checkpoints = self.checkpoints.clone()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(checkpoints.run(self.config.checkpoint.interval.0, stop.clone()));
        Some((task, stop))
    }

    /// Request counters, budget and pauses per upstream host.
    pub fn hosts(&self) -> Vec<crate::http::HostSnapshot> {
        self.clients.snapshots()
    }

    /// Manual alerts keep a checkpoint like a source, so a resent alert id is still known
    /// after a restart; the intake refuses alerts until their window is back.
    fn recover_manual_alerts(&self, router: &Router, shutdown: &CancellationToken) {
        let flag = self.alerts_recovered.clone();
        let Some(checkpoints) = self.checkpoints.clone() else {
            flag.store(true, std::sync::atomic::Ordering::Release);
            return;
        };
        let info = SourceInfo {
            id: Arc::from(crate::alert::MANUAL_ALERTS),
            source_type: SourceType::NwsAlerts,
            topics: vec![
                router
                    .topic(crate::alert::MANUAL_ALERTS, SourceType::NwsAlerts)
                    .to_string(),
            ],
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            match recover_source(&checkpoints, info, &stop, true).await {
                Ok(Some(_)) => flag.store(true, std::sync::atomic::Ordering::Release),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "manual alerts cannot recover their checkpoint; POST /api/v1/alerts answers 503 until it is fixed")
                }
            }
        });
    }

    /// Where `POST /api/v1/alerts` queues manual alerts.
    pub fn alert_intake(&self) -> crate::alert::AlertIntake {
        crate::alert::AlertIntake {
            queue: self.queue.clone(),
            dedupe: self.dedupe.for_type(SourceType::NwsAlerts),
            stats: self.stats.clone(),
            recovered: self.alerts_recovered.clone(),
        }
    }

    /// The sink, for readiness checks.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// What `/metrics` reads (with the streams' [`Control`], known once `run` starts them).
    pub fn telemetry(&self) -> crate::metrics::Telemetry {
        crate::metrics::Telemetry {
            stats: self.stats.clone(),
            queue: self.queue.clone(),
            clients: self.clients.clone(),
            sink: self.sink.clone(),
            started: self.started,
        }
    }

    /// A file stream over `paths` (`ingest`, or a source with `paths:`).
    fn stream(&self, id: &str, source: &SourceConfig, mode: Mode, paths: Vec<String>) -> Stream {
        let files = FileTransport::new(paths);
        let mut stream = self.stream_over(id, source, mode, Transport::File(files));
        stream.files = self.checkpoints.as_ref().map(|c| c.file_cursor(&stream.id));
        stream
    }

    /// A configured source's stream, on the transport its config names.
    fn configured_stream(&self, id: &str, source: &SourceConfig) -> Result<Stream, ManagerError> {
        let mode = Mode::of(source);
        // Polled and pushed sources may drop on overflow; file sources always block.
        if source.paths.is_empty() {
            let policy = source.overflow.unwrap_or(self.config.queue.overflow);
            self.queue.set_overflow(id, policy);
        }
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
        let dedupe = self.dedupe.for_type(source.source_type);
        let buffer = mode
            .buffer()
            .map(|settings| Arc::new(Buffer::new(settings, self.queue.clone(), dedupe.clone())));
        let bulk = mode.is_bulk();
        Stream {
            parser: sources::build_parser(id.clone(), source),
            id,
            source_type: source.source_type,
            mode,
            transport,
            priority: PriorityPolicy {
                source_override: source.priority,
                bulk,
            },
            dedupe,
            queue: self.queue.clone(),
            buffer,
            stats: self.stats.clone(),
            files: None,
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
            ledger: self.ledger.clone(),
            throttle: self.throttle.as_ref().map(|(t, _)| t.clone()),
            retry: crate::retry::RetryPolicy::new(&self.config.delivery),
        };
        let probe = self.throttle.as_ref().map(|(throttle, probe)| {
            for (id, source) in &self.config.sources {
                throttle.watch(&delivery.router.topic(id, source.source_type));
            }
            let stop = CancellationToken::new();
            let task = tokio::spawn(throttle.clone().run(probe.clone(), stop.clone()));
            (stop, task)
        });
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
        DeliveryTask {
            supervisor,
            failed,
            probe,
        }
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
        if let Some((stop, task)) = delivery.probe {
            stop.cancel();
            let _ = task.await;
        }
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
                // Not delivered nor dead-lettered: upstream must not be acknowledged.
                let dropped = left.dead_letters.iter().filter_map(|d| d.receipt.as_ref());
                for receipt in left.receipts.iter().flatten().chain(dropped) {
                    receipt.abandon();
                }
                Err(ManagerError::DeliveryFailed {
                    detail,
                    queued: left.records.len() + left.dead_letters.len(),
                })
            }
        }
    }

    /// Runs every configured stream until `shutdown` fires, then drains and stops.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Report, ManagerError> {
        self.run_with(shutdown, |_| {}).await
    }

    /// [`StreamManager::run`], handing the streams' [`Control`] to `serve` (the HTTP API)
    /// once every stream has started.
    pub async fn run_with(
        self,
        shutdown: CancellationToken,
        serve: impl FnOnce(Arc<Control>),
    ) -> Result<Report, ManagerError> {
        if self.config.sources.is_empty() {
            return Err(ManagerError::NoSources(self.config.file.clone()));
        }
        let started = Instant::now();
        let router = Router::new(&self.config);
        let checkpointer = self.checkpointer();
        let deadline = CancellationToken::new();
        let delivery = self.start_delivery(router.clone(), deadline.clone());
        let this = Arc::new(self);
        let router_for_alerts = router.clone();
        let control = Arc::new(this.control(router));
        for id in control.ids() {
            if let Err(e) = control.start(&id) {
                control.shutdown().await;
                this.finish(delivery, deadline, shutdown).await?;
                return Err(ManagerError::Source(e.to_string()));
            }
        }
        this.recover_manual_alerts(&router_for_alerts, &shutdown);
        serve(control.clone());
        info!(
            streams = this.config.sources.len(),
            "running; stop with Ctrl-C or SIGTERM"
        );
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = delivery.failed.cancelled() => {}
        }
        info!("shutting down: stopping sources");
        control.shutdown().await;
        info!(queued = ?this.queue.depth(), "sources stopped; draining the queue");
        // Stopping was asked for (or delivery died, and then there is nothing to wait for).
        let finished = this.finish(delivery, deadline, shutdown).await;
        if let Some((task, stop)) = checkpointer {
            stop.cancel();
            let _ = task.await;
        }
        this.save_checkpoints().await;
        finished?;
        let mut report = Report::collect(&this.stats, this.sink_status(), started);
        report.hosts = this.clients.snapshots();
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
        for (topic, t) in &report.throttle {
            info!(
                %topic,
                level = t.level,
                rate = t.rate,
                lag = ?t.lag,
                average_lag = t.average_lag,
                last_error = t.last_error.as_deref().unwrap_or(""),
                "throttle"
            );
        }
        info!(
            delivered = report.topics.values().map(|t| t.delivered).sum::<u64>(),
            dead_letters = report.dead_letters.values().sum::<u64>(),
            "stopped"
        );
        Ok(report)
    }

    /// The streams of `run`, each built afresh from its config at every start.
    fn control(self: &Arc<Self>, router: Router) -> Control {
        let this = self.clone();
        let routes = router.clone();
        let factory = move |id: &str, source: &SourceConfig| {
            let stream = this
                .configured_stream(id, source)
                .map_err(|e| e.to_string())?;
            let info = SourceInfo {
                id: stream.id.clone(),
                source_type: source.source_type,
                topics: vec![routes.topic(id, source.source_type).to_string()],
            };
            Ok((stream, info))
        };
        let this = self.clone();
        let push_factory = move |id: &str, source: &SourceConfig| {
            let files = Transport::File(FileTransport::new(Vec::new()));
            let mut stream = this.stream_over(id, source, Mode::of(source), files);
            // Pushed records go straight to the queue: nothing would flush a buffer.
            stream.buffer = None;
            stream
        };
        Control::new(
            &self.config,
            Box::new(factory),
            Box::new(push_factory),
            self.checkpoints.clone(),
            self.stats.clone(),
            router,
        )
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
        let router = Router::new(&self.config);
        let (id, source) = match target {
            IngestTarget::SourceType(t) => {
                let id = format!("ingest_{t}");
                let topic = router.topic(&id, t);
                router.set_source_topic(&id, &topic);
                if let Some((throttle, _)) = &self.throttle {
                    throttle.watch(&topic);
                }
                (id, SourceConfig::defaults_for(t))
            }
            IngestTarget::Source(id) => {
                let source = self.config.sources[&id].clone();
                (id, source)
            }
        };
        let info = SourceInfo {
            id: Arc::from(id.as_str()),
            source_type: source.source_type,
            topics: vec![router.topic(&id, source.source_type).to_string()],
        };
        if let Some(checkpoints) = &self.checkpoints {
            match recover_source(checkpoints, info, &shutdown, false).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = self.sink.close().await;
                    let mut report = Report::collect(&self.stats, self.sink_status(), started);
                    report.not_read = paths
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect();
                    return Ok(report);
                }
                Err(e) => {
                    let _ = self.sink.close().await;
                    return Err(e.into());
                }
            }
        }
        let checkpointer = self.checkpointer();
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
        let finished = self.finish(delivery, deadline, shutdown).await;
        if let Some((task, stop)) = checkpointer {
            stop.cancel();
            let _ = task.await;
        }
        self.save_checkpoints().await;
        finished?;
        let mut report = Report::collect(&self.stats, self.sink_status(), started);
        report.not_read = not_read;
        Ok(report)
    }
}

/// Restores a source's dedupe window and file cursor (see [`crate::checkpoint`]) before it
/// starts. While its store or topics cannot be read (a Kafka partition without a leader),
/// it tries again (with `retry`: a running service) until it can, or until `shutdown` (then
/// `None`: the source must not start): starting without it could send records twice. Other
/// sources do not wait for it. A one-shot ingest fails instead, and so does a source whose
/// checkpoint or log files are damaged for good ([`CheckpointError::is_permanent`]): waiting
/// would never end. (A damaged line inside a segment is not such an error: readers skip it.)
pub(crate) async fn recover_source(
    checkpoints: &Arc<Checkpoints>,
    source: SourceInfo,
    shutdown: &CancellationToken,
    retry: bool,
) -> Result<Option<Recovery>, CheckpointError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match checkpoints.recover(vec![source.clone()]).await {
            Ok(recovery) => {
                info!(
                    store = %checkpoints.describe(),
                    checkpoint = recovery.checkpoints > 0,
                    restored_ids = recovery.restored_ids,
                    tail_records = recovery.tail_records,
                    tail_ids = recovery.tail_ids,
                    "recovered from the checkpoint and the topics' tails"
                );
                return Ok(Some(recovery));
            }
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) if !retry => return Err(e),
            Err(e) => {
                warn!(error = %e, retry_in_s = wait.as_secs(), "cannot recover yet; the source waits");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        warn!("stopped before recovery finished; the source did not run");
                        return Ok(None);
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The throttle and its lag probe when `throttle.enabled`: Kafka's consumer groups with the
/// Kafka sink, the local log's with the log sink.
fn throttle_for(
    config: &Config,
    stats: &Arc<Stats>,
) -> Result<Option<ThrottleParts>, ManagerError> {
    let settings = &config.throttle;
    if !settings.enabled {
        return Ok(None);
    }
    let groups = &settings.consumer_groups;
    let probe: Arc<dyn LagProbe> = match config.sink.kind {
        SinkKind::Kafka => Arc::new(KafkaLagProbe::new(
            config,
            groups,
            crate::throttle::probe_timeout(settings),
        )?),
        SinkKind::Log => Arc::new(LogLagProbe::new(
            config.sink.log.dir.clone(),
            groups.clone(),
        )),
    };
    info!(groups = ?groups, sink = %config.sink.kind, "lag-driven throttle on");
    let throttle = Throttle::new(settings.clone(), &[], stats.clone());
    Ok(Some((Arc::new(throttle), probe)))
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
