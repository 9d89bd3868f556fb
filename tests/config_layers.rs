//! Profiles and environment overrides over a config file (DESIGN §6, issue #6), through the
//! binary: what `validate` reports, that an override takes effect, and that a mistake in a
//! layer names the variable or profile it came from.

use std::path::Path;
use std::process::{Command, Output};

mod common;

const CONFIG: &str = "\
sink: {type: log, log: {dir: out/log}}
queue: {max_records: 1000}
sources:
  firms_viirs_ca: {type: nasa_firms, interval: 10m, paths: [\"feed/*.csv\"]}
profiles:
  production:
    queue: {max_records: 50000}
    sink: {log: {dir: prod/log}}
  broken:
    queue: {max_records: lots}
";

fn firestream(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_firestream"));
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("FIRESTREAM") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), CONFIG).unwrap();
    dir
}

#[test]
fn validate_names_the_profile_and_the_overrides_it_applied() {
    let dir = setup();
    let out = firestream(
        dir.path(),
        &["validate", "-c", "c.yaml", "--profile", "production"],
        &[("FIRESTREAM__SOURCES__FIRMS_VIIRS_CA__INTERVAL", "5m")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("sink log at "), "{stdout}");
    assert!(
        stdout.contains("prod/log"),
        "the profile's log dir: {stdout}"
    );
    assert!(stdout.contains("profile: production"), "{stdout}");
    assert!(
        stdout.contains(
            "override: sources.firms_viirs_ca.interval (from FIRESTREAM__SOURCES__FIRMS_VIIRS_CA__INTERVAL)"
        ),
        "{stdout}"
    );
    // The profile may come from the environment too.
    let out = firestream(
        dir.path(),
        &["validate", "-c", "c.yaml"],
        &[("FIRESTREAM_PROFILE", "production")],
    );
    assert!(text(&out.stdout).contains("profile: production"));
}

/// CLI arguments, environment, and the expected message.
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn mistakes_in_a_layer_name_where_they_came_from() {
    let dir = setup();
    let cases: [Case; 5] = [
        (
            &["--profile", "prod"],
            &[],
            "profile `prod` is not defined under `profiles:`; defined: broken, production",
        ),
        (
            &["--profile", "broken"],
            &[],
            "queue.max_records: invalid type: string \"lots\", expected usize (with profile `broken`)",
        ),
        (
            &[],
            &[("FIRESTREAM__SOURCES__FIRMS_VIIRS_CA__INTERVAL", "5x")],
            "(set by FIRESTREAM__SOURCES__FIRMS_VIIRS_CA__INTERVAL)",
        ),
        (
            &[],
            &[("FIRESTREAM__QUEUE__MAX_RECORDZ", "1")],
            "unknown field `max_recordz`",
        ),
        (
            &[],
            &[("FIRESTREAM__QUEUE__MAX_RECORDS__X", "1")],
            "FIRESTREAM__QUEUE__MAX_RECORDS__X: `x` cannot be set below a value that is not a mapping (queue.max_records)",
        ),
    ];
    for (args, env, expected) in cases {
        let mut all = vec!["validate", "-c", "c.yaml"];
        all.extend_from_slice(args);
        let out = firestream(dir.path(), &all, env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = text(&out.stderr);
        assert!(err.contains(expected), "{args:?} {env:?}: {err}");
        assert!(err.contains("c.yaml"), "the file is named: {err}");
    }
}

#[test]
fn an_override_takes_effect() {
    let dir = setup();
    std::fs::copy(
        common::real("firms/fire_nrt_M6_157509.csv"),
        dir.path().join("m6.csv"),
    )
    .unwrap();
    let out = firestream(
        dir.path(),
        &[
            "ingest",
            "-c",
            "c.yaml",
            "--source-type",
            "nasa_firms",
            "m6.csv",
        ],
        &[("FIRESTREAM__SINK__LOG__DIR", "elsewhere/log")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        dir.path()
            .join("elsewhere/log/wildfire-nasa-firms")
            .is_dir()
    );
    assert!(!dir.path().join("out/log").exists());
}
