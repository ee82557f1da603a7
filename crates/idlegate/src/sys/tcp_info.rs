//! What the kernel knows of a TCP connection: the one TCP_INFO reader.
//!
//! Contract: [`TcpInfo::read`] reads `getsockopt(TCP_INFO)` of a socket and keeps the fields
//! idlegate looks at: the state ([`TcpState`], named as Linux names them), segments sent and
//! not yet acknowledged, and retransmissions in all. [`all_acknowledged`] answers whether
//! everything written was acknowledged while the connection is still established.

use std::fmt;
use std::io;
use std::os::fd::RawFd;

/// A TCP state number as `tcpi_state` gives it (Linux's `TCP_ESTABLISHED` = 1 …
/// `TCP_CLOSING` = 11, include/net/tcp_states.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpState(pub u8);

impl TcpState {
    /// TCP_ESTABLISHED.
    pub const ESTABLISHED: TcpState = TcpState(1);

    /// The state's name (`ESTABLISHED`, `FIN_WAIT1`, …), or `?` for a number Linux does not use.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 12] = [
            "?",
            "ESTABLISHED",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE",
            "CLOSE_WAIT",
            "LAST_ACK",
            "LISTEN",
            "CLOSING",
        ];
        NAMES.get(usize::from(self.0)).copied().unwrap_or("?")
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The parts of TCP_INFO idlegate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub state: TcpState,
    /// `tcpi_unacked`: segments sent and not yet acknowledged.
    pub unacked: u32,
    /// `tcpi_total_retrans`: segments retransmitted over the connection's life.
    pub total_retrans: u32,
}

impl TcpInfo {
    /// TCP_INFO of the TCP socket `fd`.
    pub fn read(fd: RawFd) -> io::Result<TcpInfo> {
        // SAFETY: tcp_info is plain integers, for which all-zero bytes are a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let info_ptr: *mut libc::tcp_info = &mut info;
        // SAFETY: `info` is writable for `len` bytes; the kernel writes at most `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info_ptr.cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpInfo {
            state: TcpState(info.tcpi_state),
            unacked: info.tcpi_unacked,
            total_retrans: info.tcpi_total_retrans,
        })
    }
}

/// Whether TCP has acknowledged everything written on `fd`: `Some(true)` or `Some(false)`
/// while the connection is established, `None` once it is not (a RST empties the send queue
/// too, so an empty queue alone proves nothing) or TCP_INFO fails.
pub fn all_acknowledged(fd: RawFd) -> Option<bool> {
    let info = TcpInfo::read(fd).ok()?;
    (info.state == TcpState::ESTABLISHED).then_some(info.unacked == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn state_names_follow_linux_tcp_states_h() {
        assert_eq!(TcpState(1).name(), "ESTABLISHED");
        assert_eq!(TcpState(4).name(), "FIN_WAIT1");
        assert_eq!(TcpState(10).name(), "LISTEN");
        assert_eq!(TcpState(11).name(), "CLOSING");
        assert_eq!(TcpState(0).to_string(), "?");
        assert_eq!(TcpState(12).name(), "?");
    }

    #[test]
    fn a_loopback_connection_reads_established_and_acknowledged_then_not_established() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            TcpInfo::read(listener.as_raw_fd()).unwrap().state.name(),
            "LISTEN"
        );
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        let info = TcpInfo::read(client.as_raw_fd()).unwrap();
        assert_eq!(info.state, TcpState::ESTABLISHED);
        // Loopback acknowledges at once; wait a little for the ACK to be processed all the same.
        let acked = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            all_acknowledged(client.as_raw_fd()) == Some(true)
        });
        assert!(acked);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let state = TcpInfo::read(client.as_raw_fd()).unwrap().state;
        assert_ne!(state, TcpState::ESTABLISHED);
        assert_eq!(all_acknowledged(client.as_raw_fd()), None);
    }

    #[test]
    fn tcp_info_of_something_not_tcp_is_an_error() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(TcpInfo::read(a.as_raw_fd()).is_err());
        assert_eq!(all_acknowledged(a.as_raw_fd()), None);
    }
}
