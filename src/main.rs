//! The `firestream` command: a thin layer over the library's StreamManager.
//!
//! Exit codes: 0 success; 1 runtime failure (sink unusable, records lost); 2 bad usage or
//! configuration; 130 an `ingest` stopped by a signal before it read every file, or a second
//! signal (exit without draining).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use firestream::api::ApiState;
use firestream::config::{Config, ConfigError, LogFormat, SinkKind};
use firestream::manager::{
    IngestTarget, ManagerError, Report, StreamManager, dead_letters_by_stage,
};
use firestream::metrics::Metrics;
use firestream::sinks::log::groups;
use firestream::sinks::log::reader::{self, TopicReader};
use firestream::sources::SourceType;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "firestream",
    version,
    about = "Wildfire data feeds → one record envelope → Kafka or the local log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Config file (YAML or JSON); relative paths inside it resolve against its directory.
    #[arg(
        short,
        long,
        env = "FIRESTREAM_CONFIG",
        default_value = "config/demo.yaml"
    )]
    config: PathBuf,
    /// A profile from the config's `profiles:` section, laid over the rest (then the
    /// `FIRESTREAM__SECTION__KEY` environment overrides).
    #[arg(long, env = "FIRESTREAM_PROFILE")]
    profile: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every configured stream until SIGINT/SIGTERM, then drain and exit.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Backfill files through the whole pipeline once, then print what happened to each row.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["source_type", "source"])))]
    Ingest {
        #[command(flatten)]
        config: ConfigArg,
        /// Parse with this source type's defaults: nasa_firms, nws_observations, nws_alerts,
        /// purpleair, airnow, calfire_incidents, mqtt (a capture: one JSON message per line),
        /// http (needs --source: its mapping and topic come from config).
        #[arg(long, value_name = "TYPE")]
        source_type: Option<SourceType>,
        /// Parse and route as this configured source does (only the given paths are read).
        #[arg(long, value_name = "ID")]
        source: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Files to read (plain or gzip), relative to the working directory.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print records of a topic of the local log as JSON lines.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        topic: String,
        /// Start at the oldest record instead of showing the newest.
        #[arg(long)]
        from_beginning: bool,
        /// How many records (default 10; all with --from-beginning or --group).
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Keep printing records as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Read as this consumer group: start after its committed offsets (the beginning
        /// when it has none; --from-beginning resets it), print every record or the next N,
        /// then commit the offsets after what was printed. The lag throttle reads them.
        #[arg(short, long, value_name = "G")]
        group: Option<String>,
    },
    /// List the connector types and every option a source of each takes, with defaults.
    Sources {
        /// Only this type.
        source_type: Option<SourceType>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file without running it.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List or replay the dead letters in the local log's firestream-dlq.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show dead letters (newest last) and their counts by stage.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: DlqFilter,
        /// How many to show, the newest (counts cover all that match).
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 50)]
        lines: usize,
        /// One JSON object per line (the stored dead letter with partition and offset).
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters that carry a whole record back to their topic, each once.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed; send and remember nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct DlqFilter {
    /// Only dead letters of this stage.
    #[arg(long, value_parser = ["fetch", "parse", "validate", "queue", "deliver", "shutdown"])]
    stage: Option<String>,
    /// Only dead letters of this source id.
    #[arg(long, value_name = "ID")]
    source: Option<String>,
}

impl DlqFilter {
    fn into_filter(self) -> firestream::dlq_admin::Filter {
        firestream::dlq_admin::Filter {
            stage: self
                .stage
                .as_deref()
                .and_then(firestream::dlq_admin::parse_stage),
            source: self.source,
        }
    }
}

