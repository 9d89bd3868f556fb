//! Circuit breaker per source: a failing upstream is left alone for a cool-down instead of
//! being hammered on every poll, and one probe decides when it is back.
//!
//! Closed → (N consecutive failed polls) → Open for `cooldown` → HalfOpen: the next poll is
//! the probe; success closes the circuit, failure opens it again. Hand-written: the state
//! machine is a dozen lines and the crates for it wrap calls in ways that do not fit a poll
//! that makes several requests.

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a poll may call upstream now (closed, or the half-open probe); when open,
    /// how long until the probe.
    pub fn permit(&self, now: Instant) -> Result<(), Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn record_success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// Returns the new state; a failed half-open probe re-opens at once.
    pub fn record_failure(&mut self, now: Instant) -> BreakerState {
        self.failures = self.failures.saturating_add(1);
        let probing = self.open_until.is_some();
        if probing || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
        self.state(now)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(60));
        assert_eq!(b.record_failure(t0), BreakerState::Closed);
        assert_eq!(b.record_failure(t0), BreakerState::Closed);
        assert_eq!(b.record_failure(t0), BreakerState::Open);
        assert_eq!(
            b.permit(t0 + Duration::from_secs(10)),
            Err(Duration::from_secs(50))
        );
        let later = t0 + Duration::from_secs(61);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.permit(later), Ok(()));
        // A failed probe re-opens for a whole cool-down.
        assert_eq!(b.record_failure(later), BreakerState::Open);
        assert!(b.permit(later + Duration::from_secs(59)).is_err());
        let probe = later + Duration::from_secs(61);
        assert_eq!(b.state(probe), BreakerState::HalfOpen);
        b.record_success();
        assert_eq!(b.state(probe), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(2, Duration::from_secs(1));
        b.record_failure(t0);
        b.record_success();
        assert_eq!(b.record_failure(t0), BreakerState::Closed);
    }
}
