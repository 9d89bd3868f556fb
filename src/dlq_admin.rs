//! `firestream dlq list|replay`: reads the dead letters of the local log's `firestream-dlq`
//! (the DLQ itself with the log sink, its fallback behind Kafka) and sends the ones that
//! carry a whole envelope back to their topic through the configured sink.
//!
//! Replay remembers its progress as the offsets of the consumer group
//! [`REPLAY_GROUP`] on the DLQ topic, so a dead letter is replayed once. With a filter,
//! letters it skips keep the group offset where they are; letters handled beyond them are
//! remembered in `<dir>/firestream-dlq/.replay-done.json` until the offset passes them.
//! A letter that fails again becomes a new dead letter (attempts + 1) after the ones read,
//! so the next replay tries it again; a letter whose new dead letter cannot be stored is
//! not marked handled.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Config, SinkKind};
use crate::dlq::{DLQ_TOPIC, DeadLetter, Stage};
use crate::record::{Priority, RecordId};
use crate::router::{Router, record_headers};
use crate::sinks::log::groups;
use crate::sinks::log::reader::{self, PartitionReader};
use crate::sinks::{self, Message, Origin, SinkError};
use crate::sources::SourceType;

/// The consumer group whose offsets on `firestream-dlq` mark what replay has handled.
pub const REPLAY_GROUP: &str = "firestream-dlq-replay";

/// Dead letters per sink batch during a replay; progress is committed after each.
const REPLAY_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot read the DLQ in {dir}: {source}")]
    Read { dir: PathBuf, source: io::Error },
    #[error("cannot record replay progress in {dir}: {source}; nothing more was replayed")]
    Progress { dir: PathBuf, source: io::Error },
    #[error("cannot open the sink to replay into: {0}")]
    Sink(#[from] SinkError),
    #[error("the {sink} sink is not ready ({detail}); nothing was replayed, try again once it is")]
    NotReady { sink: &'static str, detail: String },
}

/// Which dead letters a command looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub stage: Option<Stage>,
    pub source: Option<String>,
}

impl Filter {
    fn matches(&self, letter: &StoredLetter) -> bool {
        self.stage.is_none_or(|s| letter.stage == s.as_str())
            && self
                .source
                .as_deref()
                .is_none_or(|s| letter.source_id.as_deref() == Some(s))
    }
}

/// `Stage` from its name (`fetch`, `parse`, …).
pub fn parse_stage(name: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| s.as_str() == name)
}

/// A dead letter as stored (DESIGN §5 shape), read back.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredLetter {
    pub dlq_id: String,
    pub failed_at: String,
    pub stage: String,
    pub error_kind: String,
    pub reason: String,
    #[serde(default)]
    pub attempts: u32,
    pub source_id: Option<String>,
    pub topic: Option<String>,
    pub key: Option<String>,
    pub record: Option<Box<RawValue>>,
    pub raw_excerpt: Option<String>,
}

/// One line of the DLQ topic.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition: u32,
    pub offset: u64,
    /// The stored line's `value`, whole.
    pub value: Box<RawValue>,
    /// `Err` when the value is not a dead letter (it is still listed, never replayed).
    pub letter: Result<StoredLetter, String>,
}

#[derive(Deserialize)]
struct Line {
    value: Box<RawValue>,
}

