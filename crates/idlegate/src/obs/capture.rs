//! `--pcap FILE`: every packet the gateway sees or makes, in a file Wireshark opens.
//!
//! Each packet read from a device is recorded as it arrived (before translation), each packet
//! written as it left (after translation), and the RSTs and ACKs the engine makes as they leave,
//! so both sides of every translation and the moment of expiry are in the file. The format is
//! classic pcap with link type RAW (101, bare IP packets), timestamps in microseconds. Writes are
//! buffered and flushed after each batch of packets; a write error stops the capture with one
//! log line and leaves the gateway running.

use anyhow::{Context, Result};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// An open capture file.
pub struct Capture {
    writer: PcapWriter<Shared>,
    /// The same buffered file, to flush it: `PcapWriter` does not lend its writer.
    file: Shared,
    path: PathBuf,
}

/// A buffered file written through two handles (only ever from the gateway's thread, so the
/// lock is never contended).
#[derive(Clone)]
struct Shared(Arc<Mutex<BufWriter<File>>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BufWriter<File>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
}

impl Capture {
    /// Creates (or truncates) `path` and writes the pcap header.
    pub fn create(path: &Path) -> Result<Capture> {
        let file = File::create(path)
            .with_context(|| format!("creating the capture file {}", path.display()))?;
        let header = PcapHeader {
            datalink: DataLink::RAW,
            snaplen: 65_535,
            ..PcapHeader::default()
        };
        let file = Shared(Arc::new(Mutex::new(BufWriter::new(file))));
        let writer = PcapWriter::with_header(file.clone(), header)
            .with_context(|| format!("writing the pcap header to {}", path.display()))?;
        Ok(Capture {
            writer,
            file,
            path: path.to_path_buf(),
        })
    }

    /// Records one IP packet, stamped now.
    pub fn record(&mut self, packet: &[u8]) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
        self.writer
            .write_packet(&PcapPacket::new(now, len, packet))
            .with_context(|| format!("writing to the capture file {}", self.path.display()))?;
        Ok(())
    }

    /// Pushes buffered packets to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("writing to the capture file {}", self.path.display()))
    }
}
