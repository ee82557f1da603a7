//! Integration tests of the `netns` and `tun` adapters against the real kernel.
//!
//! They must run as root (CAP_SYS_ADMIN + CAP_NET_ADMIN) with `ip` (iproute2) and a
//! working `/dev/net/tun`. They never skip: missing privileges make them fail loudly.
//! Every namespace and device name is unique per process and test, and is removed by
//! the `Namespace` / `Tun` guards even when an assertion fails.

use crate::common;

use anyhow::{anyhow, Context, Result};
use idlegate::sys::netns::{self, Namespace};
use idlegate::sys::tun::Tun;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The remote peer the lab host talks to through the TUN (TEST-NET-2).
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The discard port, used as the remote's port in both directions.
const REMOTE_PORT: u16 = 9;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh name, ≤ 15 bytes so it is also a valid interface name: `igt` + pid + counter.
fn unique() -> String {
    common::require_root();
    common::unique("igt")
}

/// A namespace holding a TUN whose fd we keep; fields drop in order: device, namespace.
struct Host {
    tun: Tun,
    ns: Namespace,
    addr: Ipv4Addr,
}

fn host(addr: Ipv4Addr) -> Result<Host> {
    let ns = Namespace::create(&unique())?;
    let tun = Tun::create(&unique())?;
    tun.move_to(ns.name(), &[addr.into()])?;
    Ok(Host { tun, ns, addr })
}

fn join<T>(handle: JoinHandle<T>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))
}

fn if_index(name: &str) -> u32 {
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) }
}

#[test]
fn namespace_lifecycle() -> Result<()> {
    let name = unique();
    assert!(!netns::exists(&name));
    {
        let ns = Namespace::create(&name)?;
        assert_eq!(ns.name(), name);
        assert!(netns::exists(&name));
        assert!(netns::list()?.contains(&name));
        let err = netns::create(&name).expect_err("creating an existing namespace must fail");
        assert!(format!("{err:#}").contains(&name), "{err:#}");
        netns::delete(&name)?; // the guard's own delete must then be a no-op
        assert!(!netns::exists(&name));
    }
    assert!(!netns::list()?.contains(&name));
    netns::delete(&name).context("deleting a missing namespace must succeed")?;
    let err = netns::spawn_in(&name, || ()).expect_err("spawn_in a missing namespace");
    assert!(format!("{err:#}").contains(&name), "{err:#}");
    assert!(netns::create("../etc").is_err());
    Ok(())
}

#[test]
fn spawn_in_runs_inside_the_namespace() -> Result<()> {
    let h = host(Ipv4Addr::new(192, 0, 2, 20))?;
    let (addr, dev) = (h.addr, h.tun.name().to_owned());
    let inside = netns::spawn_in(h.ns.name(), move || {
        let bound = TcpListener::bind((addr, 0)).map(|_| ());
        (bound, if_index(&dev), if_index("lo"))
    })?;
    let (bound, dev_index, lo_index) = join(inside)?;
    bound.context("binding the namespace address inside the namespace")?;
    assert_ne!(dev_index, 0, "TUN not visible inside the namespace");
    assert_ne!(lo_index, 0);
    // The caller's thread stayed in the root namespace.
    assert_eq!(
        if_index(h.tun.name()),
        0,
        "TUN still visible in the root namespace"
    );
    let err = TcpListener::bind((addr, 0)).expect_err("address must not exist in root");
    assert_eq!(err.kind(), ErrorKind::AddrNotAvailable);
    Ok(())
}

#[test]
fn tun_carries_packets_both_ways() -> Result<()> {
    let h = host(Ipv4Addr::new(192, 0, 2, 30))?;
    outbound(&h).context("namespace -> fd")?;
    inbound(&h).context("fd -> namespace")
}

/// A datagram sent inside the namespace comes out of the fd as a checksummed IPv4 packet.
fn outbound(h: &Host) -> Result<()> {
    let addr = h.addr;
    let sender = netns::spawn_in(h.ns.name(), move || -> std::io::Result<u16> {
        let socket = UdpSocket::bind((addr, 0))?;
        socket.send_to(b"ping", (REMOTE, REMOTE_PORT))?;
        Ok(socket.local_addr()?.port())
    })?;
    let port = join(sender)??;
    let packet = recv_matching(&h.tun, |p| is_udp_to(p, REMOTE, REMOTE_PORT))?;
    assert_eq!(ipv4_src(&packet), addr);
    assert_eq!(u16::from_be_bytes([packet[20], packet[21]]), port);
    assert_eq!(&packet[28..], b"ping");
    assert_eq!(checksum(&[&packet[..20]]), 0, "bad IPv4 header checksum");
    assert_eq!(udp_checksum(&packet), 0, "bad UDP checksum");
    Ok(())
}

