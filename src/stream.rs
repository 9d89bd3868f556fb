//! A stream: one configured source running in its mode. It only fetches, parses, dedupes
//! and enqueues; delivery happens elsewhere (DESIGN §2, requirement 4).
//!
//! Every payload — a file, an HTTP response — goes through the same [`PayloadJob`] on a
//! blocking thread: parse, dedupe, enqueue, dead-letter what is invalid.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::buffer::Buffer;
use crate::checkpoint::FileCursor;
use crate::dedupe::Dedupe;
use crate::dlq::{DeadLetter, Stage};
use crate::http::{BreakerState, CircuitBreaker, FetchError};
use crate::mode::{Mode, PriorityPolicy};
use crate::queue::{Closed, Queue};
use crate::receipt::Receipt;
use crate::record::RecordId;
use crate::secret::Secret;
use crate::sources::{Parser, Row, SourceType};
use crate::stats::{Stats, StreamStats};
use crate::transport::file::{self, FileTransport};
use crate::transport::http::HttpTransport;
use crate::transport::mqtt::{Intake, MqttTransport};

/// Where a stream's payloads come from.
pub enum Transport {
    File(FileTransport),
    Http(Box<HttpSource>),
    /// The broker pushes: [`Stream::run`] hands the stream over to it.
    Mqtt(Box<MqttTransport>),
}

/// An HTTP-polled source: its requests, its circuit breaker, and a pause set by upstream
/// (payment required, an expired NWS grid).
pub struct HttpSource {
    pub transport: HttpTransport,
    pub breaker: CircuitBreaker,
    pub paused_until: Option<Instant>,
}

/// How long a stream waits after upstream says its account cannot pay (PurpleAir 402):
/// retrying sooner only burns requests.
const PAYMENT_PAUSE: Duration = Duration::from_secs(3600);

/// Everything a stream needs; built by the StreamManager from config.
pub struct Stream {
    pub id: Arc<str>,
    pub source_type: SourceType,
    pub mode: Mode,
    pub transport: Transport,
    pub parser: Arc<dyn Parser>,
    pub priority: PriorityPolicy,
    pub dedupe: Arc<Dedupe>,
    pub queue: Arc<Queue>,
    /// `continuous_streaming`: holds records on their way to the queue.
    pub buffer: Option<Arc<Buffer>>,
    pub stats: Arc<Stats>,
    /// Files whose records were all accounted for, for the checkpoint (file transport).
    pub files: Option<Arc<FileCursor>>,
}

/// How one poll went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollOutcome {
    pub files: usize,
    pub failed_files: usize,
    /// Stopped early by shutdown; unfinished files are read again next time.
    pub interrupted: bool,
    /// Not made: the circuit is open or upstream paused the stream.
    pub skipped: bool,
}

