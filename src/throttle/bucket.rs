//! A token bucket whose rate can change while it runs.
//!
//! governor (used for the HTTP clients) fixes its quota when a limiter is built, so a level
//! change would mean a new limiter, which forgets what was already spent and grants a fresh
//! burst at every change; it also refuses a request for more cells than its burst. This
//! bucket keeps its balance across rate changes and lets a caller take more than the burst
//! by going into debt, which later callers wait off.

use std::time::{Duration, Instant};

/// Tokens accrue at `rate` per second up to `burst`; taking more than the balance leaves a
/// debt, and the taker waits until it would be repaid.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    balance: f64,
    updated: Instant,
}

/// Seconds of tokens the bucket may save up: small, so a throttled topic does not get a
/// burst of a whole second's worth after a pause.
pub const BURST_SECONDS: f64 = 0.1;

impl Bucket {
    pub fn new(rate: f64, now: Instant) -> Self {
        Bucket {
            rate,
            balance: burst(rate),
            updated: now,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate).min(burst(self.rate));
        self.updated = now;
    }

    /// Changes the rate from `now` on; tokens earned so far count at the old rate.
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.balance = self.balance.min(burst(rate));
    }

    /// Takes `n` tokens at `now`; returns how long the taker must wait before using them.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        self.balance -= n as f64;
        if self.balance >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.balance / self.rate)
        }
    }
}

fn burst(rate: f64) -> f64 {
    (rate * BURST_SECONDS).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_is_waited_off_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, t0);
        // 10 saved tokens (0.1 s at 100/s), then 40 more cost 0.4 s.
        assert_eq!(b.take(10, t0), Duration::ZERO);
        assert_eq!(b.take(40, t0), Duration::from_millis(400));
        // Another taker at the same moment queues behind that debt.
        assert_eq!(b.take(10, t0), Duration::from_millis(500));
        // Half a second later the debt is repaid: the next 10 wait 0.1 s.
        assert_eq!(
            b.take(10, t0 + Duration::from_millis(500)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_rate_change_keeps_the_debt_and_repays_it_at_the_new_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, t0);
        b.take(110, t0); // a debt of 100 tokens: 1 s at 100/s
        b.set_rate(10.0, t0);
        assert_eq!(b.rate(), 10.0);
        // At 10/s the same debt plus one token is 10.1 s.
        assert_eq!(b.take(1, t0), Duration::from_secs_f64(10.1));
    }

    #[test]
    fn savings_are_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000.0, t0);
        // An hour idle saves only 100 tokens (0.1 s): the 101st waits 1 ms.
        let later = t0 + Duration::from_secs(3_600);
        assert_eq!(b.take(100, later), Duration::ZERO);
        assert_eq!(b.take(1, later), Duration::from_millis(1));
        // A slower rate lowers the cap at once.
        let mut b = Bucket::new(1_000.0, t0);
        b.set_rate(20.0, t0);
        assert_eq!(b.take(2, t0), Duration::ZERO);
        assert_eq!(b.take(1, t0), Duration::from_millis(50));
    }
}
