//! CSV read one physical line at a time, so one bad line costs that line and no more.
//!
//! `csv::Reader` streams records, not lines: a quote left open swallows every line after it
//! into one field, and a reader that refuses a long line ends the whole payload. Here a
//! [`Lines`] reader yields each `\n`-terminated line (a line longer than its limit is
//! skipped without being buffered, its head kept for the DLQ), and a [`LineParser`] splits
//! one line into fields with csv-core — the same quoting rules as the csv crate — saying
//! whether a quote was still open when the line ended. Used for CSV whose rows never span
//! lines (FIRMS). [`quote_left_open`] serves parsers that allow quoted newlines (`http`).

use std::io::{self, BufRead};

use csv_core::ReadRecordResult;

use super::EXCERPT_BYTES;

/// One physical line, without its `\n` or `\r\n`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Text(&'a [u8]),
    /// Longer than the limit: the rest was read past, not kept.
    TooLong {
        /// The start of the line, at most [`EXCERPT_BYTES`].
        head: &'a [u8],
        /// The whole line's length in bytes, terminator excluded.
        len: u64,
    },
}

/// The physical lines of a payload, numbered from 1, each held in memory only up to `max`
/// bytes.
pub(crate) struct Lines<R> {
    input: R,
    max: usize,
    number: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(input: R, max: usize) -> Self {
        Lines {
            input,
            max,
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next line and its number, or `None` at the end of the payload.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<(u64, Line<'_>)>> {
        self.buf.clear();
        let mut len = 0u64;
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let newline = memchr::memchr(b'\n', chunk);
            let piece = &chunk[..newline.unwrap_or(chunk.len())];
            len += piece.len() as u64;
            if !too_long {
                // At most one byte past the limit is kept: enough to know it was passed.
                let room = (self.max + 1).saturating_sub(self.buf.len());
                self.buf.extend_from_slice(&piece[..piece.len().min(room)]);
                if self.buf.len() > self.max {
                    too_long = true;
                    self.buf.truncate(EXCERPT_BYTES);
                }
            }
            let used = piece.len() + usize::from(newline.is_some());
            self.input.consume(used);
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        let line = if too_long {
            Line::TooLong {
                head: &self.buf,
                len,
            }
        } else {
            Line::Text(self.buf.strip_suffix(b"\r").unwrap_or(&self.buf))
        };
        Ok(Some((self.number, line)))
    }
}

/// Splits one physical line into fields, with the csv crate's defaults (`,`, `"` quoting,
/// `""` for a quote inside quotes); buffers are reused from line to line.
pub(crate) struct LineParser {
    reader: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl LineParser {
    pub(crate) fn new() -> Self {
        LineParser {
            // Only `\n` ends a line; `\r\n` is stripped by [`Lines`]; a lone `\r` is data.
            reader: csv_core::ReaderBuilder::new()
                .terminator(csv_core::Terminator::Any(b'\n'))
                .build(),
            out: vec![0; 1024],
            ends: vec![0; 64],
        }
    }

    /// Fills `record` with the fields of `line`. Returns false when a quoted field was still
    /// open at the end of the line (its field then holds the rest of the line): the quote
    /// is unterminated, or the row continues on the next line.
    pub(crate) fn parse(&mut self, line: &[u8], record: &mut csv::ByteRecord) -> bool {
        record.clear();
        let (mut nout, mut nends) = (0, 0);
        // The line, its terminator, then the end of input (which closes an open quote).
        for (part, mut input) in [line, b"\n", b""].into_iter().enumerate() {
            loop {
                let (result, nin, o, e) =
                    self.reader
                        .read_record(input, &mut self.out[nout..], &mut self.ends[nends..]);
                input = &input[nin..];
                nout += o;
                nends += e;
                match result {
                    ReadRecordResult::InputEmpty => break,
                    ReadRecordResult::OutputFull => {
                        let len = self.out.len() * 2;
                        self.out.resize(len, 0);
                    }
                    ReadRecordResult::OutputEndsFull => {
                        let len = self.ends.len() * 2;
                        self.ends.resize(len, 0);
                    }
                    ReadRecordResult::Record | ReadRecordResult::End => {
                        let mut start = 0;
                        for &end in &self.ends[..nends] {
                            record.push_field(&self.out[start..end]);
                            start = end;
                        }
                        let closed = part < 2;
                        if !closed {
                            // The end of input left the reader finished; start afresh.
                            self.reader.reset();
                        }
                        return closed;
                    }
                }
            }
        }
        // csv-core always ends a record at the end of input; not reached.
        self.reader.reset();
        false
    }
}

/// Whether `text` — one record and nothing after it — ends inside a quoted field. The csv
/// crate closes such a field at the end of the input without a word, so a quote left open
/// on one line would otherwise pass as a field holding every line after it.
pub(crate) fn quote_left_open(text: &[u8]) -> bool {
    let mut reader = csv_core::Reader::new();
    let mut out = [0u8; 4096];
    let mut ends = [0usize; 256];
    // Field data is not wanted, only where the record ends: the buffers are reused freely.
    for mut input in [text, b"\n"] {
        loop {
            let (result, nin, _, _) = reader.read_record(input, &mut out, &mut ends);
            input = &input[nin..];
            match result {
                ReadRecordResult::InputEmpty => break,
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                // The record ended at a terminator outside quotes.
                ReadRecordResult::Record | ReadRecordResult::End => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(data: &[u8], max: usize) -> Vec<(u64, String)> {
        let mut lines = Lines::new(data, max);
        let mut out = Vec::new();
        while let Some((n, line)) = lines.next_line().unwrap() {
            out.push((
                n,
                match line {
                    Line::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    Line::TooLong { head, len } => {
                        format!("too long {len}: {}", String::from_utf8_lossy(head))
                    }
                },
            ));
        }
        out
    }

    #[test]
    fn lines_are_numbered_and_lose_their_terminators() {
        assert_eq!(
            lines(b"a,b\r\n\nc\rd\ne", 100),
            vec![
                (1, "a,b".to_owned()),
                (2, String::new()),
                (3, "c\rd".to_owned()),
                (4, "e".to_owned()),
            ]
        );
        assert!(lines(b"", 100).is_empty());
        assert_eq!(lines(b"x\n", 100), vec![(1, "x".to_owned())]);
    }

    #[test]
    fn a_line_past_the_limit_keeps_only_its_head_and_the_next_line_follows() {
        let long = "y".repeat(1000);
        let data = format!("ab\n{long}\ncd\n");
        let got = lines(data.as_bytes(), 999);
        assert_eq!(got[0], (1, "ab".to_owned()));
        assert_eq!(
            got[1],
            (2, format!("too long 1000: {}", &long[..EXCERPT_BYTES]))
        );
        assert_eq!(got[2], (3, "cd".to_owned()));
        // Exactly at the limit is accepted.
        assert_eq!(lines(data.as_bytes(), 1000)[1], (2, long));
    }

    #[test]
    fn a_long_line_is_not_buffered_whatever_the_reader_chunks() {
        // One byte per read: the line crosses thousands of reads.
        let data = format!("{}\nok\n", "z".repeat(5000));
        let reader = std::io::BufReader::with_capacity(1, data.as_bytes());
        let mut lines = Lines::new(reader, 300);
        match lines.next_line().unwrap() {
            Some((1, Line::TooLong { head, len: 5000 })) => assert_eq!(head.len(), EXCERPT_BYTES),
            other => panic!("{other:?}"),
        }
        assert!(lines.buf.capacity() < 1000, "{}", lines.buf.capacity());
        assert_eq!(lines.next_line().unwrap(), Some((2, Line::Text(b"ok"))));
        assert_eq!(lines.next_line().unwrap(), None);
    }

    fn fields(parser: &mut LineParser, line: &str) -> (Vec<String>, bool) {
        let mut record = csv::ByteRecord::new();
        let closed = parser.parse(line.as_bytes(), &mut record);
        let fields = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        (fields, closed)
    }

    #[test]
    fn fields_follow_csv_quoting_and_an_open_quote_is_reported() {
        let mut p = LineParser::new();
        assert_eq!(
            fields(&mut p, "a,b,c"),
            (vec!["a".into(), "b".into(), "c".into()], true)
        );
        assert_eq!(
            fields(&mut p, r#"1,"x,""y""",3"#),
            (vec!["1".into(), r#"x,"y""#.into(), "3".into()], true)
        );
        assert_eq!(
            fields(&mut p, r#"ab"c,d"#),
            (vec![r#"ab"c"#.into(), "d".into()], true)
        );
        assert_eq!(
            fields(&mut p, r#"1,2,"unterminated"#),
            (vec!["1".into(), "2".into(), "unterminated\n".into()], false)
        );
        // The parser is fresh for the next line.
        assert_eq!(fields(&mut p, "e,f"), (vec!["e".into(), "f".into()], true));
        assert_eq!(fields(&mut p, "a,\r,b").0, vec!["a", "\r", "b"]);
        // Fields longer than the starting buffers.
        let wide = (0..200)
            .map(|i| "v".repeat(i))
            .collect::<Vec<_>>()
            .join(",");
        let (got, closed) = fields(&mut p, &wide);
        assert!(closed);
        assert_eq!(got.join(","), wide);
    }

    #[test]
    fn quote_left_open_only_when_the_record_ends_inside_quotes() {
        assert!(!quote_left_open(b"a,b\n"));
        assert!(!quote_left_open(b"a,\"b\nc\"\n"));
        assert!(!quote_left_open(b"a,\"b\nc\""));
        assert!(quote_left_open(b"a,\"b\nc\n"));
        assert!(quote_left_open(b"a,\"b\"\"\n"));
        assert!(quote_left_open(
            &[b"a,\"".as_slice(), &[b'x'; 10_000]].concat()
        ));
    }
}
