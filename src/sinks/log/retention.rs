//! Retention of the local log (DESIGN §7), as Kafka does it: whole closed segments only,
//! oldest first, so a partition stays one contiguous run of offsets from its log start. A
//! segment goes when its newest record is older than `sink.log.retention`, or while the
//! partition is larger than `sink.log.retention_bytes`. The active (newest) segment is never
//! deleted. Readers that were inside a deleted segment move on to the next one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::damage;
use super::segment::{list_segments, segment_name};

/// How often retention runs besides on every segment roll.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub max_age: Option<Duration>,
    /// Per partition.
    pub max_bytes: Option<u64>,
}

/// One segment as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStat {
    pub base: u64,
    pub bytes: u64,
    /// Newest record timestamp (ms); `None` for a segment without records.
    pub newest_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Age,
    Size,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Age => "retention",
            Reason::Size => "retention_bytes",
        }
    }
}

/// The segments to delete, oldest first: a prefix of the closed ones (`segments` ascending
/// by base; the last is the active segment and is never chosen).
pub fn select(segments: &[SegmentStat], now_ms: i64, policy: Policy) -> Vec<(u64, Reason)> {
    let Some((_active, closed)) = segments.split_last() else {
        return Vec::new();
    };
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let cutoff = policy
        .max_age
        .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
    let mut chosen = Vec::new();
    for segment in closed {
        let expired = cutoff.is_some_and(|cutoff| segment.newest_ms.is_none_or(|t| t < cutoff));
        let oversize = policy.max_bytes.is_some_and(|max| total > max);
        let reason = if expired {
            Reason::Age
        } else if oversize {
            Reason::Size
        } else {
            break;
        };
        total -= segment.bytes;
        chosen.push((segment.base, reason));
    }
    chosen
}

/// A segment that retention deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub base: u64,
    pub bytes: u64,
    pub reason: Reason,
}

/// Newest timestamps of closed segments already read; a closed segment never changes.
pub type NewestCache = HashMap<PathBuf, Option<i64>>;

