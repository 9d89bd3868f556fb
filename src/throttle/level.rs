//! The throttle's level logic (DESIGN §5), free of clocks and I/O: fed one lag sample per
//! evaluation, it yields the level; [`rate`] turns a level into records per second.

use std::collections::VecDeque;

use super::ThrottleConfig;

/// The settings the level logic needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub target_lag: u64,
    pub critical_lag: u64,
    pub max_level: u32,
    pub recovery_samples: u32,
    /// Samples in the averaging window.
    pub window_samples: usize,
}

impl Levels {
    pub fn of(config: &ThrottleConfig) -> Self {
        Levels {
            target_lag: config.target_lag,
            critical_lag: config.critical_lag,
            max_level: config.max_level,
            recovery_samples: config.recovery_samples,
            window_samples: config.window_samples(),
        }
    }
}

/// One topic's level: the last `window_samples` lag samples, the level, and how many
/// evaluations in a row were below target.
#[derive(Debug, Clone)]
pub struct LevelState {
    settings: Levels,
    samples: VecDeque<u64>,
    level: u32,
    below: u32,
}

impl LevelState {
    pub fn new(settings: Levels) -> Self {
        LevelState {
            settings,
            samples: VecDeque::with_capacity(settings.window_samples),
            level: 0,
            below: 0,
        }
    }

    pub fn level(&self) -> u32 {
        self.level
    }

    /// The average over the window (rounded down); 0 before the first sample.
    pub fn average(&self) -> u64 {
        if self.samples.is_empty() {
            return 0;
        }
        let sum: u128 = self.samples.iter().map(|&s| u128::from(s)).sum();
        (sum / self.samples.len() as u128) as u64
    }

    /// Adds a sample and evaluates: average ≥ critical → L+1 (up to max); ≥ target →
    /// max(L, 1); below target for `recovery_samples` evaluations in a row → L−1.
    pub fn observe(&mut self, lag: u64) -> u32 {
        if self.samples.len() == self.settings.window_samples {
            self.samples.pop_front();
        }
        self.samples.push_back(lag);
        let average = self.average();
        let s = self.settings;
        if average >= s.critical_lag {
            self.level = (self.level + 1).min(s.max_level);
            self.below = 0;
        } else if average >= s.target_lag {
            self.level = self.level.max(1);
            self.below = 0;
        } else {
            self.below += 1;
            if self.below >= s.recovery_samples {
                self.level = self.level.saturating_sub(1);
                self.below = 0;
            }
        }
        self.level
    }
}

/// Records per second at `level`: max(min_rate, max_rate / factor^level).
pub fn rate(config: &ThrottleConfig, level: u32) -> f64 {
    let divisor = config.factor.powi(level.min(i32::MAX as u32) as i32);
    (config.max_rate / divisor).max(config.min_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(window_samples: usize) -> Levels {
        Levels {
            target_lag: 1_000,
            critical_lag: 5_000,
            max_level: 5,
            recovery_samples: 10,
            window_samples,
        }
    }

    fn run(state: &mut LevelState, samples: &[u64]) -> Vec<u32> {
        samples.iter().map(|&s| state.observe(s)).collect()
    }

    #[test]
    fn critical_lag_climbs_one_level_per_evaluation_up_to_the_maximum() {
        let mut s = LevelState::new(levels(1));
        assert_eq!(
            run(
                &mut s,
                &[0, 999, 5_000, 9_000, 7_000, 6_000, 5_001, 80_000, 5_000]
            ),
            vec![0, 0, 1, 2, 3, 4, 5, 5, 5]
        );
    }

    #[test]
    fn target_lag_holds_at_least_level_one_and_never_raises_further() {
        let mut s = LevelState::new(levels(1));
        assert_eq!(run(&mut s, &[1_000, 4_999, 1_000]), vec![1, 1, 1]);
        let mut s = LevelState::new(levels(1));
        assert_eq!(
            run(&mut s, &[5_000, 5_000, 5_000, 1_000, 4_999]),
            vec![1, 2, 3, 3, 3]
        );
    }

    #[test]
    fn recovery_takes_ten_evaluations_below_target_per_level() {
        let mut s = LevelState::new(levels(1));
        run(&mut s, &[6_000, 6_000, 6_000]);
        assert_eq!(s.level(), 3);
        let mut seq = run(&mut s, &[0; 9]);
        assert_eq!(seq, vec![3; 9]);
        assert_eq!(
            s.observe(0),
            2,
            "the tenth evaluation below target lowers it"
        );
        // Nine more below target, then one at target: the count starts again.
        seq = run(&mut s, &[10; 9]);
        assert_eq!(seq, vec![2; 9]);
        assert_eq!(s.observe(1_000), 2);
        assert_eq!(run(&mut s, &[0; 10]), [vec![2; 9], vec![1]].concat());
        assert_eq!(run(&mut s, &[0; 10]), [vec![1; 9], vec![0]].concat());
        assert_eq!(run(&mut s, &[0; 10]), vec![0; 10]);
    }

    #[test]
    fn the_window_average_decides_not_the_last_sample() {
        // Window of 4 samples: one spike of 20 000 among zeros averages 5 000 → critical.
        let mut s = LevelState::new(levels(4));
        assert_eq!(run(&mut s, &[0, 0, 0, 20_000]), vec![0, 0, 0, 1]);
        assert_eq!(s.average(), 5_000);
        // It stays in the window for three more evaluations: 20 000 / 4, then it drops out.
        assert_eq!(run(&mut s, &[0, 0, 0, 0]), vec![2, 3, 4, 4]);
        assert_eq!(s.average(), 0);
    }

    #[test]
    fn rates_for_levels_zero_to_five_with_the_defaults() {
        let c = ThrottleConfig::default();
        let rates: Vec<f64> = (0..=5).map(|l| rate(&c, l)).collect();
        let expected = [
            50_000.0,
            50_000.0 / 1.5,
            50_000.0 / 2.25,
            50_000.0 / 3.375,
            50_000.0 / 5.0625,
            50_000.0 / 7.59375,
        ];
        assert_eq!(rates, expected);
        assert_eq!(format!("{:.2}", rates[5]), "6584.36");
        // min_rate is the floor.
        let c = ThrottleConfig {
            max_rate: 1_000.0,
            min_rate: 50.0,
            factor: 2.0,
            ..ThrottleConfig::default()
        };
        let rates: Vec<f64> = (0..=5).map(|l| rate(&c, l)).collect();
        assert_eq!(rates, vec![1_000.0, 500.0, 250.0, 125.0, 62.5, 50.0]);
    }
}
