//! The operations kit in `ops/` (issue #6): the Grafana dashboard and the Prometheus alert
//! rules use only metrics that a running `firestream run` serves, the rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the scrape example
//! passes `promtool check config`, every dashboard query parses as PromQL, and the systemd
//! unit is hardened and stops later than the service's own drain deadline.
//!
//! promtool comes from the Debian package `prometheus`, which `scripts/test` installs; these
//! tests fail, not skip, without it.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{real, repo};
use serde_json::Value;

/// Every `firestream_*` metric name in a PromQL expression. A tokenizer, not a parser:
/// identifiers (`[A-Za-z_:][A-Za-z0-9_:]*`) outside string literals, so a label value such
/// as `job="firestream_x"` is not taken for a metric.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            // Skip the literal, honouring backslash escapes (none in backtick strings).
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("firestream_") {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_tokenizer_finds_metric_names_and_skips_strings() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(firestream_delivery_latency_seconds_bucket{job="firestream_x",a=~'firestream_y'}[5m]))) / on(topic) firestream_throttle_max_level>firestream_a:b"#,
    );
    let expected = [
        "firestream_delivery_latency_seconds_bucket",
        "firestream_throttle_max_level",
        "firestream_a:b",
    ];
    assert_eq!(names, expected.map(String::from).into());
}

fn json(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The dashboard's panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        all.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Each query of the dashboard: the panels' targets, and the template variables' queries
/// (`label_values(m{…}, label)` reduced to its selector `m{…}`), Grafana's `$__…`
/// intervals replaced by a duration so that each is plain PromQL.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without expr", panel["title"]));
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let definition = variable["definition"].as_str().unwrap();
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _)| selector)
            .unwrap_or_else(|| panic!("variable {definition}: not label_values(selector, label)"));
        queries.push((
            format!("${}", variable["name"].as_str().unwrap()),
            selector.to_owned(),
        ));
    }
    queries
        .into_iter()
        .map(|(at, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            (at, expr)
        })
        .collect()
}

/// Each alert rule's name and expression.
fn alert_rules() -> Vec<(String, String, Value)> {
    let rules = yaml("ops/prometheus/alerts.yml");
    let mut all = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_owned();
            let expr = rule["expr"].as_str().unwrap().to_owned();
            all.push((name, expr, rule.clone()));
        }
    }
    all
}

#[test]
fn the_dashboard_is_importable_and_templated() {
    let d = json("ops/grafana/firestream.json");
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "{}",
        d["schemaVersion"]
    );
    let input = &d["__inputs"][0];
    assert_eq!(
        (
            input["name"].as_str(),
            input["type"].as_str(),
            input["pluginId"].as_str()
        ),
        (
            Some("DS_PROMETHEUS"),
            Some("datasource"),
            Some("prometheus")
        )
    );
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for wanted in ["stream", "topic"] {
        assert!(variables.contains(&wanted), "{variables:?}");
    }
    let datasource = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id used twice"
        );
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the grid");
        for (other, (ox, oy, ow, oh)) in &boxes {
            let apart = x + w <= *ox || *ox + *ow <= x || y + h <= *oy || *oy + *oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title.to_owned(), (x, y, w, h)));
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{title}"
        );
        assert_eq!(panel["datasource"], datasource, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"], datasource, "{title}");
        }
    }
    for variable in d["templating"]["list"].as_array().unwrap() {
        assert_eq!(variable["datasource"], datasource, "{variable}");
    }

    // What issue #6 asks the dashboard to show.
    let used: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .collect();
    for family in [
        "firestream_stream_state",
        "firestream_stream_polls_total",
        "firestream_stream_rows_fetched_total",
        "firestream_stream_records_emitted_total",
        "firestream_stream_last_success_timestamp_seconds",
        "firestream_delivery_records_total",
        "firestream_queue_records",
        "firestream_queue_bytes",
        "firestream_throttle_level",
        "firestream_throttle_lag_records",
        "firestream_dlq_records_total",
        "firestream_upstream_responses_total",
        "firestream_upstream_requests_total",
        "firestream_stream_circuit_state",
        "firestream_stream_data_age_seconds",
        "firestream_delivery_latency_seconds_bucket",
        "firestream_stream_poll_duration_seconds_bucket",
    ] {
        assert!(used.contains(family), "the dashboard shows no {family}");
    }
    let latency = dashboard_queries(&d)
        .into_iter()
        .filter(|(_, q)| q.contains("firestream_delivery_latency_seconds_bucket"))
        .map(|(_, q)| q)
        .collect::<Vec<_>>();
    for quantile in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(
            latency
                .iter()
                .any(|q| q.starts_with(quantile) && q.contains("by (priority, le)")),
            "no {quantile} by priority: {latency:?}"
        );
    }
}