/// Applies `policy` to one partition directory, deleting (and logging) what it selects.
pub fn enforce(
    partition_dir: &Path,
    topic: &str,
    partition: u32,
    policy: Policy,
    now_ms: i64,
    cache: &mut NewestCache,
) -> io::Result<Vec<Deleted>> {
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return Ok(Vec::new());
    }
    let bases = match list_segments(partition_dir) {
        Ok(bases) => bases,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if bases.len() < 2 {
        return Ok(Vec::new());
    }
    let cutoff = policy
        .max_age
        .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
    let mut stats = Vec::with_capacity(bases.len());
    // Timestamps are read only along the expired prefix: the first fresh segment ends it.
    let mut scanning = cutoff.is_some();
    for (i, &base) in bases.iter().enumerate() {
        let path = partition_dir.join(segment_name(base));
        let bytes = match fs::metadata(&path) {
            Ok(m) => m.len(),
            // Deleted meanwhile (another retention pass): nothing to decide about it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let active = i + 1 == bases.len();
        let newest_ms = if scanning && !active {
            let newest = match cache.get(&path) {
                Some(&newest) => newest,
                None => {
                    let newest = newest_timestamp(&path)?;
                    cache.insert(path.clone(), newest);
                    newest
                }
            };
            if let (Some(t), Some(cutoff)) = (newest, cutoff)
                && t >= cutoff
            {
                scanning = false;
            }
            newest
        } else {
            // Not read: treated as fresh (age never selects past a fresh segment anyway).
            Some(i64::MAX)
        };
        stats.push(SegmentStat {
            base,
            bytes,
            newest_ms,
        });
    }
    let mut deleted = Vec::new();
    for (base, reason) in select(&stats, now_ms, policy) {
        let path = partition_dir.join(segment_name(base));
        let stat = stats.iter().find(|s| s.base == base).expect("selected");
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        cache.remove(&path);
        tracing::info!(
            topic,
            partition,
            segment = %segment_name(base),
            bytes = stat.bytes,
            newest_record_ms = stat.newest_ms,
            reason = reason.as_str(),
            "deleted a log segment by retention"
        );
        deleted.push(Deleted {
            base,
            bytes: stat.bytes,
            reason,
        });
    }
    if !deleted.is_empty() {
        File::open(partition_dir)?.sync_all()?;
    }
    Ok(deleted)
}

/// The newest record timestamp in a segment (records are not always in time order). Damaged
/// lines are skipped and reported; a segment with damaged lines and no record is dated by
/// its file's modification time, so retention neither deletes it at once nor keeps it for
/// ever.
pub fn newest_timestamp(path: &Path) -> io::Result<Option<i64>> {
    let file = File::open(path)?;
    let mut reader = BufReader::with_capacity(256 * 1024, &file);
    let mut newest = None;
    let mut damaged = false;
    let (mut line, mut byte, mut line_no) = (Vec::new(), 0u64, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        line_no += 1;
        match line_timestamp(&line[..n - 1]) {
            Ok(t) => newest = Some(newest.map_or(t, |n: i64| n.max(t))),
            Err(why) => {
                damaged = true;
                damage::report(path, byte, || Some(line_no), &why);
            }
        }
        byte += n as u64;
    }
    if newest.is_none() && damaged {
        let modified = file.metadata()?.modified()?;
        newest = Some(chrono::DateTime::<chrono::Utc>::from(modified).timestamp_millis());
    }
    Ok(newest)
}

/// The `timestamp` of a log line: read from the fixed prefix the writer produces, else by
/// parsing the line; `Err` says why the line is not a record.
fn line_timestamp(line: &[u8]) -> Result<i64, String> {
    let fast = || {
        let rest = line.strip_prefix(b"{\"offset\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let rest = rest[digits..].strip_prefix(b",\"timestamp\":")?;
        let len = rest
            .iter()
            .enumerate()
            .take_while(|&(i, b)| b.is_ascii_digit() || (i == 0 && *b == b'-'))
            .count();
        std::str::from_utf8(&rest[..len]).ok()?.parse().ok()
    };
    match fast() {
        Some(t) => Ok(t),
        None => damage::parse(line).map(|head| head.timestamp_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn seg(base: u64, bytes: u64, newest_ms: i64) -> SegmentStat {
        SegmentStat {
            base,
            bytes,
            newest_ms: Some(newest_ms),
        }
    }

    fn days(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * 86_400))
    }

    #[test]
    fn age_deletes_the_expired_prefix_and_never_the_active_segment() {
        let now = 100 * DAY_MS;
        let segments = [
            seg(0, 10, now - 9 * DAY_MS),
            seg(5, 10, now - 8 * DAY_MS),
            seg(9, 10, now - 6 * DAY_MS),
            // Older than the one before (timestamps are not ordered), but after a fresh one.
            seg(12, 10, now - 30 * DAY_MS),
            seg(20, 10, now - 40 * DAY_MS),
        ];
        let policy = Policy {
            max_age: days(7),
            max_bytes: None,
        };
        assert_eq!(
            select(&segments, now, policy),
            vec![(0, Reason::Age), (5, Reason::Age)]
        );
        // Everything expired: all but the active segment go.
        let old = [seg(0, 10, 0), seg(3, 10, 1), seg(7, 10, 2)];
        assert_eq!(
            select(&old, now, policy),
            vec![(0, Reason::Age), (3, Reason::Age)]
        );
        // Exactly at the cutoff is kept.
        let edge = [seg(0, 10, now - 7 * DAY_MS), seg(1, 10, now)];
        assert_eq!(select(&edge, now, policy), vec![]);
        // One segment (active): nothing.
        assert_eq!(select(&[seg(0, 10, 0)], now, policy), vec![]);
        assert_eq!(select(&[], now, policy), vec![]);
    }

    #[test]
    fn size_deletes_oldest_until_the_partition_fits() {
        let now = 100 * DAY_MS;
        let segments = [
            seg(0, 400, now),
            seg(10, 300, now),
            seg(20, 200, now),
            seg(30, 100, now),
        ];
        let policy = Policy {
            max_age: None,
            max_bytes: Some(350),
        };
        // 1000 > 350: drop 400 (600), drop 300 (300 ≤ 350): stop.
        assert_eq!(
            select(&segments, now, policy),
            vec![(0, Reason::Size), (10, Reason::Size)]
        );
        // The active segment alone above the limit is kept.
        let policy = Policy {
            max_age: None,
            max_bytes: Some(50),
        };
        assert_eq!(
            select(&segments, now, policy),
            vec![(0, Reason::Size), (10, Reason::Size), (20, Reason::Size)]
        );
        // Exactly at the limit: nothing.
        let policy = Policy {
            max_age: None,
            max_bytes: Some(1000),
        };
        assert_eq!(select(&segments, now, policy), vec![]);
    }

    #[test]
    fn age_and_size_together_name_the_rule_that_chose_each_segment() {
        let now = 100 * DAY_MS;
        let segments = [
            seg(0, 100, now - 10 * DAY_MS),
            seg(1, 100, now - DAY_MS),
            seg(2, 100, now),
            seg(3, 100, now),
        ];
        let policy = Policy {
            max_age: days(7),
            max_bytes: Some(250),
        };
        assert_eq!(
            select(&segments, now, policy),
            vec![(0, Reason::Age), (1, Reason::Size)]
        );
        // An empty closed segment holds nothing to keep.
        let empty = [
            SegmentStat {
                base: 0,
                bytes: 0,
                newest_ms: None,
            },
            seg(1, 10, now),
        ];
        assert_eq!(
            select(
                &empty,
                now,
                Policy {
                    max_age: days(7),
                    max_bytes: None
                }
            ),
            vec![(0, Reason::Age)]
        );
    }

    fn line(offset: u64, ts: i64) -> String {
        format!(
            "{{\"offset\":{offset},\"timestamp\":{ts},\"key\":\"k\",\"headers\":{{}},\"value\":{{}}}}\n"
        )
    }

    #[test]
    fn enforce_deletes_files_by_newest_timestamp_and_keeps_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let now = 100 * DAY_MS;
        let p = dir.path();
        // Segment 0: newest record 9 days old although its last line is older still.
        fs::write(
            p.join(segment_name(0)),
            line(0, now - 20 * DAY_MS) + &line(1, now - 9 * DAY_MS) + &line(2, now - 30 * DAY_MS),
        )
        .unwrap();
        // Segment 3: one record 2 days old; segment 4 (active) is 50 days old.
        fs::write(p.join(segment_name(3)), line(3, now - 2 * DAY_MS)).unwrap();
        fs::write(p.join(segment_name(4)), line(4, now - 50 * DAY_MS)).unwrap();
        let policy = Policy {
            max_age: days(7),
            max_bytes: None,
        };
        let mut cache = NewestCache::new();
        let deleted = enforce(p, "t", 0, policy, now, &mut cache).unwrap();
        assert_eq!(
            deleted,
            vec![Deleted {
                base: 0,
                bytes: (line(0, now - 20 * DAY_MS).len() * 3) as u64,
                reason: Reason::Age
            }]
        );
        assert_eq!(list_segments(p).unwrap(), vec![3, 4]);
        assert_eq!(enforce(p, "t", 0, policy, now, &mut cache).unwrap(), vec![]);
        assert_eq!(
            cache.get(&p.join(segment_name(3))),
            Some(&Some(now - 2 * DAY_MS))
        );
        // Size: keep at most one segment's worth besides the active one.
        let policy = Policy {
            max_age: None,
            max_bytes: Some(1),
        };
        let deleted = enforce(p, "t", 0, policy, now, &mut cache).unwrap();
        assert_eq!(deleted.len(), 1);
        assert_eq!((deleted[0].base, deleted[0].reason), (3, Reason::Size));
        assert_eq!(list_segments(p).unwrap(), vec![4]);
    }

    #[test]
    fn timestamps_are_read_from_the_prefix_or_the_json() {
        assert_eq!(line_timestamp(line(7, 1_234).as_bytes()), Ok(1_234));
        assert_eq!(line_timestamp(line(7, -5).as_bytes()), Ok(-5));
        assert_eq!(
            line_timestamp(br#"{"timestamp": 99, "offset": 1, "value": {}}"#),
            Ok(99)
        );
        assert_eq!(
            line_timestamp(b"garbage"),
            Err("not a log record: expected value (column 1)".to_owned())
        );
    }

    #[test]
    fn damaged_lines_do_not_date_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(0));
        fs::write(
            &path,
            line(0, 10) + "this is not json\n" + &line(1, 30) + "\u{1}\n",
        )
        .unwrap();
        assert_eq!(newest_timestamp(&path).unwrap(), Some(30));
        // Nothing but damage: dated by the file, not deleted as if empty.
        let mut bytes = b"\xff\xfe\n".to_vec();
        bytes.extend_from_slice(b"not json either\n");
        fs::write(&path, bytes).unwrap();
        let newest = newest_timestamp(&path).unwrap().unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        assert!(
            (now - 60_000..=now + 1_000).contains(&newest),
            "{newest} vs {now}"
        );
        // Empty: no records, no damage, nothing to keep.
        fs::write(&path, "").unwrap();
        assert_eq!(newest_timestamp(&path).unwrap(), None);
    }
}
