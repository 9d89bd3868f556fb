//! File transport: `paths:` globs, plain or gzip (recognised by content, not name).
//!
//! Used by the demo, by backfills (`firestream ingest`) and by tests, so they all run the
//! production parsers. A polling stream re-reads only files that are new or changed since
//! it last read them; dedupe removes rows it has already sent from a grown file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use flate2::read::MultiGzDecoder;

/// Why the file transport could not list its files.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("invalid glob {pattern:?}: {detail}")]
    Pattern { pattern: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What identifies a file's version: its length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

/// The result of a listing.
#[derive(Debug, Default)]
pub struct Pending {
    /// New or changed files, sorted, with the fingerprint to mark them read.
    pub files: Vec<(PathBuf, Fingerprint)>,
    /// Patterns that matched no file (nothing, or only directories).
    pub unmatched: Vec<String>,
}

pub struct FileTransport {
    patterns: Vec<String>,
    read: HashMap<PathBuf, Fingerprint>,
    /// Unmatched patterns already reported, so each is said once, not on every poll.
    reported: HashSet<String>,
}

impl FileTransport {
    pub fn new(patterns: Vec<String>) -> Self {
        FileTransport {
            patterns,
            read: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// Files matching the globs (sorted, each once) that are new or changed since marked
    /// read, with their fingerprints. A pattern matching nothing is reported, not an error.
    pub fn pending(&self) -> Result<Pending, FileError> {
        let mut files = Vec::new();
        let mut unmatched = Vec::new();
        for pattern in &self.patterns {
            let matches = expand(pattern)?;
            if !matches.iter().any(|p| p.is_file()) {
                unmatched.push(pattern.clone());
            }
            files.extend(matches);
        }
        files.sort();
        files.dedup();
        let mut pending = Vec::new();
        for path in files {
            let meta = std::fs::metadata(&path).map_err(|source| FileError::Io {
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                continue;
            }
            let fingerprint = Fingerprint {
                len: meta.len(),
                modified: meta.modified().ok(),
            };
            if self.read.get(&canonical(&path)) != Some(&fingerprint) {
                pending.push((path, fingerprint));
            }
        }
        Ok(Pending {
            files: pending,
            unmatched,
        })
    }

    /// The unmatched patterns of `pending` not reported before; a pattern that matches again
    /// is forgotten, so it is reported anew if its files go away.
    pub fn newly_unmatched(&mut self, pending: &Pending) -> Vec<String> {
        self.reported.retain(|p| pending.unmatched.contains(p));
        pending
            .unmatched
            .iter()
            .filter(|p| self.reported.insert((*p).clone()))
            .cloned()
            .collect()
    }

    /// Remembers that this version of the file was read to its end.
    pub fn mark_read(&mut self, path: PathBuf, fingerprint: Fingerprint) {
        self.read.insert(canonical(&path), fingerprint);
    }

    /// Files read to their end, and whose records were all accounted for, by an earlier run
    /// (from the source's checkpoint): not read again unless they change.
    pub fn restore(&mut self, read: impl IntoIterator<Item = (PathBuf, Fingerprint)>) {
        self.read
            .extend(read.into_iter().map(|(path, f)| (canonical(&path), f)));
    }
}

/// The path a file is remembered by: the same file named from another working directory or
/// through `..` is the same file.
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Paths matching a glob, sorted; a path without glob characters is returned as is.
pub fn expand(pattern: &str) -> Result<Vec<PathBuf>, FileError> {
    let entries = glob::glob(pattern).map_err(|e| FileError::Pattern {
        pattern: pattern.to_owned(),
        detail: e.to_string(),
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(path) => paths.push(path),
            Err(e) => {
                return Err(FileError::Io {
                    path: e.path().to_owned(),
                    source: e.into(),
                });
            }
        }
    }
    paths.sort();
    Ok(paths)
}

/// Opens a file for parsing, transparently decompressing gzip.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            256 * 1024,
            MultiGzDecoder::new(BufReader::new(file)),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(256 * 1024, file)))
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    #[test]
    fn reads_plain_and_gzip_alike() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.csv");
        std::fs::write(&plain, "latitude,longitude\n1,2\n").unwrap();
        let gz = dir.path().join("b.csv.gz");
        let mut enc = GzEncoder::new(File::create(&gz).unwrap(), Compression::default());
        enc.write_all(b"latitude,longitude\n1,2\n").unwrap();
        enc.finish().unwrap();
        for path in [&plain, &gz] {
            let mut text = String::new();
            open(path).unwrap().read_to_string(&mut text).unwrap();
            assert_eq!(text, "latitude,longitude\n1,2\n");
        }
        let tiny = dir.path().join("c");
        std::fs::write(&tiny, "x").unwrap();
        let mut text = String::new();
        open(&tiny).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "x");
    }

    #[test]
    fn only_new_or_changed_files_are_pending() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.csv"), "a").unwrap();
        std::fs::write(dir.path().join("2.csv"), "b").unwrap();
        std::fs::write(dir.path().join("skip.txt"), "c").unwrap();
        let pattern = dir.path().join("*.csv").to_string_lossy().into_owned();
        let missing = dir.path().join("none/*.csv").to_string_lossy().into_owned();
        let mut t = FileTransport::new(vec![pattern, missing.clone()]);
        let found = t.pending().unwrap();
        assert_eq!(found.files.len(), 2);
        assert_eq!(found.unmatched, vec![missing.clone()]);
        assert_eq!(t.newly_unmatched(&found), vec![missing.clone()]);
        assert!(
            t.newly_unmatched(&found).is_empty(),
            "said once, not every poll"
        );
        for (path, fp) in found.files {
            t.mark_read(path, fp);
        }
        assert!(t.pending().unwrap().files.is_empty());
        std::fs::write(dir.path().join("2.csv"), "bigger").unwrap();
        let pending = t.pending().unwrap().files;
        assert_eq!(pending.len(), 1);
        assert!(pending[0].0.ends_with("2.csv"));
    }

    #[test]
    fn a_pattern_naming_a_directory_matches_no_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::write(dir.path().join("in/a.csv"), "a").unwrap();
        let bare = dir.path().join("in").to_string_lossy().into_owned();
        let t = FileTransport::new(vec![bare.clone()]);
        let found = t.pending().unwrap();
        assert!(found.files.is_empty());
        assert_eq!(found.unmatched, vec![bare]);
    }
}
