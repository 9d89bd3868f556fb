//! Starting and stopping streams while the service runs (DESIGN §8): what the HTTP API
//! steers and reports. Each running stream is one task with its own cancellation token; a
//! stop cancels it and waits until its buffer has flushed into the queue, so a stream that
//! reports `stopped` has handed over everything it fetched.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{Checkpoints, SourceInfo};
use crate::config::{Config, SourceConfig};
use crate::mode::Mode;
use crate::router::Router;
use crate::stats::{Stats, StreamSnapshot, UpstreamStatus};
use crate::stream::Stream;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Restoring its checkpoint and reading its topics back before the first poll.
    Recovering,
    Running,
    /// Asked to stop; flushing what it holds.
    Stopping,
    Stopped,
    /// A one-shot stream that polled and ended by itself.
    Finished,
    /// Could not start (a damaged checkpoint, a transport that cannot be built): see `error`.
    Failed,
}

impl StreamState {
    pub const ALL: [StreamState; 6] = [
        StreamState::Recovering,
        StreamState::Running,
        StreamState::Stopping,
        StreamState::Stopped,
        StreamState::Finished,
        StreamState::Failed,
    ];

    /// The name the API and the metrics show.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Recovering => "recovering",
            StreamState::Running => "running",
            StreamState::Stopping => "stopping",
            StreamState::Stopped => "stopped",
            StreamState::Finished => "finished",
            StreamState::Failed => "failed",
        }
    }

    fn is_active(self) -> bool {
        matches!(
            self,
            StreamState::Recovering | StreamState::Running | StreamState::Stopping
        )
    }
}

/// A stream as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub id: String,
    pub source_type: String,
    pub mode: &'static str,
    pub state: StreamState,
    /// Why it failed to start, when `state` is `failed`.
    pub error: Option<String>,
    pub counters: StreamSnapshot,
    /// Last poll, last error, circuit state and pause (URLs redacted).
    pub upstream: UpstreamStatus,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("no stream `{0}` is configured; GET /api/v1/streams lists them")]
    NotFound(String),
    #[error("stream `{0}` is already running; stop it first")]
    AlreadyRunning(String),
    #[error("stream `{0}` is not running")]
    NotRunning(String),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("stream `{id}` cannot start: {detail}")]
    CannotStart { id: String, detail: String },
    #[error(
        "stream `{0}` has not rebuilt its dedupe window from its checkpoint yet (it is {1}); \
         start it, or retry once it is running"
    )]
    NotRecovered(String, &'static str),
    #[error(
        "the service began to stop while reading the body: rows 1–{taken} were taken (queued, \
         deduplicated or dead-lettered), the rest were not; send them again once it is back \
         (rows already taken then count as duplicates)"
    )]
    PushCut { taken: u64 },
}

/// Builds a configured stream afresh for each start (a stream is consumed by running).
pub type StreamFactory =
    dyn Fn(&str, &SourceConfig) -> Result<(Stream, SourceInfo), String> + Send + Sync;

/// Builds the stream that parses bodies pushed for a source: its parser, dedupe, queue and
/// counters, with no transport of its own.
pub type PushFactory = dyn Fn(&str, &SourceConfig) -> Stream + Send + Sync;

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed sources, restarted with their new settings (a stopped one stays stopped).
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Sections other than `sources` that changed: they take effect only at a restart.
    pub needs_restart: Vec<String>,
}

struct Slot {
    source: SourceConfig,
    /// The settings as written, to tell a changed source at a reload.
    written: Option<yaml_serde::Value>,
    state: Arc<Mutex<(StreamState, Option<String>)>>,
    cancel: Option<CancellationToken>,
    task: Option<JoinHandle<()>>,
    /// Recovery ran in this process: a restart keeps the window it rebuilt.
    recovered: Arc<std::sync::atomic::AtomicBool>,
}

