//! The `throttle:` section (DESIGN §5 LagProbe + Throttle, §6).

use std::time::Duration;

use serde::Deserialize;

use crate::config::Dur;

/// Lag-driven backpressure: slows bulk delivery to a topic while its downstream consumer
/// groups fall behind. Off by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Downstream consumer groups whose lag is watched; required when enabled.
    #[serde(default)]
    pub consumer_groups: Vec<String>,
    /// Average lag (records) from which the level is at least 1.
    #[serde(default = "default_target_lag")]
    pub target_lag: u64,
    /// Average lag (records) from which the level rises by one per evaluation.
    #[serde(default = "default_critical_lag")]
    pub critical_lag: u64,
    /// Records per second per topic at level 0.
    #[serde(default = "default_max_rate")]
    pub max_rate: f64,
    /// The rate never goes below this.
    #[serde(default = "default_min_rate")]
    pub min_rate: f64,
    /// Each level divides the rate by this.
    #[serde(default = "default_factor")]
    pub factor: f64,
    #[serde(default = "default_max_level")]
    pub max_level: u32,
    /// How often lag is sampled and the level evaluated.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Lag is averaged over the samples of this window.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// Consecutive evaluations below `target_lag` before the level falls by one.
    #[serde(default = "default_recovery_samples")]
    pub recovery_samples: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            enabled: false,
            consumer_groups: Vec::new(),
            target_lag: default_target_lag(),
            critical_lag: default_critical_lag(),
            max_rate: default_max_rate(),
            min_rate: default_min_rate(),
            factor: default_factor(),
            max_level: default_max_level(),
            interval: default_interval(),
            window: default_window(),
            recovery_samples: default_recovery_samples(),
        }
    }
}

fn default_target_lag() -> u64 {
    1_000
}
fn default_critical_lag() -> u64 {
    5_000
}
fn default_max_rate() -> f64 {
    50_000.0
}
fn default_min_rate() -> f64 {
    10.0
}
fn default_factor() -> f64 {
    1.5
}
fn default_max_level() -> u32 {
    5
}
fn default_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_window() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_recovery_samples() -> u32 {
    10
}

/// Shortest `throttle.interval`: each sample costs a request per partition and group.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl ThrottleConfig {
    /// How many samples the average covers: `window / interval`, at least one.
    pub fn window_samples(&self) -> usize {
        let interval = self.interval.0.as_secs_f64();
        if interval <= 0.0 {
            return 1;
        }
        ((self.window.0.as_secs_f64() / interval).round() as usize).max(1)
    }

    /// Adds a message per problem, each naming its field.
    pub fn check(&self, problems: &mut Vec<String>) {
        let at = "throttle";
        if self.enabled && self.consumer_groups.is_empty() {
            problems.push(format!(
                "{at}.consumer_groups: list the downstream consumer groups whose lag drives the throttle (e.g. [fire-analytics]), or set {at}.enabled: false"
            ));
        }
        for (i, group) in self.consumer_groups.iter().enumerate() {
            if !is_valid_group(group) {
                problems.push(format!(
                    "{at}.consumer_groups[{i}]: {group:?} is not a group name (1-249 characters of letters, digits, `.`, `_`, `-`)"
                ));
            }
            if self.consumer_groups[..i].contains(group) {
                problems.push(format!(
                    "{at}.consumer_groups[{i}]: {group:?} is listed twice"
                ));
            }
        }
        if self.target_lag == 0 {
            problems.push(format!("{at}.target_lag: must be at least 1"));
        }
        if self.target_lag >= self.critical_lag {
            problems.push(format!(
                "{at}.critical_lag: {} must be greater than target_lag ({})",
                self.critical_lag, self.target_lag
            ));
        }
        let positive = |field: &str, v: f64, problems: &mut Vec<String>| {
            if !v.is_finite() || v <= 0.0 {
                problems.push(format!(
                    "{at}.{field}: {v} must be a number of records per second above 0"
                ));
            }
        };
        positive("max_rate", self.max_rate, problems);
        positive("min_rate", self.min_rate, problems);
        if self.min_rate > self.max_rate {
            problems.push(format!(
                "{at}.min_rate: {} must not exceed max_rate ({})",
                self.min_rate, self.max_rate
            ));
        }
        if !self.factor.is_finite() || self.factor <= 1.0 {
            problems.push(format!(
                "{at}.factor: {} must be greater than 1 (each level divides the rate by it)",
                self.factor
            ));
        }
        if self.max_level == 0 || self.max_level > 64 {
            problems.push(format!(
                "{at}.max_level: {} is outside 1..=64",
                self.max_level
            ));
        }
        if self.interval.0 < MIN_INTERVAL {
            problems.push(format!(
                "{at}.interval: {} is shorter than the 100ms minimum",
                self.interval
            ));
        }
        if self.window.0 < self.interval.0 {
            problems.push(format!(
                "{at}.window: {} is shorter than interval ({}); the average needs at least one sample",
                self.window, self.interval
            ));
        }
        if self.recovery_samples == 0 {
            problems.push(format!("{at}.recovery_samples: must be at least 1"));
        }
    }
}

