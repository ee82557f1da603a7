//! Links, addresses and routes, spoken to the kernel over rtnetlink (`NETLINK_ROUTE`), as
//! `ip link`, `ip addr` and `ip route` would set them, without running `ip`.
//!
//! Contract: an [`Rtnl`] is a netlink socket of one network namespace: [`Rtnl::current`]
//! that of the calling thread, [`Rtnl::open_in`] that of a named namespace (the socket is
//! made by a short-lived thread that entered it, so no thread of the caller ever changes
//! namespace; a netlink socket keeps the namespace it was made in for its whole life). Every
//! request asks for the kernel's acknowledgement and waits for it (a dump, for its
//! NLMSG_DONE), reading only the messages that carry its sequence number (a stale answer is
//! skipped undecoded), at most 10 s for each datagram; a refusal (`NLMSG_ERROR`
//! with a non-zero code) is an error naming the device, the namespace and the operation,
//! ending with the kernel's errno (`configuring device ig-x in network namespace ig-y: adding
//! address 192.0.2.1/32: File exists (os error 17)`). Synchronous on purpose (see ARCHITECTURE.md): the
//! `rtnetlink` crate is the same protocol behind an async runtime this program does not run.

use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// An IP family, for the routes that need one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `address`.
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
}

/// A link (network device) of the namespace an [`Rtnl`] speaks to, by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
}

/// A request/acknowledgement rtnetlink socket of one network namespace.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    /// SO_RCVTIMEO: the longest wait for the kernel's next datagram.
    receive_timeout: Duration,
    /// Where the socket speaks, for error messages: "network namespace NAME", or "the
    /// current network namespace".
    place: String,
}

impl Rtnl {
    /// A socket of the calling thread's network namespace.
    pub fn current() -> Result<Rtnl> {
        Rtnl::here("the current network namespace".to_owned())
    }

    /// A socket of network namespace `netns` (a file in `/run/netns`); the caller's threads
    /// stay where they are.
    pub fn open_in(netns: &str) -> Result<Rtnl> {
        let file = super::netns::open(netns)?;
        Rtnl::open_in_file(&file, netns)
    }

    /// A socket of the network namespace `netns` refers to (an open `/run/netns` file, or any
    /// nsfs file), which errors call `name`; the caller's threads stay where they are.
    pub fn open_in_file(netns: &File, name: &str) -> Result<Rtnl> {
        std::thread::scope(|scope| {
            let opener = std::thread::Builder::new()
                .name(format!("rtnl:{name}"))
                .spawn_scoped(scope, || -> Result<Rtnl> {
                    super::netns::enter_file(netns, name)?;
                    Rtnl::here(format!("network namespace {name}"))
                })
                .with_context(|| format!("spawning a thread to enter network namespace {name}"))?;
            match opener.join() {
                Ok(result) => result,
                Err(_) => {
                    bail!("the thread opening rtnetlink in network namespace {name} panicked")
                }
            }
        })
    }

