//! TUN devices held by the gateway (root namespace) but living in a lab host's namespace.
//!
//! Contract: [`Tun::create`] makes an IPv4-ready layer-3 TUN (`IFF_TUN | IFF_NO_PI`) in the
//! current namespace, with a non-blocking fd, MTU 1500, txqueuelen 1000, left down and
//! without address. With offloads (the default; `IDLEGATE_TUN_OFFLOAD=off` turns them off,
//! and a kernel without them falls back with a log line) it also sets `IFF_VNET_HDR` and the
//! TSO/USO offloads: a read may bring a TCP super-segment of up to 64 KiB. The gateway reads
//! frames with [`Tun::recv_frame`] ([`Tun::recv_offloaded`]), which completes a single packet's
//! checksum and leaves a super-segment as it is, with a partial checksum and its virtio-net
//! header; it translates the super-segment once and writes it back whole with
//! [`Tun::send_frame`], and the kernel on the other side takes it as one (or cuts it, if it
//! must). Single segments go out in
//! batches through [`Tun::send_batch`], which coalesces those of one TCP flow (tun-rs GRO).
//! Without offloads, one raw IP packet per read and write.
//! [`Tun::move_to`] moves it into a namespace, gives it an address /32 plus a default
//! route, and brings it up: the host's kernel then routes all its off-host traffic
//! into the fd, and what we write to the fd enters its stack. IPv6 link-local
//! autoconfiguration is turned off (`addrgenmode none`), otherwise the kernel writes
//! IPv6 router solicitations into the fd a moment after the device comes up.
//!
//! What tun-rs 2.8 does (read in its source; lifetime checked by tests/e2e/netns_tun.rs):
//! `build_sync` opens
//! `/dev/net/tun` (O_CLOEXEC, blocking), `TUNSETIFF`, resets the offload mask, then
//! applies MTU/txqueuelen via ioctls on a socket of the *caller's* namespace and brings
//! the device up unless `.enable(false)` (we pass it: no point being up in the root
//! namespace, and moving a device sets it down anyway). On Linux it never sets
//! `TUNSETPERSIST`, so the device exists as long as the fd: dropping [`Tun`] closes
//! the fd and the kernel destroys the device, in whichever namespace it lives. Deleting
//! the namespace destroys the device too (the fd then fails with `EBADFD`). tun-rs
//! setters (`set_mtu`, `enabled`, ...) cannot work once the device has moved, because
//! their control socket is in our namespace; hence all later configuration goes through an
//! rtnetlink socket opened in the device's new namespace ([`crate::sys::rtnl`]).

use crate::sys::netns;
use crate::sys::rtnl::{Dad, Family, Rtnl};
use anyhow::{Context, Result};
use idlegate_core::packet::TransportChecksum;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use tun_rs::{DeviceBuilder, GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

/// The bytes before each packet on a device with offloads: the virtio-net header.
pub const HEADER: usize = VIRTIO_NET_HDR_LEN;

/// virtio-net header flag (linux/virtio_net.h): the checksum from `csum_start` is partial.
const NEEDS_CSUM: u8 = 1;
/// virtio-net header GSO type: a single packet.
const GSO_NONE: u8 = 0;

/// A packet [`Tun::recv_offloaded`] read, at [`HEADER`] in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The packet's length, without the header.
    pub len: usize,
    /// Whether it is one packet or a super-segment to be cut into many.
    pub shape: Shape,
}

/// What a packet read with offloads is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One packet of at most the MTU, with a complete checksum and a zeroed header.
    Single,
    /// A super-segment: its transport checksum is partial and its header (kept in the
    /// buffer) tells the receiving device how to cut it, so it is written back with it.
    Segmented,
}

impl Shape {
    /// What the transport checksum field holds.
    pub fn checksum(self) -> TransportChecksum {
        match self {
            Shape::Single => TransportChecksum::Complete,
            Shape::Segmented => TransportChecksum::Partial,
        }
    }
}

/// Whether new devices ask for offloads: on unless `IDLEGATE_TUN_OFFLOAD` is `0` or `off`
/// (so that the whole suite can run both ways).
pub fn offload_wanted() -> bool {
    !matches!(
        std::env::var("IDLEGATE_TUN_OFFLOAD").as_deref(),
        Ok("0") | Ok("off")
    )
}