#[test]
fn every_alert_has_a_duration_a_severity_and_annotations_naming_what_fired() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _, _)| n.as_str()).collect();
    for wanted in [
        "FirestreamStreamStale",
        "FirestreamDataStale",
        "FirestreamCircuitOpen",
        "FirestreamDLQGrowing",
        "FirestreamLagCritical",
        "FirestreamFirmsBudgetLow",
        "FirestreamSinkNotReady",
        "FirestreamStreamFailed",
    ] {
        assert!(names.contains(wanted), "{wanted} missing: {names:?}");
    }
    for (name, expr, rule) in &rules {
        assert!(rule["for"].is_string(), "{name}: no `for:`");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or_default();
        let description = rule["annotations"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(!summary.is_empty() && !description.is_empty(), "{name}");
        // The label that says which stream, topic, stage, host or sink fired, wherever the
        // expression keeps one.
        let identifying = |metric: &str| match metric {
            m if m.starts_with("firestream_stream_") => Some("stream"),
            m if m.starts_with("firestream_throttle_") => Some("topic"),
            m if m.starts_with("firestream_upstream_") => Some("host"),
            "firestream_dlq_records_total" => Some("stage"),
            "firestream_sink_ready" => Some("sink"),
            _ => None,
        };
        for label in metric_names(expr).iter().filter_map(|m| identifying(m)) {
            let shown = format!("$labels.{label}");
            assert!(
                summary.contains(&shown) || description.contains(&shown),
                "{name}: the annotations do not name the {label}"
            );
        }
    }
}

/// promtool: `$FIRESTREAM_PROMTOOL` (set by scripts/test), else on `PATH`, else where
/// Debian puts it. Missing is a failure with the way to get it, never a skip.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("FIRESTREAM_PROMTOOL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FIRESTREAM_PROMTOOL={}: no such file; run scripts/test, which installs promtool \
             (Debian package `prometheus`)",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    let debian = Path::new("/usr/bin/promtool");
    on_path
        .or_else(|| debian.is_file().then(|| debian.to_owned()))
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (not in $FIRESTREAM_PROMTOOL, on PATH or at /usr/bin/promtool): \
                 run scripts/test, which installs it (Debian package `prometheus`), or \
                 `apt-get install prometheus`"
            )
        })
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