    /// A socket of the calling thread's network namespace, which errors call `place`
    /// ("network namespace NAME").
    pub fn here(place: String) -> Result<Rtnl> {
        let fail = || format!("opening an rtnetlink socket in {place}");
        let mut socket = Socket::new(NETLINK_ROUTE).with_context(fail)?;
        socket.bind_auto().with_context(fail)?;
        socket.connect(&NlAddr::new(0, 0)).with_context(fail)?;
        set_receive_timeout(&socket, RECEIVE_TIMEOUT).with_context(fail)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
            receive_timeout: RECEIVE_TIMEOUT,
            place,
        })
    }

    /// Where this socket speaks ("network namespace NAME").
    pub fn place(&self) -> &str {
        &self.place
    }

    /// The link called `name` (`ip link show NAME`).
    pub fn link(&mut self, name: &str) -> Result<Link> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let replies = self
            .request(RouteNetlinkMessage::GetLink(msg), 0)
            .with_context(|| format!("looking up device {name} in {}", self.place))?;
        let index = replies.iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
            _ => None,
        });
        match index {
            Some(index) => Ok(Link {
                name: name.to_owned(),
                index,
            }),
            None => bail!(
                "looking up device {name} in {}: the kernel answered without it",
                self.place
            ),
        }
    }

    /// Every link, sorted by index (`ip link show`): a dump, which ends in NLMSG_DONE.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .with_context(|| format!("listing the devices of {}", self.place))?;
        let mut links: Vec<Link> = replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => {
                    let name = link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })?;
                    Some(Link {
                        name,
                        index: link.header.index,
                    })
                }
                _ => None,
            })
            .collect();
        links.sort_by_key(|link| link.index);
        Ok(links)
    }

    /// Brings `link` up (`ip link set NAME up`).
    pub fn set_up(&mut self, link: &Link) -> Result<()> {
        let mut msg = link_message(link);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::NewLink(msg), 0, "bringing it up", link)
    }

    /// Turns off IPv6 address generation on `link` (`ip link set NAME addrgenmode none`): no
    /// link-local address, hence no router solicitations sent through it when it comes up.
    pub fn set_addrgenmode_none(&mut self, link: &Link) -> Result<()> {
        let mut msg = link_message(link);
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.change(
            RouteNetlinkMessage::NewLink(msg),
            0,
            "turning IPv6 address generation off (addrgenmode none)",
            link,
        )
    }

    /// Moves `link` into the network namespace `target` refers to (`ip link set NAME netns
    /// NS`, by IFLA_NET_NS_FD). Moving sets the link down and drops its addresses; its index
    /// there may differ, so look it up again with an [`Rtnl`] of the target.
    pub fn move_to(&mut self, link: &Link, target: &File, target_name: &str) -> Result<()> {
        let mut msg = link_message(link);
        msg.attributes
            .push(LinkAttribute::NetNsFd(target.as_raw_fd()));
        let what = format!("moving it into network namespace {target_name}");
        self.change(RouteNetlinkMessage::NewLink(msg), 0, &what, link)
    }

    /// Adds `address/prefix` to `link` (`ip addr add A/P dev NAME`, with `nodad` for IPv6
    /// when `dad` is [`Dad::Skip`]: usable at once instead of after duplicate address
    /// detection).
    pub fn add_address(
        &mut self,
        link: &Link,
        address: IpAddr,
        prefix: u8,
        dad: Dad,
    ) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = Family::of(address).address_family();
        msg.header.prefix_len = prefix;
        msg.header.index = link.index;
        if dad == Dad::Skip && address.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        if address.is_ipv4() {
            // As iproute2: IFA_LOCAL is the address, IFA_ADDRESS the peer, the same without one.
            msg.attributes.push(AddressAttribute::Local(address));
        }
        msg.attributes.push(AddressAttribute::Address(address));
        let what = format!("adding address {address}/{prefix}");
        self.change(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &what,
            link,
        )
    }

    /// Adds a default route of `family` out of `link`, with no gateway (`ip -4|-6 route add
    /// default dev NAME`: main table, scope link, protocol boot, as iproute2 sets them).
    pub fn add_default_route(&mut self, link: &Link, family: Family) -> Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family.address_family();
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = match family {
            Family::V4 => RouteScope::Link,
            Family::V6 => RouteScope::Universe,
        };
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Oif(link.index));
        let what = match family {
            Family::V4 => "adding the IPv4 default route through it",
            Family::V6 => "adding the IPv6 default route through it",
        };
        self.change(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            what,
            link,
        )
    }

    /// A change request: its refusal is "configuring device NAME in PLACE: `what`: errno".
    fn change(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
        link: &Link,
    ) -> Result<()> {
        self.request(msg, flags)
            .map(drop)
            .context(what.to_owned())
            .with_context(|| format!("configuring device {} in {}", link.name, self.place))
    }

    /// Sends `msg` with NLM_F_REQUEST | NLM_F_ACK | `flags` and reads until its
    /// acknowledgement (or, for a dump, its NLMSG_DONE), returning the messages that came
    /// before it (a GET's answer). A refusal is the kernel's errno as an [`io::Error`].
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(msg, flags)?;
        self.receive(sequence)
    }

    /// Sends `msg` with NLM_F_REQUEST | NLM_F_ACK | `flags` under a new sequence number,
    /// which it returns.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .with_context(|| format!("sending to rtnetlink in {}", self.place))?;
        Ok(sequence)
    }

    /// Reads datagrams until the end of the answer to request `sequence` (see [`read_answer`]);
    /// a datagram longer than the buffer grows it, a silence of [`RECEIVE_TIMEOUT`] is an
    /// error.
    fn receive(&mut self, sequence: u32) -> Result<Vec<RouteNetlinkMessage>> {
        let fd = self.socket.as_raw_fd();
        let reading = || format!("reading rtnetlink in {}", self.place);
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // MSG_PEEK | MSG_TRUNC: the datagram's whole length, whatever the buffer's.
            let whole = recv(fd, &mut buf, libc::MSG_PEEK | libc::MSG_TRUNC)
                .map_err(|e| timed_out(e, self.receive_timeout))
                .with_context(reading)?;
            if whole > buf.len() {
                buf.resize(whole, 0);
            }
            let n = recv(fd, &mut buf, 0)
                .map_err(|e| timed_out(e, self.receive_timeout))
                .with_context(reading)?;
            match read_answer(&buf[..n], sequence, &mut answers) {
                Ok(true) => return Ok(answers),
                Ok(false) => {}
                // The kernel's refusal reads as its errno alone: the caller says what it was.
                Err(refusal) if refusal.is::<io::Error>() => return Err(refusal),
                Err(malformed) => return Err(malformed.context(reading())),
            }
        }
    }
}

