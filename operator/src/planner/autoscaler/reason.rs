//! The reason sentences: short, with the figures that decided (`scaled 3→5: lag 120k growing
//! 4k/s, busy 0.92, ...`), so `kubectl describe` explains the decision on its own.

use std::time::Duration;

use super::Settings;

/// `850`, `4.2k`, `120k`, `3.4M`: a count at a glance.
pub fn count(value: f64) -> String {
    let value = value.max(0.0);
    if value < 1_000.0 {
        format!("{value:.0}")
    } else if value < 10_000.0 {
        format!("{:.1}k", value / 1_000.0)
    } else if value < 1_000_000.0 {
        format!("{:.0}k", value / 1_000.0)
    } else {
        format!("{:.1}M", value / 1_000_000.0)
    }
}

/// A duration in whole seconds (`1m 30s`), or in ms below a second (`250ms`).
pub fn duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_string()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Why the count cannot go as high as the load asks, or `""`.
pub fn cap_note(settings: &Settings, partitions: i32, needed: i32, cap: i32) -> String {
    if needed <= cap {
        return String::new();
    }
    if partitions < settings.max_replicas {
        format!(
            "; needs {needed}, capped at {cap}: the topic has {partitions} partitions \
             (maxReplicas {} is above that)",
            settings.max_replicas
        )
    } else {
        format!("; needs {needed}, capped at maxReplicas {cap}")
    }
}
