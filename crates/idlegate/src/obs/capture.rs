//! `--pcap FILE`: every packet the gateway sees or makes, in a pcapng file Wireshark opens
//! with each packet's side and direction marked.
//!
//! Each packet read from a device is recorded as it arrived (before translation), each packet
//! written as it left (after translation), and the RSTs and ACKs the engine makes as they leave,
//! so both sides of every translation and the moment of expiry are in the file.
//!
//! Format (pcapng, draft-ietf-opsawg-pcapng, <https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcapng/>):
//! one Section Header Block, then one Interface Description Block per side of the gateway,
//! interface 0 the inside (the backend pool's side) and interface 1 the outside (the internet's
//! side), each with link type RAW (101, bare IPv4/IPv6 packets), no snapshot limit, `if_name`
//! the side's TUN devices, `if_description` the side, and `if_tsresol` 9 (timestamps in
//! nanoseconds since the Unix epoch). Then one Enhanced Packet Block per packet, on its side's
//! interface, with the `epb_flags` option's direction bits (bits 0–1: 01 inbound, read from the
//! device; 10 outbound, written to it). Little-endian whatever the file's name; Wireshark and
//! tshark read pcapng by its magic, so a name ending in `.pcap` holds pcapng too.
//!
//! The writer is written here rather than taken from the `pcap-file` crate (2.0.0, its latest
//! stable release): that crate's Enhanced Packet Block carries its options in a `Vec`, one
//! allocation per packet for the flags, and serialises every block twice to learn its length.
//! Here a packet costs a few `write_all`s of stack arrays into a buffered file: no allocation.
//! Writes are buffered and flushed after each batch of packets. The workers share one
//! [`Capture`] behind a mutex; the first write that fails stops it for all of them (what was
//! still buffered is dropped, nothing more is appended), so the file ends where the failure
//! met it instead of going on after a half-written block. The worker that met the failure
//! logs it once; the gateway keeps running.

use anyhow::{Context, Result};
use idlegate_core::Interface;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which way a packet crossed its device, as the `epb_flags` direction bits say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from the device: into the gateway.
    Inbound,
    /// Written to the device: out of the gateway.
    Outbound,
}

impl Direction {
    /// The `epb_flags` word: bits 0–1 the direction (01 inbound, 10 outbound), the rest 0
    /// (reception type and FCS length not known).
    fn flags(self) -> u32 {
        match self {
            Direction::Inbound => 0b01,
            Direction::Outbound => 0b10,
        }
    }
}

/// The TUN devices on each side, named in the file's interfaces.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    pub inside: Vec<String>,
    pub outside: Vec<String>,
}

/// An open capture file (or, in tests, any writer).
pub struct Capture<W: Write = File> {
    out: Output<W>,
    path: PathBuf,
}

/// Where blocks go.
enum Output<W: Write> {
    /// To the file, through a buffer.
    Open(BufWriter<W>),
    /// Nowhere: a write failed, and whatever came after it would follow a half-written block.
    Stopped,
}

/// What became of a packet, or a flush, handed to a capture that did not fail on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Written (or buffered to be).
    On,
    /// Not written: an earlier write failed and stopped the capture (the error went to
    /// whoever met it).
    Stopped,
}

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const ENHANCED_PACKET: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// LINKTYPE_RAW: each packet a bare IPv4 or IPv6 packet.
const LINKTYPE_RAW: u16 = 101;
const OPT_ENDOFOPT: u16 = 0;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
/// `if_tsresol`: 10^-9 s.
const NANOSECONDS: u8 = 9;

/// Pads `len` to a multiple of 4, as every pcapng field is.
fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// The interface a side's packets are recorded on.
fn interface_id(side: Interface) -> u32 {
    match side {
        Interface::Inside => 0,
        Interface::Outside => 1,
    }
}

impl Capture {
    /// Creates (or truncates) `path` and writes the section header and the two interfaces.
    pub fn create(path: &Path, devices: &Devices) -> Result<Capture> {
        let file = File::create(path)
            .with_context(|| format!("creating the capture file {}", path.display()))?;
        Capture::over(file, path, devices)
    }
}

impl<W: Write> Capture<W> {
    /// A capture written to `out`, named `path` in its messages, starting with the section
    /// header and the two interfaces.
    fn over(out: W, path: &Path, devices: &Devices) -> Result<Capture<W>> {
        let mut capture = Capture {
            out: Output::Open(BufWriter::new(out)),
            path: path.to_path_buf(),
        };
        capture
            .write(|out| write_head(out, devices))
            .with_context(|| format!("writing to the capture file {}", path.display()))?;
        Ok(capture)
    }

