//! Consumer-group offsets of the local log (DESIGN §7): `<dir>/<topic>/.groups/<group>.json`
//! holds, per partition, the next offset the group will read — Kafka's committed-offset
//! meaning — so the lag probe works without Kafka. `firestream tail --group G` commits them.
//!
//! ```json
//! {"group":"fire-analytics","topic":"wildfire-nasa-firms","offsets":{"0":1200,"1":845},"committed_at":"2026-…"}
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::damage;
use super::segment::{list_segments, segment_name};

/// Next offset to read, per partition.
pub type Offsets = BTreeMap<u32, u64>;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GroupFile {
    group: String,
    topic: String,
    offsets: Offsets,
    #[serde(default)]
    committed_at: Option<String>,
}

/// Where a group's offsets for a topic are kept.
pub fn group_path(dir: &Path, topic: &str, group: &str) -> PathBuf {
    dir.join(topic)
        .join(".groups")
        .join(format!("{group}.json"))
}

/// The group's committed offsets for `topic`; `None` when it never committed any.
pub fn read_group(dir: &Path, topic: &str, group: &str) -> io::Result<Option<Offsets>> {
    let path = group_path(dir, topic, group);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let file: GroupFile = serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not a consumer-group offsets file ({e}); delete it to start the group from the beginning",
                path.display()
            ),
        )
    })?;
    Ok(Some(file.offsets))
}

/// Replaces the group's offsets atomically: a temp file, fsync, rename, fsync of the
/// directory, so a crash leaves the old offsets or the new ones, never half a file.
pub fn commit_group(dir: &Path, topic: &str, group: &str, offsets: &Offsets) -> io::Result<()> {
    let path = group_path(dir, topic, group);
    let groups = path.parent().expect("group path has a parent");
    fs::create_dir_all(groups)?;
    let file = GroupFile {
        group: group.to_owned(),
        topic: topic.to_owned(),
        offsets: offsets.clone(),
        committed_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    };
    let temp = groups.join(format!(".{group}.json.{}.tmp", std::process::id()));
    let result = (|| {
        let mut out = File::create(&temp)?;
        serde_json::to_writer(&mut out, &file)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(groups)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The first offset still stored in a partition (older segments may have been deleted by
/// retention); 0 for a partition with no segment.
pub fn log_start_offset(partition_dir: &Path) -> io::Result<u64> {
    match list_segments(partition_dir) {
        Ok(segments) => Ok(segments.first().copied().unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The offset the next record of a partition will get (Kafka's log-end offset / high
/// watermark): one past the last record of the newest segment, or its base when it holds
/// none. Reads only the end of the segment; damaged last lines are walked past (and
/// reported), as the writer does when it opens the partition.
pub fn log_end_offset(partition_dir: &Path) -> io::Result<u64> {
    let segments = match list_segments(partition_dir) {
        Ok(segments) => segments,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let Some(&base) = segments.last() else {
        return Ok(0);
    };
    let path = partition_dir.join(segment_name(base));
    let mut file = OpenOptions::new().read(true).open(&path)?;
    let len = file.metadata()?.len();
    let mut chunk = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity((len - start) as usize);
        (&mut file).take(len - start).read_to_end(&mut tail)?;
        // Up to the last newline: a line still being written is not there yet.
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let found = damage::last_offset_in(&tail[..complete], start == 0, |at, why| {
            let byte = start + at as u64;
            damage::report(&path, byte, || damage::line_number_at(&path, byte), &why);
        });
        match found {
            Some(offset) => return Ok(offset.map_or(base, |o| o + 1)),
            None => chunk *= 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(offset: u64) -> String {
        format!(
            "{{\"offset\":{offset},\"timestamp\":1,\"key\":\"k\",\"headers\":{{}},\"value\":{{\"pad\":\"{}\"}}}}\n",
            "x".repeat(100)
        )
    }

    #[test]
    fn log_end_is_one_past_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t/0");
        assert_eq!(log_end_offset(&p).unwrap(), 0, "no partition yet");
        fs::create_dir_all(&p).unwrap();
        assert_eq!(log_end_offset(&p).unwrap(), 0, "no segment yet");
        fs::write(
            p.join(segment_name(0)),
            (0..3).map(line).collect::<String>(),
        )
        .unwrap();
        // A later segment, long enough that the last line is found past a 64 KiB read.
        let text: String = (3..1_003).map(line).collect();
        assert!(text.len() > 64 * 1024);
        fs::write(
            p.join(segment_name(3)),
            text.clone() + "{\"offset\":1003,\"ti",
        )
        .unwrap();
        assert_eq!(log_end_offset(&p).unwrap(), 1_003);
        assert_eq!(log_start_offset(&p).unwrap(), 0);
        // A freshly rolled, empty segment: the log end is its base.
        fs::write(p.join(segment_name(1_003)), "").unwrap();
        assert_eq!(log_end_offset(&p).unwrap(), 1_003);
        // Retention removed the oldest segment: the log starts later.
        fs::remove_file(p.join(segment_name(0))).unwrap();
        assert_eq!(log_start_offset(&p).unwrap(), 3);
    }

    #[test]
    fn log_end_walks_back_past_damaged_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t/0");
        fs::create_dir_all(&p).unwrap();
        // Damage longer than the first 64 KiB read: the walk reads further back.
        let garbage = format!("{}\n", "x".repeat(100 * 1024));
        fs::write(
            p.join(segment_name(0)),
            line(0) + &line(1) + &garbage + "\u{0}\n" + "this is not json\n",
        )
        .unwrap();
        assert_eq!(log_end_offset(&p).unwrap(), 2);
        // Bytes that are not UTF-8, in a segment with no record at all: its base.
        fs::write(p.join(segment_name(2)), b"\xff\xfe\n").unwrap();
        assert_eq!(log_end_offset(&p).unwrap(), 2);
    }

    #[test]
    fn offsets_round_trip_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_group(dir.path(), "t", "g").unwrap(), None);
        let offsets: Offsets = [(0, 12), (3, 40)].into();
        commit_group(dir.path(), "t", "g", &offsets).unwrap();
        assert_eq!(read_group(dir.path(), "t", "g").unwrap(), Some(offsets));
        commit_group(dir.path(), "t", "g", &[(0, 13)].into()).unwrap();
        assert_eq!(
            read_group(dir.path(), "t", "g").unwrap(),
            Some([(0, 13)].into())
        );
        let text = fs::read_to_string(group_path(dir.path(), "t", "g")).unwrap();
        assert!(
            text.starts_with("{\"group\":\"g\",\"topic\":\"t\",\"offsets\":{\"0\":13},"),
            "{text}"
        );
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("t/.groups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["g.json"]);
    }

    #[test]
    fn a_damaged_group_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("t/.groups")).unwrap();
        fs::write(group_path(dir.path(), "t", "g"), "{not json").unwrap();
        let err = read_group(dir.path(), "t", "g").unwrap_err().to_string();
        assert!(
            err.contains("t/.groups/g.json: not a consumer-group offsets file"),
            "{err}"
        );
        assert!(
            err.contains("delete it to start the group from the beginning"),
            "{err}"
        );
    }
}
