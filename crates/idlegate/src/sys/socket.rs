//! Sockets: the raw handle both systems share, and the options and calls std and socket2 do
//! not give, or that are set alike in several places.
//!
//! Contract: [`Raw`] is a socket's raw handle (a descriptor on Linux, a SOCKET on Windows),
//! [`Handle`] anything that holds a socket (a std or mio stream or listener, a socket2
//! `Socket`), [`raw`] the one way from the second to the first. [`listen`] opens a TCP
//! listener with [`BACKLOG`] (and SO_REUSEADDR on Linux); [`reset`] arms a socket to end with
//! a RST when closed (SO_LINGER 0) and [`orderly`] takes that back; [`set_keepalive`] sets
//! TCP keepalive and the user timeout with each system's own options, and says which of them
//! the system did not take ([`USER_TIMEOUT`] names the user timeout's option). [`ended_by_reset`]
//! and [`failed_after_end`] are the one way to tell a RST that comes with or after a
//! connection's end of stream: Linux and Windows hand a RST to the read itself
//! (ECONNRESET/WSAECONNRESET), but Wine 8.0's `recv` returns 0 for it, as for a FIN, and leaves
//! SO_ERROR 0, while WSAPoll still reports POLLERR. [`accept_until_stopped`] is the one accept
//! loop of a thread that accepts: it hands each connection to its caller until a stop flag is
//! set, looking at the flag at least every [`STOP_CHECK`]. [`connect_started`] and
//! [`connected`] are a connect that does not wait (its socket made non-blocking as it is
//! created on Linux), and its outcome (a peer address, one call, once made). Linux alone:
//! [`accept_nonblocking`] takes one connection for an event loop (`accept4`, SOCK_NONBLOCK:
//! no call after it; an accepted socket inherits its listener's linger, TCP_NODELAY, keepalive
//! and user timeout, which the tests here read back); [`set_recv_err`] asks for ICMP errors as socket errors
//! (IP_RECVERR); [`recv_nowait`], [`send_all`] and [`unsent_bytes`] are the non-blocking read,
//! the write that raises no SIGPIPE, and SIOCOUTQ.

use crate::sys::poll::{wait_readable, STOP_CHECK};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A socket's raw handle: a descriptor on Linux.
#[cfg(unix)]
pub type Raw = std::os::fd::RawFd;
/// A socket's raw handle: a SOCKET on Windows.
#[cfg(windows)]
pub type Raw = std::os::windows::io::RawSocket;

/// Anything that holds a socket (`AsFd` on Linux, `AsSocket` on Windows): what the functions
/// here take, and what socket2's `SockRef` is made from.
#[cfg(unix)]
pub trait Handle: std::os::fd::AsFd {}
#[cfg(unix)]
impl<T: std::os::fd::AsFd + ?Sized> Handle for T {}
/// Anything that holds a socket (`AsFd` on Linux, `AsSocket` on Windows): what the functions
/// here take, and what socket2's `SockRef` is made from.
#[cfg(windows)]
pub trait Handle: std::os::windows::io::AsSocket {}
#[cfg(windows)]
impl<T: std::os::windows::io::AsSocket + ?Sized> Handle for T {}

/// The raw handle of `socket`, to watch it with [`crate::sys::poll`].
pub fn raw(socket: &(impl Handle + ?Sized)) -> Raw {
    #[cfg(unix)]
    {
        socket.as_fd().as_raw_fd()
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsRawSocket;
        socket.as_socket().as_raw_socket()
    }
}

/// How many connections may wait to be accepted (the kernel caps it at
/// `net.core.somaxconn`). Std's default of 128 overflows when hundreds of clients connect at
/// once: the kernel then drops their handshakes' last ACK, and their first data waits for
/// retransmissions, long enough to trip a short TCP_USER_TIMEOUT.
pub const BACKLOG: i32 = 4096;

