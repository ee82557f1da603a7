//! Durations as people write them in idlegate's messages and tables.

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
