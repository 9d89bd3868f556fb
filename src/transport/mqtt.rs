//! MQTT transport (DESIGN §4 `mqtt`): subscribes to a broker's topic filters with QoS 1 and
//! feeds each message through [`MqttMapper`], dedupe and the queue.
//!
//! At-least-once: the session is persistent (`clean_session: false`) and acks are manual. A
//! new record travels with a [`Receipt`]; the broker ack is sent only when delivery releases
//! it (delivered, or dead-lettered). Until then the broker holds the message and redelivers
//! it after a reconnect or a restart. Duplicates are acked with their original (at once when
//! it is already settled); invalid payloads once their dead letter is queued. The broker's
//! own in-flight limit (Mosquitto `max_inflight_messages`, default 20) therefore bounds how
//! many messages wait for delivery, which is the backpressure.
//!
//! An ack is only sent on the connection its message arrived on: after a reconnect the
//! broker redelivers unacked messages under fresh packet ids, and those copies are acked.
//!
//! Connection: rumqttc reconnects when polled again after an error; we back off with jitter
//! (capped) between attempts, log once per outage (and again only when the kind of failure
//! changes), and subscribe every filter on every ConnAck, whether or not the broker kept the
//! session. On cancellation, new messages are left unacked (redelivered next time), the
//! records already queued get up to `drain_timeout` to settle and be acked, then the client
//! disconnects cleanly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::buffer::Buffer;
use crate::config::SourceConfig;
use crate::dedupe::Dedupe;
use crate::dlq::{DeadLetter, Stage};
use crate::mode::PriorityPolicy;
use crate::queue::{Closed, Queue};
use crate::receipt::{Receipt, WeakReceipt};
use crate::record::RecordId;
use crate::secret::Secret;
use crate::sources::Row;
use crate::sources::mqtt::{BrokerUrl, MqttMapper};
use crate::stats::{Stats, StreamStats};

/// Largest MQTT packet accepted: the protocol's own maximum (a remaining length of
/// 268,435,455 bytes). A packet over the client's limit makes rumqttc drop the connection
/// before the message can be acknowledged, and on a persistent session the broker then
/// redelivers it forever, wedging the source. So every packet is taken in, and a payload
/// too large to be a sensor reading is dead-lettered and acknowledged instead (see
/// `sources::mqtt::MAX_PAYLOAD_BYTES`). Limit memory with the broker's
/// `message_size_limit` (Mosquitto).
pub const MAX_PACKET_BYTES: usize = 268_435_455 + 5;

/// Largest packet we send (subscriptions, acks).
const MAX_OUTGOING_BYTES: usize = 1024 * 1024;

/// Requests (acks, subscribes) buffered towards the event loop.
const REQUEST_CAPACITY: usize = 1024;

const KEEP_ALIVE: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Why an MQTT source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("cannot read ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load the system's CA certificates ({0}); set `ca_file`")]
    SystemRoots(String),
}

/// What the connection is doing, for status and tests.
#[derive(Debug, Default)]
pub struct MqttStatus {
    connected: AtomicBool,
    connections: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl MqttStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Successful connections (ConnAcks) so far; more than one means it reconnected.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// The latest connection failure, described for an operator (never with the password).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, text: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
    }
}

/// Where the stream's records go: the same pipeline a polled stream feeds.
pub struct Intake {
    pub stream_id: Arc<str>,
    pub priority: PriorityPolicy,
    pub dedupe: Arc<Dedupe>,
    pub queue: Arc<Queue>,
    /// `continuous_streaming`: records (with their receipts) go through this buffer.
    pub buffer: Option<Arc<Buffer>>,
    pub stats: Arc<Stats>,
}

/// One `mqtt` source: its broker settings and payload mapping.
pub struct MqttTransport {
    broker: Option<String>,
    topics: Vec<String>,
    client_id: String,
    username: Option<String>,
    password: Option<Secret>,
    ca_file: Option<std::path::PathBuf>,
    mapper: MqttMapper,
    drain_timeout: Duration,
    status: Arc<MqttStatus>,
}