/// A listening TCP socket at `addr` with [`BACKLOG`]; on Linux with SO_REUSEADDR, as std sets
/// it there. Not on Windows, where SO_REUSEADDR lets another socket take over a port in use
/// (std does not set it there either).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts connections on `listener` (made non-blocking) and hands each, blocking again, to
/// `take`, until `stop` is set (looked at least every [`STOP_CHECK`]); waits while `ready`
/// says no, leaving connections in the listen queue. A failed accept (out of descriptors, say)
/// or a connection `take` refuses is logged under `what` and the loop goes on (after
/// [`STOP_CHECK`], so a listener that stays readable is not spun on); a failed wait ends it.
pub fn accept_until_stopped(
    listener: &TcpListener,
    stop: &AtomicBool,
    what: &str,
    ready: impl Fn() -> bool,
    mut take: impl FnMut(TcpStream, SocketAddr) -> io::Result<()>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        if !ready() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(raw(listener), Some(STOP_CHECK))?;
                continue;
            }
            Err(e) => {
                tracing::warn!("{what}: accept failed: {e}");
                std::thread::sleep(STOP_CHECK);
                continue;
            }
        };
        // Blocking again: elsewhere an accepted socket may inherit the listener's mode
        // (Windows, the BSDs and macOS, whose `accept` std calls); on Linux `accept4` without
        // SOCK_NONBLOCK gives a blocking one (no system call spent on it).
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let stream = match stream.set_nonblocking(false) {
            Ok(()) => stream,
            Err(e) => {
                tracing::warn!("{what}: {peer} not taken: {e}");
                continue;
            }
        };
        if let Err(e) = take(stream, peer) {
            tracing::warn!("{what}: {peer} not taken: {e}");
        }
    }
    Ok(())
}

/// Arms `socket` to end with a RST when it is closed (SO_LINGER 0), with no FIN before it.
pub fn reset(socket: &impl Handle) -> io::Result<()> {
    SockRef::from(socket).set_linger(Some(Duration::ZERO))
}

/// Starts a TCP connection to `to` without waiting for it: the socket is non-blocking and
/// reports writable (or an error, or a hangup) once the connection is made or has failed;
/// [`connected`] then says which. For an event loop that must not block on a connect.
pub fn connect_started(to: SocketAddr) -> io::Result<TcpStream> {
    // Made non-blocking with the socket itself on Linux (SOCK_NONBLOCK; one system call, not
    // three); elsewhere after it.
    #[cfg(target_os = "linux")]
    let socket = Socket::new(
        Domain::for_address(to),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    #[cfg(not(target_os = "linux"))]
    let socket = {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket
    };
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Whether a connection [`connect_started`] began is made: `Ok(true)` connected, `Ok(false)`
/// still under way, an error if it failed (refused, unreachable).
/// A connection made is known by its peer's address (one system call); only one not (yet)
/// made costs its pending error too, which tells a failed connect from one under way.
pub fn connected(stream: &TcpStream) -> io::Result<bool> {
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => match stream.take_error()? {
            Some(e) => Err(e),
            None => Ok(false),
        },
        Err(e) => Err(e),
    }
}

/// One connection from `listener` if one waits (`WouldBlock` if none), non-blocking: on
/// Linux accepted so (`accept4` with SOCK_NONBLOCK and SOCK_CLOEXEC, no call after it), so
/// that an event loop takes connections with one system call each.
#[cfg(target_os = "linux")]
pub fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (socket, peer) =
        SockRef::from(listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::other("an accepted connection without an IP address"))?;
    Ok((socket.into(), peer))
}

/// Takes [`reset`] back: `socket` closes with a FIN, delivering what it still holds.
pub fn orderly(socket: &impl Handle) -> io::Result<()> {
    SockRef::from(socket).set_linger(None)
}

/// The option [`set_keepalive`] bounds unacknowledged data with, as the system's documentation
/// names it: what the relay's start line says.
#[cfg(unix)]
pub const USER_TIMEOUT: &str = "TCP_USER_TIMEOUT";
/// The option [`set_keepalive`] bounds unacknowledged data with, as the system's documentation
/// names it: what the relay's start line says.
#[cfg(windows)]
pub const USER_TIMEOUT: &str = "TCP_MAXRT";

/// Whether the end of stream a read just returned on `socket` was in fact a RST. Linux and
/// Windows hand a RST to the read itself (ECONNRESET, WSAECONNRESET), so there a 0 is a FIN:
/// `false`, with no system call on Linux. Wine 8.0's `recv` returns 0 for a RST too; WSAPoll
/// then reports POLLERR on the socket, which is what the Windows side asks.
pub fn ended_by_reset(socket: &impl Handle) -> bool {
    #[cfg(unix)]
    {
        let _ = socket;
        false
    }
    #[cfg(windows)]
    {
        windows::poll_error(raw(socket))
    }
}