/// A packet written to the fd is delivered to a socket bound in the namespace.
fn inbound(h: &Host) -> Result<()> {
    let (addr, (port_tx, port_rx)) = (h.addr, mpsc::channel());
    let receiver = netns::spawn_in(h.ns.name(), move || -> std::io::Result<_> {
        let socket = UdpSocket::bind((addr, 0))?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        let _ = port_tx.send(socket.local_addr()?.port());
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf)?;
        Ok((buf[..n].to_vec(), from))
    })?;
    let port = port_rx.recv_timeout(TIMEOUT)?;
    let packet = udp_packet((REMOTE, REMOTE_PORT), (addr, port), b"pong");
    assert_eq!(h.tun.send(&packet)?, packet.len());
    let (payload, from) = join(receiver)?.context("receiving in the namespace")?;
    assert_eq!(payload, b"pong");
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(REMOTE, REMOTE_PORT)));
    Ok(())
}

#[test]
fn exec_passes_exit_status_through() -> Result<()> {
    let ns = Namespace::create(&unique())?;
    let status = netns::exec(ns.name(), "sh", &["-c".into(), "exit 7".into()])?;
    assert_eq!(status.code(), Some(7));
    // `ip netns exec` remounts /sys: only lo exists in a fresh namespace.
    let script = r#"test "$(ls /sys/class/net)" = lo"#;
    let status = netns::exec(ns.name(), "sh", &["-c".into(), script.into()])?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[test]
fn tun_device_lives_as_long_as_fd_and_namespace() -> Result<()> {
    // Dropping the Tun destroys the device inside the namespace.
    let h = host(Ipv4Addr::new(192, 0, 2, 40))?;
    let (ns, dev) = (h.ns, h.tun.name().to_owned());
    drop(h.tun);
    assert!(crate::common::ip(&["-n", ns.name(), "link", "show", &dev]).is_err());
    // Deleting the namespace destroys the device (asynchronously, in the kernel's
    // namespace cleanup work); the fd then polls readable and reports EBADFD.
    let h = host(Ipv4Addr::new(192, 0, 2, 41))?;
    drop(h.ns);
    let err = recv_error(&h.tun)?;
    assert_eq!(err.raw_os_error(), Some(libc::EBADFD), "{err}");
    drop(ns);
    Ok(())
}

/// The first error other than `WouldBlock` that reading `tun` gives within [`TIMEOUT`].
fn recv_error(tun: &Tun) -> Result<std::io::Error> {
    let deadline = Instant::now() + TIMEOUT;
    while wait_readable(tun.as_raw_fd(), deadline)? {
        match tun.recv(&mut [0u8; 2048]) {
            Err(err) if err.kind() != ErrorKind::WouldBlock => return Ok(err),
            _ => {}
        }
    }
    Err(anyhow!("reading the TUN kept working for {TIMEOUT:?}"))
}

/// Reads packets from `tun` until one satisfies `wanted`, polling for at most [`TIMEOUT`].
fn recv_matching(tun: &Tun, wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 2048];
    let mut seen = 0;
    while wait_readable(tun.as_raw_fd(), deadline)? {
        match tun.recv(&mut buf) {
            Ok(n) if wanted(&buf[..n]) => return Ok(buf[..n].to_vec()),
            Ok(_) => seen += 1,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(err) => return Err(err).context("reading the TUN"),
        }
    }
    Err(anyhow!(
        "no matching packet within {TIMEOUT:?} ({seen} others)"
    ))
}

/// Waits until `fd` is readable (true) or `deadline` passes (false).
fn wait_readable(fd: RawFd, deadline: Instant) -> Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    idlegate::sys::poll::wait_readable(fd, Some(left.max(Duration::from_millis(1)))).context("poll")
}

fn is_udp_to(p: &[u8], dst: Ipv4Addr, port: u16) -> bool {
    p.len() >= 28
        && p[0] == 0x45
        && p[9] == 17
        && ipv4_dst(p) == dst
        && u16::from_be_bytes([p[22], p[23]]) == port
}

fn ipv4_src(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

fn ipv4_dst(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

/// An IPv4 (no options) + UDP packet with both checksums filled in.
fn udp_packet(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(28 + payload.len()).unwrap();
    let udp_len = total - 20;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]; // DF, TTL 64, UDP
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    p.extend_from_slice(&src.1.to_be_bytes());
    p.extend_from_slice(&dst.1.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_sum = match udp_checksum(&p) {
        0 => 0xffff, // 0 means "no checksum" in UDP
        sum => sum,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// UDP checksum of an IPv4 packet without options: 0 when the stored checksum is right.
fn udp_checksum(p: &[u8]) -> u16 {
    let udp = &p[20..];
    let len = u16::try_from(udp.len()).unwrap().to_be_bytes();
    let pseudo = [0, 17, len[0], len[1]];
    checksum(&[&p[12..20], &pseudo, udp])
}

/// Internet checksum (RFC 1071) over the concatenation of `parts` (each of even length,
/// except possibly the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for chunk in part.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