impl MqttTransport {
    /// `drain_timeout`: how long a stop waits for queued records to settle so their
    /// messages can be acked (the manager passes `delivery.shutdown_timeout`).
    pub fn new(stream_id: Arc<str>, source: &SourceConfig, drain_timeout: Duration) -> Self {
        MqttTransport {
            client_id: source
                .client_id
                .clone()
                .unwrap_or_else(|| format!("firestream-{stream_id}")),
            mapper: MqttMapper::new(stream_id, source),
            broker: source.broker.clone(),
            topics: source.topics.clone(),
            username: source.username.clone(),
            password: source.password.clone(),
            ca_file: source.ca_file.clone(),
            drain_timeout,
            status: Arc::default(),
        }
    }

    pub fn status(&self) -> Arc<MqttStatus> {
        self.status.clone()
    }

    /// rumqttc options: persistent session, manual acks, credentials, TLS for `mqtts://`.
    pub fn options(&self) -> Result<MqttOptions, MqttError> {
        let broker = self
            .broker
            .as_deref()
            .ok_or_else(|| MqttError::Broker("no broker configured".into()))?;
        let url = BrokerUrl::parse(broker).map_err(MqttError::Broker)?;
        let mut options = MqttOptions::new(self.client_id.clone(), url.host, url.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_OUTGOING_BYTES);
        if let Some(user) = &self.username {
            let password = self.password.as_ref().map_or("", Secret::expose);
            options.set_credentials(user.clone(), password);
        }
        if url.tls {
            let tls = match &self.ca_file {
                Some(path) => TlsConfiguration::Simple {
                    ca: std::fs::read(path).map_err(|source| MqttError::CaFile {
                        path: path.display().to_string(),
                        source,
                    })?,
                    alpn: None,
                    client_auth: None,
                },
                None => system_roots()?,
            };
            options.set_transport(Transport::tls_with_config(tls));
        }
        Ok(options)
    }

    /// Runs until `cancel`: connects, subscribes, and feeds messages into `intake`.
    pub async fn run(self, intake: Intake, cancel: CancellationToken) {
        let options = match self.options() {
            Ok(options) => options,
            Err(e) => {
                error!(error = %e, "mqtt source cannot start");
                self.status.set_error(e.to_string());
                return;
            }
        };
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let generation = Arc::new(AtomicU64::new(0));
        let (events_tx, mut events) = mpsc::channel(64);
        let driver = tokio::spawn(
            drive(
                eventloop,
                events_tx,
                generation.clone(),
                self.status.clone(),
                self.topics.clone(),
                self.broker.clone().unwrap_or_default(),
            )
            .in_current_span(),
        );
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let acker = tokio::spawn(
            send_acks(client.clone(), acks_rx, generation, outstanding.clone()).in_current_span(),
        );
        let mut session = Session {
            stream_stats: intake.stats.stream(&intake.stream_id),
            intake,
            mapper: &self.mapper,
            pending: HashMap::new(),
            prune_at: 1024,
            acks: acks_tx,
            outstanding: outstanding.clone(),
        };
        info!(broker = ?self.broker, topics = ?self.topics, client_id = %self.client_id, "mqtt stream started");
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                event = events.recv() => match event {
                    Some(Incoming::Connected) => {
                        let filters = self
                            .topics
                            .iter()
                            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        if let Err(e) = client.subscribe_many(filters).await {
                            error!(error = %e, "cannot request the subscriptions");
                        }
                    }
                    Some(Incoming::Publish(publish, generation)) => {
                        session.handle(publish, generation).await;
                    }
                    None => break,
                },
            }
        }
        drop(session);
        self.drain(&mut events, &outstanding).await;
        match tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await {
            Ok(Ok(())) => {
                if tokio::time::timeout(Duration::from_secs(2), driver)
                    .await
                    .is_err()
                {
                    debug!("the mqtt event loop did not finish the disconnect in time");
                }
            }
            _ => debug!("could not request a clean disconnect; closing the connection"),
        }
        acker.abort();
        self.status.connected.store(false, Ordering::Release);
        info!("mqtt stream stopped");
    }

    /// Gives the records already queued time to settle so their messages are acked;
    /// messages arriving now are left unacked for the broker to redeliver.
    async fn drain(&self, events: &mut mpsc::Receiver<Incoming>, outstanding: &AtomicUsize) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut left_unacked = 0u64;
        while outstanding.load(Ordering::Acquire) > 0 {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(
                        unacknowledged = outstanding.load(Ordering::Acquire),
                        "stopping before every received message was delivered; the broker redelivers them on the next connection"
                    );
                    break;
                }
                event = events.recv() => match event {
                    Some(Incoming::Publish(..)) => left_unacked += 1,
                    Some(Incoming::Connected) => {}
                    None => break,
                },
                _ = tick.tick() => {}
            }
        }
        if left_unacked > 0 {
            info!(
                messages = left_unacked,
                "messages that arrived during shutdown were not taken; the broker redelivers them"
            );
        }
    }
}