impl Stream {
    /// Polls on the mode's schedule until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let span = info_span!("stream", stream = %self.id, source_type = %self.source_type, mode = self.mode.name());
        // The buffer's timer stops (flushing what is held) when the stream stops.
        let stop_timer = cancel.child_token();
        let timer = self.buffer.clone().map(|buffer| {
            tokio::spawn(
                buffer
                    .run_timer(stop_timer.clone())
                    .instrument(span.clone()),
            )
        });
        let flushed = async move {
            stop_timer.cancel();
            if let Some(timer) = timer {
                let _ = timer.await;
            }
        };
        if let Transport::Mqtt(mqtt) = self.transport {
            let intake = Intake {
                stream_id: self.id.clone(),
                priority: self.priority,
                dedupe: self.dedupe.clone(),
                queue: self.queue.clone(),
                buffer: self.buffer.clone(),
                stats: self.stats.clone(),
            };
            mqtt.run(intake, cancel).instrument(span).await;
            return flushed.await;
        }
        // Files an earlier run finished (restored from the checkpoint before the start).
        if let (Transport::File(files), Some(cursor)) = (&mut self.transport, &self.files) {
            files.restore(cursor.files());
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
            flushed.await;
            info!("stream stopped");
        }
        .instrument(span)
        .await
    }

    /// One poll: every new or changed file, or one round of HTTP requests.
    pub async fn poll_once(&mut self, cancel: &CancellationToken) -> PollOutcome {
        let stream_stats = self.stats.stream(&self.id);
        stream_stats.update_status(|s| s.last_poll = Some(now_text()));
        let started = Instant::now();
        let outcome = match self.transport {
            Transport::File(_) => self.poll_files(cancel, stream_stats.clone()).await,
            Transport::Http(_) => self.poll_http(cancel, stream_stats.clone()).await,
            // Pushed by its broker: nothing to poll.
            Transport::Mqtt(_) => return PollOutcome::default(),
        };
        if !outcome.skipped {
            stream_stats.poll_latency.observe(started.elapsed());
        }
        outcome
    }

    fn job(
        &self,
        stream_stats: &Arc<StreamStats>,
        cancel: &CancellationToken,
        input: Input,
        origin: String,
    ) -> PayloadJob {
        PayloadJob {
            stream: self.id.clone(),
            source_type: self.source_type,
            parser: self.parser.clone(),
            priority: self.priority,
            dedupe: self.dedupe.clone(),
            queue: self.queue.clone(),
            buffer: self.buffer.clone(),
            stats: self.stats.clone(),
            stream_stats: stream_stats.clone(),
            cancel: cancel.clone(),
            input,
            origin,
            receipt: None,
            not_before: None,
            report: None,
            secrets: match &self.transport {
                Transport::Http(source) => source.transport.secrets(),
                _ => Arc::from(Vec::new()),
            },
        }
    }

    /// Runs a job on a blocking thread; a parser panic dead-letters the payload.
    async fn run_job(&self, job: PayloadJob) -> JobResult {
        let origin = job.origin.clone();
        let span = tracing::Span::current();
        match tokio::task::spawn_blocking(move || span.in_scope(|| job.run())).await {
            Ok(result) => result,
            // A parser bug must not take the stream down: the payload is dead-lettered.
            Err(e) => self.parser_panicked(&origin, e).await,
        }
    }

    async fn poll_files(
        &mut self,
        cancel: &CancellationToken,
        stream_stats: Arc<StreamStats>,
    ) -> PollOutcome {
        let before = stream_stats.snapshot();
        let mut outcome = PollOutcome::default();
        let Transport::File(transport) = &self.transport else {
            return outcome;
        };
        let found = match transport.pending() {
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
        let Transport::File(transport) = &mut self.transport else {
            return outcome;
        };
        for pattern in transport.newly_unmatched(&found) {
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
            let mut job = self.job(
                &stream_stats,
                cancel,
                Input::File(path.clone()),
                display(&path),
            );
            // The checkpoint lists the file once each of its records is accounted for.
            let receipt = self.files.clone().map(|cursor| {
                let path = path.clone();
                Receipt::new(move || cursor.done(path, fingerprint))
            });
            job.receipt = receipt.clone();
            let result = self.run_job(job).await;
            if !matches!(result, JobResult::Done { .. } | JobResult::Rejected) {
                receipt.iter().for_each(Receipt::abandon);
            }
            drop(receipt);
            let Transport::File(transport) = &mut self.transport else {
                return outcome;
            };
            match result {
                JobResult::Done { rows, .. } => {
                    debug!(file = %path.display(), rows, "file read");
                    transport.mark_read(path, fingerprint);
                }
                JobResult::Rejected => {
                    // Dead-lettered as a whole; not retried until the file changes.
                    outcome.failed_files += 1;
                    transport.mark_read(path, fingerprint);
                }
                JobResult::Unreadable => outcome.failed_files += 1,
                JobResult::Interrupted => {
                    outcome.interrupted = true;
                    break;
                }
            }
        }
        if outcome.files > 0 {
            poll_done(&outcome, 0, &before, &stream_stats);
        }
        if outcome.failed_files == 0 && !outcome.interrupted {
            stream_stats.update_status(|s| s.last_success = Some(now_text()));
        }
        count_poll(&outcome, &stream_stats);
        outcome
    }
}

