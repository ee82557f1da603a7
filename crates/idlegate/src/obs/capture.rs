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

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;
    use pcap_file::TsResolution;
    use std::time::Duration;

    #[test]
    fn capture_writes_a_raw_ip_pcap_that_reads_back_packet_for_packet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("capture.pcap");
        // An IPv4 header's start, an IPv6 one's, and a full-sized packet.
        let packets: [Vec<u8>; 3] = [
            vec![0x45, 0, 0, 40, 1, 2, 3, 4],
            vec![0x60, 0, 0, 0, 0, 20, 6, 64],
            (0..1500).map(|i| (i % 251) as u8).collect(),
        ];
        let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        let mut capture = Capture::create(&path).expect("create");
        for packet in &packets {
            capture.record(packet).expect("record");
        }
        capture.flush().expect("flush");
        let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");

        let mut reader = PcapReader::new(File::open(&path).expect("open")).expect("pcap header");
        let header = reader.header();
        assert_eq!(header.datalink, DataLink::RAW);
        assert_eq!(header.snaplen, 65_535);
        assert_eq!(header.ts_resolution, TsResolution::MicroSecond);
        let mut read = Vec::new();
        while let Some(packet) = reader.next_packet() {
            read.push(packet.expect("a whole packet").into_owned());
        }
        assert_eq!(read.len(), packets.len());
        let mut last = Duration::ZERO;
        for (got, sent) in read.iter().zip(&packets) {
            assert_eq!(got.data.as_ref(), sent.as_slice());
            assert_eq!(got.orig_len as usize, sent.len());
            // Microseconds: the stamp is `now` truncated, so up to 1 µs before `before`.
            assert!(got.timestamp + Duration::from_micros(1) >= before && got.timestamp <= after);
            assert!(got.timestamp >= last, "stamps in order");
            last = got.timestamp;
        }
    }

    #[test]
    fn capture_holds_packets_until_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("capture.pcap");
        let mut capture = Capture::create(&path).expect("create");
        capture.record(&[0x45; 20]).expect("record");
        let len = |path: &Path| std::fs::metadata(path).expect("metadata").len();
        assert_eq!(len(&path), 0, "header and packet still buffered");
        capture.flush().expect("flush");
        // The 24-byte file header, a 16-byte record header and the packet.
        assert_eq!(len(&path), 24 + 16 + 20);
    }
}
