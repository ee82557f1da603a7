//! Error numbers: the ones idlegate tells apart, and their symbolic names.
//!
//! Contract: the constants here are the codes features match on (so that they name no
//! system's numbers themselves), under their POSIX names on every system: on Linux the
//! `errno` values, on Windows the Winsock codes (`WSAE…`) that mean the same to a socket
//! (`ECONNRESET` is WSAECONNRESET there). A name with no Winsock counterpart is Linux-only.
//! [`errno_name`] gives an error's symbolic name as the system calls it (`ECONNRESET` on
//! Linux, `WSAECONNRESET` on Windows) for reports that show what a socket saw, `errno N` for a
//! number it does not list, and `ETIMEDOUT` for a timeout that carries no number.
//! [`out_of_resources`] says whether an error means the process or system ran out of
//! descriptors or memory, which a server waits out rather than gives up on.

use std::io;

#[cfg(target_os = "linux")]
pub use libc::{
    EACCES, EAGAIN, ECONNABORTED, ECONNREFUSED, ECONNRESET, EHOSTDOWN, EHOSTUNREACH, EINVAL,
    EMFILE, EMSGSIZE, ENETDOWN, ENETUNREACH, ENFILE, ENOBUFS, ENOENT, ENOMEM, ENOSYS, ENOTCONN,
    EPERM, EPIPE, EPROTO, ESRCH, ETIMEDOUT,
};

#[cfg(windows)]
mod wsa {
    use windows_sys::Win32::Networking::WinSock as ws;
    pub const EACCES: i32 = ws::WSAEACCES;
    /// A non-blocking call that would block.
    pub const EAGAIN: i32 = ws::WSAEWOULDBLOCK;
    pub const ECONNABORTED: i32 = ws::WSAECONNABORTED;
    pub const ECONNREFUSED: i32 = ws::WSAECONNREFUSED;
    pub const ECONNRESET: i32 = ws::WSAECONNRESET;
    pub const EHOSTDOWN: i32 = ws::WSAEHOSTDOWN;
    pub const EHOSTUNREACH: i32 = ws::WSAEHOSTUNREACH;
    pub const EINVAL: i32 = ws::WSAEINVAL;
    pub const EMFILE: i32 = ws::WSAEMFILE;
    pub const EMSGSIZE: i32 = ws::WSAEMSGSIZE;
    pub const ENETDOWN: i32 = ws::WSAENETDOWN;
    pub const ENETUNREACH: i32 = ws::WSAENETUNREACH;
    pub const ENOBUFS: i32 = ws::WSAENOBUFS;
    pub const ENOTCONN: i32 = ws::WSAENOTCONN;
    /// A send after this end shut its sending down (Linux says EPIPE; a send to a peer that
    /// reset says WSAECONNRESET on Windows).
    pub const EPIPE: i32 = ws::WSAESHUTDOWN;
    pub const ETIMEDOUT: i32 = ws::WSAETIMEDOUT;
    /// Not enough memory (WSA_NOT_ENOUGH_MEMORY, which is ERROR_NOT_ENOUGH_MEMORY).
    pub const ENOMEM: i32 = ws::WSA_NOT_ENOUGH_MEMORY;
    /// An option the socket's protocol does not know (what Wine answers TCP_KEEPCNT with).
    pub const ENOPROTOOPT: i32 = ws::WSAENOPROTOOPT;
}
#[cfg(windows)]
pub use wsa::*;

/// The symbolic name of an OS error (`ECONNRESET`), or `errno N` for unlisted codes.
pub fn errno_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => errno_const(code).map_or_else(|| format!("errno {code}"), str::to_owned),
        None if err.kind() == io::ErrorKind::TimedOut => "ETIMEDOUT".to_owned(),
        None => err.to_string(),
    }
}

/// The OS's reason for `err` as a person reads it, without std's ` (os error N)` suffix:
/// `No such file or directory`.
pub fn reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Whether `code` says the process or the system ran out of descriptors, buffers or memory:
/// a condition to wait out (the next try may succeed), not one connection's trouble.
pub fn out_of_resources(code: i32) -> bool {
    #[cfg(target_os = "linux")]
    let codes = [EMFILE, ENFILE, ENOBUFS, ENOMEM];
    #[cfg(windows)]
    let codes = [EMFILE, ENOBUFS, ENOMEM];
    codes.contains(&code)
}

/// Whether an `accept` that failed with `code` is one connection's trouble, so the next
/// accept may be tried at once: the connection was aborted before it was taken, or (Linux)
/// a network error already pending on it (accept(2): "treat them like EAGAIN by retrying").
/// Anything else (EPERM from a security module, EINVAL) may fail the same way again: wait.
pub fn accept_retry_at_once(code: i32) -> bool {
    #[cfg(target_os = "linux")]
    let codes = [
        ECONNABORTED,
        EPROTO,
        ENETDOWN,
        libc::ENOPROTOOPT,
        EHOSTDOWN,
        libc::ENONET,
        EHOSTUNREACH,
        libc::EOPNOTSUPP,
        ENETUNREACH,
        libc::EINTR,
    ];
    #[cfg(windows)]
    let codes = [ECONNABORTED, ECONNRESET, ENETDOWN];
    codes.contains(&code)
}

fn errno_const(code: i32) -> Option<&'static str> {
    #[cfg(target_os = "linux")]
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
    #[cfg(windows)]
    const NAMES: &[(i32, &str)] = &[
        (ECONNRESET, "WSAECONNRESET"),
        (ETIMEDOUT, "WSAETIMEDOUT"),
        (EPIPE, "WSAESHUTDOWN"),
        (ECONNREFUSED, "WSAECONNREFUSED"),
        (EHOSTUNREACH, "WSAEHOSTUNREACH"),
        (ENETUNREACH, "WSAENETUNREACH"),
        (ECONNABORTED, "WSAECONNABORTED"),
        (ENOTCONN, "WSAENOTCONN"),
        (EHOSTDOWN, "WSAEHOSTDOWN"),
        (ENETDOWN, "WSAENETDOWN"),
        (EINVAL, "WSAEINVAL"),
        (EAGAIN, "WSAEWOULDBLOCK"),
        (EACCES, "WSAEACCES"),
        (EMSGSIZE, "WSAEMSGSIZE"),
        (EMFILE, "WSAEMFILE"),
        (ENOBUFS, "WSAENOBUFS"),
        (ENOPROTOOPT, "WSAENOPROTOOPT"),
    ];
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reason_is_the_os_message_without_its_number() {
        let e = io::Error::from_raw_os_error(ENOENT);
        assert_eq!(reason(&e), "No such file or directory");
    }

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

    #[test]
    fn running_out_of_descriptors_or_memory_is_told_from_one_connections_trouble() {
        for code in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert!(out_of_resources(code), "{code}");
        }
        for code in [ECONNABORTED, EPROTO, ECONNRESET] {
            assert!(!out_of_resources(code), "{code}");
        }
    }
}
