//! Error numbers: the ones idlegate tells apart, and their symbolic names.
//!
//! Contract: the constants here are the `errno` values features match on (so that they name
//! no `libc` themselves); [`errno_name`] gives an error's symbolic name (`ECONNRESET`) for
//! reports that show what a socket saw, `errno N` for a number it does not list, and
//! `ETIMEDOUT` for a timeout that carries no number.

use std::io;

pub use libc::{
    EACCES, EAGAIN, ECONNABORTED, ECONNREFUSED, ECONNRESET, EHOSTDOWN, EHOSTUNREACH, EINVAL,
    EMFILE, EMSGSIZE, ENETDOWN, ENETUNREACH, ENFILE, ENOBUFS, ENOENT, ENOMEM, ENOSYS, ENOTCONN,
    EPERM, EPIPE, EPROTO, ESRCH, ETIMEDOUT,
};

/// The symbolic name of an OS error (`ECONNRESET`), or `errno N` for unlisted codes.
pub fn errno_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => errno_const(code).map_or_else(|| format!("errno {code}"), str::to_owned),
        None if err.kind() == io::ErrorKind::TimedOut => "ETIMEDOUT".to_owned(),
        None => err.to_string(),
    }
}

fn errno_const(code: i32) -> Option<&'static str> {
    const NAMES: &[(i32, &str)] = &[
        (ECONNRESET, "ECONNRESET"),
        (ETIMEDOUT, "ETIMEDOUT"),
        (EPIPE, "EPIPE"),
        (ECONNREFUSED, "ECONNREFUSED"),
        (EHOSTUNREACH, "EHOSTUNREACH"),
        (ENETUNREACH, "ENETUNREACH"),
        (ECONNABORTED, "ECONNABORTED"),
        (ENOTCONN, "ENOTCONN"),
        (EHOSTDOWN, "EHOSTDOWN"),
        (ENETDOWN, "ENETDOWN"),
        (EINVAL, "EINVAL"),
        (EAGAIN, "EAGAIN"),
    ];
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        let name = |code| errno_name(&io::Error::from_raw_os_error(code));
        assert_eq!(name(ECONNRESET), "ECONNRESET");
        assert_eq!(name(EPIPE), "EPIPE");
        assert_eq!(name(ECONNABORTED), "ECONNABORTED");
        assert_eq!(name(ENOENT), format!("errno {}", ENOENT));
        assert_eq!(errno_name(&io::ErrorKind::TimedOut.into()), "ETIMEDOUT");
    }

    #[test]
    fn an_error_without_a_number_or_timeout_keeps_its_text() {
        let e = io::Error::other("odd");
        assert_eq!(errno_name(&e), "odd");
    }
}
