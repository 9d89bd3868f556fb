//! One partition of the local log: `<base offset, 20 digits>.jsonl` segment files, appended
//! in order; the newest is the active one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::damage;

/// Segment file name for a base offset.
pub fn segment_name(base_offset: u64) -> String {
    format!("{base_offset:020}.jsonl")
}

/// Base offsets of the segments in a partition directory, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".jsonl")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Appends to the active segment of one partition.
pub struct PartitionWriter {
    dir: PathBuf,
    file: BufWriter<File>,
    /// Base offset of the active segment.
    base: u64,
    size: u64,
    next_offset: u64,
    /// A segment file was created since the last sync: the directory entry must be synced too.
    created: bool,
    /// A segment was closed since [`Self::take_rolled`] was last called (retention may run).
    rolled: bool,
    /// Where the current batch began, to undo it if a write fails.
    mark: Option<Mark>,
    line: Vec<u8>,
}

/// The partition's state before a batch: active segment and its size, next offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    base: u64,
    size: u64,
    next_offset: u64,
}

impl PartitionWriter {
    /// Opens a partition, creating it if needed, and recovers its next offset. A line cut
    /// short by a crash was never acknowledged, so it is truncated away (and logged).
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let bases = list_segments(dir)?;
        let (base, created) = match bases.last() {
            Some(&base) => (base, false),
            None => (0, true),
        };
        let path = dir.join(segment_name(base));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let (size, last_offset) = recover(&mut file, &path)?;
        Ok(PartitionWriter {
            dir: dir.to_owned(),
            file: BufWriter::with_capacity(256 * 1024, file),
            base,
            size,
            next_offset: last_offset.map_or(base, |o| o + 1),
            created,
            rolled: false,
            mark: None,
            line: Vec::with_capacity(4096),
        })
    }

    /// Remembers the state before a batch, so [`Self::rollback`] can undo all of it.
    pub fn begin(&mut self) {
        if self.mark.is_none() {
            self.mark = Some(Mark {
                base: self.base,
                size: self.size,
                next_offset: self.next_offset,
            });
        }
    }

    /// The batch is on disk (flushed): nothing to undo any more.
    pub fn commit(&mut self) {
        self.mark = None;
    }

    /// Whether a segment was closed since the last call.
    pub fn take_rolled(&mut self) -> bool {
        std::mem::take(&mut self.rolled)
    }

    /// A write of the batch failed (disk full, I/O error): puts the partition back as it
    /// was before [`Self::begin`] — segments created since are removed, the segment active
    /// then is truncated to its size then, which ends with a complete line — so no half
    /// line and no record reported as failed stays in the log. Consumes the writer: its
    /// buffered bytes are discarded, not written.
    pub fn rollback(self) -> io::Result<()> {
        let (file, _unwritten) = self.file.into_parts();
        drop(file);
        let Some(mark) = self.mark else {
            return Ok(());
        };
        for base in list_segments(&self.dir)? {
            if base > mark.base {
                fs::remove_file(self.dir.join(segment_name(base)))?;
            }
        }
        let path = self.dir.join(segment_name(mark.base));
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(mark.size)?;
        file.sync_data()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Appends one message; returns its offset. Data is buffered until [`Self::flush`].
    pub fn append(
        &mut self,
        timestamp_ms: i64,
        key: &str,
        headers: &[(&'static str, String)],
        value: &[u8],
        segment_bytes: u64,
    ) -> io::Result<u64> {
        let offset = self.next_offset;
        self.line.clear();
        write_line(&mut self.line, offset, timestamp_ms, key, headers, value)?;
        if self.size > 0 && self.size + self.line.len() as u64 > segment_bytes {
            self.roll(offset)?;
        }
        self.file.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        self.next_offset += 1;
        Ok(offset)
    }

    /// Starts a new segment at `base`, syncing the one it closes.
    fn roll(&mut self, base: u64) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        let path = self.dir.join(segment_name(base));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)?;
        self.file = BufWriter::with_capacity(256 * 1024, file);
        self.base = base;
        self.size = 0;
        self.created = true;
        self.rolled = true;
        Ok(())
    }

    /// Writes buffered lines to the file; with `sync`, also forces them to disk.
    pub fn flush(&mut self, sync: bool) -> io::Result<()> {
        self.file.flush()?;
        if sync {
            self.file.get_ref().sync_data()?;
            if self.created {
                File::open(&self.dir)?.sync_all()?;
                self.created = false;
            }
        }
        Ok(())
    }
}

/// `{"offset":n,"timestamp":ms,"key":"…","headers":{…},"value":<json>}\n`
fn write_line(
    out: &mut Vec<u8>,
    offset: u64,
    timestamp_ms: i64,
    key: &str,
    headers: &[(&'static str, String)],
    value: &[u8],
) -> io::Result<()> {
    write!(
        out,
        "{{\"offset\":{offset},\"timestamp\":{timestamp_ms},\"key\":"
    )?;
    serde_json::to_writer(&mut *out, key)?;
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, value)?;
    }
    out.extend_from_slice(b"},\"value\":");
    out.extend_from_slice(value);
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// Size after recovery and the offset of the last record (a damaged last line is walked
/// past, see [`damage`]: it is reported, not fatal, and the next record continues after the
/// last one that holds an offset).
fn recover(file: &mut File, path: &Path) -> io::Result<(u64, Option<u64>)> {
    let mut content = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut content)?;
    let complete = repair_tail(file, path, &content)?;
    let text = &content[..complete];
    let last_offset = damage::last_offset_in(text, true, |at, why| {
        damage::report(
            path,
            at as u64,
            || Some(damage::line_number_in(text, at)),
            &why,
        );
    })
    .flatten();
    Ok((complete as u64, last_offset))
}

