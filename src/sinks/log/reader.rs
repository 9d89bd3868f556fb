//! Reading the local log without a lock, while a writer may be appending: only complete
//! lines are returned, so a reader never sees half a record.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::damage;
use super::segment::{list_segments, segment_name};

/// One stored message, as its raw JSON line (without the newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub line: String,
}

impl Entry {
    /// The stored line with `topic` and `partition` added in front, for `firestream tail`.
    pub fn to_output(&self, topic: &str) -> String {
        let topic = serde_json::to_string(topic).expect("string serialises");
        format!(
            "{{\"topic\":{topic},\"partition\":{},{}",
            self.partition,
            self.line.strip_prefix('{').unwrap_or(&self.line)
        )
    }
}

/// Topics present in a log directory.
pub fn topics(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Partitions of a topic present on disk.
pub fn partitions(dir: &Path, topic: &str) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir.join(topic))? {
        if let Ok(p) = entry?.file_name().to_string_lossy().parse::<u32>() {
            found.push(p);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Reads one partition's lines in offset order across its segments, resuming where it
/// stopped; at the end it can be polled again for lines appended since. A segment deleted
/// by retention before or while it is read is skipped: reading continues at the oldest
/// segment still there (the new log start), as a Kafka consumer's offset reset does. A line
/// that is not a record is skipped and reported (see `damage.rs`): one damaged line must not
/// make the partition unreadable.
pub struct PartitionReader {
    dir: PathBuf,
    partition: u32,
    segment: Option<u64>,
    position: u64,
    /// Complete lines read in the current segment (for naming a damaged one).
    line_no: u64,
    reader: Option<BufReader<File>>,
    buf: Vec<u8>,
    /// Entries below this offset are skipped (a consumer group's starting point).
    skip_below: u64,
}

impl PartitionReader {
    pub fn new(topic_dir: &Path, partition: u32) -> Self {
        PartitionReader {
            dir: topic_dir.join(partition.to_string()),
            partition,
            segment: None,
            position: 0,
            line_no: 0,
            reader: None,
            buf: Vec::new(),
            skip_below: 0,
        }
    }

    /// A reader whose first entry is the one at `offset` (or the first stored after it).
    pub fn starting_at(topic_dir: &Path, partition: u32, offset: u64) -> io::Result<Self> {
        let mut reader = PartitionReader::new(topic_dir, partition);
        reader.seek(offset)?;
        Ok(reader)
    }

    /// Starts reading at `offset` (a consumer group's committed offset, a checkpoint's); an
    /// offset below the log start, deleted by retention, starts at the log start.
    pub fn seek(&mut self, offset: u64) -> io::Result<()> {
        let segments = match list_segments(&self.dir) {
            Ok(segments) => segments,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        self.segment = segments
            .iter()
            .rev()
            .find(|&&base| base <= offset)
            .or(segments.first())
            .copied();
        self.position = 0;
        self.line_no = 0;
        self.reader = None;
        self.skip_below = offset;
        Ok(())
    }

    /// The next complete line, or `None` when there is nothing more for now.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if self.reader.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let reader = self.reader.as_mut().expect("opened above");
            self.buf.clear();
            // Bytes, not a String: a line that is not UTF-8 is damage to skip, not an error.
            let n = reader.read_until(b'\n', &mut self.buf)?;
            if n > 0 && self.buf.ends_with(b"\n") {
                let start = self.position;
                self.position += n as u64;
                self.line_no += 1;
                let line = &self.buf[..n - 1];
                let head = match damage::parse(line) {
                    Ok(head) => head,
                    Err(why) => {
                        let segment = self.segment.expect("a segment is open");
                        let path = self.dir.join(segment_name(segment));
                        damage::report(&path, start, || Some(self.line_no), &why);
                        continue;
                    }
                };
                if head.offset < self.skip_below {
                    continue;
                }
                return Ok(Some(Entry {
                    partition: self.partition,
                    offset: head.offset,
                    timestamp_ms: head.timestamp_ms,
                    line: head.line.to_owned(),
                }));
            }
            // End of this segment, or a line still being written: continue from its start.
            reader.seek(SeekFrom::Start(self.position))?;
            let newer = list_segments(&self.dir)?
                .into_iter()
                .find(|&b| Some(b) > self.segment);
            match newer {
                Some(base) if n == 0 => {
                    self.segment = Some(base);
                    self.position = 0;
                    self.line_no = 0;
                    self.reader = None;
                }
                _ => return Ok(None),
            }
        }
    }

    /// Opens the current segment (or the first one); false when the partition has none yet.
    fn open_next(&mut self) -> io::Result<bool> {
        loop {
            let segments = || match list_segments(&self.dir) {
                Ok(segments) => Ok(segments),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e),
            };
            let base = match self.segment {
                Some(base) => base,
                None => match segments()?.first() {
                    Some(&first) => first,
                    None => return Ok(false),
                },
            };
            match File::open(self.dir.join(segment_name(base))) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(self.position))?;
                    self.segment = Some(base);
                    self.reader = Some(BufReader::new(file));
                    return Ok(true);
                }
                // Deleted by retention: go on at the oldest segment after it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let next = segments()?.into_iter().find(|&b| b > base);
                    tracing::debug!(
                        partition = self.partition,
                        segment = base,
                        ?next,
                        "segment deleted while reading; moving on"
                    );
                    self.position = 0;
                    self.line_no = 0;
                    match next {
                        Some(next) => self.segment = Some(next),
                        None => {
                            self.segment = None;
                            return Ok(false);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads a whole topic, merging partitions by (timestamp, partition, offset).
pub struct TopicReader {
    topic_dir: PathBuf,
    readers: BTreeMap<u32, PartitionReader>,
    heads: BinaryHeap<Reverse<(i64, u32, u64)>>,
    pending: BTreeMap<u32, Entry>,
}

impl TopicReader {
    pub fn open(dir: &Path, topic: &str) -> io::Result<Self> {
        Self::open_from(dir, topic, &BTreeMap::new())
    }

    /// Reads each partition from its offset in `start` (a consumer group's committed
    /// offsets); partitions not in it from their beginning.
    pub fn open_from(dir: &Path, topic: &str, start: &BTreeMap<u32, u64>) -> io::Result<Self> {
        let mut reader = TopicReader {
            topic_dir: dir.join(topic),
            readers: BTreeMap::new(),
            heads: BinaryHeap::new(),
            pending: BTreeMap::new(),
        };
        for (&p, &offset) in start {
            reader.readers.insert(
                p,
                PartitionReader::starting_at(&reader.topic_dir, p, offset)?,
            );
        }
        reader.discover(partitions(dir, topic)?)?;
        Ok(reader)
    }

    fn discover(&mut self, partitions: Vec<u32>) -> io::Result<()> {
        for p in partitions {
            if !self.readers.contains_key(&p) {
                self.readers
                    .insert(p, PartitionReader::new(&self.topic_dir, p));
            }
        }
        let idle: Vec<u32> = self
            .readers
            .keys()
            .copied()
            .filter(|p| !self.pending.contains_key(p))
            .collect();
        for p in idle {
            self.refill(p)?;
        }
        Ok(())
    }

    fn refill(&mut self, partition: u32) -> io::Result<()> {
        let reader = self.readers.get_mut(&partition).expect("known partition");
        if let Some(entry) = reader.next_entry()? {
            self.heads
                .push(Reverse((entry.timestamp_ms, entry.partition, entry.offset)));
            self.pending.insert(partition, entry);
        }
        Ok(())
    }

    /// The next entry in merged order, or `None` when every partition is read to its end.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        let Some(Reverse((_, partition, _))) = self.heads.pop() else {
            return Ok(None);
        };
        let entry = self.pending.remove(&partition).expect("head has an entry");
        self.refill(partition)?;
        Ok(Some(entry))
    }

    /// Looks again for lines and partitions that appeared since the end was reached.
    pub fn poll(&mut self) -> io::Result<()> {
        let dir = self.topic_dir.parent().unwrap_or(Path::new(".")).to_owned();
        let topic = self
            .topic_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.discover(partitions(&dir, &topic)?)
    }

    /// The newest `n` entries by timestamp (then partition, offset), oldest first.
    pub fn last(&mut self, n: usize) -> io::Result<Vec<Entry>> {
        let mut window = VecDeque::with_capacity(n.min(100_000));
        while let Some(entry) = self.next_entry()? {
            if n == 0 {
                continue;
            }
            if window.len() == n {
                window.pop_front();
            }
            window.push_back(entry);
        }
        Ok(window.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(offset: u64, ts: i64) -> String {
        format!(
            "{{\"offset\":{offset},\"timestamp\":{ts},\"key\":\"k\",\"headers\":{{}},\"value\":{{}}}}\n"
        )
    }

    #[test]
    fn merges_partitions_by_timestamp_and_skips_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        let p1 = dir.path().join("t/1");
        fs::create_dir_all(&p0).unwrap();
        fs::create_dir_all(&p1).unwrap();
        fs::write(p0.join(segment_name(0)), line(0, 10) + &line(1, 30)).unwrap();
        fs::write(p0.join(segment_name(2)), line(2, 50)).unwrap();
        fs::write(
            p1.join(segment_name(0)),
            line(0, 20) + "{\"offset\":1,\"tim",
        )
        .unwrap();
        let mut r = TopicReader::open(dir.path(), "t").unwrap();
        let mut seen = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            seen.push((e.partition, e.offset, e.timestamp_ms));
        }
        assert_eq!(seen, vec![(0, 0, 10), (1, 0, 20), (0, 1, 30), (0, 2, 50)]);
        // The writer completes the partial line: a poll picks it up.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(p1.join(segment_name(0)))
            .unwrap();
        f.write_all(b"estamp\":60,\"key\":\"k\",\"headers\":{},\"value\":{}}\n")
            .unwrap();
        r.poll().unwrap();
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.partition, e.offset, e.timestamp_ms), (1, 1, 60));
        assert!(
            e.to_output("t")
                .starts_with("{\"topic\":\"t\",\"partition\":1,\"offset\":1,")
        );
    }

    #[test]
    fn open_from_starts_each_partition_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        let p1 = dir.path().join("t/1");
        fs::create_dir_all(&p0).unwrap();
        fs::create_dir_all(&p1).unwrap();
        fs::write(
            p0.join(segment_name(0)),
            line(0, 1) + &line(1, 2) + &line(2, 3),
        )
        .unwrap();
        fs::write(p0.join(segment_name(3)), line(3, 4) + &line(4, 5)).unwrap();
        fs::write(p1.join(segment_name(0)), line(0, 6) + &line(1, 7)).unwrap();
        // p0 from offset 4 (second segment), p1 from 1; a partition not given starts at 0.
        let mut r = TopicReader::open_from(dir.path(), "t", &[(0, 4), (1, 1)].into()).unwrap();
        let mut seen = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            seen.push((e.partition, e.offset));
        }
        assert_eq!(seen, vec![(0, 4), (1, 1)]);
        // Offsets past the end: nothing now, and what is appended later is read.
        let mut r = TopicReader::open_from(dir.path(), "t", &[(0, 5), (1, 2)].into()).unwrap();
        assert_eq!(r.next_entry().unwrap(), None);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(p1.join(segment_name(0)))
            .unwrap();
        f.write_all(line(2, 8).as_bytes()).unwrap();
        r.poll().unwrap();
        assert_eq!(
            r.next_entry().unwrap().map(|e| (e.partition, e.offset)),
            Some((1, 2))
        );
        // An offset older than the first stored segment (retention) starts at that segment.
        fs::remove_file(p0.join(segment_name(0))).unwrap();
        let mut r = TopicReader::open_from(dir.path(), "t", &[(0, 1), (1, 9)].into()).unwrap();
        assert_eq!(
            r.next_entry().unwrap().map(|e| (e.partition, e.offset)),
            Some((0, 3))
        );
    }

    #[test]
    fn segments_deleted_before_or_while_reading_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        fs::create_dir_all(&p0).unwrap();
        fs::write(p0.join(segment_name(0)), line(0, 1) + &line(1, 2)).unwrap();
        fs::write(p0.join(segment_name(2)), line(2, 3) + &line(3, 4)).unwrap();
        fs::write(p0.join(segment_name(4)), line(4, 5)).unwrap();
        let mut r = PartitionReader::new(&dir.path().join("t"), 0);
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 0);
        // Retention deletes the segment being read and the next one: the open file still
        // reads to its end, then the reader continues at the oldest segment left.
        fs::remove_file(p0.join(segment_name(0))).unwrap();
        fs::remove_file(p0.join(segment_name(2))).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 1);
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 4);
        assert_eq!(r.next_entry().unwrap(), None);

        // A committed offset below the log start starts at the log start; one inside a
        // segment starts at that line.
        fs::write(p0.join(segment_name(5)), line(5, 6) + &line(6, 7)).unwrap();
        let mut r = PartitionReader::new(&dir.path().join("t"), 0);
        r.seek(1).unwrap();
        let offsets: Vec<u64> = std::iter::from_fn(|| r.next_entry().unwrap())
            .map(|e| e.offset)
            .collect();
        assert_eq!(offsets, vec![4, 5, 6]);
        r.seek(6).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 6);
        assert_eq!(r.next_entry().unwrap(), None);
    }

    #[test]
    fn damaged_lines_are_skipped_and_named_once_with_their_line_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        fs::create_dir_all(&p0).unwrap();
        let path = p0.join(segment_name(0));
        // Line 11 is not JSON; line 13 is not UTF-8; offsets 0..=11 are records.
        let mut bytes: Vec<u8> = (0..10)
            .flat_map(|i| line(i, i as i64).into_bytes())
            .collect();
        let garbage_at = bytes.len();
        bytes.extend_from_slice(b"this is not json\n");
        bytes.extend_from_slice(line(10, 10).as_bytes());
        let binary_at = bytes.len();
        bytes.extend_from_slice(b"\x80\xff{\n");
        bytes.extend_from_slice(line(11, 11).as_bytes());
        fs::write(&path, bytes).unwrap();
        let mut offsets = Vec::new();
        let logs = damage::captured_logs(|| {
            let mut r = TopicReader::open(dir.path(), "t").unwrap();
            while let Some(e) = r.next_entry().unwrap() {
                offsets.push(e.offset);
            }
            // A second reader of the same lines does not warn again.
            assert_eq!(
                TopicReader::open(dir.path(), "t")
                    .unwrap()
                    .last(3)
                    .unwrap()
                    .len(),
                3
            );
        });
        assert_eq!(offsets, (0..12).collect::<Vec<_>>());
        let warnings: Vec<&str> = logs.lines().collect();
        assert_eq!(warnings.len(), 2, "{logs}");
        let segment = path.display().to_string();
        assert!(warnings[0].contains(&format!("({segment}:11)")), "{logs}");
        assert!(
            warnings[0].contains(&format!("byte_offset={garbage_at}")),
            "{logs}"
        );
        assert!(
            warnings[0].contains("not a log record: expected ident (column 2)"),
            "{logs}"
        );
        assert!(
            warnings[0].contains("kept on disk for inspection"),
            "{logs}"
        );
        assert!(warnings[1].contains(&format!("({segment}:13)")), "{logs}");
        assert!(
            warnings[1].contains(&format!("byte_offset={binary_at}")),
            "{logs}"
        );
        assert!(warnings[1].contains("not UTF-8"), "{logs}");
        // A group starting inside the damage starts at the next record.
        let mut r = PartitionReader::starting_at(&dir.path().join("t"), 0, 10).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 10);
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 11);
        assert_eq!(r.next_entry().unwrap(), None);
    }

    #[test]
    fn a_damaged_line_being_completed_is_not_read_before_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        fs::create_dir_all(&p0).unwrap();
        let path = p0.join(segment_name(0));
        fs::write(&path, line(0, 1) + "\u{0}partial").unwrap();
        let mut r = PartitionReader::new(&dir.path().join("t"), 0);
        assert_eq!(r.next_entry().unwrap().unwrap().offset, 0);
        assert_eq!(r.next_entry().unwrap(), None);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(format!("\n{}", line(1, 2)).as_bytes()).unwrap();
        // The line numbering continues across polls: the damage is line 2.
        let logs = damage::captured_logs(|| {
            assert_eq!(r.next_entry().unwrap().unwrap().offset, 1);
        });
        assert!(logs.contains(&format!("({}:2)", path.display())), "{logs}");
    }

    #[test]
    fn last_keeps_the_newest_n() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("t/0");
        fs::create_dir_all(&p0).unwrap();
        let text: String = (0..10).map(|i| line(i, i as i64)).collect();
        fs::write(p0.join(segment_name(0)), text).unwrap();
        let last = TopicReader::open(dir.path(), "t").unwrap().last(3).unwrap();
        let offsets: Vec<_> = last.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![7, 8, 9]);
    }
}
