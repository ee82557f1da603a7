//! An in-memory device queue for unit tests of the gateway worker, after smoltcp's `phy`
//! loopback device and fault injector: packets pushed by the test are read by the worker, and
//! what the worker writes is kept for the test to take.
//!
//! Contract: [`MemoryIo`] is a handle; clones share one device. With offloads, frames carry the
//! virtio-net header and are read through [`crate::sys::tun::parse_offloaded`], as from a TUN
//! device. The output queue holds at most `capacity` frames: a write that does not fit is
//! `WouldBlock` and nothing of it is kept (a batch keeps what fits). [`MemoryIo::fail_writes`]
//! makes the next writes fail. A batch is kept as the frames given, not coalesced.

use super::PacketIo;
use crate::sys::tun::{self, Received, Shape, HEADER};
use mio::{Registry, Token};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use tun_rs::GROTable;

/// One device queue in memory; clones share it.
#[derive(Clone)]
pub(crate) struct MemoryIo {
    name: String,
    header: usize,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Frames the worker will read, or errors its reads will meet.
    inbound: VecDeque<io::Result<Vec<u8>>>,
    /// Frames the worker wrote, as written.
    outbound: Vec<Vec<u8>>,
    capacity: usize,
    /// How many of the next writes fail.
    failing: usize,
    /// Write calls made (one per system call a TUN device would make).
    writes: usize,
}

impl MemoryIo {
    /// A device named `name`, with the virtio-net header if `offload`, whose output queue
    /// holds `capacity` frames.
    pub(crate) fn new(name: &str, offload: bool, capacity: usize) -> MemoryIo {
        MemoryIo {
            name: name.to_owned(),
            header: if offload { HEADER } else { 0 },
            state: Arc::new(Mutex::new(State {
                capacity,
                ..State::default()
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one single packet to be read, behind a zeroed header with offloads.
    pub(crate) fn push_packet(&self, packet: &[u8]) {
        let mut frame = vec![0; self.header];
        frame.extend_from_slice(packet);
        self.push_frame(frame);
    }

    /// Queues one frame to be read as it is (with offloads: a header and a packet).
    pub(crate) fn push_frame(&self, frame: Vec<u8>) {
        self.state().inbound.push_back(Ok(frame));
    }

    /// Queues a read that fails with `kind`.
    pub(crate) fn push_error(&self, kind: io::ErrorKind) {
        self.state()
            .inbound
            .push_back(Err(io::Error::new(kind, "injected read fault")));
    }

    /// Makes the next `count` writes fail.
    pub(crate) fn fail_writes(&self, count: usize) {
        self.state().failing = count;
    }

    /// Takes the frames written so far, headers included.
    pub(crate) fn take_frames(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().outbound)
    }

    /// Takes the packets written so far, without headers.
    pub(crate) fn take_packets(&self) -> Vec<Vec<u8>> {
        let header = self.header;
        self.take_frames()
            .into_iter()
            .map(|f| f[header..].to_vec())
            .collect()
    }

    /// Write calls made so far.
    pub(crate) fn writes(&self) -> usize {
        self.state().writes
    }

    /// Frames still waiting to be read.
    pub(crate) fn unread(&self) -> usize {
        self.state().inbound.len()
    }

    /// Keeps `frames` if the device works and they fit, else fails as a full or broken device.
    fn write<'a>(&self, frames: impl ExactSizeIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut state = self.state();
        state.writes += 1;
        if state.failing > 0 {
            state.failing -= 1;
            return Err(io::Error::other("injected write fault"));
        }
        let mut full = false;
        for frame in frames {
            if state.outbound.len() >= state.capacity {
                full = true;
                break;
            }
            state.outbound.push(frame.to_vec());
        }
        if full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}

impl PacketIo for MemoryIo {
    fn name(&self) -> &str {
        &self.name
    }

    fn header_len(&self) -> usize {
        self.header
    }

    fn recv_frame(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        let frame = self
            .state()
            .inbound
            .pop_front()
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        if self.header > 0 {
            return tun::parse_offloaded(buf, frame.len());
        }
        Ok(Received {
            len: n,
            shape: Shape::Single,
        })
    }

    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.write(std::iter::once(frame))
    }

    fn send_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        let mut frame = vec![0; self.header];
        frame.extend_from_slice(packet);
        self.write(std::iter::once(frame.as_slice()))
    }

    fn send_batch(&mut self, _gro: &mut GROTable, frames: &mut [Vec<u8>]) -> io::Result<()> {
        self.write(frames.iter().map(Vec::as_slice))
    }

    fn register(&mut self, _registry: &Registry, _token: Token) -> io::Result<()> {
        Ok(())
    }
}
