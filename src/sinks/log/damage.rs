//! What a segment line is — a log record, or damage — and how damage is reported.
//!
//! A line that is not a record (a hand edit, disk corruption, bytes that are not UTF-8) must
//! not make a whole topic unreadable: every reader skips it, so the records before and after
//! it are read as usual, and it stays on disk for inspection. Each damaged line is logged
//! once per process (readers of the same topic, such as recovery's scans for several
//! sources, would otherwise repeat it) with its segment file, line number and byte offset,
//! and counted ([`damaged_lines`]).
//!
//! Offsets come from the records' own `offset` fields, so a damaged line does not shift the
//! offsets of the records around it; it has none of its own. Only the writer's and the log
//! end's look at the last line read an offset from a damaged line, and only from the fixed
//! prefix `{"offset":N,` the writer produces: a record damaged after its prefix keeps its
//! offset taken, so that offset is never given to another record.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Damaged lines warned about one by one per segment; past this the segment is probably not
/// a log segment at all, and one more warning says so instead of thousands.
const WARN_PER_SEGMENT: usize = 1_000;

/// The parts of a record every reader needs. A record also has a `value`: a line without
/// one is not a record either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    /// The whole line, without its newline.
    pub line: &'a str,
}

/// Parses one complete line (without its newline); `Err` says why it is not a record.
pub fn parse(line: &[u8]) -> Result<Head<'_>, String> {
    #[derive(serde::Deserialize)]
    struct Fields {
        offset: u64,
        timestamp: i64,
        #[allow(dead_code)]
        value: serde::de::IgnoredAny,
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "not UTF-8 (invalid bytes at column {})",
            e.valid_up_to() + 1
        )
    })?;
    let fields: Fields = serde_json::from_str(text).map_err(|e| {
        // serde_json counts lines within the input: always 1 here, so only the column helps.
        let message = e.to_string();
        let cause = message
            .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
            .unwrap_or(&message);
        format!("not a log record: {cause} (column {})", e.column())
    })?;
    Ok(Head {
        offset: fields.offset,
        timestamp_ms: fields.timestamp,
        line: text,
    })
}

/// The offset in the writer's fixed prefix `{"offset":N,` of a line that is otherwise damaged.
pub fn prefix_offset(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"offset\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The offset the last record of `text` takes, walking its complete lines from the end back
/// past damaged ones (reported through `damaged(start of the line in text, why)`).
/// `text` ends just after a newline; `whole` says it starts at the beginning of the segment
/// (otherwise its first line may be cut and is not judged). `Some(None)`: no line of the
/// segment holds an offset; `None`: more text before this is needed.
pub fn last_offset_in(
    text: &[u8],
    whole: bool,
    mut damaged: impl FnMut(usize, String),
) -> Option<Option<u64>> {
    let Some(mut end) = text.len().checked_sub(1) else {
        return whole.then_some(None);
    };
    loop {
        let start = match text[..end].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if whole => 0,
            None => return None,
        };
        let line = &text[start..end];
        match parse(line) {
            Ok(head) => return Some(Some(head.offset)),
            Err(why) => {
                damaged(start, why);
                if let Some(offset) = prefix_offset(line) {
                    return Some(Some(offset));
                }
            }
        }
        if start == 0 {
            return Some(None);
        }
        end = start - 1;
    }
}

#[derive(Default)]
struct Seen {
    /// Per segment, the byte offsets of the damaged lines already reported.
    lines: HashMap<PathBuf, HashSet<u64>>,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Damaged lines found by this process (each once; at most [`WARN_PER_SEGMENT`] per segment).
pub fn damaged_lines() -> u64 {
    COUNT.load(Ordering::Relaxed)
}

/// Reports the damaged line starting at byte `byte` of `segment`: one warning per line per
/// process, and the counter. `line` gives its 1-based line number; it is only asked for
/// (it may read the file) when the line is new.
pub fn report(segment: &Path, byte: u64, line: impl FnOnce() -> Option<u64>, why: &str) {
    let mut seen = SEEN.lock().expect("damaged lines lock");
    let lines = seen
        .get_or_insert_with(Seen::default)
        .lines
        .entry(segment.to_owned())
        .or_default();
    if lines.contains(&byte) || lines.len() > WARN_PER_SEGMENT {
        return;
    }
    lines.insert(byte);
    if lines.len() > WARN_PER_SEGMENT {
        tracing::warn!(
            segment = %segment.display(),
            "more than {WARN_PER_SEGMENT} damaged lines in this segment: further ones are skipped \
             without a warning each and not counted; it is probably not a log segment any more — \
             stop firestream and move it out of the partition directory"
        );
        return;
    }
    drop(seen);
    COUNT.fetch_add(1, Ordering::Relaxed);
    let line = line().map_or_else(|| "?".to_owned(), |n| n.to_string());
    tracing::warn!(
        segment = %segment.display(),
        line = %line,
        byte_offset = byte,
        error = why,
        "skipping a damaged line of the local log ({}:{line}): it is not a record, so no reader \
         returns it and the records around it keep their offsets; it is kept on disk for \
         inspection — to remove it, stop firestream and delete that line (or move the segment \
         aside)",
        segment.display()
    );
}

/// The 1-based number of the line starting at `byte` of the file at `path`.
pub fn line_number_at(path: &Path, byte: u64) -> Option<u64> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).ok()?).take(byte);
    let mut newlines = 0u64;
    loop {
        let chunk = reader.fill_buf().ok()?;
        if chunk.is_empty() {
            return Some(newlines + 1);
        }
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = chunk.len();
        reader.consume(n);
    }
}