#[test]
fn promtool_checks_the_rules_runs_their_tests_and_checks_the_scrape_example() {
    let checked = run_promtool(&["check", "rules", "ops/prometheus/alerts.yml"]);
    let count = alert_rules().len();
    assert!(
        checked.contains(&format!("SUCCESS: {count} rules found")),
        "{checked}"
    );
    let tested = run_promtool(&["test", "rules", "ops/prometheus/alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The unit tests exercise most rules, not a token few.
    let tests = yaml("ops/prometheus/alerts_test.yml");
    let exercised: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|case| !case["exp_alerts"].as_array().unwrap().is_empty())
        .map(|case| case["alertname"].as_str().unwrap())
        .collect();
    assert!(exercised.len() >= 3, "{exercised:?}");
    for (name, _, _) in alert_rules() {
        assert!(exercised.contains(name.as_str()), "no test fires {name}");
    }
    let config = run_promtool(&["check", "config", "ops/prometheus/scrape.yml"]);
    assert!(
        config.contains("is valid prometheus config file"),
        "{config}"
    );
}

/// promtool has no command to parse a lone expression, but checks every expression of a
/// rule file: each dashboard query becomes a recording rule.
#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries(&json("ops/grafana/firestream.json"));
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: ops_kit:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a dashboard query is not PromQL:\n{text}\n{}",
        queries
            .iter()
            .enumerate()
            .map(|(i, (at, q))| format!("query_{i} ({at}): {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A `firestream run` process, killed if a test fails before stopping it (a panicking test
/// must not leave a server behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status, or `None` when still running after `limit`.
    fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `firestream run` with the real FIRMS file on a free port; the process and the API's
/// base URL, read from the "HTTP API listening" log line. With `close_stderr`, nothing
/// reads the log after that line: the pipe's reader is gone, as when journald restarts.
fn start(dir: &Path, close_stderr: bool) -> (Running, String, mpsc::Receiver<String>) {
    let feed = dir.join("feed");
    std::fs::create_dir_all(&feed).unwrap();
    std::fs::copy(real("firms/fire_nrt_M6_157509.csv"), feed.join("m6.csv")).unwrap();
    std::fs::write(
        dir.join("run.yaml"),
        "sink: {type: log, log: {dir: out/log}}\n\
         api: {bind: \"127.0.0.1:0\"}\n\
         sources:\n\
         \x20 firms_a: {type: nasa_firms, interval: 1h, paths: [\"feed/*.csv\"]}\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c", "run.yaml"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let listening = line.contains("HTTP API listening");
            if lines.send(line).is_err() || (close_stderr && listening) {
                break;
            }
        }
    });
    let started = Instant::now();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30).saturating_sub(started.elapsed()))
            .expect("the API did not say where it listens within 30 s");
        if line.contains("HTTP API listening") {
            let addr = line.split("addr=").nth(1).unwrap();
            break addr.split_whitespace().next().unwrap().to_owned();
        }
    };
    (Running(child), format!("http://{addr}"), rx)
}