/// The system's trust roots for `mqtts://` without `ca_file`. rumqttc panics when the
/// platform store cannot be read, so that panic becomes an error here.
fn system_roots() -> Result<TlsConfiguration, MqttError> {
    std::panic::catch_unwind(TlsConfiguration::default).map_err(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown error".to_owned());
        MqttError::SystemRoots(detail)
    })
}

/// What the event loop hands the stream.
enum Incoming {
    Connected,
    /// A message and the connection generation it arrived on.
    Publish(Publish, u64),
}

/// Per-run state of the message handler.
struct Session<'a> {
    intake: Intake,
    stream_stats: Arc<StreamStats>,
    mapper: &'a MqttMapper,
    /// Receipts of records still in the pipeline, so a duplicate is acked with them.
    pending: HashMap<RecordId, WeakReceipt>,
    prune_at: usize,
    acks: mpsc::UnboundedSender<AckRequest>,
    outstanding: Arc<AtomicUsize>,
}

impl Session<'_> {
    async fn handle(&mut self, publish: Publish, generation: u64) {
        let stats = self.stream_stats.clone();
        stats.rows.fetch_add(1, Ordering::Relaxed);
        let row = self.mapper.map(
            &publish.topic,
            &publish.payload,
            publish.retain,
            received_now(),
        );
        let ack = self.ack(publish, generation);
        match row {
            Row::Valid(mut record) => {
                stats.records.fetch_add(1, Ordering::Relaxed);
                record.priority = self.intake.priority.apply(record.priority);
                let id = record.id;
                if !self.intake.dedupe.insert_if_new(id, record.ingested_at) {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    match self.pending.get(&id).and_then(WeakReceipt::upgrade) {
                        Some(original) => original.also(move || ack.send()),
                        None => ack.send(),
                    }
                    return;
                }
                let receipt = Receipt::new(move || ack.send());
                self.remember(id, &receipt);
                let pushed = match &self.intake.buffer {
                    Some(buffer) => buffer.push_with_receipt(*record, receipt).await,
                    None => self.intake.queue.push_with_receipt(*record, receipt).await,
                };
                match pushed {
                    Ok(()) => {
                        stats.enqueued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Closed((_, receipt))) => {
                        receipt.abandon();
                        self.intake.dedupe.forget(&id);
                        error!(
                            "queue closed while the stream was still running; the message stays unacked for the broker to redeliver"
                        );
                    }
                }
            }
            Row::Invalid(invalid) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                let dead = DeadLetter::raw(
                    Stage::Validate,
                    "invalid_row",
                    format!("{}: {}", invalid.position, invalid.reason),
                    self.intake.stream_id.clone(),
                    invalid.raw,
                );
                self.intake.stats.add_dead_letter(Stage::Validate);
                match self.intake.queue.push_dead(dead).await {
                    Ok(()) => ack.send(),
                    Err(_) => {
                        self.intake
                            .stats
                            .dlq_write_failures
                            .fetch_add(1, Ordering::Relaxed);
                        error!(
                            "queue closed while the stream was still running; the invalid message stays unacked"
                        );
                    }
                }
            }
        }
    }

    /// The ack of one message, to be sent once; counted as outstanding until then.
    fn ack(&self, publish: Publish, generation: u64) -> AckGuard {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        AckGuard {
            request: Some(AckRequest {
                publish,
                generation,
            }),
            acks: self.acks.clone(),
            outstanding: self.outstanding.clone(),
        }
    }

    fn remember(&mut self, id: RecordId, receipt: &Receipt) {
        if self.pending.len() >= self.prune_at {
            self.pending.retain(|_, r| !r.is_resolved());
            self.prune_at = (self.pending.len() * 2).max(1024);
        }
        self.pending.insert(id, receipt.downgrade());
    }
}