    /// Runs `blocks` on the buffered writer unless the capture has stopped; the first error
    /// stops it and drops what is still buffered (a part of a block, perhaps), unwritten.
    fn write(
        &mut self,
        blocks: impl FnOnce(&mut BufWriter<W>) -> std::io::Result<()>,
    ) -> std::io::Result<Recording> {
        let Output::Open(out) = &mut self.out else {
            return Ok(Recording::Stopped);
        };
        match blocks(out) {
            Ok(()) => Ok(Recording::On),
            Err(e) => {
                if let Output::Open(out) = std::mem::replace(&mut self.out, Output::Stopped) {
                    // Not `drop(out)`: a BufWriter writes its buffer out as it is dropped.
                    let (_file, _unwritten) = out.into_parts();
                }
                Err(e)
            }
        }
    }

    /// Records one IP packet on `side`'s interface, crossing it `direction`, stamped now.
    pub fn record(
        &mut self,
        side: Interface,
        direction: Direction,
        packet: &[u8],
    ) -> Result<Recording> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.record_at(now.as_nanos(), side, direction, packet)
            .with_context(|| format!("writing to the capture file {}", self.path.display()))
    }

    /// Records one packet stamped `nanos` after the Unix epoch.
    fn record_at(
        &mut self,
        nanos: u128,
        side: Interface,
        direction: Direction,
        packet: &[u8],
    ) -> std::io::Result<Recording> {
        self.write(|out| write_packet(out, nanos, side, direction, packet))
    }

    /// Pushes buffered packets to the file.
    pub fn flush(&mut self) -> Result<Recording> {
        self.write(|out| out.flush())
            .with_context(|| format!("writing to the capture file {}", self.path.display()))
    }
}

/// The section header and the two interfaces.
fn write_head(out: &mut impl Write, devices: &Devices) -> std::io::Result<()> {
    // The section header: no options, section length not given (-1).
    out.write_all(&SECTION_HEADER.to_le_bytes())?;
    out.write_all(&28u32.to_le_bytes())?;
    out.write_all(&BYTE_ORDER_MAGIC.to_le_bytes())?;
    out.write_all(&1u16.to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    out.write_all(&(-1i64).to_le_bytes())?;
    out.write_all(&28u32.to_le_bytes())?;
    for (names, description) in [
        (&devices.inside, "inside: the backend pool's side"),
        (&devices.outside, "outside: the internet's side"),
    ] {
        let name = if names.is_empty() {
            description
                .split_once(':')
                .map_or(description, |(side, _)| side)
                .to_string()
        } else {
            names.join(",")
        };
        write_interface(out, &name, description)?;
    }
    Ok(())
}

/// One Enhanced Packet Block: `packet` on `side`'s interface, stamped `nanos` after the Unix
/// epoch, with its direction in `epb_flags`.
fn write_packet(
    out: &mut impl Write,
    nanos: u128,
    side: Interface,
    direction: Direction,
    packet: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
    let data = padded(packet.len());
    // Type, length, interface, stamp (2), captured and original lengths, the data, the
    // flags option (4 + 4), the end of options (4), the length again.
    let total = u32::try_from(28 + data + 8 + 4 + 4).unwrap_or(u32::MAX);
    let stamp = u64::try_from(nanos).unwrap_or(u64::MAX);
    out.write_all(&ENHANCED_PACKET.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(&interface_id(side).to_le_bytes())?;
    out.write_all(&((stamp >> 32) as u32).to_le_bytes())?;
    out.write_all(&(stamp as u32).to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(packet)?;
    out.write_all(&[0; 3][..data - packet.len()])?;
    write_option(out, EPB_FLAGS, &direction.flags().to_le_bytes())?;
    write_option(out, OPT_ENDOFOPT, &[])?;
    out.write_all(&total.to_le_bytes())
}

/// One Interface Description Block: RAW, no snapshot limit, `name`, `description`, stamps in
/// nanoseconds.
fn write_interface(out: &mut impl Write, name: &str, description: &str) -> std::io::Result<()> {
    let options = 4 + padded(name.len()) + 4 + padded(description.len()) + 4 + 4 + 4;
    let total = u32::try_from(16 + options + 4).unwrap_or(u32::MAX);
    out.write_all(&INTERFACE_DESCRIPTION.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(&LINKTYPE_RAW.to_le_bytes())?;
    out.write_all(&0u16.to_le_bytes())?;
    // Snapshot length 0: no limit (a TCP super-segment with offloads is up to 64 KiB).
    out.write_all(&0u32.to_le_bytes())?;
    write_option(out, IF_NAME, name.as_bytes())?;
    write_option(out, IF_DESCRIPTION, description.as_bytes())?;
    write_option(out, IF_TSRESOL, &[NANOSECONDS])?;
    write_option(out, OPT_ENDOFOPT, &[])?;
    out.write_all(&total.to_le_bytes())
}

/// One option: code, length, value padded to 32 bits.
fn write_option(out: &mut impl Write, code: u16, value: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.write_all(&code.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&value[..usize::from(len)])?;
    out.write_all(&[0; 3][..padded(usize::from(len)) - usize::from(len)])
}

#[cfg(test)]
mod tests;
