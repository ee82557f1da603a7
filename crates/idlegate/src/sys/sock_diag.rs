//! Every TCP connection of a network namespace, as the kernel's sock_diag netlink reports it.
//!
//! Contract: [`tcp_connections`] dumps the TCP sockets of this thread's network namespace,
//! IPv4 and IPv6, every state but LISTEN and TIME_WAIT, with their `tcp_info` (`inet_diag`,
//! as `ss` does; not /proc/net/tcp), typed as [`TcpConnection`]. A record this kernel writes
//! and the parser cannot read (an older kernel's shorter `tcp_info`) is skipped; a refusal of
//! the request is an error.

use crate::sys::tcp_info::TcpState;
use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use std::net::SocketAddr;
use std::time::Duration;

/// The timer a socket has armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// A retransmission (or loss probe) timer, firing in this long.
    Retransmit(Duration),
    /// The keepalive timer, firing in this long.
    Keepalive(Duration),
    /// A zero-window probe timer.
    Probe(Duration),
    /// TIME_WAIT's timer.
    TimeWait,
}

/// The parts of `tcp_info` sock_diag gives that idlegate reads. Times are milliseconds ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagInfo {
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    /// Segments sent and not acknowledged.
    pub unacked: u32,
    /// RTOs fired and not yet recovered (`tcpi_retransmits`).
    pub retransmits: u8,
    /// `tcpi_backoff`: the RTO's exponential backoff.
    pub backoff: u8,
    /// Retransmissions over the connection's life.
    pub total_retrans: u32,
}

/// One TCP socket, as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub timer: Option<Timer>,
    /// The socket's inode (0: closed by its program, the kernel only finishing it).
    pub inode: u64,
    pub info: Option<DiagInfo>,
}

/// Every TCP socket but listeners and TIME_WAIT, IPv4 and IPv6, with tcp_info.
pub fn tcp_connections() -> Result<Vec<TcpConnection>> {
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&NlAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    let mut out = Vec::new();
    for (family, id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut states = StateFlags::all();
        states.remove(StateFlags::LISTEN | StateFlags::TIME_WAIT);
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states,
                socket_id: id,
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0).context("asking sock_diag")?;
        receive_all(&socket, &mut out)?;
    }
    Ok(out)
}

/// Reads the dump's answers until its end.
fn receive_all(socket: &netlink_sys::Socket, out: &mut Vec<TcpConnection>) -> Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .context("reading sock_diag")?;
        let mut at = 0;
        while at < n {
            let Ok(msg) = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[at..n]) else {
                // A record this crate cannot read (an older kernel's shorter tcp_info, say):
                // skip it by its length and go on with the others.
                let len = buf
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
                if len == 0 {
                    break;
                }
                at += len;
                continue;
            };
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => bail!("sock_diag refused the request: {e:?}"),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(connection(*r))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

fn connection(r: InetResponse) -> TcpConnection {
    use netlink_packet_sock_diag::inet::Timer as Raw;
    let id = &r.header.socket_id;
    let info = r.nlas.into_iter().find_map(|nla| match nla {
        Nla::TcpInfo(i) => Some(DiagInfo {
            last_data_sent_ms: i.last_data_sent,
            last_data_recv_ms: i.last_data_recv,
            last_ack_recv_ms: i.last_ack_recv,
            unacked: i.unacked,
            retransmits: i.retransmits,
            backoff: i.backoff,
            total_retrans: i.total_retrans,
        }),
        _ => None,
    });
    TcpConnection {
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        state: TcpState(r.header.state),
        timer: r.header.timer.map(|t| match t {
            Raw::Retransmit(d, _) => Timer::Retransmit(d),
            Raw::KeepAlive(d) => Timer::Keepalive(d),
            Raw::Probe(d) => Timer::Probe(d),
            Raw::TimeWait => Timer::TimeWait,
        }),
        inode: u64::from(r.header.inode),
        info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_loopback_connection_is_dumped_from_both_ends_with_its_inode_and_timers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&client).set_keepalive(true).unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        // The ACK of the ping processed: no retransmission timer hides the keepalive one.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
        assert!((0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            crate::sys::tcp_info::all_acknowledged(fd) == Some(true)
        }));
        let all = tcp_connections().unwrap();
        let find = |local: SocketAddr| all.iter().find(|c| c.local == local).unwrap();
        let ours = find(client.local_addr().unwrap());
        assert_eq!(ours.remote, listener.local_addr().unwrap());
        assert_eq!(ours.state, TcpState::ESTABLISHED);
        assert_eq!(Some(ours.inode), crate::sys::file::inode(&client));
        assert!(
            matches!(ours.timer, Some(Timer::Keepalive(_))),
            "keepalive on, nothing to retransmit: {:?}",
            ours.timer
        );
        assert!(ours.info.is_some());
        let theirs = find(server.local_addr().unwrap());
        assert_eq!(theirs.remote, client.local_addr().unwrap());
        assert_eq!(theirs.timer, None, "no keepalive, nothing in flight");
        // Listeners are left out.
        assert!(all
            .iter()
            .all(|c| c.local != listener.local_addr().unwrap() || c.remote.port() != 0));
    }
}