/// Whether `socket`, whose end of stream was read earlier and which is not read any more,
/// has failed since (a RST after its FIN, a user timeout): its pending error (SO_ERROR, taken),
/// and on Windows also [`ended_by_reset`]'s POLLERR (Wine 8.0 leaves SO_ERROR 0).
pub fn failed_after_end(socket: &impl Handle) -> bool {
    matches!(SockRef::from(socket).take_error(), Ok(Some(_))) || ended_by_reset(socket)
}

/// A keepalive option the system did not take (see [`set_keepalive`]).
#[derive(Debug)]
pub struct NotTaken {
    /// The option, as the system's documentation names it (`TCP_KEEPCNT`, `TCP_MAXRT`).
    pub option: &'static str,
    pub error: io::Error,
}

/// Turns on TCP keepalive on `socket`: the first probe after `idle` of silence, then one
/// every `interval`, `count` probes; and `user_timeout`, how long sent data may go
/// unacknowledged. Linux: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and
/// TCP_USER_TIMEOUT, all of which must take. Windows: SIO_KEEPALIVE_VALS (idle and interval,
/// which must take); then TCP_KEEPCNT (Windows 10 1703 and later; fixed at 10 before) and
/// TCP_MAXRT (in whole seconds, rounded up) are each tried on their own, and what the system
/// refuses is returned, not failed: probes still go out, and the connection still ends after
/// the system's own count. An error is a failure of what must take.
pub fn set_keepalive(
    socket: &impl Handle,
    idle: Duration,
    interval: Duration,
    count: u32,
    user_timeout: Duration,
) -> io::Result<Vec<NotTaken>> {
    let sock = SockRef::from(socket);
    let params = TcpKeepalive::new().with_time(idle).with_interval(interval);
    #[cfg(target_os = "linux")]
    {
        sock.set_tcp_keepalive(&params.with_retries(count))?;
        sock.set_tcp_user_timeout(Some(user_timeout))?;
        Ok(Vec::new())
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Networking::WinSock::{TCP_KEEPCNT, TCP_MAXRT};
        sock.set_tcp_keepalive(&params)?;
        let seconds = user_timeout.as_secs() + u64::from(user_timeout.subsec_nanos() > 0);
        let mut not_taken = Vec::new();
        for (option, name, value) in [
            ("TCP_KEEPCNT", TCP_KEEPCNT, u64::from(count)),
            ("TCP_MAXRT", TCP_MAXRT, seconds),
        ] {
            let value = u32::try_from(value).unwrap_or(u32::MAX);
            if let Err(error) = windows::set_tcp_option(raw(socket), name, value) {
                not_taken.push(NotTaken { option, error });
            }
        }
        Ok(not_taken)
    }
}

#[cfg(windows)]
pub(crate) use windows::set_tcp_option;

/// Windows' side of what socket2 does not set or ask.
#[cfg(windows)]
mod windows {
    use super::Raw;
    use std::io;
    use windows_sys::Win32::Networking::WinSock as ws;

    /// Whether WSAPoll reports an error on `socket` now (POLLERR), without waiting.
    pub fn poll_error(socket: Raw) -> bool {
        let mut watch = ws::WSAPOLLFD {
            fd: socket as ws::SOCKET,
            events: ws::POLLRDNORM,
            revents: 0,
        };
        // SAFETY: one valid WSAPOLLFD, a zero timeout.
        let rc = unsafe { ws::WSAPoll(&mut watch, 1, 0) };
        rc > 0 && watch.revents & ws::POLLERR != 0
    }