impl Stream {
    /// Parses a pushed body with this source's parser, through the same validation, dedupe,
    /// queue and DLQ as a polled payload; returns once every row is queued or dead-lettered.
    /// `complete` is false when the service began to stop before every row was read: the
    /// report says how far it got.
    pub async fn push_body(
        &self,
        body: Bytes,
        origin: String,
        cancel: &CancellationToken,
    ) -> (PushReport, bool) {
        let stream_stats = self.stats.stream(&self.id);
        let mut job = self.job(&stream_stats, cancel, Input::Pushed(body), origin);
        let report = Arc::new(std::sync::Mutex::new(PushReport::default()));
        job.report = Some(report.clone());
        let complete = !matches!(self.run_job(job).await, JobResult::Interrupted);
        let report = report.lock().expect("push report lock").clone();
        (report, complete)
    }
}

impl Stream {
    /// One round of requests: skipped while the circuit is open or upstream paused the
    /// stream; each body parsed like a file; each failure classified, counted, shown in
    /// the stream's status, and dead-lettered when upstream sent something unusable.
    async fn poll_http(
        &mut self,
        cancel: &CancellationToken,
        stream_stats: Arc<StreamStats>,
    ) -> PollOutcome {
        let mut outcome = PollOutcome::default();
        let before = stream_stats.snapshot();
        let Transport::Http(source) = &mut self.transport else {
            return outcome;
        };
        let now = Instant::now();
        if let Some(until) = source.paused_until {
            if now < until {
                stream_stats.polls_skipped.fetch_add(1, Relaxed);
                outcome.skipped = true;
                return outcome;
            }
            source.paused_until = None;
            stream_stats.update_status(|s| s.paused = None);
        }
        // Visible from the first poll on, even while it waits on a host pause.
        let state = source.breaker.state(now);
        stream_stats.update_status(|s| s.circuit = Some(state.as_str()));
        if let Err(wait) = source.breaker.permit(now) {
            debug!(probe_in_s = wait.as_secs(), "circuit open; poll skipped");
            stream_stats.polls_skipped.fetch_add(1, Relaxed);
            outcome.skipped = true;
            return outcome;
        }
        // A stop must not wait for a slow upstream, a host pause or a retry's backoff.
        let fetched = tokio::select! {
            fetched = source.transport.fetch() => fetched,
            _ = cancel.cancelled() => {
                outcome.interrupted = true;
                return outcome;
            }
        };
        stream_stats
            .unchanged
            .fetch_add(fetched.unchanged as u64, Relaxed);
        let mut upstream_failed = false;
        let mut any_ok = fetched.unchanged > 0;
        for payload in fetched.payloads {
            if cancel.is_cancelled() {
                outcome.interrupted = true;
                break;
            }
            outcome.files += 1;
            let mut job = self.job(
                &stream_stats,
                cancel,
                Input::Body(payload.body.clone()),
                payload.origin.clone(),
            );
            let Transport::Http(source) = &self.transport else {
                return outcome;
            };
            job.not_before = payload
                .station
                .as_deref()
                .and_then(|s| source.transport.newest_for(s));
            let result = self.run_job(job).await;
            let Transport::Http(source) = &mut self.transport else {
                return outcome;
            };
            match result {
                JobResult::Done { newest, .. } => {
                    any_ok = true;
                    source.transport.used(&payload, newest);
                }
                JobResult::Rejected | JobResult::Unreadable => {
                    outcome.failed_files += 1;
                    upstream_failed = true;
                }
                JobResult::Interrupted => {
                    outcome.interrupted = true;
                    break;
                }
            }
        }
        for e in &fetched.failures {
            outcome.failed_files += 1;
            upstream_failed |= e.trips_breaker();
            self.fetch_failed(e, &stream_stats).await;
        }
        let Transport::Http(source) = &mut self.transport else {
            return outcome;
        };
        let now = Instant::now();
        if upstream_failed {
            let state = source.breaker.record_failure(now);
            if state == BreakerState::Open {
                warn!(
                    failures = source.breaker.consecutive_failures(),
                    "circuit open: upstream keeps failing; polls are skipped until the cool-down ends, then one probe decides"
                );
            }
        } else if any_ok || fetched.failures.is_empty() {
            if source.breaker.state(now) != BreakerState::Closed {
                info!("circuit closed: upstream answered again");
            }
            source.breaker.record_success();
            stream_stats.update_status(|s| s.last_success = Some(now_text()));
        }
        let state = source.breaker.state(now);
        let failures = source.breaker.consecutive_failures();
        stream_stats.update_status(|s| {
            s.circuit = Some(state.as_str());
            s.consecutive_failures = failures;
        });
        poll_done(&outcome, fetched.unchanged, &before, &stream_stats);
        count_poll(&outcome, &stream_stats);
        outcome
    }