/// An error that is the user's input, not a failure: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<ConfigError>().is_some();
            // Not eprintln!: with stderr gone it would panic (exit 101), hiding the exit
            // code that tells a usage error (2, not restarted by the systemd unit) apart.
            let _ = writeln!(std::io::stderr(), "error: {}", describe(&e));
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sources { source_type, json } => {
            print_sources(source_type, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config } => {
            let loaded = load(&config)?;
            let sink = match &loaded.sink.kafka {
                Some(kafka) if loaded.sink.kind == SinkKind::Kafka => {
                    format!("kafka at {}", kafka.bootstrap_servers)
                }
                _ => format!("log at {}", loaded.sink.log.dir.display()),
            };
            println!(
                "{}: ok ({} source(s), sink {sink})",
                config.config.display(),
                loaded.sources.len(),
            );
            if let Some(profile) = &loaded.profile {
                println!("profile: {profile}");
            }
            for o in &loaded.overrides {
                println!("override: {} (from {})", o.path.join("."), o.variable);
            }
            if loaded.sources.is_empty() {
                println!(
                    "note: no sources configured: `run` needs at least one under `sources:`; `ingest --source-type` works without"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config: args } => {
            let config = load(&args)?;
            if config.sources.is_empty() {
                bail!(UsageError(
                    ManagerError::NoSources(config.file.clone()).to_string()
                ));
            }
            init_logging(&config);
            log_layers(&config);
            let api = config.api.clone();
            let shown = std::sync::Arc::new(config.shown());
            runtime()?.block_on(async {
                // Bound first: a port in use is reported before anything starts.
                let listener = match api.enabled {
                    true => Some(bind_api(&api.bind).await?),
                    false => None,
                };
                let tls = match &api.tls {
                    Some(tls) => Some(
                        firestream::api_tls::acceptor(&tls.cert, &tls.key)
                            .map_err(|e| UsageError(e.to_string()))?,
                    ),
                    None => None,
                };
                if let Some(listener) = &listener {
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    tracing::info!(addr = %listener.local_addr()?, %scheme, "HTTP API listening");
                }
                let manager = StreamManager::new(config).await?;
                let sink = manager.sink();
                let alerts = manager.alert_intake();
                let telemetry = manager.telemetry();
                let shutdown = shutdown_on_signals();
                let api_stop = CancellationToken::new();
                let server_stop = api_stop.clone();
                let serve = move |control: Arc<firestream::control::Control>| {
                    tokio::spawn(reload_on_sighup(args, control.clone()));
                    let Some(listener) = listener else { return };
                    let metrics = Arc::new(Metrics::new(telemetry, control.clone()));
                    let state = ApiState {
                        control,
                        sink,
                        token: api.token.clone(),
                        max_body: usize::try_from(api.max_body.0).unwrap_or(usize::MAX),
                        alerts,
                        config: shown,
                        metrics,
                    };
                    tokio::spawn(async move {
                        let served = match tls {
                            Some(acceptor) => {
                                let tls = firestream::api_tls::TlsListener {
                                    tcp: listener,
                                    acceptor,
                                };
                                firestream::api::serve(tls, state, server_stop).await
                            }
                            None => firestream::api::serve(listener, state, server_stop).await,
                        };
                        if let Err(e) = served {
                            tracing::error!(error = %e, "the HTTP API stopped");
                        }
                    });
                };
                let result = manager.run_with(shutdown, serve).await;
                api_stop.cancel();
                result.map_err(|e| match e {
                    ManagerError::NoSources(_) => anyhow::Error::new(UsageError(e.to_string())),
                    other => other.into(),
                })?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Ingest {
            config,
            source_type,
            source,
            json,
            paths,
        } => {
            let config = load(&config)?;
            init_logging(&config);
            let target = match (source_type, source) {
                (Some(t), None) => IngestTarget::SourceType(t),
                (None, Some(id)) => IngestTarget::Source(id),
                _ => unreachable!("clap requires exactly one of --source-type and --source"),
            };
            target
                .check(&config)
                .map_err(|e| UsageError(e.to_string()))?;
            let paths = check_paths(paths)?;
            let label = match &target {
                IngestTarget::SourceType(t) => t.to_string(),
                IngestTarget::Source(id) => id.clone(),
            };
            let files = paths.len();
            runtime()?.block_on(async {
                let manager = StreamManager::new(config).await?;
                let report = manager
                    .ingest(target, paths, shutdown_on_signals())
                    .await
                    .map_err(|e| match e {
                        ManagerError::UnknownSource { .. } => {
                            anyhow::Error::new(UsageError(e.to_string()))
                        }
                        other => other.into(),
                    })?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_summary(&label, files, &report);
                }
                Ok(if report.lost > 0 {
                    ExitCode::FAILURE
                } else if !report.not_read.is_empty() {
                    ExitCode::from(130)
                } else {
                    ExitCode::SUCCESS
                })
            })
        }
        Command::Tail {
            config,
            topic,
            from_beginning,
            lines,
            follow,
            group,
        } => {
            let config = load_log_reader(&config)?;
            // Warnings (a damaged line skipped) go to stderr; records to stdout.
            init_logging(&config);
            let options = TailOptions {
                from_beginning,
                lines,
                follow,
                group,
            };
            tail(&config.sink.log.dir, &topic, &options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action } => dlq(action),
    }
}

fn dlq(action: DlqAction) -> anyhow::Result<ExitCode> {
    use firestream::dlq_admin;
    match action {
        DlqAction::List {
            config,
            filter,
            lines,
            json,
        } => {
            let config = load_log_reader(&config)?;
            init_logging(&config);
            dlq_admin::print_list(&config, &filter.into_filter(), lines, json)?;
            Ok(ExitCode::SUCCESS)
        }
        DlqAction::Replay {
            config,
            filter,
            dry_run,
        } => {
            let config = load(&config)?;
            init_logging(&config);
            let summary =
                runtime()?.block_on(dlq_admin::replay(&config, &filter.into_filter(), dry_run))?;
            dlq_admin::print_replay(&summary);
            Ok(if summary.not_stored > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// [`load`] for commands that only read the local log: secrets the config names need not be
/// set (they read as a stand-in, never used here).
fn load_log_reader(args: &ConfigArg) -> anyhow::Result<Config> {
    firestream::secret::with_unset_allowed(|| load(args))
}

fn load(args: &ConfigArg) -> anyhow::Result<Config> {
    match Config::load_layered(&args.config, args.profile.as_deref(), std::env::vars()) {
        Ok(config) => Ok(config),
        Err(ConfigError::Read { file, source })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(UsageError(format!(
                "config file {} not found; pass one with -c FILE (see config/demo.yaml)",
                file.display()
            ))
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A line stderr cannot take (its reader gone: journald restarted, a closed pipe) is
    // dropped. The subscriber's default would report it with eprintln!, which panics on
    // the same broken stderr, killing whichever task logged: the signal handler among them,
    // so SIGTERM no longer stopped the service.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A second signal within this time of the first is the same request (a terminal or
/// `timeout` may deliver SIGINT to the process and to its group), not "exit at once".
const SIGNAL_DEBOUNCE: Duration = Duration::from_secs(1);

/// Cancels on the first SIGINT or SIGTERM; a second one, later than [`SIGNAL_DEBOUNCE`],
/// exits at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut first: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            match first {
                None => {
                    // Stop first: nothing that logging does may stand in its way.
                    trigger.cancel();
                    first = Some(std::time::Instant::now());
                    tracing::info!("signal received: finishing (send again to exit at once)");
                }
                Some(at) if at.elapsed() < SIGNAL_DEBOUNCE => {}
                Some(_) => {
                    // Not eprintln!: it panics when stderr is gone, and the exit must happen.
                    let _ = writeln!(std::io::stderr(), "second signal: exiting without draining");
                    std::process::exit(130);
                }
            }
        }
    });
    token
}

/// Reloads the config on each SIGHUP: source changes are applied (see
/// [`firestream::control::Control::reload`]); an invalid config is refused and the running
/// one stays.
async fn reload_on_sighup(args: ConfigArg, control: Arc<firestream::control::Control>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; reload by restarting");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!(file = %args.config.display(), "SIGHUP: reloading the config");
        let loaded = {
            let args = args.clone();
            tokio::task::spawn_blocking(move || load(&args)).await
        };
        let config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(e)) => {
                tracing::error!(error = %describe(&e), "the new config is invalid; the running one stays");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the reload failed; the running config stays");
                continue;
            }
        };
        if config.sources.is_empty() {
            tracing::error!("the new config has no sources; the running one stays");
            continue;
        }
        let report = control.reload(&config).await;
        tracing::info!(
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            unchanged = report.unchanged.len(),
            "config reloaded"
        );
        if !report.needs_restart.is_empty() {
            tracing::warn!(sections = ?report.needs_restart, "these sections changed and take effect only at a restart");
        }
    }
}

/// `firestream sources`: each type's default topic and upstream, then its options.
fn print_sources(only: Option<SourceType>, json: bool) {
    use firestream::sources::catalog::options_for;
    use firestream::transport::http::default_base;
    let types: Vec<SourceType> = match only {
        Some(t) => vec![t],
        None => SourceType::ALL.to_vec(),
    };
    let mut out = String::new();
    if json {
        let all: Vec<serde_json::Value> = types
            .iter()
            .map(|t| {
                serde_json::json!({
                    "type": t.as_str(),
                    "default_topic": t.default_topic(),
                    "default_url": default_base(*t),
                    "options": options_for(*t),
                })
            })
            .collect();
        out = format!("{}\n", serde_json::Value::Array(all));
    } else {
        for t in types {
            out.push_str(&format!(
                "{}  (topic {}; upstream {})\n",
                t.as_str(),
                t.default_topic().unwrap_or("none: set `topic`"),
                default_base(t).unwrap_or("none: set `url` or `broker`")
            ));
            for o in options_for(t) {
                out.push_str(&format!(
                    "  {}: {} [default: {}]\n",
                    o.name, o.description, o.default
                ));
            }
            out.push('\n');
        }
    }
    // A reader that stops early (`| head`) is not an error.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {e}");
    }
}

/// Says which profile and overrides shaped the config (names only: values may be secrets).
fn log_layers(config: &Config) {
    if let Some(profile) = &config.profile {
        tracing::info!(%profile, "config profile applied");
    }
    for o in &config.overrides {
        tracing::info!(setting = %o.path.join("."), variable = %o.variable, "config override from the environment");
    }
}

/// Binds the API's address, saying what to change when it cannot.
async fn bind_api(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        UsageError(format!(
            "api.bind: cannot listen on {addr}: {e}; choose another port (`api: {{bind: \"127.0.0.1:8081\"}}`) or turn the API off (`api: {{enabled: false}}`)"
        ))
    })?;
    Ok(listener)
}

