//! What this system lets a program see of its own TCP connections besides their bytes: the
//! evidence `idlegate probe` and `idlegate echo` tell a path's behaviours apart with, and that
//! the relay passes a RST on with.
//!
//! Contract: [`acknowledgement`] says whether TCP acknowledged everything written on a
//! connection (Linux: TCP_INFO; Windows: SIO_TCP_INFO, Windows 10 1703 and later), or that this
//! system cannot tell ([`Acknowledgement::Unknown`]: Wine 8.0 answers SIO_TCP_INFO with
//! WSAEOPNOTSUPP). [`report_icmp_errors`] makes an ICMP error that answers a connection's
//! packets fail the socket at once (Linux: IP_RECVERR, ip(7)) and says `false` where the system
//! has no such option for a TCP socket (Windows: IP_RECVERR is for datagram sockets, and
//! TCP_ICMP_ERROR_INFO covers connection setup only). [`limit_unanswered`] bounds how long
//! unacknowledged data is retransmitted (Linux: TCP_USER_TIMEOUT; Windows: TCP_MAXRT) and says
//! `false` where the system refuses it. [`ended_by_reset`] tells, once a read saw the end of a
//! connection, whether a RST rather than a FIN ended it: Linux and Windows hand a RST to the
//! read as ECONNRESET/WSAECONNRESET, but Wine 8.0's `recv` returns 0 for it (its wineserver
//! takes the socket's error first), while WSAPoll still reports POLLERR (it is
//! `sys::socket`'s, which the relay uses too, re-exported here).

use socket2::Socket;
use std::io;
use std::net::TcpStream;
use std::time::Duration;

/// Whether what was written on a connection was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledgement {
    /// Established, and everything written was acknowledged.
    All,
    /// Established, with data sent and not yet acknowledged.
    Pending,
    /// The connection is no longer established (a RST empties the send queue too, so an
    /// empty queue then proves nothing).
    NotEstablished,
    /// This system does not say (no TCP_INFO or SIO_TCP_INFO).
    Unknown,
}

pub use crate::sys::socket::ended_by_reset;
pub use imp::{acknowledgement, limit_unanswered, report_icmp_errors, ICMP_ERRNOS};

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use crate::sys::tcp_info::all_acknowledged;
    use std::os::fd::AsRawFd;

    /// The errnos an ICMP error turns into on a TCP socket with IP_RECVERR.
    pub const ICMP_ERRNOS: &[i32] = &[
        libc::EHOSTUNREACH,
        libc::ENETUNREACH,
        libc::EACCES,
        libc::ECONNREFUSED,
        libc::EPROTO,
        libc::EMSGSIZE,
    ];

    /// Whether TCP acknowledged everything written on `stream` (TCP_INFO).
    pub fn acknowledgement(stream: &TcpStream) -> Acknowledgement {
        match all_acknowledged(stream.as_raw_fd()) {
            Some(true) => Acknowledgement::All,
            Some(false) => Acknowledgement::Pending,
            None => Acknowledgement::NotEstablished,
        }
    }

    /// IP_RECVERR (IPV6_RECVERR for `v6`): ICMP errors reach the socket as errors. Always
    /// `Ok(true)` when set.
    pub fn report_icmp_errors(socket: &Socket, v6: bool) -> io::Result<bool> {
        crate::sys::socket::set_recv_err(socket, v6).map(|()| true)
    }

    /// TCP_USER_TIMEOUT: unacknowledged data is given up after `after`.
    pub fn limit_unanswered(socket: &Socket, after: Duration) -> io::Result<bool> {
        socket.set_tcp_user_timeout(Some(after)).map(|()| true)
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use crate::sys::socket::{raw, set_tcp_option};
    use windows_sys::Win32::Networking::WinSock::{
        TCP_INFO_v0, WSAGetLastError, WSAIoctl, SIO_TCP_INFO, SOCKET, SOCKET_ERROR,
        TCPSTATE_ESTABLISHED, TCP_MAXRT, WSAEINVAL, WSAENOPROTOOPT, WSAEOPNOTSUPP,
    };

    /// None: no ICMP error reaches an established TCP socket as an error on Windows.
    pub const ICMP_ERRNOS: &[i32] = &[];

    /// Whether TCP acknowledged everything written on `stream` (SIO_TCP_INFO version 0:
    /// `State` and `BytesInFlight`); `Unknown` where the system does not implement it.
    pub fn acknowledgement(stream: &TcpStream) -> Acknowledgement {
        let version: u32 = 0;
        let mut info = TCP_INFO_v0::default();
        let mut returned: u32 = 0;
        let (in_len, out_len) = (
            std::mem::size_of::<u32>() as u32,
            std::mem::size_of::<TCP_INFO_v0>() as u32,
        );
        let info_ptr: *mut TCP_INFO_v0 = &mut info;
        let version_ptr: *const u32 = &version;
        // SAFETY: the input is one readable u32, the output one writable TCP_INFO_v0 of
        // `out_len` bytes, both alive for this synchronous call (no OVERLAPPED).
        let rc = unsafe {
            WSAIoctl(
                raw(stream) as SOCKET,
                SIO_TCP_INFO,
                version_ptr.cast(),
                in_len,
                info_ptr.cast(),
                out_len,
                &mut returned,
                std::ptr::null_mut(),
                None,
            )
        };
        if rc == SOCKET_ERROR {
            // SAFETY: no arguments; reads this thread's last Winsock error.
            let code = unsafe { WSAGetLastError() };
            return if matches!(code, WSAEOPNOTSUPP | WSAEINVAL | WSAENOPROTOOPT) {
                Acknowledgement::Unknown
            } else {
                Acknowledgement::NotEstablished
            };
        }
        if info.State != TCPSTATE_ESTABLISHED {
            Acknowledgement::NotEstablished
        } else if info.BytesInFlight == 0 {
            Acknowledgement::All
        } else {
            Acknowledgement::Pending
        }
    }

    /// Windows has no option that fails an established TCP connection on an ICMP error.
    pub fn report_icmp_errors(_socket: &Socket, _v6: bool) -> io::Result<bool> {
        Ok(false)
    }

    /// TCP_MAXRT (whole seconds, rounded up): `Ok(false)` where the system refuses it (Wine 8.0:
    /// WSAENOPROTOOPT).
    pub fn limit_unanswered(socket: &Socket, after: Duration) -> io::Result<bool> {
        // DWORD seconds, as set_keepalive sets it (TCP_MAXRT takes an int; both are 4 bytes).
        let seconds = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).min(i32::MAX as u64);
        let seconds = u32::try_from(seconds).unwrap_or(i32::MAX as u32);
        match set_tcp_option(raw(socket), TCP_MAXRT, seconds) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(WSAENOPROTOOPT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn data_read_by_the_peer_is_all_acknowledged_and_a_shut_connection_is_not_established() {
        let (mut client, mut server) = pair();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        // Loopback acknowledges at once; the ACK may take a moment to be processed.
        let acked = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            acknowledgement(&client) == Acknowledgement::All
        });
        assert!(acked, "{:?}", acknowledgement(&client));
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(acknowledgement(&client), Acknowledgement::NotEstablished);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_reports_icmp_errors_and_limits_retransmissions() {
        let socket = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        assert!(report_icmp_errors(&socket, false).unwrap());
        assert!(limit_unanswered(&socket, Duration::from_millis(1500)).unwrap());
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn an_end_of_stream_after_a_fin_is_not_a_reset() {
        let (mut client, server) = pair();
        server.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        assert!(!ended_by_reset(&client));
    }
}