/// How long a request waits for the kernel's next datagram before giving up. The kernel
/// answers rtnetlink requests at once; this bounds a wait that would otherwise be endless.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The netlink header: length, type, flags, sequence number, port (netlink(7)).
const HEADER_LEN: usize = 16;
/// Message types of netlink itself (linux/netlink.h).
const NLMSG_NOOP: u16 = 1;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

/// Takes the messages of one datagram that answer request `sequence` (those of another
/// sequence number, a stale answer, are skipped without being decoded) into `answers`;
/// true when the answer is complete: an acknowledgement, or NLMSG_DONE ending a dump.
/// A refusal (NLMSG_ERROR with a code) is the kernel's errno as an [`io::Error`].
fn read_answer(
    datagram: &[u8],
    sequence: u32,
    answers: &mut Vec<RouteNetlinkMessage>,
) -> Result<bool> {
    let mut at = 0;
    while datagram.len() - at >= HEADER_LEN {
        let field = |offset: usize, size: usize| &datagram[at + offset..at + offset + size];
        let u32_at = |offset| u32::from_ne_bytes(field(offset, 4).try_into().unwrap_or([0; 4]));
        let len = u32_at(0) as usize;
        let kind = u16::from_ne_bytes(field(4, 2).try_into().unwrap_or([0; 2]));
        let seq = u32_at(8);
        if len < HEADER_LEN || len > datagram.len() - at {
            bail!(
                "malformed answer: a message of {len} bytes at byte {at} of {}",
                datagram.len()
            );
        }
        let message = &datagram[at..at + len];
        // NLMSG_ALIGN: each message starts on a 4-byte boundary.
        at = (at + len + 3) & !3;
        if seq != sequence {
            continue;
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // A dump's end, with the dump's errno (negated) when it failed midway.
                let code = message
                    .get(HEADER_LEN..HEADER_LEN + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i32::from_ne_bytes);
                if code < 0 {
                    return Err(io::Error::from_raw_os_error(-code).into());
                }
                return Ok(true);
            }
            NLMSG_OVERRUN => bail!("the kernel dropped part of the answer (NLMSG_OVERRUN)"),
            _ => {
                let decoded = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(message)
                    .map_err(|e| anyhow::anyhow!("malformed answer: {e}"))?;
                match decoded.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(true),
                        Some(_) => return Err(io::Error::from(e).into()),
                    },
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }
    Ok(false)
}

/// recv(2) into `buf`; returns the length the kernel reports (with MSG_TRUNC, the
/// datagram's, which may exceed `buf`).
fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length for the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// SO_RCVTIMEO's expiry (EAGAIN) as an error saying so.
fn timed_out(err: io::Error, timeout: Duration) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from the kernel within {timeout:?}"),
        )
    } else {
        err
    }
}

/// Sets SO_RCVTIMEO on `socket`: a recv that waits longer fails with EAGAIN. Through socket2,
/// which knows each libc's `timeval` (musl's fields changed width in 1.2).
fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    socket2::SockRef::from(socket).set_read_timeout(Some(timeout))
}

/// Whether a new IPv6 address goes through duplicate address detection first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    /// As the kernel does by default: the address is tentative for a second or so.
    Run,
    /// `IFA_F_NODAD`: usable at once.
    Skip,
}