/// The running service's streams.
pub struct Control {
    factory: Box<StreamFactory>,
    push_factory: Box<PushFactory>,
    /// Push streams built so far, one per source.
    pushers: Mutex<BTreeMap<String, Arc<Stream>>>,
    checkpoints: Option<Arc<Checkpoints>>,
    stats: Arc<Stats>,
    /// Fires when the whole service stops; every stream's token is a child of it.
    stop: CancellationToken,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// The sections other than `sources` as they were loaded, to name what a reload cannot
    /// apply.
    sections: Mutex<BTreeMap<String, yaml_serde::Value>>,
    router: Router,
}

impl Slot {
    fn new(source: SourceConfig, written: Option<yaml_serde::Value>) -> Self {
        Slot {
            source,
            written,
            state: Arc::new(Mutex::new((StreamState::Stopped, None))),
            cancel: None,
            task: None,
            recovered: Arc::default(),
        }
    }
}

impl Control {
    /// The streams of `config`, none started yet.
    pub fn new(
        config: &Config,
        factory: Box<StreamFactory>,
        push_factory: Box<PushFactory>,
        checkpoints: Option<Arc<Checkpoints>>,
        stats: Arc<Stats>,
        router: Router,
    ) -> Self {
        let slots = config
            .sources
            .iter()
            .map(|(id, source)| {
                (
                    id.clone(),
                    Slot::new(source.clone(), config.written_source(id)),
                )
            })
            .collect();
        Control {
            factory,
            push_factory,
            pushers: Mutex::default(),
            checkpoints,
            stats,
            stop: CancellationToken::new(),
            slots: Mutex::new(slots),
            sections: Mutex::new(config.written_sections()),
            router,
        }
    }

    /// Starts a stopped (or failed, or finished) stream: recovery first on its first start.
    pub fn start(&self, id: &str) -> Result<(), ControlError> {
        if self.stop.is_cancelled() {
            return Err(ControlError::ShuttingDown);
        }
        let mut slots = self.slots.lock().expect("slots lock");
        let slot = slots
            .get_mut(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        if slot.state.lock().expect("state lock").0.is_active() {
            return Err(ControlError::AlreadyRunning(id.to_owned()));
        }
        let (stream, info) = match (self.factory)(id, &slot.source) {
            Ok(built) => built,
            Err(detail) => {
                *slot.state.lock().expect("state lock") =
                    (StreamState::Failed, Some(detail.clone()));
                return Err(ControlError::CannotStart {
                    id: id.to_owned(),
                    detail,
                });
            }
        };
        let cancel = self.stop.child_token();
        let state = slot.state.clone();
        let recovered = slot.recovered.clone();
        // A restart keeps the window recovered before: it runs at once.
        let first = if recovered.load(std::sync::atomic::Ordering::Acquire) {
            StreamState::Running
        } else {
            StreamState::Recovering
        };
        *state.lock().expect("state lock") = (first, None);
        let checkpoints = self.checkpoints.clone();
        let span = tracing::info_span!("stream", stream = %id);
        let token = cancel.clone();
        let task = tokio::spawn(
            async move {
                let set = |s: StreamState, e: Option<String>| {
                    *state.lock().expect("state lock") = (s, e);
                };
                if let Some(checkpoints) = checkpoints
                    && !recovered.load(std::sync::atomic::Ordering::Acquire)
                {
                    match crate::manager::recover_source(&checkpoints, info, &token, true).await {
                        Ok(Some(_)) => recovered.store(true, std::sync::atomic::Ordering::Release),
                        Ok(None) => return set(StreamState::Stopped, None),
                        Err(e) => {
                            tracing::error!(error = %e, "the source does not run: its checkpoint cannot be read");
                            return set(StreamState::Failed, Some(e.to_string()));
                        }
                    }
                }
                set(StreamState::Running, None);
                stream.run(token.clone()).await;
                set(
                    if token.is_cancelled() {
                        StreamState::Stopped
                    } else {
                        StreamState::Finished
                    },
                    None,
                );
            }
            .instrument(span),
        );
        slot.cancel = Some(cancel);
        slot.task = Some(task);
        Ok(())
    }

    /// Stops a running stream and waits until it has flushed what it holds into the queue.
    pub async fn stop(&self, id: &str) -> Result<(), ControlError> {
        let (cancel, task, state) = {
            let mut slots = self.slots.lock().expect("slots lock");
            let slot = slots
                .get_mut(id)
                .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
            let mut state = slot.state.lock().expect("state lock");
            if !state.0.is_active() {
                return Err(ControlError::NotRunning(id.to_owned()));
            }
            state.0 = StreamState::Stopping;
            drop(state);
            (slot.cancel.take(), slot.task.take(), slot.state.clone())
        };
        if let Some(cancel) = cancel {
            cancel.cancel();
        }
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(stream = id, error = %e, "stream task ended abnormally");
        }
        let mut state = state.lock().expect("state lock");
        if state.0 == StreamState::Stopping {
            state.0 = StreamState::Stopped;
        }
        Ok(())
    }

