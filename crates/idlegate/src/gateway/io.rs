//! The device seam: what a gateway worker needs of a device queue, as the [`PacketIo`] trait.
//!
//! A worker reads frames (a packet at [`PacketIo::header_len`], or with offloads a TCP
//! super-segment behind its virtio-net header), writes frames back as read, writes single
//! packets in batches that the device may coalesce, writes the packets the engine makes, and
//! learns from its event loop when a queue is readable. [`Tun`] is the real device: the
//! implementation below only forwards to it, so the gateway makes the same system calls per
//! batch as before the seam. `memory::MemoryIo` (tests only) keeps queues of packets, with a
//! capacity to emulate a full queue and injected write faults, so that unit tests drive
//! workers without root, in virtual time.

#[cfg(test)]
pub(crate) mod memory;

use crate::sys::tun::{Received, Tun};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::AsRawFd;
use tun_rs::GROTable;

/// One queue of a layer-3 device, as a gateway worker uses it. Reads and writes never block:
/// a read with nothing queued is `WouldBlock`.
pub trait PacketIo {
    /// The device's name, for log lines and errors.
    fn name(&self) -> &str;

    /// The bytes before each packet in a frame: the virtio-net header with offloads, else
    /// none.
    fn header_len(&self) -> usize;

    /// Reads one frame into `buf` (at least the header and 64 KiB), the packet at
    /// [`PacketIo::header_len`]. With offloads it may be a super-segment
    /// ([`crate::sys::tun::Shape::Segmented`]); a frame the device would never produce is
    /// `InvalidData`.
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<Received>;

    /// Writes one frame as [`PacketIo::recv_frame`] read it (a super-segment with its
    /// header).
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Writes one IP packet with complete checksums (no header).
    fn send_packet(&mut self, packet: &[u8]) -> io::Result<()>;

    /// Offloads: writes `frames` (each a header and a single packet), coalescing the segments
    /// of one TCP flow into super-segments with `gro`.
    fn send_batch(&mut self, gro: &mut GROTable, frames: &mut [Vec<u8>]) -> io::Result<()>;

    /// Has `registry` report, edge-triggered under `token`, when the queue becomes readable.
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()>;
}

impl PacketIo for Tun {
    fn name(&self) -> &str {
        Tun::name(self)
    }

    fn header_len(&self) -> usize {
        Tun::header_len(self)
    }

    #[inline]
    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        Tun::recv_frame(self, buf)
    }

    #[inline]
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        Tun::send_frame(self, frame).map(drop)
    }

    #[inline]
    fn send_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        Tun::send(self, packet).map(drop)
    }

    #[inline]
    fn send_batch(&mut self, gro: &mut GROTable, frames: &mut [Vec<u8>]) -> io::Result<()> {
        Tun::send_batch(self, gro, frames).map(drop)
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut SourceFd(&self.as_raw_fd()), token, Interest::READABLE)
    }
}