struct AckRequest {
    publish: Publish,
    generation: u64,
}

/// An ack waiting for its moment. Dropped unsent (an abandoned receipt), it only stops
/// being outstanding: the broker redelivers the message.
struct AckGuard {
    request: Option<AckRequest>,
    acks: mpsc::UnboundedSender<AckRequest>,
    outstanding: Arc<AtomicUsize>,
}

impl AckGuard {
    fn send(mut self) {
        if let Some(request) = self.request.take()
            && let Err(unsent) = self.acks.send(request)
        {
            // The stream has stopped; the broker redelivers the message next time.
            drop(unsent);
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        if self.request.is_some() {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Sends acks in order. One from an earlier connection is dropped: the broker has already
/// redelivered (or will redeliver) that message, and its packet id may now mean another.
async fn send_acks(
    client: AsyncClient,
    mut requests: mpsc::UnboundedReceiver<AckRequest>,
    generation: Arc<AtomicU64>,
    outstanding: Arc<AtomicUsize>,
) {
    while let Some(request) = requests.recv().await {
        if request.generation == generation.load(Ordering::Acquire) {
            if let Err(e) = client.ack(&request.publish).await {
                debug!(error = %e, "ack not sent; the broker redelivers the message");
            }
        } else {
            debug!(
                pkid = request.publish.pkid,
                "ack from an earlier connection dropped; the broker redelivers the message"
            );
        }
        outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Polls the event loop (which reconnects when polled after an error), with backoff
/// between failed attempts, and hands ConnAcks and messages to the stream.
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Incoming>,
    generation: Arc<AtomicU64>,
    status: Arc<MqttStatus>,
    topics: Vec<String>,
    broker: String,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut outage: Option<Outage> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                generation.fetch_add(1, Ordering::AcqRel);
                status.connected.store(true, Ordering::Release);
                status.connections.fetch_add(1, Ordering::AcqRel);
                backoff = BACKOFF_FIRST;
                match outage.take() {
                    Some(o) => info!(
                        %broker,
                        down_for = ?o.since.elapsed(),
                        attempts = o.attempts,
                        session_present = ack.session_present,
                        "reconnected to the MQTT broker; subscribing again"
                    ),
                    None => {
                        info!(%broker, session_present = ack.session_present, "connected to the MQTT broker")
                    }
                }
                if events.send(Incoming::Connected).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let current = generation.load(Ordering::Acquire);
                if events
                    .send(Incoming::Publish(publish, current))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for (filter, code) in topics.iter().zip(&ack.return_codes) {
                    match code {
                        SubscribeReasonCode::Failure => error!(
                            %broker,
                            filter,
                            "the broker refused this subscription (check its ACL for this user)"
                        ),
                        SubscribeReasonCode::Success(qos) => {
                            debug!(filter, ?qos, "subscribed")
                        }
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                // Acks of messages from the lost connection must not reach the next one.
                generation.fetch_add(1, Ordering::AcqRel);
                status.connected.store(false, Ordering::Release);
                let (kind, text) = describe(&e);
                status.set_error(text.clone());
                match &mut outage {
                    Some(o) if o.kind == kind => {
                        o.attempts += 1;
                        debug!(error = %text, attempts = o.attempts, "still cannot reach the MQTT broker");
                    }
                    _ => {
                        let refused = matches!(e, ConnectionError::ConnectionRefused(_));
                        if refused {
                            error!(%broker, error = %text, "MQTT connection refused; retrying with backoff");
                        } else {
                            warn!(%broker, error = %text, "MQTT connection lost or unavailable; reconnecting with backoff");
                        }
                        let since = outage.as_ref().map_or_else(Instant::now, |o| o.since);
                        outage = Some(Outage {
                            since,
                            attempts: 1,
                            kind,
                        });
                    }
                }
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
        }
    }
}

struct Outage {
    since: Instant,
    attempts: u64,
    kind: &'static str,
}

/// Between half and all of `delay`, so many clients do not reconnect in lockstep.
fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(rand::random_range(0.0..=1.0))
}

/// A connection failure as an operator should read it, with a kind to tell outages apart.
pub fn describe(e: &ConnectionError) -> (&'static str, String) {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => {
                    "bad user name or password (check `username` and `password`)"
                }
                ConnectReturnCode::NotAuthorized => {
                    "not authorized (check `username` and `password`, and the broker's ACL)"
                }
                ConnectReturnCode::BadClientId => "client id rejected (set `client_id`)",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
                ConnectReturnCode::Success => "unexpected success code",
            };
            (
                "refused",
                format!("the broker refused the connection: {why}"),
            )
        }
        ConnectionError::Io(io) => ("io", format!("network: {io}")),
        ConnectionError::Tls(tls) => ("tls", format!("TLS: {tls}")),
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            ("timeout", "network timeout".to_owned())
        }
        other => ("protocol", other.to_string()),
    }
}