    /// Starts every stream that is not running; returns the ids started.
    pub fn start_all(&self) -> Result<Vec<String>, ControlError> {
        let mut started = Vec::new();
        for id in self.ids() {
            match self.start(&id) {
                Ok(()) => started.push(id),
                Err(ControlError::AlreadyRunning(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }

    /// Stops every running stream; returns the ids stopped.
    pub async fn stop_all(&self) -> Vec<String> {
        let mut stopped = Vec::new();
        for id in self.ids() {
            if self.stop(&id).await.is_ok() {
                stopped.push(id);
            }
        }
        stopped
    }

    /// Stops everything for the end of the run and waits for every stream task.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = {
            let mut slots = self.slots.lock().expect("slots lock");
            slots.values_mut().filter_map(|s| s.task.take()).collect()
        };
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "stream task ended abnormally");
            }
        }
    }

    /// Parses `body` as source `id`'s payload and queues its records (`POST /api/v1/ingest`).
    pub async fn push(
        &self,
        id: &str,
        body: bytes::Bytes,
    ) -> Result<crate::stream::PushReport, ControlError> {
        if self.stop.is_cancelled() {
            return Err(ControlError::ShuttingDown);
        }
        // Until recovery has restored the window, dedupe would let stored records through.
        if self.checkpoints.is_some() {
            let slots = self.slots.lock().expect("slots lock");
            let slot = slots
                .get(id)
                .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
            if !slot.recovered.load(std::sync::atomic::Ordering::Acquire) {
                let state = slot.state.lock().expect("state lock").0;
                return Err(ControlError::NotRecovered(id.to_owned(), state.as_str()));
            }
        }
        let pusher = {
            let mut pushers = self.pushers.lock().expect("pushers lock");
            match pushers.get(id) {
                Some(p) => p.clone(),
                None => {
                    let slots = self.slots.lock().expect("slots lock");
                    let source = &slots
                        .get(id)
                        .ok_or_else(|| ControlError::NotFound(id.to_owned()))?
                        .source;
                    let built = Arc::new((self.push_factory)(id, source));
                    pushers.insert(id.to_owned(), built.clone());
                    built
                }
            }
        };
        let (report, complete) = pusher
            .push_body(body, "pushed body".to_owned(), &self.stop)
            .await;
        if !complete {
            // The row that met the closed queue was not taken.
            return Err(ControlError::PushCut {
                taken: report.rows.saturating_sub(1),
            });
        }
        Ok(report)
    }

    /// Applies a newly loaded config's sources: removed ones stop and go, added ones start,
    /// changed ones restart with their new settings (one stopped by an operator stays
    /// stopped), unchanged ones keep running untouched.
    pub async fn reload(&self, config: &Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        let old: BTreeMap<String, (Option<yaml_serde::Value>, bool)> = self
            .slots
            .lock()
            .expect("slots lock")
            .iter()
            .map(|(id, slot)| {
                let active = slot.state.lock().expect("state lock").0.is_active();
                (id.clone(), (slot.written.clone(), active))
            })
            .collect();
        for (id, _) in old
            .iter()
            .filter(|(id, _)| !config.sources.contains_key(*id))
        {
            let _ = self.stop(id).await;
            self.slots.lock().expect("slots lock").remove(id);
            self.pushers.lock().expect("pushers lock").remove(id);
            self.router.update_source_topic(id, None);
            report.removed.push(id.clone());
        }
        for (id, source) in &config.sources {
            let written = config.written_source(id);
            let was_active = match old.get(id) {
                Some((before, _)) if *before == written => {
                    report.unchanged.push(id.clone());
                    continue;
                }
                Some((_, active)) => {
                    let _ = self.stop(id).await;
                    report.changed.push(id.clone());
                    *active
                }
                None => {
                    report.added.push(id.clone());
                    true
                }
            };
            self.pushers.lock().expect("pushers lock").remove(id);
            self.router.update_source_topic(id, source.topic.as_deref());
            {
                let mut slots = self.slots.lock().expect("slots lock");
                let recovered = slots.get(id).map(|s| s.recovered.clone());
                let mut slot = Slot::new(source.clone(), written);
                if let Some(recovered) = recovered {
                    slot.recovered = recovered;
                }
                slots.insert(id.clone(), slot);
            }
            if was_active && let Err(e) = self.start(id) {
                tracing::error!(stream = %id, error = %e, "the reloaded stream does not start");
            }
        }
        let sections = config.written_sections();
        let mut loaded = self.sections.lock().expect("sections lock");
        let names: std::collections::BTreeSet<&String> =
            sections.keys().chain(loaded.keys()).collect();
        report.needs_restart = names
            .into_iter()
            .filter(|name| sections.get(*name) != loaded.get(*name))
            .cloned()
            .collect();
        *loaded = sections;
        report
    }

    pub fn ids(&self) -> Vec<String> {
        self.slots
            .lock()
            .expect("slots lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn view(&self, id: &str) -> Result<StreamView, ControlError> {
        let slots = self.slots.lock().expect("slots lock");
        let slot = slots
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        let (state, error) = slot.state.lock().expect("state lock").clone();
        let stats = self.stats.stream(id);
        Ok(StreamView {
            id: id.to_owned(),
            source_type: slot.source.source_type.to_string(),
            mode: Mode::of(&slot.source).name(),
            state,
            error,
            counters: stats.snapshot(),
            upstream: stats.status(),
        })
    }

    pub fn views(&self) -> Vec<StreamView> {
        self.ids()
            .iter()
            .filter_map(|id| self.view(id).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_ones_the_api_shows() {
        for state in StreamState::ALL {
            assert_eq!(serde_json::json!(state), state.as_str());
        }
    }

    use crate::checkpoint::OffsetLedger;
    use crate::dedupe::DedupeRegistry;
    use std::path::Path;

    /// A pushed body before the source's window is restored would pass dedupe with records
    /// that are already stored: it is refused until recovery has run.
    #[tokio::test]
    async fn a_push_waits_for_the_sources_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "sink: {{type: log, log: {{dir: \"{}\"}}}}\n\
             sources:\n  s: {{type: nasa_firms, interval: 1h, paths: [\"x/*.csv\"]}}\n",
            dir.path().join("log").display()
        );
        let config = Config::parse(&yaml, Path::new("c.yaml")).unwrap();
        let dedupe = Arc::new(DedupeRegistry::new(std::time::Duration::from_secs(3600)));
        let checkpoints =
            Checkpoints::open(&config, Arc::new(OffsetLedger::default()), dedupe, None).unwrap();
        let control = Control::new(
            &config,
            Box::new(|id: &str, _: &SourceConfig| Err(format!("{id} is not started here"))),
            Box::new(|_: &str, _: &SourceConfig| unreachable!("refused before it is built")),
            Some(Arc::new(checkpoints)),
            Arc::new(Stats::default()),
            Router::new(&config),
        );
        let refused = control.push("s", bytes::Bytes::from_static(b"x")).await;
        assert_eq!(
            refused.unwrap_err(),
            ControlError::NotRecovered("s".to_owned(), "stopped")
        );
    }
}
