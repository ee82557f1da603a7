//! Links, addresses and routes, spoken to the kernel over rtnetlink (`NETLINK_ROUTE`), as
//! `ip link`, `ip addr` and `ip route` would set them, without running `ip`.
//!
//! Contract: an [`Rtnl`] is a netlink socket of one network namespace: [`Rtnl::current`]
//! that of the calling thread, [`Rtnl::open_in`] that of a named namespace (the socket is
//! made by a short-lived thread that entered it, so no thread of the caller ever changes
//! namespace; a netlink socket keeps the namespace it was made in for its whole life). Every
//! request asks for the kernel's acknowledgement and waits for it; a refusal (`NLMSG_ERROR`
//! with a non-zero code) is an error naming the device, the namespace and the operation,
//! ending with the kernel's errno (`configuring device ig-x in network namespace ig-y: adding
//! address 192.0.2.1/32: File exists (os error 17)`). Synchronous on purpose (see ARCHITECTURE.md): the
//! `rtnetlink` crate is the same protocol behind an async runtime this program does not run.

use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
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
use std::os::fd::AsRawFd;

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
        let name = netns.to_owned();
        let opener = std::thread::Builder::new()
            .name(format!("rtnl:{netns}"))
            .spawn(move || -> Result<Rtnl> {
                super::netns::enter_current_thread(&name)?;
                Rtnl::here(format!("network namespace {name}"))
            })
            .with_context(|| format!("spawning a thread to enter network namespace {netns}"))?;
        match opener.join() {
            Ok(result) => result,
            Err(_) => bail!("the thread opening rtnetlink in network namespace {netns} panicked"),
        }
    }

    /// A socket of the calling thread's network namespace, which errors call `place`
    /// ("network namespace NAME").
    pub fn here(place: String) -> Result<Rtnl> {
        let fail = || format!("opening an rtnetlink socket in {place}");
        let mut socket = Socket::new(NETLINK_ROUTE).with_context(fail)?;
        socket.bind_auto().with_context(fail)?;
        socket.connect(&NlAddr::new(0, 0)).with_context(fail)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
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
    /// acknowledgement, returning the messages that came before it (a GET's answer). A
    /// refusal is the kernel's errno as an [`io::Error`].
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).context("sending to rtnetlink")?;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .context("reading rtnetlink")?;
            let mut at = 0;
            while at < n {
                let msg = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&buf[at..n])
                    .map_err(|e| anyhow::anyhow!("reading rtnetlink: malformed answer: {e}"))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == sequence {
                    match msg.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            None => return Ok(answers),
                            Some(_) => return Err(io::Error::from(e).into()),
                        },
                        NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }
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
}
