//! Helpers every end-to-end test file shares (each includes this module with `mod common;`).

use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test at once, loudly, unless it runs as root: the end-to-end tests build network
/// namespaces and TUN devices, and must never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these end-to-end tests build network namespaces and TUN devices: run them as root"
    );
}

/// A name unique to this test process and call: `prefix` + pid + `x` + counter. With a prefix
/// of up to 3 characters it is also a valid interface name (≤ 15 bytes), and it has no '-', so
/// it is a valid lab name.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:05}x{n}", std::process::id() % 100_000)
}