/// An error and its causes, each cause once: skipped when the message before already
/// quotes it (thiserror messages often include their source).
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Every PATH must exist (or, when quoted as a glob, match something).
fn check_paths(paths: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let text = path.to_string_lossy();
        if path.exists() {
            if path.is_dir() {
                bail!(UsageError(format!(
                    "{} is a directory; give the files (e.g. {}/*.csv)",
                    path.display(),
                    path.display()
                )));
            }
            if !path.is_file() {
                bail!(UsageError(format!(
                    "{} is not a regular file (a pipe, device or socket); copy it to a file first",
                    path.display()
                )));
            }
            out.push(path);
            continue;
        }
        let matches = firestream::transport::file::expand(&text).unwrap_or_default();
        let files: Vec<_> = matches.into_iter().filter(|p| p.is_file()).collect();
        if files.is_empty() {
            bail!(UsageError(format!("{}: no such file", path.display())));
        }
        out.extend(files);
    }
    Ok(out)
}

fn print_summary(label: &str, files: usize, report: &Report) {
    let t = report.totals();
    let rate = if report.elapsed_s > 0.0 {
        t.rows as f64 / report.elapsed_s
    } else {
        0.0
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ingest {label}: {files} file(s) in {:.2} s ({rate:.0} rows/s)",
        report.elapsed_s
    );
    let ready = if report.sink.ready {
        "ready"
    } else {
        "NOT READY"
    };
    let _ = writeln!(
        out,
        "  sink             {} ({ready}: {})",
        report.sink.name, report.sink.detail
    );
    let _ = writeln!(out, "  rows read        {:>10}", t.rows);
    // rows read = records emitted + duplicates + invalid: every row accounted for.
    let _ = writeln!(out, "  records emitted  {:>10}", t.enqueued);
    let _ = writeln!(out, "  duplicates       {:>10}", t.duplicates);
    let _ = writeln!(out, "  invalid → DLQ    {:>10}", t.invalid);
    let _ = writeln!(out, "  files rejected   {:>10}", t.payload_errors);
    let _ = writeln!(out, "  delivered per topic:");
    if report.topics.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for (topic, counts) in &report.topics {
        let failed = if counts.failed > 0 {
            format!("  ({} failed → DLQ)", counts.failed)
        } else {
            String::new()
        };
        let _ = writeln!(out, "    {topic:<28} {:>10}{failed}", counts.delivered);
    }
    if !report.throttle.is_empty() {
        let _ = writeln!(out, "  throttle (lag-driven) per topic:");
    }
    for (topic, t) in &report.throttle {
        let lag = t
            .lag
            .map_or_else(|| "not sampled".to_owned(), |l| l.to_string());
        let error = t
            .last_error
            .as_ref()
            .map(|e| format!("  (last sample failed: {e})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {topic:<28} level {}  rate {:.1}/s  lag {lag} (avg {}){error}",
            t.level, t.rate, t.average_lag
        );
    }
    let dlq: Vec<String> = dead_letters_by_stage(report)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(stage, n)| format!("{stage} {n}"))
        .collect();
    if !dlq.is_empty() {
        let _ = writeln!(out, "  DLQ by stage: {}", dlq.join(", "));
    }
    if !report.not_read.is_empty() {
        let _ = writeln!(
            out,
            "  INTERRUPTED: {} file(s) not read to the end (the first may be partly read): {}",
            report.not_read.len(),
            report.not_read.join(", ")
        );
    }
    if report.dlq_fallback > 0 {
        let _ = writeln!(
            out,
            "  DLQ fallback: {} dead letter(s) the sink refused are in the local log's firestream-dlq",
            report.dlq_fallback
        );
    }
    if report.damaged_log_lines > 0 {
        let _ = writeln!(
            out,
            "  DAMAGED LOG LINES: {} line(s) of the local log are not records; skipped, kept on disk, each named in a warning",
            report.damaged_log_lines
        );
    }
    if report.lost > 0 {
        let _ = writeln!(
            out,
            "  LOST: {} dead letter(s) could not be stored; see the error log",
            report.lost
        );
    }
}

