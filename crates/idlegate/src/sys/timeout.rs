//! Timeouts named as timeouts. A socket read or write given SO_RCVTIMEO or SO_SNDTIMEO that
//! runs out fails with EAGAIN, whose text (`Resource temporarily unavailable (os error 11)`)
//! says nothing of time; a deadline checked by hand gives a bare `timed out`. [`explain`]
//! turns either into `timed out after …`, and leaves every other error as it is.

use std::io;
use std::time::Duration;

/// `e` as `timed out after {after}` if it is a timeout (EAGAIN from a timed socket call, or
/// `TimedOut`), else `e` unchanged.
pub fn explain(e: io::Error, after: Duration) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {}", humantime::format_duration(after)),
        ),
        _ => e,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn eagain_and_timed_out_read_as_timeouts_and_other_errors_are_kept() {
        let after = Duration::from_millis(5_500);
        for e in [
            io::Error::from_raw_os_error(libc::EAGAIN),
            io::Error::from(io::ErrorKind::TimedOut),
        ] {
            let explained = explain(e, after);
            assert_eq!(explained.kind(), io::ErrorKind::TimedOut);
            assert_eq!(explained.to_string(), "timed out after 5s 500ms");
        }
        let refused = explain(io::Error::from_raw_os_error(libc::ECONNREFUSED), after);
        assert_eq!(refused.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}