/// The 1-based number of the line starting at `byte` of `content`.
pub fn line_number_in(content: &[u8], byte: usize) -> u64 {
    content[..byte].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

/// What `f` logs, as text: how tests check a warning names the file and line.
#[cfg(test)]
pub fn captured_logs(f: impl FnOnce()) -> String {
    use std::sync::Arc;
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &[u8] = br#"{"offset":7,"timestamp":12,"key":"k","headers":{},"value":{"a":1}}"#;

    #[test]
    fn a_record_parses_and_everything_else_says_why_not() {
        let head = parse(RECORD).unwrap();
        assert_eq!((head.offset, head.timestamp_ms), (7, 12));
        assert_eq!(head.line.as_bytes(), RECORD);
        assert_eq!(
            parse(b"this is not json").unwrap_err(),
            "not a log record: expected ident (column 2)"
        );
        assert_eq!(
            parse(b"{\"offset\":1,\"timestamp\":2,\"value\":{}}\xff\xfe").unwrap_err(),
            "not UTF-8 (invalid bytes at column 38)"
        );
        // Valid JSON is not enough: a record has its offset, timestamp and value.
        assert!(
            parse(br#"{"offset":1,"timestamp":2}"#)
                .unwrap_err()
                .starts_with("not a log record: missing field `value`"),
        );
        assert!(
            parse(br#""just a string""#)
                .unwrap_err()
                .starts_with("not a log record: invalid type"),
        );
        assert!(parse(b"").unwrap_err().starts_with("not a log record: EOF"));
    }

    #[test]
    fn the_offset_prefix_is_read_only_when_whole() {
        assert_eq!(prefix_offset(b"{\"offset\":42,\"timest\xff"), Some(42));
        assert_eq!(prefix_offset(b"{\"offset\":42"), None);
        assert_eq!(prefix_offset(b"this is not json"), None);
        assert_eq!(prefix_offset(b"{\"offset\":,"), None);
    }

    #[test]
    fn the_last_offset_walks_back_past_damaged_lines() {
        let record = |o: u64| format!("{{\"offset\":{o},\"timestamp\":1,\"value\":{{}}}}\n");
        let text = format!("{}{}garbage\n\u{0}\n", record(0), record(1));
        let mut damaged = Vec::new();
        let found = last_offset_in(text.as_bytes(), true, |at, _| damaged.push(at));
        assert_eq!(found, Some(Some(1)));
        let first = record(0).len() + record(1).len();
        assert_eq!(damaged, vec![first + "garbage\n".len(), first]);
        // Nothing but damage: no offset; an empty segment likewise.
        assert_eq!(last_offset_in(b"x\ny\n", true, |_, _| {}), Some(None));
        assert_eq!(last_offset_in(b"", true, |_, _| {}), Some(None));
        // Not from the segment's start: the first line may be cut, so more text is needed.
        assert_eq!(last_offset_in(b"x\ny\n", false, |_, _| {}), None);
        // A record damaged after its prefix keeps its offset taken.
        let cut = format!("{}{{\"offset\":2,\"timestamp\":1,\"va\n", record(1));
        assert_eq!(
            last_offset_in(cut.as_bytes(), true, |_, _| {}),
            Some(Some(2))
        );
    }

    #[test]
    fn each_damaged_line_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.jsonl");
        std::fs::write(&path, b"a\nb\nc\n").unwrap();
        assert_eq!(line_number_at(&path, 4), Some(3));
        assert_eq!(line_number_in(b"a\nb\nc\n", 2), 2);
        let before = damaged_lines();
        report(&path, 2, || line_number_at(&path, 2), "why");
        report(&path, 2, || unreachable!("already reported"), "why");
        report(&path, 4, || Some(3), "why");
        // Other tests report concurrently: at least these two, and not the repeat.
        let after = damaged_lines();
        assert!(after >= before + 2, "{before} → {after}");
        let seen = SEEN.lock().unwrap();
        assert_eq!(seen.as_ref().unwrap().lines[&path], HashSet::from([2, 4]));
    }
}