/// Kafka's rules for group ids are loose; firestream also stores local-log groups as file
/// names, so it takes the topic-name rules.
pub fn is_valid_group(name: &str) -> bool {
    crate::config::is_valid_topic_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ThrottleConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.target_lag, 1_000);
        assert_eq!(c.critical_lag, 5_000);
        assert_eq!(c.max_rate, 50_000.0);
        assert_eq!(c.min_rate, 10.0);
        assert_eq!(c.factor, 1.5);
        assert_eq!(c.max_level, 5);
        assert_eq!(c.interval, Dur(Duration::from_secs(5)));
        assert_eq!(c.window, Dur(Duration::from_secs(60)));
        assert_eq!(c.recovery_samples, 10);
        assert_eq!(c.window_samples(), 12);
        let mut problems = Vec::new();
        c.check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn the_section_parses_strictly_from_a_config_file() {
        use crate::config::Config;
        let parse = |text: &str| Config::parse(text, std::path::Path::new("c.yaml"));
        let c = parse("throttle: {enabled: true, consumer_groups: [fire-analytics], interval: 1s, window: 10s}")
            .unwrap();
        c.check().unwrap();
        assert_eq!(c.throttle.consumer_groups, vec!["fire-analytics"]);
        assert_eq!(c.throttle.window_samples(), 10);
        assert_eq!(c.throttle.critical_lag, 5_000);
        let err = parse("throttle:\n  enabled: true\n  target: 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:3:"), "{err}");
        assert!(
            err.contains("throttle.target: unknown field `target`"),
            "{err}"
        );
        let err = parse("throttle: {enabled: true}")
            .unwrap()
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("throttle.consumer_groups: list the downstream consumer groups"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_names_its_field() {
        let c = ThrottleConfig {
            enabled: true,
            consumer_groups: vec![],
            target_lag: 5_000,
            critical_lag: 1_000,
            max_rate: 10.0,
            min_rate: 20.0,
            factor: 1.0,
            max_level: 0,
            interval: Dur(Duration::from_millis(10)),
            window: Dur(Duration::from_millis(5)),
            recovery_samples: 0,
        };
        let mut problems = Vec::new();
        c.check(&mut problems);
        assert_eq!(
            problems,
            vec![
                "throttle.consumer_groups: list the downstream consumer groups whose lag drives the throttle (e.g. [fire-analytics]), or set throttle.enabled: false",
                "throttle.critical_lag: 1000 must be greater than target_lag (5000)",
                "throttle.min_rate: 20 must not exceed max_rate (10)",
                "throttle.factor: 1 must be greater than 1 (each level divides the rate by it)",
                "throttle.max_level: 0 is outside 1..=64",
                "throttle.interval: 10ms is shorter than the 100ms minimum",
                "throttle.window: 5ms is shorter than interval (10ms); the average needs at least one sample",
                "throttle.recovery_samples: must be at least 1",
            ]
        );
        let c = ThrottleConfig {
            consumer_groups: vec!["a b".into(), "g".into(), "g".into()],
            max_rate: f64::NAN,
            ..ThrottleConfig::default()
        };
        let mut problems = Vec::new();
        c.check(&mut problems);
        assert_eq!(
            problems,
            vec![
                "throttle.consumer_groups[0]: \"a b\" is not a group name (1-249 characters of letters, digits, `.`, `_`, `-`)",
                "throttle.consumer_groups[2]: \"g\" is listed twice",
                "throttle.max_rate: NaN must be a number of records per second above 0",
            ]
        );
    }
}