/// The receive time, to the millisecond like `ingested_at` (a clock's nanoseconds are not
/// the sensor's precision).
fn received_now() -> chrono::DateTime<Utc> {
    use chrono::DurationRound;
    let now = Utc::now();
    now.duration_trunc(chrono::TimeDelta::milliseconds(1))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(yaml: &str) -> MqttTransport {
        let source: SourceConfig = yaml_serde::from_str(yaml).unwrap();
        MqttTransport::new(Arc::from("iot"), &source, Duration::from_secs(1))
    }

    #[test]
    fn options_are_a_persistent_session_with_manual_acks() {
        let t = transport(
            "type: mqtt\nbroker: mqtt://10.0.0.5\ntopics: [a/#]\nusername: ops\npassword: s3cret-pw",
        );
        let o = t.options().unwrap();
        assert_eq!(o.broker_address(), ("10.0.0.5".to_owned(), 1883));
        assert_eq!(o.client_id(), "firestream-iot");
        assert!(!o.clean_session());
        assert!(o.manual_acks());
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("ops", "s3cret-pw")
        );
        assert_eq!(o.max_packet_size(), MAX_PACKET_BYTES);
        assert!(matches!(o.transport(), Transport::Tcp));
    }

    #[test]
    fn mqtts_uses_tls_with_the_given_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let t = transport(&format!(
            "type: mqtt\nbroker: mqtts://broker.example\ntopics: [a]\nclient_id: me\nca_file: {}",
            ca.display()
        ));
        let o = t.options().unwrap();
        assert_eq!(o.broker_address().1, 8883);
        assert_eq!(o.client_id(), "me");
        match o.transport() {
            Transport::Tls(TlsConfiguration::Simple { ca: bytes, .. }) => {
                assert_eq!(bytes, b"-----BEGIN CERTIFICATE-----\n")
            }
            _ => panic!("mqtts:// with ca_file must use TLS with that CA"),
        }
        let missing =
            transport("type: mqtt\nbroker: mqtts://b\ntopics: [a]\nca_file: /nonexistent/ca.pem");
        let err = missing.options().unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read ca_file /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn refused_logins_are_described_without_the_password() {
        let (kind, text) = describe(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized,
        ));
        assert_eq!(kind, "refused");
        assert_eq!(
            text,
            "the broker refused the connection: not authorized (check `username` and `password`, and the broker's ACL)"
        );
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(4));
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }
}