/// MTU given to every device.
const MTU: u16 = 1500;
/// Transmit queue length (the TUN driver default is 500).
const TX_QUEUE_LEN: u32 = 1000;

/// A TUN device whose fd is held by this process; the device itself may have moved.
pub struct Tun {
    dev: SyncDevice,
    name: String,
    /// Packets cross with a virtio-net header: TCP super-segments of up to 64 KiB.
    offload: bool,
}

impl Tun {
    /// Creates TUN device `name` (≤ 15 bytes) in the current namespace, down, no address.
    pub fn create(name: &str) -> Result<Tun> {
        let mut queues = Tun::create_queues(name, 1)?;
        queues.pop().context("tun-rs made no queue")
    }

    /// Creates TUN device `name` with `count` queues (`IFF_MULTI_QUEUE` when more than one),
    /// one for each worker. The kernel spreads the packets it sends over the queues by a
    /// symmetric hash of their flow, and then by the queue the flow was last written from,
    /// unless a steering program ([`crate::sys::steer`]) names the queue. Element `i` of the
    /// result is the device's queue `i`, the index such a program names: the kernel numbers
    /// queues in the order they are attached, which is this order, and renumbers only when one
    /// is closed (the last takes its place).
    /// Every queue must be made here, before the device moves: a queue is attached by name,
    /// in the caller's namespace.
    pub fn create_queues(name: &str, count: usize) -> Result<Vec<Tun>> {
        let wanted = offload_wanted();
        let dev = DeviceBuilder::new()
            .name(name)
            .mtu(MTU)
            .tx_queue_len(TX_QUEUE_LEN)
            .offload(wanted)
            .multi_queue(count > 1)
            .enable(false)
            .build_sync()
            .with_context(|| format!("creating TUN device {name}"))?;
        let offload = dev.tcp_gso();
        if wanted && !offload {
            tracing::warn!("TUN device {name}: no offloads on this kernel; one packet per read");
        }
        let mut devs = Vec::with_capacity(count);
        for _ in 1..count {
            let queue = dev
                .try_clone()
                .with_context(|| format!("adding a queue to TUN device {name}"))?;
            devs.push(queue);
        }
        devs.insert(0, dev);
        devs.into_iter()
            .map(|dev| {
                dev.set_nonblocking(true)
                    .with_context(|| format!("making TUN device {name} non-blocking"))?;
                Ok(Tun {
                    dev,
                    name: name.to_owned(),
                    offload,
                })
            })
            .collect()
    }

    /// Moves the device into namespace `netns` and configures it there: no IPv6 link-local
    /// address, each of `addresses` as a host address (IPv6 without duplicate address
    /// detection, so it is usable at once), up, and a default route through it for each
    /// family it has an address of. All over rtnetlink ([`crate::sys::rtnl`]).
    pub fn move_to(&self, netns: &str, addresses: &[IpAddr]) -> Result<()> {
        let dev = self.name.as_str();
        let target = netns::open(netns)?;
        let mut here = Rtnl::current()?;
        let link = here.link(dev)?;
        here.move_to(&link, &target, netns)?;
        configure(&mut Rtnl::open_in_file(&target, netns)?, dev, addresses)
    }

    /// Configures the device where it is, in the current namespace: no IPv6 link-local
    /// address (the kernel would send router solicitations into it), up, no address.
    pub fn bring_up(&self) -> Result<()> {
        let dev = self.name.as_str();
        // Errors name the device and the place already ("configuring device NAME in the
        // current network namespace: ...").
        configure(&mut Rtnl::current()?, dev, &[])
    }