    /// setsockopt(IPPROTO_TCP, `name`) with a DWORD.
    pub fn set_tcp_option(socket: Raw, name: i32, value: u32) -> io::Result<()> {
        let len = std::mem::size_of::<u32>() as i32;
        let value: *const u32 = &value;
        // SAFETY: `value` points to one readable DWORD of `len` bytes during the call, and
        // `socket` is a socket the caller holds open.
        let rc = unsafe {
            ws::setsockopt(
                socket as ws::SOCKET,
                ws::IPPROTO_TCP,
                name,
                value.cast(),
                len,
            )
        };
        if rc != 0 {
            // SAFETY: a plain call, reading this thread's last Winsock error.
            return Err(io::Error::from_raw_os_error(unsafe {
                ws::WSAGetLastError()
            }));
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
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

#[cfg(target_os = "linux")]
/// One read of what `fd` holds now (MSG_DONTWAIT): `WouldBlock` if nothing, 0 at EOF.
pub fn recv_nowait(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(target_os = "linux")]
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

#[cfg(target_os = "linux")]
/// Bytes in the send queue not yet acknowledged by the peer (SIOCOUTQ).
pub fn unsent_bytes(fd: RawFd) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one c_int through the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut bytes) } != 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

#[cfg(all(test, target_os = "linux"))]
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
    fn the_accept_loop_hands_over_a_connection_blocking_and_ends_soon_after_its_stop_flag() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let looping = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                accept_until_stopped(
                    &listener,
                    &stop,
                    "test",
                    || true,
                    |stream, peer| {
                        tx.send((stream, peer))
                            .map_err(|_| io::Error::other("gone"))
                    },
                )
            })
        };
        let client = TcpStream::connect(addr).unwrap();
        let (mut accepted, peer) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // Handed over blocking: a read waits for the data rather than failing with WouldBlock.
        let mut writer = client.try_clone().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::io::Write::write_all(&mut writer, b"x").unwrap();
        });
        let mut buf = [0u8; 1];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");

        let stopped = std::time::Instant::now();
        stop.store(true, Ordering::Relaxed);
        looping.join().unwrap().unwrap();
        // Within STOP_CHECK, with a wide margin for a loaded machine.
        assert!(
            stopped.elapsed() < STOP_CHECK * 10,
            "{:?}",
            stopped.elapsed()
        );
    }

    #[test]
    fn the_accept_loop_leaves_connections_queued_while_not_ready() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let ready = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let looping = {
            let (stop, ready) = (stop.clone(), ready.clone());
            std::thread::spawn(move || {
                accept_until_stopped(
                    &listener,
                    &stop,
                    "test",
                    || ready.load(Ordering::Relaxed),
                    |stream, _| tx.send(stream).map_err(|_| io::Error::other("gone")),
                )
            })
        };
        let _client = TcpStream::connect(addr).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        ready.store(true, Ordering::Relaxed);
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
        stop.store(true, Ordering::Relaxed);
        looping.join().unwrap().unwrap();
    }

    #[test]
    fn an_accepted_socket_inherits_its_listeners_linger_nodelay_keepalive_and_user_timeout() {
        // What lets the tunnel entry and the relay set these once, on the listener.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        reset(&listener).unwrap();
        SockRef::from(&listener).set_tcp_nodelay(true).unwrap();
        let (idle, interval, user) = (
            Duration::from_secs(7),
            Duration::from_secs(3),
            Duration::from_secs(19),
        );
        assert!(set_keepalive(&listener, idle, interval, 4, user)
            .unwrap()
            .is_empty());
        listener.set_nonblocking(true).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(wait_readable(raw(&listener), Some(Duration::from_secs(10))).unwrap());
        let (accepted, _) = accept_nonblocking(&listener).unwrap();
        let s = SockRef::from(&accepted);
        assert_eq!(s.linger().unwrap(), Some(Duration::ZERO));
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), idle);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), interval);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(user));
        // Accepted non-blocking, with no call after the accept.
        let mut buf = [0u8; 1];
        let e = (&accepted).read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // And a plain listener's sockets have none of it.
        let plain = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (accepted, _) = plain.accept().unwrap();
        let s = SockRef::from(&accepted);
        assert_eq!(s.linger().unwrap(), None);
        assert!(!s.keepalive().unwrap());
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
    }

    #[test]
    fn a_connect_started_is_non_blocking_and_known_connected_once_made_or_failed_once_refused() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let stream = connect_started(listener.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 1];
        let e = (&stream).read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !connected(&stream).unwrap() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        // A port nobody listens on: refused, told by the pending error.
        let closed = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed);
        let stream = connect_started(to).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let e = loop {
            match connected(&stream) {
                Ok(false) => {
                    assert!(std::time::Instant::now() < deadline);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(true) => panic!("connected to a closed port"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
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
