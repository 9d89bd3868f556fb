//! `firestream ingest` into librdkafka's in-process mock cluster: the Kafka sink's whole path
//! (idempotent producer, acks=all, murmur2 placement, delivery reports) without a broker
//! process. Prints the ingest summary and the delivery rate.
//!
//! ```sh
//! cargo run --release --example mock_cluster_ingest -- ../shared/data/real/firms/*.csv
//! ```
//!
//! The mock cluster cannot create topics through the admin API, so the example creates
//! firestream's topics on it first (4 partitions each), as an operator would on a cluster
//! with topic creation locked down.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use firestream::config::Config;
use firestream::manager::{IngestTarget, StreamManager};
use firestream::sources::SourceType;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio_util::sync::CancellationToken;

const TOPICS: &[&str] = &[
    "wildfire-nasa-firms",
    "wildfire-critical-alerts",
    "firestream-dlq",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        bail!("usage: mock_cluster_ingest FIRMS_CSV...");
    }
    let mock: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(3).context("starting the mock cluster")?;
    for topic in TOPICS {
        mock.create_topic(topic, 4, 1)
            .with_context(|| format!("creating {topic} on the mock cluster"))?;
    }
    let scratch = tempfile::tempdir()?;
    let yaml = format!(
        "sink: {{type: kafka, log: {{dir: {}}}, kafka: {{bootstrap_servers: \"{}\"}}}}\n",
        serde_json::to_string(&scratch.path().join("log"))?,
        mock.bootstrap_servers()
    );
    let config = Config::parse(&yaml, &scratch.path().join("mock.yaml"))?;
    config.check()?;

    let started = Instant::now();
    let report = StreamManager::new(config)
        .await?
        .ingest(
            IngestTarget::SourceType(SourceType::NasaFirms),
            paths,
            CancellationToken::new(),
        )
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let delivered: u64 = report.topics.values().map(|t| t.delivered).sum();
    let failed: u64 = report.topics.values().map(|t| t.failed).sum();
    let totals = report.totals();
    println!(
        "rows {} · emitted {} · duplicates {} · invalid {} · delivered {delivered} · failed {failed}",
        totals.rows, totals.enqueued, totals.duplicates, totals.invalid
    );
    println!(
        "{:.2} s including producer start-up: {:.0} records/s delivered to the mock cluster",
        elapsed,
        delivered as f64 / elapsed
    );
    Ok(())
}
