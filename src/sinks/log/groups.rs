//! Consumer-group offsets of the local log (DESIGN §7): `<dir>/<topic>/.groups/<group>.json`,
//! `{"group": …, "topic": …, "offsets": {"<partition>": next_offset}, "updated_at": …}`.
//! As in Kafka, a committed offset is the next one to read. Written atomically (temp file,
//! fsync, rename, fsync of the directory) so a crash leaves the old or the new file whole.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::is_valid_topic_name;

/// The file of a group's offsets on a topic.
pub fn path(dir: &Path, topic: &str, group: &str) -> PathBuf {
    dir.join(topic)
        .join(".groups")
        .join(format!("{group}.json"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GroupFile {
    #[serde(default)]
    group: String,
    #[serde(default)]
    topic: String,
    offsets: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

fn check_name(group: &str) -> io::Result<()> {
    if is_valid_topic_name(group) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{group:?} is not a consumer group name (1-249 letters, digits, `.`, `_`, `-`)"
            ),
        ))
    }
}

/// The committed offsets of `group` on `topic` by partition; empty when it never committed.
pub fn read(dir: &Path, topic: &str, group: &str) -> io::Result<BTreeMap<u32, u64>> {
    check_name(group)?;
    let file = path(dir, topic, group);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let invalid = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "consumer group file {}: {what}; fix or delete it (the group then starts at the log start)",
                file.display()
            ),
        )
    };
    let parsed: GroupFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    parsed
        .offsets
        .into_iter()
        .map(|(p, o)| {
            p.parse::<u32>()
                .map(|p| (p, o))
                .map_err(|_| invalid(format!("partition {p:?} is not a number")))
        })
        .collect()
}

/// Replaces the committed offsets of `group` on `topic` (partitions not given are dropped).
pub fn commit(
    dir: &Path,
    topic: &str,
    group: &str,
    offsets: &BTreeMap<u32, u64>,
) -> io::Result<()> {
    check_name(group)?;
    let file = path(dir, topic, group);
    let groups_dir = file.parent().expect("has a parent");
    fs::create_dir_all(groups_dir)?;
    let body = GroupFile {
        group: group.to_owned(),
        topic: topic.to_owned(),
        offsets: offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect(),
        updated_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    };
    let temp = groups_dir.join(format!(".{group}.json.tmp-{}", std::process::id()));
    let mut out = File::create(&temp)?;
    serde_json::to_writer(&mut out, &body)?;
    out.write_all(b"\n")?;
    out.sync_all()?;
    drop(out);
    fs::rename(&temp, &file)?;
    File::open(groups_dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_then_read_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), "t", "g").unwrap().is_empty());
        let offsets = BTreeMap::from([(0, 12), (3, 7)]);
        commit(dir.path(), "t", "g", &offsets).unwrap();
        assert_eq!(read(dir.path(), "t", "g").unwrap(), offsets);
        let text = fs::read_to_string(dir.path().join("t/.groups/g.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["offsets"], serde_json::json!({"0": 12, "3": 7}));
        assert_eq!(v["group"], "g");
        commit(dir.path(), "t", "g", &BTreeMap::from([(1, 1)])).unwrap();
        assert_eq!(
            read(dir.path(), "t", "g").unwrap(),
            BTreeMap::from([(1, 1)])
        );
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("t/.groups"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["g.json"]);
    }

    #[test]
    fn bad_names_and_damaged_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path(), "t", "../x").unwrap_err();
        assert!(
            err.to_string().contains("not a consumer group name"),
            "{err}"
        );
        fs::create_dir_all(dir.path().join("t/.groups")).unwrap();
        fs::write(dir.path().join("t/.groups/g.json"), "{\"offsets\": []}").unwrap();
        let err = read(dir.path(), "t", "g").unwrap_err();
        assert!(err.to_string().contains("t/.groups/g.json"), "{err}");
        assert!(err.to_string().contains("fix or delete it"), "{err}");
    }
}
