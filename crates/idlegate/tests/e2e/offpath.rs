//! End-to-end tests of off-path attacks on the gateway (issue 16, items 4 and 5): segments
//! forged from the lab's `internet` host with a raw socket, with the client's address and port
//! but sequence and acknowledgement numbers it cannot know, must neither cut a live connection
//! nor spoil the RSTs the gateway sends at expiry. Real Linux TCP stacks on both ends.
//!
//! Needs root; each test builds its own lab and removes it, even on failure. Azure LB's timers
//! scaled by 80: idle 3 s (7.5 s for the blind FIN's test), the transitory timer a FIN would
//! start 375 ms scaled, run at the 3 s floor (TCP's retransmission timeout is not scaled).

use crate::common;

use common::{one_rule_lab, require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::sys::netns::spawn_in;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7000);
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// The one's complement sum of `bytes` (RFC 1071), folded.
fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    for pair in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// An IPv4 TCP segment as an off-path host forges it, checksums filled.
fn forged_segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = !(sum(&p[..20], 0) as u16);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp = &mut p[20..];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[20..].copy_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    let tcp_sum = !(sum(&p[20..], sum(&pseudo, 0)) as u16);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends a whole IPv4 packet from the calling thread's namespace through a raw socket.
fn send_raw(packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let result = if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

/// Sends "ping" and reads the echo.
fn round_trip(conn: &mut TcpStream) -> io::Result<()> {
    conn.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf)?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// A server on vm1:7000 that echoes one connection until it ends, and returns how its last
/// read ended (`Ok` at EOF, else the error kind).
fn echo_server(lab: &Lab) -> anyhow::Result<std::thread::JoinHandle<io::ErrorKind>> {
    let listener = spawn_in(&lab.namespace_of("vm1")?, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7000))
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("bind thread panicked"))??;
    Ok(std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return io::ErrorKind::NotConnected;
        };
        // Longer than any expiry here, so that a timeout means "never reset".
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return io::ErrorKind::UnexpectedEof,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return io::ErrorKind::BrokenPipe;
                    }
                }
                Err(e) => return e.kind(),
            }
        }
    }))
}

/// The client's connection to the frontend, from the internet host, after one round trip.
fn connect() -> io::Result<(TcpStream, SocketAddrV4)> {
    let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(FRONTEND), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    round_trip(&mut conn)?;
    match conn.local_addr()? {
        SocketAddr::V4(local) => Ok((conn, local)),
        SocketAddr::V6(_) => Err(io::Error::other("an IPv4 connection")),
    }
}

#[test]
fn a_blind_fin_from_the_internet_does_not_cut_an_established_connection() {
    // Issue 16 item 4: FIN+ACK with seq 0x12345 and ack 0x54321 from the client's address and
    // port. Out of the windows (conntrack's tcp_in_window), it must not close the flow.
    require_root();
    // Idle 10 min scaled by 80 (7.5 s): room to wait out the transitory timer a FIN would
    // start, which races TCP's retransmissions and so runs at the 3 s floor.
    let config = common::one_member_lab(
        "profile = \"azure-lb\"\ntime_scale = 80",
        "[[lb_rule]]\nname = \"app\"\nfrontend = \"public\"\nfrontend_port = 7000\n\
         backend_pool = \"vms\"\nbackend_port = 7000\nidle_timeout = \"10m\"\nexpiry = \"reset\"\n",
    );
    let (answered, counters) = Lab::with_gateway(&unique("bf"), &config, |lab| {
        let server = echo_server(lab)?;
        let client = spawn_in(&lab.namespace_of(INTERNET)?, || -> io::Result<bool> {
            let (mut conn, local) = connect()?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            let fin = forged_segment(local, FRONTEND, FIN | ACK, 0x12345, 0x54321, b"");
            send_raw(&fin, *FRONTEND.ip())?;
            // Longer than the transitory timer a FIN would start (30 s scaled, floored to
            // 3 s), well inside the idle timeout (7.5 s) that an established flow keeps.
            std::thread::sleep(Duration::from_millis(4_500));
            Ok(round_trip(&mut conn).is_ok())
        })?;
        let answered = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        let _ = server.join();
        Ok(answered)
    })
    .expect("lab run");
    assert!(
        answered,
        "the connection still works after the blind FIN (the flow was not closed)"
    );
    assert!(
        counters.out_of_window >= 1,
        "the forged FIN is counted out of window"
    );
}

#[test]
fn blind_data_segments_do_not_spoil_the_rsts_sent_at_expiry() {
    // Issue 16 item 5: PSH+ACK segments with sequence numbers the attacker cannot know. Four of
    // them, a quarter of the sequence space apart, so that whatever the client's real number,
    // one lies up to 2^31 ahead of it: code that tracked that would send the member a RST at
    // a sequence number its stack refuses (RFC 5961 §3.2) and leave it ESTABLISHED.
    require_root();
    let config = one_rule_lab("reset");
    let ((client, server), counters) = Lab::with_gateway(&unique("bd"), &config, |lab| {
        let server = echo_server(lab)?;
        let client = spawn_in(
            &lab.namespace_of(INTERNET)?,
            || -> io::Result<io::ErrorKind> {
                let (mut conn, local) = connect()?;
                let base = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(7, |d| d.subsec_nanos());
                for k in 0..4u32 {
                    let seq = base.wrapping_add(k << 30);
                    let ack = base.rotate_left(13).wrapping_add(k << 30);
                    let data = forged_segment(local, FRONTEND, PSH | ACK, seq, ack, b"forged");
                    send_raw(&data, *FRONTEND.ip())?;
                }
                // The flow expires 3 s after its last packet; `reset` must reach both ends.
                let mut buf = [0u8; 64];
                Ok(match conn.read(&mut buf) {
                    Ok(_) => io::ErrorKind::UnexpectedEof,
                    Err(e) => e.kind(),
                })
            },
        )?;
        let client = client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        let server = server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
        Ok((client, server))
    })
    .expect("lab run");
    assert_eq!(
        (client, server),
        (
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionReset
        ),
        "both ends reset at expiry (the member's RST carried the client's real sequence number)"
    );
    assert!(counters.out_of_window >= 4, "{counters:?}");
    assert_eq!(counters.resets_sent, 2);
}