/// A link message addressed to `link` by index, changing nothing yet.
fn link_message(link: &Link) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = link.index;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_by_name_in_the_current_namespace() {
        let mut rtnl = Rtnl::current().unwrap();
        let lo = rtnl.link("lo").unwrap();
        assert_eq!(lo.index, 1, "lo is the first device of every namespace");
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it_the_place_and_the_errno() {
        let mut rtnl = Rtnl::current().unwrap();
        let err = rtnl.link("ig-no-such-dev").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("ig-no-such-dev") && text.contains("the current network namespace"),
            "{text}"
        );
        assert!(text.contains("No such device"), "{text}");
    }
    /// One netlink message: header (`len` is the header's length field) and `body`.
    fn message(len: usize, kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    /// An acknowledgement (NLMSG_ERROR, code 0) of request `seq`.
    fn ack(seq: u32) -> Vec<u8> {
        let mut body = 0i32.to_ne_bytes().to_vec();
        body.extend_from_slice(&message(HEADER_LEN, 16, NLM_F_REQUEST, seq, &[]));
        message(HEADER_LEN + body.len(), 2, 0, seq, &body)
    }

    /// RTM_NEWLINK of request `seq` with a 4-byte body, too short for an ifinfomsg: no
    /// decoder accepts it.
    fn undecodable(seq: u32) -> Vec<u8> {
        message(HEADER_LEN + 4, 16, 0, seq, &[0xff; 4])
    }

    #[test]
    fn a_stale_answer_with_another_sequence_number_is_skipped_without_being_decoded() {
        let mut datagram = undecodable(7);
        datagram.extend_from_slice(&ack(8));
        let mut answers = Vec::new();
        assert!(
            read_answer(&datagram, 8, &mut answers).unwrap(),
            "request 8 acknowledged"
        );
        assert!(answers.is_empty());
        // The skipped message is indeed one that would have failed: as request 7's answer it
        // is an error.
        let err = read_answer(&datagram, 7, &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("malformed answer"), "{err:#}");
    }

    #[test]
    fn messages_start_at_four_byte_aligned_offsets() {
        // A NOOP of 17 bytes, padded to 20: the acknowledgement starts at byte 20, not 17.
        let mut datagram = message(HEADER_LEN + 1, NLMSG_NOOP, 0, 5, &[0, 0, 0, 0]);
        datagram.extend_from_slice(&ack(5));
        assert!(read_answer(&datagram, 5, &mut Vec::new()).unwrap());
    }

    #[test]
    fn a_multipart_answer_ends_at_nlmsg_done_and_a_failed_dump_is_its_errno() {
        let flags = 2; // NLM_F_MULTI
        let part = message(HEADER_LEN, NLMSG_NOOP, flags, 3, &[]);
        let mut answers = Vec::new();
        assert!(
            !read_answer(&part, 3, &mut answers).unwrap(),
            "not over yet"
        );
        let done = message(HEADER_LEN + 4, NLMSG_DONE, flags, 3, &0i32.to_ne_bytes());
        assert!(
            read_answer(&done, 3, &mut answers).unwrap(),
            "over at NLMSG_DONE"
        );
        let failed = message(
            HEADER_LEN + 4,
            NLMSG_DONE,
            flags,
            3,
            &(-libc::EINTR).to_ne_bytes(),
        );
        let err = read_answer(&failed, 3, &mut answers).unwrap_err();
        assert_eq!(
            err.downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::EINTR),
            "{err:#}"
        );
    }

    #[test]
    fn a_message_longer_than_its_datagram_is_an_error_not_a_panic() {
        let mut datagram = ack(2);
        datagram[0] = 200;
        let err = read_answer(&datagram, 2, &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("malformed answer"), "{err:#}");
    }

    #[test]
    fn a_dump_of_every_link_ends_and_lists_loopback() {
        let mut rtnl = Rtnl::current().unwrap();
        let links = rtnl.links().unwrap();
        assert_eq!(
            links.first().map(|l| (l.name.as_str(), l.index)),
            Some(("lo", 1)),
            "{links:?}"
        );
        // The socket is in step afterwards: whatever followed the dump's end is skipped.
        assert_eq!(rtnl.link("lo").unwrap().index, 1);
    }

    #[test]
    fn an_unread_answer_to_an_earlier_request_is_skipped() {
        let mut rtnl = Rtnl::current().unwrap();
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName("ig-no-such-dev".to_owned()));
        // Its answer, a refusal (ENODEV), stays queued, unread.
        rtnl.send(RouteNetlinkMessage::GetLink(msg), 0).unwrap();
        assert_eq!(rtnl.link("lo").unwrap().index, 1);
    }

    #[test]
    fn a_silent_kernel_is_a_timeout_error_not_an_endless_wait() {
        let mut rtnl = Rtnl::current().unwrap();
        let timeout = Duration::from_millis(200);
        set_receive_timeout(&rtnl.socket, timeout).unwrap();
        rtnl.receive_timeout = timeout;
        // Nothing was sent: nothing will come.
        let started = std::time::Instant::now();
        let err = rtnl.receive(1).unwrap_err();
        assert!(started.elapsed() >= timeout);
        assert_eq!(
            format!("{err:#}"),
            "reading rtnetlink in the current network namespace: no answer from the kernel \
             within 200ms"
        );
    }
}
