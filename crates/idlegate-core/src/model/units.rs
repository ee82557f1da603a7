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
/// second), at least 1 s, and rounded down instead where rounding up would reach the timeout
/// (3.98 s → 2 s; 3 s → 1 s; 1.8 s → 1 s).
pub fn half_the_idle_timeout(timeout: Duration) -> Duration {
    let half = whole_seconds(timeout / 2);
    if half >= timeout && half > Duration::from_secs(1) {
        return half - Duration::from_secs(1);
    }
    half
}

/// `d` to the nearest whole second, a tie to the lower one (the earlier probe keeps more margin
/// to the timeout), at least 1 s: a keepalive timer the kernel takes.
pub fn whole_seconds(d: Duration) -> Duration {
    let nearest = (d.as_secs_f64() - 0.5).ceil().max(0.0) as u64;
    Duration::from_secs(nearest.max(1))
}
