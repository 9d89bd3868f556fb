//! A stream: one configured source running in its mode. It only fetches, parses, dedupes
//! and enqueues; delivery happens elsewhere (DESIGN §2, requirement 4).

use std::path::Path;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::dedupe::Dedupe;
use crate::dlq::{DeadLetter, Stage};
use crate::mode::{Mode, PriorityPolicy};
use crate::queue::Queue;
use crate::sources::{Parser, Row, SourceType};
use crate::stats::{Stats, StreamStats};
use crate::transport::file::{self, FileTransport};
use crate::transport::mqtt::{Intake, MqttTransport};

/// Everything a stream needs; built by the StreamManager from config.
pub struct Stream {
    pub id: Arc<str>,
    pub source_type: SourceType,
    pub mode: Mode,
    pub transport: FileTransport,
    /// Set for an `mqtt` source: the broker pushes, so [`Stream::run`] hands over to it.
    pub mqtt: Option<MqttTransport>,
    pub parser: Arc<dyn Parser>,
    pub priority: PriorityPolicy,
    pub dedupe: Arc<Dedupe>,
    pub queue: Arc<Queue>,
    pub stats: Arc<Stats>,
}

/// How one poll went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollOutcome {
    pub files: usize,
    pub failed_files: usize,
    /// Stopped early by shutdown; unfinished files are read again next time.
    pub interrupted: bool,
}

impl Stream {
    /// Polls on the mode's schedule until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let span = info_span!("stream", stream = %self.id, source_type = %self.source_type, mode = self.mode.name());
        if let Some(mqtt) = self.mqtt.take() {
            let intake = Intake {
                stream_id: self.id.clone(),
                priority: self.priority,
                dedupe: self.dedupe.clone(),
                queue: self.queue.clone(),
                stats: self.stats.clone(),
            };
            return mqtt.run(intake, cancel).instrument(span).await;
        }
        async move {
            let Some(mut ticker) = self.mode.ticker() else {
                self.poll_once(&cancel).await;
                return;
            };
            info!("stream started");
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                self.poll_once(&cancel).await;
            }
            info!("stream stopped");
        }
        .instrument(span)
        .await
    }

    /// Reads every new or changed file once.
    pub async fn poll_once(&mut self, cancel: &CancellationToken) -> PollOutcome {
        let stream_stats = self.stats.stream(&self.id);
        let before = stream_stats.snapshot();
        let mut outcome = PollOutcome::default();
        let found = match self.transport.pending() {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "cannot list input files");
                stream_stats
                    .polls_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return PollOutcome {
                    failed_files: 1,
                    ..outcome
                };
            }
        };
        for pattern in self.transport.newly_unmatched(&found) {
            warn!(
                pattern,
                "no file matches this path (yet); the stream keeps polling it. Check `paths:` (a directory needs a glob such as dir/*.csv)"
            );
        }
        for (path, fingerprint) in found.files {
            if cancel.is_cancelled() {
                outcome.interrupted = true;
                break;
            }
            outcome.files += 1;
            let job = FileJob {
                stream: self.id.clone(),
                parser: self.parser.clone(),
                priority: self.priority,
                dedupe: self.dedupe.clone(),
                queue: self.queue.clone(),
                stats: self.stats.clone(),
                stream_stats: stream_stats.clone(),
                cancel: cancel.clone(),
                path: path.clone(),
            };
            let span = tracing::Span::current();
            let result =
                match tokio::task::spawn_blocking(move || span.in_scope(|| job.run())).await {
                    Ok(result) => result,
                    // A parser bug must not take the stream down: the file is dead-lettered.
                    Err(e) => self.parser_panicked(&path, e).await,
                };
            match result {
                FileResult::Done { rows } => {
                    debug!(file = %path.display(), rows, "file read");
                    self.transport.mark_read(path, fingerprint);
                }
                FileResult::Rejected => {
                    // Dead-lettered as a whole; not retried until the file changes.
                    outcome.failed_files += 1;
                    self.transport.mark_read(path, fingerprint);
                }
                FileResult::Unreadable => outcome.failed_files += 1,
                FileResult::Interrupted => {
                    outcome.interrupted = true;
                    break;
                }
            }
        }
        if outcome.files > 0 {
            let after = stream_stats.snapshot();
            info!(
                files = outcome.files,
                failed_files = outcome.failed_files,
                rows = after.rows - before.rows,
                new_records = after.enqueued - before.enqueued,
                duplicates = after.duplicates - before.duplicates,
                invalid = after.invalid - before.invalid,
                "poll done"
            );
        }
        let counter = if outcome.failed_files == 0 {
            &stream_stats.polls_ok
        } else {
            &stream_stats.polls_failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        outcome
    }
}

