//! Prometheus metrics (DESIGN §9): the latency histograms, recorded at the event (a
//! distribution cannot be rebuilt from a total).
//!
//! The client is `prometheus-client`, the Prometheus project's own Rust client.

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Bucket bounds in seconds shared by both histograms: 1 ms (a local-log write) to 10 min
/// (a poll of a large file behind a full queue, a delivery through many retries).
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// A latency histogram in seconds. Observing costs one uncontended lock and no allocation.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Histogram::new(LATENCY_BUCKETS))
    }
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// How many were observed.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.count()
    }

    /// Their total in seconds.
    #[cfg(test)]
    pub fn sum_seconds(&self) -> f64 {
        self.0.sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::{Registry, Unit};

    #[test]
    fn a_latency_lands_in_its_bucket_in_seconds() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(2));
        let mut registry = Registry::default();
        registry.register_with_unit("t", "t", Unit::Seconds, h.0.clone());
        let mut page = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut page, &registry).unwrap();
        assert!(
            page.contains("t_seconds_bucket{le=\"0.025\"} 0\n"),
            "{page}"
        );
        assert!(page.contains("t_seconds_bucket{le=\"0.05\"} 1\n"), "{page}");
        assert!(page.contains("t_seconds_bucket{le=\"2.5\"} 2\n"), "{page}");
        assert!(page.contains("t_seconds_count 2\n"), "{page}");
        assert!(page.contains("t_seconds_sum 2.03"), "{page}");
    }
}