/// Every line of the DLQ topic from `start` (per partition; missing = the log start), in
/// offset order per partition, partitions in order.
fn read_entries(dir: &Path, start: &BTreeMap<u32, u64>) -> Result<Vec<Entry>, DlqError> {
    let read_err = |source| DlqError::Read {
        dir: dir.to_owned(),
        source,
    };
    if !dir.join(DLQ_TOPIC).is_dir() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for partition in reader::partitions(dir, DLQ_TOPIC).map_err(read_err)? {
        let mut partition_reader = PartitionReader::new(&dir.join(DLQ_TOPIC), partition);
        if let Some(&offset) = start.get(&partition) {
            partition_reader.seek(offset).map_err(read_err)?;
        }
        while let Some(entry) = partition_reader.next_entry().map_err(read_err)? {
            let line: Line = serde_json::from_str(&entry.line).map_err(|e| {
                read_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("partition {partition} offset {}: {e}", entry.offset),
                ))
            })?;
            let letter = serde_json::from_str::<StoredLetter>(line.value.get())
                .map_err(|e| format!("not a dead letter ({e})"));
            entries.push(Entry {
                partition,
                offset: entry.offset,
                value: line.value,
                letter,
            });
        }
    }
    Ok(entries)
}

/// What `dlq list` shows.
#[derive(Debug, Default)]
pub struct Listing {
    /// The newest `n` matching letters, oldest first.
    pub letters: Vec<Entry>,
    /// All matching letters (not only the ones shown) by stage.
    pub by_stage: BTreeMap<String, u64>,
    pub matching: u64,
    /// Lines of the DLQ topic that are not dead letters: partition, offset, why.
    pub unreadable: Vec<(u32, u64, String)>,
}

/// The dead letters of the local log matching `filter`, the newest `n` of them kept
/// (ordered by `failed_at`, then partition and offset).
pub fn list(dir: &Path, filter: &Filter, n: usize) -> Result<Listing, DlqError> {
    let mut listing = Listing::default();
    let mut matching = Vec::new();
    for entry in read_entries(dir, &BTreeMap::new())? {
        match &entry.letter {
            Ok(letter) if filter.matches(letter) => {
                *listing.by_stage.entry(letter.stage.clone()).or_default() += 1;
                matching.push(entry);
            }
            Ok(_) => {}
            Err(why) => listing
                .unreadable
                .push((entry.partition, entry.offset, why.clone())),
        }
    }
    listing.matching = matching.len() as u64;
    matching.sort_by(|a, b| {
        let time = |e: &Entry| e.letter.as_ref().map(|l| l.failed_at.clone()).ok();
        (time(a), a.partition, a.offset).cmp(&(time(b), b.partition, b.offset))
    });
    let skip = matching.len().saturating_sub(n);
    listing.letters = matching.split_off(skip);
    Ok(listing)
}

/// The fields of an envelope replay needs to route it as the router did.
#[derive(Deserialize)]
struct EnvelopeHead {
    id: String,
    source_id: String,
    source_type: SourceType,
    kind: String,
    priority: Priority,
    ingested_at: String,
    event_time: String,
}

/// A dead letter that cannot be replayed, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotReplayable {
    pub partition: u32,
    pub offset: u64,
    pub dlq_id: Option<String>,
    pub stage: Option<String>,
    pub why: String,
}

/// What `dlq replay` did (or, with `dry_run`, would do).
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    /// Dead letters not handled before and matching the filter.
    pub considered: u64,
    /// Sent to their topic (with `dry_run`: would be).
    pub replayed: u64,
    /// Per topic.
    pub replayed_by_topic: BTreeMap<String, u64>,
    /// Failed again: a new dead letter each, so the next replay tries them again.
    pub failed_again: u64,
    /// Failed again and the new dead letter could not be stored: not marked handled.
    pub not_stored: u64,
    /// Only a `raw_excerpt` (parse, validate, fetch) or not an envelope: skipped for good.
    pub not_replayable: Vec<NotReplayable>,
    /// Not matching the filter: left for a later replay.
    pub left: u64,
}

/// Replay progress beyond the group offset: offsets handled out of order, per partition.
type Done = BTreeMap<u32, BTreeSet<u64>>;

fn done_path(dir: &Path) -> PathBuf {
    dir.join(DLQ_TOPIC).join(".replay-done.json")
}

fn read_done(dir: &Path) -> io::Result<Done> {
    match fs::read_to_string(done_path(dir)) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {e}; delete it to replay letters after the group offset again",
                    done_path(dir).display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Done::new()),
        Err(e) => Err(e),
    }
}

