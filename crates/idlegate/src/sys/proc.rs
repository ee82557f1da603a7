//! What /proc tells of processes and of the system: the one reader of procfs.
//!
//! Contract: [`pids`] lists the processes, [`comm`] names one, [`socket_fds`] lists its socket
//! descriptors with their inodes (what a `socket:[N]` link names; [`socket_inode`] reads one
//! link), [`children`] lists the processes it started, and [`sysctl`] reads one numeric
//! sysctl of this process's network namespace. A process may exit at any moment: what it no
//! longer has is missing from the answer (or an error naming the kernel's errno), never a
//! panic.

use anyhow::{Context, Result};
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

/// Every process's pid (the numeric entries of /proc); empty if /proc cannot be read.
pub fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Process `pid`'s command name (`/proc/PID/comm`, trimmed of spaces and its newline), if it
/// can be read. The process chooses it (any bytes but NUL): bytes that are not UTF-8 read as
/// U+FFFD, and it may be empty.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/comm"))
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
}

/// The socket descriptors of process `pid` and their inodes, from `/proc/PID/fd`, in the
/// order the kernel lists them. The error of reading the directory is the kernel's (ENOENT:
/// no such process; EACCES: not ours to read).
pub fn socket_fds(pid: i32) -> io::Result<Vec<(RawFd, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&entry.path()) {
            out.push((fd, inode));
        }
    }
    Ok(out)
}

/// The inode of the socket a /proc fd link names (`socket:[N]`); None for anything else.
pub fn socket_inode(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    parse_socket_link(target.to_str()?)
}

fn parse_socket_link(text: &str) -> Option<u64> {
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The pids of the processes `pid`'s threads started (`/proc/PID/task/TID/children`), each
/// once; empty if the process is gone.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in text
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            if !out.contains(&child) {
                out.push(child);
            }
        }
    }
    out
}

/// The numeric sysctl `name` (dotted, as `sysctl` writes it: `net.ipv4.tcp_keepalive_time`),
/// read from /proc/sys.
pub fn sysctl(name: &str) -> Result<u64> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("{path}: not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn me() -> i32 {
        std::process::id() as i32
    }

    /// `name` given to a thread of ours (prctl PR_SET_NAME), then `comm` of that thread's id.
    fn comm_of_a_thread_named(name: &'static [u8]) -> Option<String> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            buf[..name.len()].copy_from_slice(name);
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from
            // `buf`, which lives across the call; gettid has no preconditions.
            let tid = unsafe {
                assert_eq!(libc::prctl(libc::PR_SET_NAME, buf.as_ptr()), 0);
                libc::gettid()
            };
            comm(tid)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn a_name_that_is_not_utf8_is_read_lossily_and_an_empty_one_as_empty() {
        assert_eq!(
            comm_of_a_thread_named(b"bad\xffname").as_deref(),
            Some("bad\u{fffd}name")
        );
        assert_eq!(comm_of_a_thread_named(b"").as_deref(), Some(""));
    }

    #[test]
    fn this_process_is_listed_and_named() {
        assert!(pids().contains(&me()));
        let name = comm(me()).unwrap();
        assert!(!name.is_empty() && !name.ends_with('\n'), "{name:?}");
        assert_eq!(comm(i32::MAX), None);
    }

    #[test]
    fn this_processs_sockets_are_found_with_their_inodes_and_files_are_not() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fds = socket_fds(me()).unwrap();
        let inode = crate::sys::file::inode(&socket).unwrap();
        assert!(fds.contains(&(socket.as_raw_fd(), inode)), "{fds:?}");
        assert!(fds.iter().all(|&(fd, _)| fd != file.as_raw_fd()));
        let link = format!("/proc/self/fd/{}", socket.as_raw_fd());
        assert_eq!(socket_inode(Path::new(&link)), Some(inode));
        let e = socket_fds(i32::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn only_socket_links_name_a_socket_inode() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn a_child_is_listed_under_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(children(me()).contains(&pid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!children(me()).contains(&pid));
        assert!(children(i32::MAX).is_empty());
    }

    #[test]
    fn a_numeric_sysctl_is_read_and_a_missing_one_is_named_in_the_error() {
        assert!(sysctl("net.ipv4.tcp_keepalive_time").unwrap() > 0);
        let e = sysctl("net.ipv4.no_such_sysctl").unwrap_err();
        assert_eq!(e.to_string(), "reading /proc/sys/net/ipv4/no_such_sysctl");
    }
}