/// Truncates a segment whose `content` ends in a half-written line (a crash or a failed
/// write mid-line) back to its last complete line, and logs it. Returns the length kept.
fn repair_tail(file: &File, path: &Path, content: &[u8]) -> io::Result<usize> {
    let complete = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if complete < content.len() {
        tracing::warn!(
            segment = %path.display(),
            kept_bytes = complete,
            dropped_bytes = content.len() - complete,
            "truncating a partial line left by an interrupted write (it was never acknowledged)"
        );
        file.set_len(complete as u64)?;
        file.sync_data()?;
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(w: &mut PartitionWriter, n: u32, segment_bytes: u64) -> u64 {
        w.append(
            1_000 + i64::from(n),
            "6ve1",
            &[("firestream-id", format!("id{n}"))],
            format!("{{\"n\":{n}}}").as_bytes(),
            segment_bytes,
        )
        .unwrap()
    }

    #[test]
    fn line_format_is_one_json_object_per_line() {
        let mut out = Vec::new();
        write_line(
            &mut out,
            7,
            1_700_000_000_123,
            "k\"q",
            &[("content-type", "application/json".into())],
            br#"{"a":1}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"offset\":7,\"timestamp\":1700000000123,\"key\":\"k\\\"q\",\"headers\":{\"content-type\":\"application/json\"},\"value\":{\"a\":1}}\n"
        );
    }

    #[test]
    fn offsets_continue_after_reopen_and_segments_roll() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        for n in 0..5 {
            assert_eq!(append(&mut w, n, 200), u64::from(n));
        }
        w.flush(true).unwrap();
        drop(w);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 2, "{segments:?}");
        assert_eq!(segments[0], 0);
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        assert_eq!(append(&mut w, 5, 200), 5);
        w.flush(true).unwrap();
        // Every line is valid JSON and offsets are dense across segments.
        let mut offsets = Vec::new();
        for base in list_segments(dir.path()).unwrap() {
            let text = fs::read_to_string(dir.path().join(segment_name(base))).unwrap();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                offsets.push(v["offset"].as_u64().unwrap());
            }
        }
        assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn partial_last_line_is_truncated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        append(&mut w, 0, 1 << 20);
        append(&mut w, 1, 1 << 20);
        w.flush(true).unwrap();
        drop(w);
        let path = dir.path().join(segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"offset\":2,\"timest").unwrap();
        drop(f);
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        assert_eq!(append(&mut w, 2, 1 << 20), 2);
        w.flush(true).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }

    #[test]
    fn half_written_last_line_is_cut_back_to_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(0));
        let whole = "{\"offset\":0,\"timestamp\":1,\"key\":\"k\",\"headers\":{},\"value\":{}}\n";
        fs::write(&path, format!("{whole}{{\"offset\":1,\"timestamp\":2,\"ke")).unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(
            recover(&mut file, &path).unwrap(),
            (whole.len() as u64, Some(0))
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), whole);
        // Nothing but a partial line: the segment becomes empty.
        fs::write(&path, "{\"offset\":0,\"times").unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(recover(&mut file, &path).unwrap(), (0, None));
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn rollback_undoes_a_failed_batch_across_a_roll() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        w.begin();
        append(&mut w, 0, 200);
        w.flush(true).unwrap();
        w.commit();
        let kept = fs::read(dir.path().join(segment_name(0))).unwrap();
        // The next batch rolls into new segments, some of it reaches the file, then fails.
        w.begin();
        for n in 1..6 {
            append(&mut w, n, 200);
        }
        assert!(list_segments(dir.path()).unwrap().len() > 1);
        w.rollback().unwrap();
        assert_eq!(list_segments(dir.path()).unwrap(), vec![0]);
        assert_eq!(fs::read(dir.path().join(segment_name(0))).unwrap(), kept);
        // The partition continues at the first offset of the failed batch.
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        assert_eq!(append(&mut w, 1, 1 << 20), 1);
    }

    #[test]
    fn damaged_last_lines_are_kept_and_offsets_continue_after_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        for n in 0..3 {
            append(&mut w, n, 1 << 20);
        }
        w.flush(true).unwrap();
        drop(w);
        let path = dir.path().join(segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"this is not json\n\xff\xfe\n").unwrap();
        drop(f);
        let damaged = fs::read(&path).unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        assert_eq!(append(&mut w, 3, 1 << 20), 3);
        w.flush(true).unwrap();
        // Nothing rewritten: the damaged lines stay where they were, the record follows.
        let now = fs::read(&path).unwrap();
        assert!(now.starts_with(&damaged));
        assert!(now[damaged.len()..].starts_with(b"{\"offset\":3,"));
        // A segment of nothing but damage: the next record takes its base offset.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name(7)), "not json\n").unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        assert_eq!(append(&mut w, 0, 1 << 20), 7);
    }

    #[test]
    fn a_record_damaged_after_its_prefix_keeps_its_offset_taken() {
        let dir = tempfile::tempdir().unwrap();
        let whole = "{\"offset\":4,\"timestamp\":1,\"key\":\"k\",\"headers\":{},\"value\":{}}\n";
        fs::write(
            dir.path().join(segment_name(4)),
            format!("{whole}{{\"offset\":5,\"timestamp\":2,\"key\":\x01garbled\n"),
        )
        .unwrap();
        let mut w = PartitionWriter::open(dir.path()).unwrap();
        assert_eq!(append(&mut w, 6, 1 << 20), 6);
    }
}
