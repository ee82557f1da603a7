//! Durations as people write them in idlegate's messages and tables, and as the kernel takes
//! TCP keepalive timers (whole seconds).

use std::time::Duration;

/// A duration as people write it in these messages: "5 days", "24 h", "4 min", "30 s",
/// "500 ms".
pub fn human(d: Duration) -> String {
    const HOUR: u128 = 3_600_000;
    let ms = d.as_millis();
    if ms.is_multiple_of(24 * HOUR) && ms >= 48 * HOUR {
        format!("{} days", ms / (24 * HOUR))
    } else if ms.is_multiple_of(HOUR) && ms >= 3 * HOUR {
        format!("{} h", ms / HOUR)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// The first keepalive probe for a box that forgets flows idle for `timeout`: half the idle
/// timeout, to the nearest whole second (TCP_KEEPIDLE takes seconds; a tie goes to the earlier
/// second), at least 1 s (3.98 s → 2 s; 3 s → 1 s; 1.8 s → 1 s).
///
/// Rounding never reaches the timeout: half of a timeout over 1 s, rounded, is at most
/// `timeout / 2 + 0.5 s`, which is below it. A timeout of 1 s or less gets 1 s, the least
/// the kernel takes, which does not come before it: no whole-second keepalive keeps such a
/// flow alive.
pub fn half_the_idle_timeout(timeout: Duration) -> Duration {
    whole_seconds(timeout / 2)
}

/// `d` to the nearest whole second, a tie to the lower one (the earlier probe keeps more margin
/// to the timeout), at least 1 s: a keepalive timer the kernel takes.
pub fn whole_seconds(d: Duration) -> Duration {
    let nearest = (d.as_secs_f64() - 0.5).ceil().max(0.0) as u64;
    Duration::from_secs(nearest.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_idle_timeout_comes_before_every_timeout_over_a_second() {
        for ms in 1_001..=20_000 {
            let timeout = Duration::from_millis(ms);
            let half = half_the_idle_timeout(timeout);
            assert!(half < timeout, "{timeout:?} → {half:?}");
            assert!(half.abs_diff(timeout / 2) <= Duration::from_millis(500));
        }
        for ms in [1, 500, 1_000] {
            let timeout = Duration::from_millis(ms);
            assert_eq!(half_the_idle_timeout(timeout), Duration::from_secs(1));
        }
    }
}