    /// Reads one IP packet, with complete checksums; `WouldBlock` when none is queued. With
    /// offloads, a super-segment that does not fit one packet is an error: this is for tools
    /// and tests, the gateway reads with [`Tun::recv_frame`].
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.offload {
            return self.dev.recv(buf);
        }
        let mut whole = vec![0u8; HEADER + 65_535];
        let mut one = [vec![0u8; HEADER + buf.len()]];
        let mut size = [0usize];
        self.recv_batch(&mut whole, &mut one, &mut size)?;
        let n = size[0].min(buf.len());
        buf[..n].copy_from_slice(&one[0][HEADER..HEADER + n]);
        Ok(n)
    }

    /// Writes one IP packet (with a complete checksum), which enters the stack of the
    /// device's namespace.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        if self.offload {
            let header = [0u8; HEADER];
            let n = self
                .dev
                .send_vectored(&[IoSlice::new(&header), IoSlice::new(buf)])?;
            return Ok(n.saturating_sub(HEADER));
        }
        self.dev.send(buf)
    }

    /// Whether packets cross with a virtio-net header and may be super-segments.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Offloads: reads one packet with its header into `buf` (at least [`HEADER`] + 64 KiB).
    /// A single packet's partial checksum is completed; a super-segment is left as it came.
    /// A header the kernel would never write is `InvalidData`.
    pub fn recv_offloaded(&self, buf: &mut [u8]) -> io::Result<Received> {
        let n = self.dev.recv(buf)?;
        parse_offloaded(buf, n)
    }

    /// The bytes before each packet in a frame: [`HEADER`] with offloads, else none.
    pub fn header_len(&self) -> usize {
        if self.offload {
            HEADER
        } else {
            0
        }
    }

    /// Reads one frame, the packet at [`Tun::header_len`]: with offloads as
    /// [`Tun::recv_offloaded`], else one plain packet.
    pub fn recv_frame(&self, buf: &mut [u8]) -> io::Result<Received> {
        if self.offload {
            return self.recv_offloaded(buf);
        }
        let len = self.dev.recv(buf)?;
        Ok(Received {
            len,
            shape: Shape::Single,
        })
    }

    /// Writes one frame as [`Tun::recv_frame`] read it.
    pub fn send_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.dev.send(buf)
    }

    /// Offloads: reads one packet, which may be a TCP super-segment, into `whole`, and splits
    /// it into `segments` (each at [`HEADER`], its length in `sizes`), with complete
    /// checksums. Returns how many.
    pub fn recv_batch(
        &self,
        whole: &mut [u8],
        segments: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.dev.recv_multiple(whole, segments, sizes, HEADER)
    }

    /// Offloads: writes `packets` (each a buffer whose packet starts at [`HEADER`] and runs
    /// to its end), coalescing the segments of one TCP flow into super-segments.
    pub fn send_batch(&self, gro: &mut GROTable, packets: &mut [Vec<u8>]) -> io::Result<usize> {
        self.dev.send_multiple(gro, packets, HEADER)
    }

    /// The device name (the same in every namespace).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `ip link set DEV addrgenmode none`, `ip addr add A/32|A/128 nodad dev DEV` for each
/// address, `ip link set DEV up`, `ip -4|-6 route add default dev DEV` for each family, in
/// the namespace `rtnl` speaks to. Errors name the device, the namespace and the step.
fn configure(rtnl: &mut Rtnl, dev: &str, addresses: &[IpAddr]) -> Result<()> {
    let link = rtnl.link(dev)?;
    rtnl.set_addrgenmode_none(&link)?;
    for &address in addresses {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        rtnl.add_address(&link, address, prefix, Dad::Skip)?;
    }
    rtnl.set_up(&link)?;
    for family in [Family::V4, Family::V6] {
        if addresses.iter().any(|&a| Family::of(a) == family) {
            rtnl.add_default_route(&link, family)?;
        }
    }
    Ok(())
}