/// The served page: its families (`# TYPE` lines, with their types) and sample names.
struct Served {
    families: std::collections::BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Served {
    fn parse(text: &str) -> Served {
        let mut families = std::collections::BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split(' ');
                let name = words.next().unwrap().to_owned();
                families.insert(name, words.next().unwrap_or_default().to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_owned());
            }
        }
        Served { families, samples }
    }

    /// Whether `name` is served: a sample name, a family (possibly without samples, e.g.
    /// the throttle's while it is off), or a histogram family's `_bucket`, `_sum` or
    /// `_count` series.
    fn serves(&self, name: &str) -> bool {
        if self.samples.contains(name) || self.families.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| {
                self.families.get(base).map(String::as_str) == Some("histogram")
            })
        })
    }
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_rules_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, _log) = start(dir.path(), false);

    // The known ingest: the real FIRMS file's 5,824 records, every one acknowledged, so
    // the families have samples (histograms included).
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let delivered = text.lines().any(|l| {
            l.starts_with("firestream_delivery_records_total{")
                && l.contains("topic=\"wildfire-nasa-firms\"")
                && l.contains("outcome=\"delivered\"")
                && l.ends_with(" 5824")
        });
        if delivered {
            break text;
        }
        assert!(Instant::now() < deadline, "not delivered in time:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let served = Served::parse(&page);
    assert!(served.families.len() > 40, "{:?}", served.families);
    assert!(
        served
            .samples
            .contains("firestream_delivery_latency_seconds_bucket"),
        "{page}"
    );

    let dashboard = dashboard_queries(&json("ops/grafana/firestream.json"));
    let rules = alert_rules();
    let mut uses: Vec<(String, String)> = Vec::new();
    for (at, expr) in &dashboard {
        uses.extend(
            metric_names(expr)
                .into_iter()
                .map(|m| (format!("dashboard: {at}"), m)),
        );
    }
    for (name, expr, _) in &rules {
        uses.extend(
            metric_names(expr)
                .into_iter()
                .map(|m| (format!("alerts.yml: {name}"), m)),
        );
    }
    let dashboard_names = uses
        .iter()
        .filter(|(at, _)| at.starts_with("dashboard"))
        .count();
    assert!(
        dashboard_names >= 40,
        "the tokenizer found only {dashboard_names}"
    );
    let missing: Vec<_> = uses.iter().filter(|(_, m)| !served.serves(m)).collect();
    assert!(
        missing.is_empty(),
        "not served by firestream run: {missing:#?}\nserved families: {:#?}",
        served.families.keys()
    );
    // A name that is not served is caught: the check is not vacuous.
    assert!(!served.serves("firestream_stream_rows_fetched"));
    assert!(!served.serves("firestream_queue_records_bucket"));
    assert!(served.serves("firestream_stream_poll_duration_seconds_count"));

    child.sigterm();
    let status = child.wait_for(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Under systemd, stderr is a stream to journald; when journald restarts, writes to it
/// fail. `run` must still stop on SIGTERM and exit 0 — it used to log the signal with a
/// write whose failure panicked the signal task, so the stop never began and systemd's
/// SIGKILL at TimeoutStopSec cut the drain short.
#[tokio::test]
async fn run_stops_on_sigterm_when_nobody_reads_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, _log) = start(dir.path(), true);
    // Logging goes on with nobody reading: the stream polls, delivery runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = match reqwest::get(format!("{base}/metrics")).await {
            Ok(response) => response.text().await.unwrap(),
            Err(e) => panic!(
                "the API went away once nobody read the log: {e}; process: {:?}",
                child.0.try_wait()
            ),
        };
        if text.contains("outcome=\"delivered\"} 5824") {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered in time:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.sigterm();
    let status = child.wait_for(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "after SIGTERM: {status:?} (None: still running)"
    );
}

/// A `Key=value` setting of the unit, the last one when repeated.
fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn the_systemd_unit_is_hardened_and_outlasts_the_drain() {
    let unit = std::fs::read_to_string(repo("ops/systemd/firestream.service")).unwrap();
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "firestream"),
        ("EnvironmentFile", "/etc/firestream/firestream.env"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("KillSignal", "SIGTERM"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(setting(&unit, key), Some(value), "{key}");
    }
    // systemd's SIGKILL must come after firestream's own drain deadline.
    let stop = setting(&unit, "TimeoutStopSec").unwrap();
    let stop = humantime::parse_duration(stop).unwrap();
    let drain = firestream::config::DeliveryConfig::default()
        .shutdown_timeout
        .0;
    assert!(
        stop > drain + Duration::from_secs(10),
        "{stop:?} vs {drain:?}"
    );
    // The command lines are the binary's: `validate` and `run` with `-c`.
    let exec = setting(&unit, "ExecStart").unwrap();
    assert_eq!(
        exec,
        "/usr/local/bin/firestream run -c /etc/firestream/firestream.yaml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("-c, --config"));
    // Every secret the example environment file sets is one the configs refer to.
    let env = std::fs::read_to_string(repo("ops/systemd/firestream.env.example")).unwrap();
    assert!(env.contains("FIRESTREAM_API_TOKEN=") && env.contains("FIRMS_MAP_KEY="));

    // systemd's own check, with the binary where the unit expects it.
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit was not verified by systemd");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("firestream.service");
    std::fs::write(
        &local,
        unit.replace(
            "/usr/local/bin/firestream",
            env!("CARGO_BIN_EXE_firestream"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The exit code the unit's `RestartPreventExitStatus=2` relies on survives a stderr
/// nobody reads: a configuration error still exits 2 (it used to panic printing the
/// error, exit 101, and be restarted forever).
#[test]
fn a_config_error_exits_2_when_nobody_reads_stderr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "nope: 1\n").unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_firestream"))
        .args(["run", "-c", "bad.yaml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}
