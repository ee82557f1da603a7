//! Sockets: the options and calls std and socket2 do not give, and the ones set alike in
//! several places.
//!
//! Contract: [`listen`] opens a TCP listener with [`BACKLOG`] and SO_REUSEADDR; [`reset`]
//! arms a socket to end with a RST when closed (SO_LINGER 0) and [`orderly`] takes that back;
//! [`set_recv_err`] asks for ICMP errors as socket errors (IP_RECVERR); [`recv_nowait`],
//! [`send_all`] and [`unsent_bytes`] are the non-blocking read, the write that raises no
//! SIGPIPE, and SIOCOUTQ.

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

/// How many connections may wait to be accepted (the kernel caps it at
/// `net.core.somaxconn`). Std's default of 128 overflows when hundreds of clients connect at
/// once: the kernel then drops their handshakes' last ACK, and their first data waits for
/// retransmissions, long enough to trip a short TCP_USER_TIMEOUT.
pub const BACKLOG: i32 = 4096;

/// A listening TCP socket at `addr` with [`BACKLOG`] (and SO_REUSEADDR, as std sets it).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Arms `socket` to end with a RST when it is closed (SO_LINGER 0), with no FIN before it.
pub fn reset(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_linger(Some(Duration::ZERO))
}

/// Takes [`reset`] back: `socket` closes with a FIN, delivering what it still holds.
pub fn orderly(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_linger(None)
}

/// IP_RECVERR (IPV6_RECVERR for `v6`): ICMP errors reach the socket as errors (socket2 has no
/// setter for it).
pub fn set_recv_err(socket: &impl AsFd, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let one: libc::c_int = 1;
    let value: *const libc::c_int = &one;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = socket.as_fd().as_raw_fd();
    // SAFETY: `value` points to one readable c_int of `len` bytes during the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, value.cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One read of what `fd` holds now (MSG_DONTWAIT): `WouldBlock` if nothing, 0 at EOF.
pub fn recv_nowait(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Writes all of `bytes` (blocking socket), without SIGPIPE (MSG_NOSIGNAL).
pub fn send_all(sock: &Socket, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sock.send_with_flags(bytes, libc::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Bytes in the send queue not yet acknowledged by the peer (SIOCOUTQ).
pub fn unsent_bytes(fd: RawFd) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one c_int through the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut bytes) } != 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;

    fn pair() -> (TcpStream, Socket) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, Socket::from(std::os::fd::OwnedFd::from(server)))
    }

    #[test]
    fn a_reset_socket_ends_with_a_rst_and_an_orderly_one_with_a_fin() {
        let (mut client, server) = pair();
        reset(&server).unwrap();
        drop(server);
        let mut buf = [0u8; 1];
        let e = client.read(&mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET));

        let (mut client, server) = pair();
        reset(&server).unwrap();
        orderly(&server).unwrap();
        drop(server);
        assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF: a FIN");
    }

    #[test]
    fn sent_bytes_are_read_without_blocking_and_then_would_block() {
        let (client, server) = pair();
        let client = Socket::from(std::os::fd::OwnedFd::from(client));
        let mut buf = [0u8; 16];
        let e = recv_nowait(server.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        send_all(&client, b"hello").unwrap();
        assert!(crate::sys::poll::wait_readable(server.as_raw_fd(), None).unwrap());
        assert_eq!(recv_nowait(server.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert!(unsent_bytes(client.as_raw_fd()).is_ok());
    }

    #[test]
    fn a_write_to_a_reset_connection_fails_with_epipe_or_econnreset_and_no_sigpipe() {
        let (client, server) = pair();
        reset(&client).unwrap();
        drop(client);
        assert!(
            crate::sys::poll::wait_readable(server.as_raw_fd(), Some(Duration::from_secs(5)))
                .unwrap()
        );
        // The RST arrived; writes now fail rather than kill the test with SIGPIPE.
        let failed = (0..100).any(|_| send_all(&server, b"x").is_err());
        assert!(failed);
    }

    #[test]
    fn recv_err_is_accepted_for_both_families() {
        let v4 = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        set_recv_err(&v4, false).unwrap();
        if let Ok(v6) = Socket::new(Domain::IPV6, Type::STREAM, None) {
            set_recv_err(&v6, true).unwrap();
        }
    }
}