/// What a read of `n` bytes into `buf` with offloads brought: the virtio-net header at the
/// start of `buf` checked, a single packet's partial checksum completed (and its header
/// zeroed), a super-segment left as it came. A header the kernel would never write is
/// `InvalidData`. (Shared with the gateway's in-memory device, so that its tests read frames
/// exactly as the gateway reads a TUN device.)
pub fn parse_offloaded(buf: &mut [u8], n: usize) -> io::Result<Received> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed virtio-net header");
    // The kernel says how long the packet was even when the buffer cut it short.
    let frame = buf.get_mut(..n).ok_or_else(malformed)?;
    let (header, packet) = frame.split_at_mut(HEADER.min(n));
    if packet.is_empty() {
        return Err(malformed());
    }
    let flags = header[0];
    let gso_type = header[1];
    let csum_start = usize::from(u16::from_le_bytes([header[6], header[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([header[8], header[9]]));
    let shape = if gso_type == GSO_NONE {
        if flags & NEEDS_CSUM != 0 {
            complete_checksum(packet, csum_start, csum_offset).ok_or_else(malformed)?;
        }
        header.fill(0);
        Shape::Single
    } else if flags & NEEDS_CSUM != 0 {
        Shape::Segmented
    } else {
        return Err(malformed());
    };
    Ok(Received {
        len: n - HEADER,
        shape,
    })
}

/// Completes a partial checksum as the device would: sums the packet from `start` on, the
/// field at `start + offset` (holding the pseudo-header's sum) included, and writes the
/// complement. A computed zero is written as all ones, as Linux does (`CSUM_MANGLED_0`): zero in
/// a UDP checksum means "none", which IPv6 forbids (RFC 8200 §8.1). `None` if the offsets lie
/// outside the packet.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> Option<()> {
    let at = start.checked_add(offset)?;
    let field = packet.get(at..at.checked_add(2)?)?;
    let partial = u16::from_be_bytes([field[0], field[1]]);
    packet[at..at + 2].fill(0);
    let sum = !tun_rs::checksum(packet.get(start..)?, u64::from(partial));
    let sum = if sum == 0 { 0xffff } else { sum };
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Some(())
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP packet from 192.0.2.1:1000 to 192.0.2.2:2000 carrying `payload`, its checksum
    /// field holding the pseudo-header's sum as a stack with checksum offload leaves it.
    fn partial_udp(payload: &[u8]) -> Vec<u8> {
        let len = 8 + payload.len();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
        p[9] = 17;
        p[12..16].copy_from_slice(&[192, 0, 2, 1]);
        p[16..20].copy_from_slice(&[192, 0, 2, 2]);
        p.extend_from_slice(&1000u16.to_be_bytes());
        p.extend_from_slice(&2000u16.to_be_bytes());
        p.extend_from_slice(&(len as u16).to_be_bytes());
        let pseudo: [u8; 12] = [192, 0, 2, 1, 192, 0, 2, 2, 0, 17, 0, len as u8];
        p.extend_from_slice(&tun_rs::checksum(&pseudo, 0).to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// RFC 768: the pseudo-header and the datagram, checksum included, sum to all ones.
    fn udp_checksum_valid(p: &[u8]) -> bool {
        let len = (p.len() - 20) as u16;
        let mut all = p[12..20].to_vec();
        all.extend_from_slice(&[0, 17]);
        all.extend_from_slice(&len.to_be_bytes());
        all.extend_from_slice(&p[20..]);
        tun_rs::checksum(&all, 0) == 0xffff
    }

    #[test]
    fn a_completed_partial_checksum_verifies() {
        let mut p = partial_udp(b"hello, gateway");
        complete_checksum(&mut p, 20, 6).unwrap();
        assert!(udp_checksum_valid(&p));
    }

    #[test]
    fn a_checksum_that_completes_to_zero_is_sent_as_all_ones() {
        // RFC 768 / RFC 8200 §8.1: zero means "no checksum" in UDP; Linux writes 0xffff.
        // Two payload bytes chosen so that the whole sum is 0xffff.
        let mut p = partial_udp(&[0, 0]);
        let mut probe = p.clone();
        complete_checksum(&mut probe, 20, 6).unwrap();
        let c = u16::from_be_bytes([probe[26], probe[27]]);
        let fill = if c == 0xffff { 0 } else { c };
        p[28..30].copy_from_slice(&fill.to_be_bytes());
        complete_checksum(&mut p, 20, 6).unwrap();
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), 0xffff);
        assert!(udp_checksum_valid(&p));
    }

    #[test]
    fn offsets_outside_the_packet_are_refused_not_a_panic() {
        let mut p = partial_udp(b"x");
        assert_eq!(complete_checksum(&mut p, 20, 60), None);
        assert_eq!(complete_checksum(&mut p, usize::MAX, 6), None);
        assert_eq!(complete_checksum(&mut p, 28, usize::MAX), None);
    }
}