fn write_done(dir: &Path, done: &Done) -> io::Result<()> {
    let path = done_path(dir);
    if done.values().all(BTreeSet::is_empty) {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let file = fs::File::create(&temp)?;
    serde_json::to_writer(&file, done)?;
    file.sync_all()?;
    fs::rename(&temp, &path)
}

/// Advances each partition's group offset over handled letters: the new offset is the first
/// letter not handled; handled letters after it are kept in `done`.
fn advance(
    entries: &[Entry],
    handled: &BTreeSet<(u32, u64)>,
    committed: &mut BTreeMap<u32, u64>,
    done: &mut Done,
) {
    let mut partitions: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for e in entries {
        partitions.entry(e.partition).or_default().push(e.offset);
    }
    for (partition, offsets) in partitions {
        let mut set = done.remove(&partition).unwrap_or_default();
        set.extend(
            handled
                .range((partition, 0)..=(partition, u64::MAX))
                .map(|&(_, o)| o),
        );
        let mut next = committed.get(&partition).copied().unwrap_or(0);
        for offset in offsets {
            if set.contains(&offset) {
                next = offset + 1;
            } else {
                break;
            }
        }
        set.retain(|&o| o >= next);
        committed.insert(partition, next);
        if !set.is_empty() {
            done.insert(partition, set);
        }
    }
}

/// The message that sends a dead letter's envelope back to its topic, as the router made
/// it; `Err` says why it cannot be replayed.
fn replay_message(letter: &StoredLetter) -> Result<Message, String> {
    let Some(record) = &letter.record else {
        return Err("only a raw_excerpt: there was no envelope yet".to_owned());
    };
    let (Some(topic), Some(key)) = (&letter.topic, &letter.key) else {
        return Err("no topic or key to send it to".to_owned());
    };
    if topic == DLQ_TOPIC {
        return Err("its topic is the DLQ itself".to_owned());
    }
    let head: EnvelopeHead = serde_json::from_str(record.get())
        .map_err(|e| format!("record is not a firestream envelope ({e})"))?;
    let id = RecordId::from_hex(&head.id)
        .ok_or_else(|| format!("record id {:?} is not 32 hex digits", head.id))?;
    let ingested_at = chrono::DateTime::parse_from_rfc3339(&head.ingested_at)
        .map_err(|e| format!("record ingested_at {:?}: {e}", head.ingested_at))?;
    let event_time = chrono::DateTime::parse_from_rfc3339(&head.event_time)
        .map_err(|e| format!("record event_time {:?}: {e}", head.event_time))?;
    Ok(Message {
        topic: Arc::from(topic.as_str()),
        key: key.clone(),
        timestamp_ms: ingested_at.timestamp_millis(),
        headers: record_headers(&head.source_id, &head.kind, &head.id),
        payload: record.get().as_bytes().to_vec(),
        origin: Origin::Record {
            id,
            source_id: Arc::from(head.source_id.as_str()),
            source_type: head.source_type,
            priority: head.priority,
            copy: false,
            receipt: None,
            event_time_ms: event_time.timestamp_millis(),
            enqueued: None,
        },
    })
}

/// Replays the dead letters of the local log's DLQ not replayed before and matching
/// `filter`, through the sink `config` names.
pub async fn replay(
    config: &Config,
    filter: &Filter,
    dry_run: bool,
) -> Result<ReplaySummary, DlqError> {
    let dir = &config.sink.log.dir;
    let progress_err = |source| DlqError::Progress {
        dir: dir.clone(),
        source,
    };
    let mut committed = groups::read_group(dir, DLQ_TOPIC, REPLAY_GROUP)
        .map_err(progress_err)?
        .unwrap_or_default();
    let mut done = read_done(dir).map_err(progress_err)?;
    let entries = read_entries(dir, &committed)?;
    let mut summary = ReplaySummary {
        dry_run,
        ..ReplaySummary::default()
    };
    let mut handled: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut to_send: Vec<(u32, u64, StoredLetter, Message)> = Vec::new();
    for entry in &entries {
        if done
            .get(&entry.partition)
            .is_some_and(|d| d.contains(&entry.offset))
        {
            continue;
        }
        let letter = match &entry.letter {
            Ok(letter) if filter.matches(letter) => letter,
            Ok(_) => {
                summary.left += 1;
                continue;
            }
            Err(why) => {
                if filter == &Filter::default() {
                    summary.not_replayable.push(NotReplayable {
                        partition: entry.partition,
                        offset: entry.offset,
                        dlq_id: None,
                        stage: None,
                        why: why.clone(),
                    });
                    handled.insert((entry.partition, entry.offset));
                } else {
                    summary.left += 1;
                }
                continue;
            }
        };
        summary.considered += 1;
        match replay_message(letter) {
            Ok(message) => to_send.push((entry.partition, entry.offset, letter.clone(), message)),
            Err(why) => {
                summary.not_replayable.push(NotReplayable {
                    partition: entry.partition,
                    offset: entry.offset,
                    dlq_id: Some(letter.dlq_id.clone()),
                    stage: Some(letter.stage.clone()),
                    why,
                });
                handled.insert((entry.partition, entry.offset));
            }
        }
    }
    if dry_run {
        summary.replayed = to_send.len() as u64;
        for (_, _, _, message) in &to_send {
            *summary
                .replayed_by_topic
                .entry(message.topic.to_string())
                .or_default() += 1;
        }
        return Ok(summary);
    }
    if to_send.is_empty() {
        advance(&entries, &handled, &mut committed, &mut done);
        commit(dir, &committed, &done).map_err(progress_err)?;
        return Ok(summary);
    }

    let sinks = sinks::build(config).await?;
    let readiness = sinks.main.readiness();
    if !readiness.ready {
        sinks.main.close().await?;
        return Err(DlqError::NotReady {
            sink: sinks.main.name(),
            detail: readiness.detail,
        });
    }
    let router = Router::new(config);
    let mut pending = to_send.into_iter().peekable();
    while pending.peek().is_some() {
        let chunk: Vec<_> = pending.by_ref().take(REPLAY_BATCH).collect();
        let mut places = Vec::with_capacity(chunk.len());
        let mut letters = Vec::with_capacity(chunk.len());
        let mut messages = Vec::with_capacity(chunk.len());
        for (partition, offset, letter, message) in chunk {
            places.push((partition, offset));
            letters.push(letter);
            messages.push(message);
        }
        let outcomes = sinks.main.send(messages).await;
        // Failed again: a new dead letter each, into the DLQ (or its fallback).
        let mut again: Vec<((u32, u64), DeadLetter)> = Vec::new();
        for ((place, letter), (message, result)) in places.iter().zip(&letters).zip(outcomes) {
            match result {
                Ok(_) => {
                    summary.replayed += 1;
                    *summary
                        .replayed_by_topic
                        .entry(message.topic.to_string())
                        .or_default() += 1;
                    handled.insert(*place);
                }
                Err(e) => {
                    let source: Arc<str> = match &message.origin {
                        Origin::Record { source_id, .. } => source_id.clone(),
                        Origin::DeadLetter { .. } => Arc::from(""),
                    };
                    again.push((
                        *place,
                        DeadLetter::envelope(
                            Stage::Deliver,
                            e.kind,
                            format!("replay of dead letter {}: {}", letter.dlq_id, e.message),
                            letter.attempts.saturating_add(1),
                            source,
                            message.topic.to_string(),
                            message.key.clone(),
                            &message.payload,
                        ),
                    ));
                }
            }
        }
        if !again.is_empty() {
            let messages = again.iter().map(|(_, d)| router.dead_letter(d)).collect();
            let mut refused = Vec::new();
            for ((place, _), (message, result)) in again.iter().zip(sinks.main.send(messages).await)
            {
                match result {
                    Ok(_) => {
                        summary.failed_again += 1;
                        handled.insert(*place);
                    }
                    Err(e) => refused.push((*place, message, e)),
                }
            }
            if !refused.is_empty() {
                let outcomes = match &sinks.dlq_fallback {
                    Some(fallback) => {
                        let messages = refused.iter().map(|(_, m, _)| m.clone()).collect();
                        fallback
                            .send(messages)
                            .await
                            .into_iter()
                            .map(|(_, r)| r.err())
                            .collect()
                    }
                    None => refused
                        .iter()
                        .map(|(_, _, e)| Some(e.clone()))
                        .collect::<Vec<_>>(),
                };
                for ((place, _, _), error) in refused.iter().zip(outcomes) {
                    match error {
                        None => {
                            summary.failed_again += 1;
                            handled.insert(*place);
                        }
                        Some(e) => {
                            tracing::error!(partition = place.0, offset = place.1, error = %e, "a replayed dead letter failed again and its new dead letter cannot be stored; it stays unreplayed");
                            summary.not_stored += 1;
                        }
                    }
                }
            }
        }
        advance(&entries, &handled, &mut committed, &mut done);
        commit(dir, &committed, &done).map_err(progress_err)?;
    }
    sinks.main.close().await?;
    if let Some(fallback) = &sinks.dlq_fallback {
        fallback.close().await?;
    }
    Ok(summary)
}

fn commit(dir: &Path, committed: &BTreeMap<u32, u64>, done: &Done) -> io::Result<()> {
    if committed.is_empty() && done.is_empty() {
        return Ok(());
    }
    // The done set first: a crash between the two writes then replays nothing twice.
    write_done(dir, done)?;
    groups::commit_group(dir, DLQ_TOPIC, REPLAY_GROUP, committed)
}

/// `dlq list`: a table (or JSON lines) of the newest `n` matching letters, then the counts
/// by stage (on stderr with `json`, so stdout stays one object per line).
pub fn print_list(config: &Config, filter: &Filter, n: usize, json: bool) -> Result<(), DlqError> {
    let dir = &config.sink.log.dir;
    let listing = list(dir, filter, n)?;
    let mut out = io::stdout().lock();
    let mut notes = Vec::new();
    if config.sink.kind == SinkKind::Kafka {
        notes.push(format!(
            "note: the sink is Kafka; this is the local log's fallback DLQ in {} (read Kafka's {DLQ_TOPIC} with a Kafka consumer)",
            dir.display()
        ));
    }
    // A closed pipe (`| head`) ends the listing quietly.
    let _ = write_listing(&mut out, &listing, json);
    let counts: Vec<String> = listing
        .by_stage
        .iter()
        .map(|(stage, n)| format!("{stage} {n}"))
        .collect();
    notes.push(format!(
        "{} dead letter(s) match ({} shown){}{}",
        listing.matching,
        listing.letters.len(),
        if counts.is_empty() {
            ""
        } else {
            "; by stage: "
        },
        counts.join(", ")
    ));
    for (partition, offset, why) in &listing.unreadable {
        notes.push(format!(
            "warning: {DLQ_TOPIC} partition {partition} offset {offset}: {why}"
        ));
    }
    for line in notes {
        if json {
            eprintln!("{line}");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(())
}

fn write_listing(out: &mut impl Write, listing: &Listing, json: bool) -> io::Result<()> {
    if json {
        for entry in &listing.letters {
            let mut value: serde_json::Value =
                serde_json::from_str(entry.value.get()).map_err(io::Error::other)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("partition".into(), entry.partition.into());
                map.insert("offset".into(), entry.offset.into());
            }
            writeln!(out, "{value}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24}  {:<8}  {:<22}  {:<22}  {:<26}  REASON",
        "FAILED_AT", "STAGE", "ERROR_KIND", "SOURCE_ID", "TOPIC"
    )?;
    for entry in &listing.letters {
        let Ok(l) = &entry.letter else { continue };
        writeln!(
            out,
            "{:<24}  {:<8}  {:<22}  {:<22}  {:<26}  {}",
            l.failed_at,
            l.stage,
            l.error_kind,
            l.source_id.as_deref().unwrap_or("-"),
            l.topic.as_deref().unwrap_or("-"),
            shorten(&l.reason, 80)
        )?;
    }
    Ok(())
}

/// `dlq replay`'s summary: replayed per topic, not replayable (the first 20 with why),
/// failed again.
pub fn print_replay(summary: &ReplaySummary) {
    let mut out = io::stdout().lock();
    let _ = write_replay(&mut out, summary);
}

fn write_replay(out: &mut impl Write, summary: &ReplaySummary) -> io::Result<()> {
    let dry_run = summary.dry_run;
    writeln!(
        out,
        "dlq replay{}: {} dead letter(s) considered",
        if dry_run { " (dry run)" } else { "" },
        summary.considered
    )?;
    let verb = if dry_run { "would replay" } else { "replayed" };
    writeln!(out, "  {verb:<22} {:>8}", summary.replayed)?;
    for (topic, n) in &summary.replayed_by_topic {
        writeln!(out, "    {topic:<28} {n:>8}")?;
    }
    writeln!(
        out,
        "  not replayable         {:>8}",
        summary.not_replayable.len()
    )?;
    for n in summary.not_replayable.iter().take(20) {
        writeln!(
            out,
            "    partition {} offset {} ({}): {}",
            n.partition,
            n.offset,
            n.stage.as_deref().unwrap_or("?"),
            n.why
        )?;
    }
    if summary.not_replayable.len() > 20 {
        writeln!(
            out,
            "    … {} more (see `firestream dlq list`)",
            summary.not_replayable.len() - 20
        )?;
    }
    if !dry_run {
        writeln!(out, "  failed again → DLQ     {:>8}", summary.failed_again)?;
    }
    if summary.left > 0 {
        writeln!(out, "  not matching, left     {:>8}", summary.left)?;
    }
    if summary.not_stored > 0 {
        writeln!(
            out,
            "  NOT STORED: {} failed again and could not be dead-lettered; they stay unreplayed (see the error log)",
            summary.not_stored
        )?;
    }
    Ok(())
}

/// `text` on one line, cut to `max` characters.
fn shorten(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::Sink;

    fn entry(partition: u32, offset: u64) -> Entry {
        Entry {
            partition,
            offset,
            value: RawValue::from_string("{}".into()).unwrap(),
            letter: Err("x".into()),
        }
    }

    fn envelope(id_byte: u8) -> Vec<u8> {
        format!(
            r#"{{"schema":"firestream.record.v1","id":"{}","source_id":"s","source_type":"nasa_firms","kind":"fire_detection","event_time":"2026-01-01T00:00:00Z","ingested_at":"2026-01-01T00:00:01.500Z","location":null,"priority":"critical","quality":{{"score":1.0,"flags":[]}},"data":{{}}}}"#,
            format!("{id_byte:02x}").repeat(16)
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_filtered_replay_then_a_full_one_deliver_each_letter_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("", Path::new("t.yaml")).unwrap();
        config.sink.log.dir = dir.path().to_owned();
        let router = Router::new(&config);
        let letters = [
            DeadLetter::envelope(
                Stage::Queue,
                "queue_full",
                "evicted",
                1,
                Arc::from("s"),
                "t-a".into(),
                "s".into(),
                &envelope(1),
            ),
            DeadLetter::envelope(
                Stage::Deliver,
                "disk_full",
                "no space",
                3,
                Arc::from("s"),
                "t-b".into(),
                "s".into(),
                &envelope(2),
            ),
            DeadLetter::raw(
                Stage::Validate,
                "invalid_row",
                "bad",
                Arc::from("s"),
                "1,2".into(),
            ),
        ];
        {
            let sink = crate::sinks::log::LogSink::open(&config).unwrap();
            let outcomes = sink
                .send(letters.iter().map(|d| router.dead_letter(d)).collect())
                .await;
            // One DLQ partition (same key), offsets 0, 1, 2.
            let placed: Vec<_> = outcomes
                .iter()
                .map(|(_, r)| r.as_ref().unwrap().offset)
                .collect();
            assert_eq!(placed, vec![Some(0), Some(1), Some(2)]);
            sink.close().await.unwrap();
        }
        let deliver_only = Filter {
            stage: Some(Stage::Deliver),
            source: None,
        };
        let s = replay(&config, &deliver_only, false).await.unwrap();
        assert_eq!((s.considered, s.replayed, s.left), (1, 1, 2));
        assert_eq!(s.replayed_by_topic, BTreeMap::from([("t-b".to_owned(), 1)]));
        // The queue letter before it holds the offset; the deliver letter is remembered.
        let committed = groups::read_group(dir.path(), DLQ_TOPIC, REPLAY_GROUP)
            .unwrap()
            .unwrap_or_default();
        let partition = *committed.keys().next().unwrap();
        assert_eq!(committed, BTreeMap::from([(partition, 0)]));
        assert_eq!(
            read_done(dir.path()).unwrap(),
            Done::from([(partition, BTreeSet::from([1]))])
        );

        let s = replay(&config, &Filter::default(), false).await.unwrap();
        assert_eq!(
            (s.considered, s.replayed, s.left, s.failed_again),
            (2, 1, 0, 0)
        );
        assert_eq!(s.replayed_by_topic, BTreeMap::from([("t-a".to_owned(), 1)]));
        assert_eq!(s.not_replayable.len(), 1);
        assert_eq!(s.not_replayable[0].stage.as_deref(), Some("validate"));
        assert_eq!(
            groups::read_group(dir.path(), DLQ_TOPIC, REPLAY_GROUP)
                .unwrap()
                .unwrap_or_default(),
            BTreeMap::from([(partition, 3)])
        );
        assert!(!done_path(dir.path()).exists());
        let s = replay(&config, &Filter::default(), false).await.unwrap();
        assert_eq!((s.considered, s.replayed), (0, 0));

        // Each topic got its record once, with the router's headers and ingested_at time.
        for (topic, id_byte) in [("t-a", 1u8), ("t-b", 2)] {
            let mut r = reader::TopicReader::open(dir.path(), topic).unwrap();
            let e = r.next_entry().unwrap().unwrap();
            assert_eq!(r.next_entry().unwrap(), None);
            let line: serde_json::Value = serde_json::from_str(&e.line).unwrap();
            assert_eq!(line["key"], "s");
            assert_eq!(line["timestamp"], 1_767_225_601_500_i64);
            assert_eq!(
                line["headers"],
                serde_json::json!({
                    "firestream-source-id": "s",
                    "firestream-kind": "fire_detection",
                    "firestream-schema": crate::record::SCHEMA,
                    "firestream-id": format!("{id_byte:02x}").repeat(16),
                    "content-type": "application/json",
                })
            );
        }
    }

    #[tokio::test]
    async fn damaged_lines_in_the_dlq_are_skipped_by_list_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("", Path::new("t.yaml")).unwrap();
        config.sink.log.dir = dir.path().to_owned();
        let router = Router::new(&config);
        let letters: Vec<DeadLetter> = (1..=3)
            .map(|n| {
                DeadLetter::envelope(
                    Stage::Deliver,
                    "disk_full",
                    "no space",
                    1,
                    Arc::from("s"),
                    "t-a".into(),
                    "s".into(),
                    &envelope(n),
                )
            })
            .collect();
        let sink = crate::sinks::log::LogSink::open(&config).unwrap();
        let outcomes = sink
            .send(letters.iter().map(|d| router.dead_letter(d)).collect())
            .await;
        let partition = outcomes[0].1.as_ref().unwrap().partition;
        sink.close().await.unwrap();
        drop(sink);
        // Garbage between the first and second letter, bytes that are not UTF-8 after it.
        let path = dir
            .path()
            .join(DLQ_TOPIC)
            .join(partition.to_string())
            .join(crate::sinks::log::segment_name(0));
        let text = std::fs::read(&path).unwrap();
        let mut lines = text.split_inclusive(|&b| b == b'\n');
        let mut damaged = lines.next().unwrap().to_vec();
        damaged.extend_from_slice(b"this is not json\n");
        damaged.extend(lines.next().unwrap());
        damaged.extend_from_slice(b"\xc3\x28\n");
        damaged.extend(lines.next().unwrap());
        std::fs::write(&path, damaged).unwrap();

        let listing = list(dir.path(), &Filter::default(), 10).unwrap();
        let offsets: Vec<u64> = listing.letters.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
        assert!(listing.unreadable.is_empty());
        let s = replay(&config, &Filter::default(), false).await.unwrap();
        assert_eq!((s.considered, s.replayed, s.failed_again), (3, 3, 0));
        assert_eq!(
            groups::read_group(dir.path(), DLQ_TOPIC, REPLAY_GROUP)
                .unwrap()
                .unwrap_or_default(),
            BTreeMap::from([(partition, 3)])
        );
    }

    #[test]
    fn group_offset_advances_over_the_handled_prefix_and_remembers_the_rest() {
        let entries: Vec<Entry> = [(0, 3), (0, 4), (0, 5), (0, 6), (1, 0), (1, 1)]
            .into_iter()
            .map(|(p, o)| entry(p, o))
            .collect();
        let mut committed = BTreeMap::from([(0, 3)]);
        let mut done = Done::new();
        // 3 and 5 handled, 4 left by a filter; partition 1 all handled.
        let handled = BTreeSet::from([(0, 3), (0, 5), (1, 0), (1, 1)]);
        advance(&entries, &handled, &mut committed, &mut done);
        assert_eq!(committed, BTreeMap::from([(0, 4), (1, 2)]));
        assert_eq!(done, Done::from([(0, BTreeSet::from([5]))]));
        // Later 4 and 6 are handled: the offset passes everything and `done` empties.
        let handled = BTreeSet::from([(0, 4), (0, 6)]);
        advance(&entries[1..4], &handled, &mut committed, &mut done);
        assert_eq!(committed, BTreeMap::from([(0, 7), (1, 2)]));
        assert_eq!(done, Done::new());
    }

    #[test]
    fn a_raw_only_letter_is_not_replayable_and_says_why() {
        let letter: StoredLetter = serde_json::from_str(
            r#"{"dlq_id":"d","failed_at":"2026-01-01T00:00:00.000Z","stage":"validate","error_kind":"invalid_row","reason":"r","attempts":1,"source_id":"s","topic":null,"key":null,"raw_excerpt":"1,2"}"#,
        )
        .unwrap();
        assert_eq!(
            replay_message(&letter).unwrap_err(),
            "only a raw_excerpt: there was no envelope yet"
        );
        assert!(
            Filter {
                stage: Some(Stage::Validate),
                source: Some("s".into())
            }
            .matches(&letter)
        );
        assert!(
            !Filter {
                stage: Some(Stage::Parse),
                source: None
            }
            .matches(&letter)
        );
        assert_eq!(parse_stage("shutdown"), Some(Stage::Shutdown));
        assert_eq!(parse_stage("nope"), None);
        assert_eq!(shorten("a\nbcdef", 4), "a b…");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