struct TailOptions {
    from_beginning: bool,
    lines: Option<usize>,
    follow: bool,
    group: Option<String>,
}

fn tail(dir: &Path, topic: &str, options: &TailOptions) -> anyhow::Result<()> {
    let &TailOptions {
        from_beginning,
        lines,
        follow,
        ..
    } = options;
    if let Some(group) = &options.group
        && !firestream::throttle::is_valid_group(group)
    {
        bail!(UsageError(format!(
            "--group {group:?} is not a group name (1-249 characters of letters, digits, `.`, `_`, `-`)"
        )));
    }
    if !firestream::config::is_valid_topic_name(topic) {
        bail!(UsageError(format!(
            "{topic:?} is not a topic name (1-249 characters of letters, digits, `.`, `_`, `-`)"
        )));
    }
    if !dir.join(topic).is_dir() && follow {
        eprintln!(
            "topic {topic} has no records in {} yet; waiting for them",
            dir.display()
        );
        while !dir.join(topic).is_dir() {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    if !dir.join(topic).is_dir() && topic == firestream::dlq::DLQ_TOPIC {
        eprintln!("no dead letters in {}: nothing has failed", dir.display());
        return Ok(());
    }
    if !dir.join(topic).is_dir() {
        let present = reader::topics(dir).unwrap_or_default();
        let present = if present.is_empty() {
            "none yet".to_owned()
        } else {
            present.join(", ")
        };
        bail!(UsageError(format!(
            "topic {topic} not found in {}; topics present: {present}",
            dir.display()
        )));
    }
    if let Some(group) = &options.group {
        return tail_group(dir, topic, group, options);
    }
    let mut topic_reader = TopicReader::open(dir, topic)
        .with_context(|| format!("cannot read topic {topic} in {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    let mut print = |entry: &reader::Entry| -> anyhow::Result<bool> {
        match writeln!(out, "{}", entry.to_output(topic)) {
            Ok(()) => Ok(true),
            // `firestream tail … | head` closes the pipe: that is a normal end.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    if from_beginning {
        let limit = lines.unwrap_or(usize::MAX);
        let mut printed = 0;
        while printed < limit {
            match topic_reader.next_entry()? {
                Some(entry) => {
                    if !print(&entry)? {
                        return Ok(());
                    }
                    printed += 1;
                }
                None => break,
            }
        }
        if printed == limit && !follow {
            return Ok(());
        }
        if printed == limit {
            // Skip to the end before following.
            while topic_reader.next_entry()?.is_some() {}
        }
    } else {
        for entry in topic_reader.last(lines.unwrap_or(10))? {
            if !print(&entry)? {
                return Ok(());
            }
        }
    }
    if !follow {
        return Ok(());
    }
    loop {
        out_flush();
        std::thread::sleep(Duration::from_millis(250));
        topic_reader.poll()?;
        while let Some(entry) = topic_reader.next_entry()? {
            if !print(&entry)? {
                return Ok(());
            }
        }
    }
}

/// `tail --group G`: prints from the group's committed offsets and commits after each
/// printed stretch, so the group's offsets never pass a record it did not print.
fn tail_group(dir: &Path, topic: &str, group: &str, options: &TailOptions) -> anyhow::Result<()> {
    // --from-beginning resets the group to the log start.
    let mut positions = if options.from_beginning {
        groups::Offsets::new()
    } else {
        groups::read_group(dir, topic, group)
            .with_context(|| format!("cannot read the offsets of group {group}"))?
            .unwrap_or_default()
    };
    let mut reader = TopicReader::open_from(dir, topic, &positions)
        .with_context(|| format!("cannot read topic {topic} in {}", dir.display()))?;
    let limit = options.lines.unwrap_or(usize::MAX);
    let mut printed = 0;
    let mut dirty = options.from_beginning;
    let commit = |positions: &groups::Offsets| {
        groups::commit_group(dir, topic, group, positions)
            .with_context(|| format!("cannot commit the offsets of group {group}"))
    };
    let mut out = std::io::stdout().lock();
    loop {
        while printed < limit {
            let Some(entry) = reader.next_entry()? else {
                break;
            };
            match writeln!(out, "{}", entry.to_output(topic)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return if dirty { commit(&positions) } else { Ok(()) };
                }
                Err(e) => return Err(e.into()),
            }
            positions.insert(entry.partition, entry.offset + 1);
            printed += 1;
            dirty = true;
        }
        if dirty {
            // Printed lines reach the reader before the offsets move past them.
            out.flush()?;
            commit(&positions)?;
            dirty = false;
        }
        if !options.follow || printed >= limit {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
        reader.poll()?;
    }
}

fn out_flush() {
    let _ = std::io::stdout().flush();
}