impl Stream {
    async fn parser_panicked(&self, path: &Path, e: tokio::task::JoinError) -> FileResult {
        let detail = match e.try_into_panic() {
            Ok(payload) => payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned()),
            Err(e) => e.to_string(),
        };
        error!(file = %path.display(), panic = %detail, "parser failed on this file (a bug: please report it with the file); the file goes to the DLQ");
        self.stats
            .stream(&self.id)
            .payload_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.add_dead_letter(Stage::Parse);
        let dead = DeadLetter::raw(
            Stage::Parse,
            "parser_panic",
            format!("{}: parser failed: {detail}", display(path)),
            self.id.clone(),
            String::new(),
        );
        if self.queue.push_dead(dead).await.is_err() {
            self.stats
                .dlq_write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        FileResult::Rejected
    }
}

enum FileResult {
    Done {
        rows: u64,
    },
    /// Not the expected format: one DLQ record for the whole file.
    Rejected,
    /// Could not be opened or read; tried again on the next poll.
    Unreadable,
    Interrupted,
}

/// Parses one file on a blocking thread, feeding the queue as it goes.
struct FileJob {
    stream: Arc<str>,
    parser: Arc<dyn Parser>,
    priority: PriorityPolicy,
    dedupe: Arc<Dedupe>,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    stream_stats: Arc<StreamStats>,
    cancel: CancellationToken,
    path: std::path::PathBuf,
}

impl FileJob {
    fn run(self) -> FileResult {
        use std::sync::atomic::Ordering::Relaxed;
        let mut input = match file::open(&self.path) {
            Ok(input) => input,
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "cannot open input file");
                self.stream_stats.payload_errors.fetch_add(1, Relaxed);
                return FileResult::Unreadable;
            }
        };
        let runtime = Handle::current();
        let mut rows = 0u64;
        let mut stopped = false;
        let result = self.parser.parse(&mut input, &mut |row| {
            if self.cancel.is_cancelled() {
                stopped = true;
                return false;
            }
            rows += 1;
            self.stream_stats.rows.fetch_add(1, Relaxed);
            match row {
                Row::Valid(mut record) => {
                    self.stream_stats.records.fetch_add(1, Relaxed);
                    record.priority = self.priority.apply(record.priority);
                    if !self.dedupe.insert_if_new(record.id, record.ingested_at) {
                        self.stream_stats.duplicates.fetch_add(1, Relaxed);
                        return true;
                    }
                    let id = record.id;
                    match runtime.block_on(self.queue.push(*record)) {
                        Ok(()) => {
                            self.stream_stats.enqueued.fetch_add(1, Relaxed);
                        }
                        Err(_) => {
                            self.dedupe.forget(&id);
                            error!("queue closed while the stream was still running; record not sent (it will be read again)");
                            stopped = true;
                            return false;
                        }
                    }
                }
                Row::Invalid(invalid) => {
                    self.stream_stats.invalid.fetch_add(1, Relaxed);
                    let dead = DeadLetter::raw(
                        Stage::Validate,
                        "invalid_row",
                        format!("{} {}: {}", display(&self.path), invalid.position, invalid.reason),
                        self.stream.clone(),
                        invalid.raw,
                    );
                    self.stats.add_dead_letter(Stage::Validate);
                    if runtime.block_on(self.queue.push_dead(dead)).is_err() {
                        self.stats.dlq_write_failures.fetch_add(1, Relaxed);
                        error!("queue closed while the stream was still running; dead letter lost");
                    }
                }
            }
            true
        });
        match result {
            Ok(()) if stopped => FileResult::Interrupted,
            Ok(()) => FileResult::Done { rows },
            Err(e) => {
                self.stream_stats.payload_errors.fetch_add(1, Relaxed);
                let (stage, retry) = if e.is_retriable() {
                    (Stage::Fetch, true)
                } else {
                    (Stage::Parse, false)
                };
                warn!(file = %self.path.display(), error_kind = e.kind(), error = %e, "input file rejected");
                let dead = DeadLetter::raw(
                    stage,
                    e.kind(),
                    format!("{}: {e}", display(&self.path)),
                    self.stream.clone(),
                    e.excerpt().unwrap_or_default().to_owned(),
                );
                self.stats.add_dead_letter(stage);
                if runtime.block_on(self.queue.push_dead(dead)).is_err() {
                    self.stats.dlq_write_failures.fetch_add(1, Relaxed);
                    error!("queue closed while the stream was still running; dead letter lost");
                }
                if retry {
                    FileResult::Unreadable
                } else {
                    FileResult::Rejected
                }
            }
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
