//! Delivery retries (DESIGN §5 Delivery): whether a record whose delivery failed with a
//! retriable error is sent again, and after how long.
//!
//! librdkafka already retries inside one attempt (same producer sequence numbers, so the
//! broker drops duplicates) until `message.timeout.ms`; an attempt here is one hand-over to
//! the sink that ends in a final error — a message timeout, a transport failure at that
//! timeout, a producer that had to be replaced. Each retry waits an exponential backoff with
//! full jitter, so many records failing together do not come back in lock-step.

use std::time::{Duration, Instant};

use crate::config::DeliveryConfig;

/// The rule of `delivery.max_retries`, `max_elapsed`, `retry_backoff`, `retry_backoff_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub max_elapsed: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    pub fn new(config: &DeliveryConfig) -> Self {
        RetryPolicy {
            max_retries: config.max_retries,
            max_elapsed: config.max_elapsed.0,
            backoff: config.retry_backoff.0,
            backoff_max: config.retry_backoff_max.0,
        }
    }

    /// True when a record that has failed `attempts` times, the first `elapsed` ago, gets no
    /// further attempt.
    pub fn gives_up(&self, attempts: u32, elapsed: Duration) -> bool {
        attempts > self.max_retries || elapsed >= self.max_elapsed
    }

    /// The longest wait before retry number `retry` (1 for the first): `backoff` doubled per
    /// retry, at most `backoff_max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }

    /// The wait before retry `retry` for a jitter drawn from 0..=1 (full jitter), cut so the
    /// retry starts within `max_elapsed` of a first attempt made `elapsed` ago.
    pub fn wait(&self, retry: u32, elapsed: Duration, jitter: f64) -> Duration {
        let jittered = self.ceiling(retry).mul_f64(jitter.clamp(0.0, 1.0));
        jittered.min(self.max_elapsed.saturating_sub(elapsed))
    }
}

/// One message's history: attempts failed so far, and when the first one started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub failed: u32,
    pub first: Instant,
}

impl Attempt {
    pub fn first(now: Instant) -> Self {
        Attempt {
            failed: 0,
            first: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&DeliveryConfig::default())
    }

    #[test]
    fn defaults_are_ten_retries_within_five_minutes() {
        let p = policy();
        assert_eq!(p.max_retries, 10);
        assert_eq!(p.max_elapsed, Duration::from_secs(300));
        assert_eq!(p.backoff, Duration::from_millis(100));
        assert_eq!(p.backoff_max, Duration::from_secs(10));
    }

    #[test]
    fn the_ceiling_doubles_per_retry_up_to_the_maximum() {
        let p = policy();
        let ceilings: Vec<u128> = (1..=10).map(|r| p.ceiling(r).as_millis()).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let p = policy();
        let elapsed = Duration::from_secs(1);
        assert_eq!(p.wait(3, elapsed, 0.0), Duration::ZERO);
        assert_eq!(p.wait(3, elapsed, 0.5), Duration::from_millis(200));
        assert_eq!(p.wait(3, elapsed, 1.0), Duration::from_millis(400));
    }

    #[test]
    fn a_wait_never_runs_past_max_elapsed() {
        let p = policy();
        let elapsed = Duration::from_millis(299_700);
        assert_eq!(p.wait(9, elapsed, 1.0), Duration::from_millis(300));
    }

    #[test]
    fn gives_up_after_max_retries_or_max_elapsed() {
        let p = policy();
        // The first attempt and ten retries: eleven attempts in all.
        assert!(!p.gives_up(10, Duration::from_secs(1)));
        assert!(p.gives_up(11, Duration::from_secs(1)));
        assert!(!p.gives_up(1, Duration::from_millis(299_999)));
        assert!(p.gives_up(1, Duration::from_secs(300)));
        let none = RetryPolicy {
            max_retries: 0,
            ..policy()
        };
        assert!(none.gives_up(1, Duration::ZERO));
    }
}