    /// Accounts for a failed request: status, log, a pause when upstream asks for one,
    /// and a DLQ record (`stage: fetch`) when upstream answered with something unusable.
    async fn fetch_failed(&mut self, e: &FetchError, stream_stats: &StreamStats) {
        stream_stats.payload_errors.fetch_add(1, Relaxed);
        // Upstream may echo the key it was given (in an error page, a problem document).
        let redact = |text: &str| match &self.transport {
            Transport::Http(source) => source.transport.redact(text),
            _ => text.to_owned(),
        };
        let text = redact(&e.to_string());
        let excerpt = redact(e.excerpt().unwrap_or_default());
        let repeat = stream_stats.status().last_error_kind == Some(e.kind());
        if repeat && matches!(e, FetchError::BudgetExhausted { .. }) {
            // Said once when the budget ran out; the status keeps saying it.
            debug!(error_kind = e.kind(), error = %text, "fetch failed");
        } else {
            warn!(error_kind = e.kind(), error = %text, "fetch failed");
        }
        let pause = match e {
            FetchError::Status { status: 402, .. } => Some((
                PAYMENT_PAUSE,
                "upstream says payment is required (API points or credit used up); add credit or request fewer fields or less often",
            )),
            FetchError::Problem { problem_type, .. } if problem_type == "ForecastGridExpired" => {
                Some((
                    crate::http::NWS_GRID_EXPIRED_COOLDOWN,
                    "NWS says the forecast grid has expired",
                ))
            }
            FetchError::BudgetExhausted { .. } => None,
            _ => None,
        };
        let paused_text = pause.map(|(wait, why)| {
            let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            error!(paused_for_s = wait.as_secs(), "stream paused: {why}");
            format!(
                "{why}; polling resumes at {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        });
        if let (Some((wait, _)), Transport::Http(source)) = (pause, &mut self.transport) {
            source.paused_until = Some(Instant::now() + wait);
        }
        stream_stats.update_status(|s| {
            s.last_error = Some(text.clone());
            s.last_error_kind = Some(e.kind());
            if let FetchError::BudgetExhausted { .. } = e {
                s.paused = Some(text.clone());
            } else if paused_text.is_some() {
                s.paused = paused_text;
            }
        });
        if e.is_bad_payload() {
            self.stats.add_dead_letter(Stage::Fetch);
            let dead = DeadLetter::raw(Stage::Fetch, e.kind(), text, self.id.clone(), excerpt);
            if self.queue.push_dead(dead).await.is_err() {
                self.stats.dlq_write_failures.fetch_add(1, Relaxed);
            }
        }
    }
}

/// One line per poll with what it brought.
fn poll_done(
    outcome: &PollOutcome,
    unchanged: usize,
    before: &crate::stats::StreamSnapshot,
    stream_stats: &StreamStats,
) {
    let after = stream_stats.snapshot();
    info!(
        payloads = outcome.files,
        unchanged,
        failed = outcome.failed_files,
        rows = after.rows - before.rows,
        new_records = after.enqueued - before.enqueued,
        duplicates = after.duplicates - before.duplicates,
        invalid = after.invalid - before.invalid,
        "poll done"
    );
}

fn count_poll(outcome: &PollOutcome, stream_stats: &StreamStats) {
    let counter = if outcome.failed_files == 0 {
        &stream_stats.polls_ok
    } else {
        &stream_stats.polls_failed
    };
    counter.fetch_add(1, Relaxed);
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Stream {
    async fn parser_panicked(&self, origin: &str, e: tokio::task::JoinError) -> JobResult {
        let detail = match e.try_into_panic() {
            Ok(payload) => payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned()),
            Err(e) => e.to_string(),
        };
        error!(origin, panic = %detail, "parser failed on this payload (a bug: please report it with the payload); it goes to the DLQ");
        self.stats
            .stream(&self.id)
            .payload_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.add_dead_letter(Stage::Parse);
        let dead = DeadLetter::raw(
            Stage::Parse,
            "parser_panic",
            format!("{origin}: parser failed: {detail}"),
            self.id.clone(),
            String::new(),
        );
        if self.queue.push_dead(dead).await.is_err() {
            self.stats
                .dlq_write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        JobResult::Rejected
    }
}

enum JobResult {
    Done {
        rows: u64,
        /// The newest event time among the payload's records.
        newest: Option<DateTime<Utc>>,
    },
    /// Not the expected format: one DLQ record for the whole payload.
    Rejected,
    /// Could not be opened or read; tried again on the next poll.
    Unreadable,
    Interrupted,
}

/// What a job reads.
enum Input {
    File(PathBuf),
    Body(Bytes),
    /// Pushed to the API: a body that does not parse is the sender's, not a failed fetch.
    Pushed(Bytes),
}

/// Parses one payload on a blocking thread, feeding the queue as it goes.
struct PayloadJob {
    stream: Arc<str>,
    source_type: SourceType,
    parser: Arc<dyn Parser>,
    priority: PriorityPolicy,
    dedupe: Arc<Dedupe>,
    queue: Arc<Queue>,
    buffer: Option<Arc<Buffer>>,
    stats: Arc<Stats>,
    stream_stats: Arc<StreamStats>,
    cancel: CancellationToken,
    input: Input,
    /// The file path or redacted URL, for messages.
    origin: String,
    /// Travels with every record of the payload; resolves when all are accounted for.
    receipt: Option<Receipt>,
    /// Records with an older event time are not new (`/latest` going backwards).
    not_before: Option<DateTime<Utc>>,
    /// Secrets an HTTP answer may echo; redacted from every dead letter and log line.
    secrets: Arc<[Secret]>,
    /// A pushed body's per-row outcome, for the answer to its sender.
    report: Option<Arc<std::sync::Mutex<PushReport>>>,
}

/// What became of a pushed body's rows (`POST /api/v1/ingest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    pub rows: u64,
    /// Valid and new: queued for delivery.
    pub accepted: u64,
    /// Valid but already seen within the dedupe window.
    pub duplicates: u64,
    /// Rows that failed validation; each is also a dead letter.
    pub invalid: u64,
    /// The first [`PUSH_ERRORS_SHOWN`] invalid rows: where and why.
    pub errors: Vec<RowError>,
    /// The body as a whole could not be parsed (also a dead letter).
    pub rejected: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    pub position: String,
    pub reason: String,
}

/// How many row errors an answer lists; the rest are counted (and all are in the DLQ).
pub const PUSH_ERRORS_SHOWN: usize = 100;

impl PayloadJob {
    fn redact(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            text.to_owned()
        } else {
            crate::secret::redact(text, self.secrets.iter())
        }
    }

    fn note(&self, f: impl FnOnce(&mut PushReport)) {
        if let Some(report) = &self.report {
            f(&mut report.lock().expect("push report lock"));
        }
    }

    fn run(self) -> JobResult {
        let (mut input, from_http): (Box<dyn BufRead + Send>, bool) = match &self.input {
            Input::File(path) => match file::open(path) {
                Ok(input) => (input, false),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot open input file");
                    self.stream_stats.payload_errors.fetch_add(1, Relaxed);
                    return JobResult::Unreadable;
                }
            },
            Input::Body(body) => (Box::new(std::io::Cursor::new(body.clone())), true),
            Input::Pushed(body) => (Box::new(std::io::Cursor::new(body.clone())), false),
        };
        let runtime = Handle::current();
        let mut rows = 0u64;
        let mut newest: Option<DateTime<Utc>> = None;
        let mut stopped = false;
        let result = self.parser.parse(&mut input, &mut |row| {
            if self.cancel.is_cancelled() {
                stopped = true;
                return false;
            }
            rows += 1;
            self.stream_stats.rows.fetch_add(1, Relaxed);
            self.note(|r| r.rows += 1);
            match row {
                Row::Valid(mut record) => {
                    self.stream_stats.records.fetch_add(1, Relaxed);
                    newest = newest.max(Some(record.event_time));
                    if self.not_before.is_some_and(|t| record.event_time < t) {
                        // Older than what this upstream already gave: not new.
                        self.stream_stats.duplicates.fetch_add(1, Relaxed);
                        return true;
                    }
                    record.priority = self.priority.apply(record.priority);
                    if !self.dedupe.insert_if_new(record.id, record.ingested_at) {
                        self.stream_stats.duplicates.fetch_add(1, Relaxed);
                        self.note(|r| r.duplicates += 1);
                        return true;
                    }
                    let id = record.id;
                    let pushed = match (&self.buffer, &self.receipt) {
                        (Some(buffer), Some(receipt)) => runtime
                            .block_on(buffer.push_with_receipt(*record, receipt.clone()))
                            .map_err(|Closed((_, receipt))| receipt.abandon()),
                        (Some(buffer), None) => {
                            runtime.block_on(buffer.push(*record)).map_err(drop)
                        }
                        (None, Some(receipt)) => runtime
                            .block_on(self.queue.push_with_receipt(*record, receipt.clone()))
                            .map_err(|Closed((_, receipt))| receipt.abandon()),
                        (None, None) => runtime.block_on(self.queue.push(*record)).map_err(drop),
                    };
                    match pushed {
                        Ok(()) => {
                            self.stream_stats.enqueued.fetch_add(1, Relaxed);
                            self.note(|r| r.accepted += 1);
                        }
                        Err(()) => {
                            self.dedupe.forget(&id);
                            error!("queue closed while the stream was still running; record not sent (it will be read again)");
                            stopped = true;
                            return false;
                        }
                    }
                }
                Row::Invalid(invalid) => {
                    self.note(|r| {
                        r.invalid += 1;
                        if r.errors.len() < PUSH_ERRORS_SHOWN {
                            r.errors.push(RowError {
                                position: invalid.position.to_string(),
                                reason: self.redact(&invalid.reason),
                            });
                        }
                    });
                    // The same bad row fetched again (the next poll of the same window, a file
                    // given twice) is dead-lettered once per dedupe window, like a record.
                    let key = RecordId::from_natural_key(
                        self.source_type,
                        &["invalid", &self.stream, &invalid.reason, &invalid.raw],
                    );
                    if !self.dedupe.insert_if_new(key, Utc::now()) {
                        self.stream_stats.duplicates.fetch_add(1, Relaxed);
                        return true;
                    }
                    self.stream_stats.invalid.fetch_add(1, Relaxed);
                    let dead = DeadLetter::raw(
                        Stage::Validate,
                        "invalid_row",
                        self.redact(&format!(
                            "{} {}: {}",
                            self.origin, invalid.position, invalid.reason
                        )),
                        self.stream.clone(),
                        self.redact(&invalid.raw),
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
            Ok(()) if stopped => JobResult::Interrupted,
            Ok(()) => JobResult::Done { rows, newest },
            Err(e) => {
                self.stream_stats.payload_errors.fetch_add(1, Relaxed);
                // A response that is not the expected format is a failed fetch (DESIGN §5).
                let (stage, retry) = if e.is_retriable() {
                    (Stage::Fetch, true)
                } else if from_http {
                    (Stage::Fetch, false)
                } else {
                    (Stage::Parse, false)
                };
                let reason = self.redact(&format!("{}: {e}", self.origin));
                warn!(error_kind = e.kind(), error = %reason, "payload rejected");
                self.note(|r| r.rejected = Some(reason.clone()));
                self.stream_stats.update_status(|s| {
                    s.last_error = Some(reason.clone());
                    s.last_error_kind = Some(e.kind());
                });
                let dead = DeadLetter::raw(
                    stage,
                    e.kind(),
                    reason,
                    self.stream.clone(),
                    self.redact(e.excerpt().unwrap_or_default()),
                );
                self.stats.add_dead_letter(stage);
                if runtime.block_on(self.queue.push_dead(dead)).is_err() {
                    self.stats.dlq_write_failures.fetch_add(1, Relaxed);
                    error!("queue closed while the stream was still running; dead letter lost");
                }
                if retry {
                    JobResult::Unreadable
                } else {
                    JobResult::Rejected
                }
            }
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
