//! The capture file byte for byte against the pcapng draft's layouts, as a pcapng reader
//! (the `pcap-file` crate) sees it, and what a failed write leaves in it.

use super::*;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use std::sync::{Arc, Mutex};

fn devices() -> Devices {
    Devices {
        inside: vec!["tun-in".to_string()],
        outside: vec!["tun-out".to_string()],
    }
}

/// Little-endian u32s, the way the draft's figures lay the blocks out.
fn words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn the_file_is_a_section_header_two_interfaces_and_packets_with_direction_flags_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.pcap");
    let mut capture = Capture::create(&path, &devices()).expect("create");
    let packet = [0x45, 0x00, 0x00, 0x05, 0xAB];
    capture
        .record_at(
            0x0000_0001_0000_0002,
            Interface::Outside,
            Direction::Outbound,
            &packet,
        )
        .expect("record");
    capture.flush().expect("flush");
    let got = std::fs::read(&path).expect("read");

    let mut want = Vec::new();
    // Section Header Block (draft-ietf-opsawg-pcapng, section 4.1): type, length 28, the
    // byte-order magic, version 1.0, section length -1, length again.
    want.extend(words(&[0x0A0D_0D0A, 28, 0x1A2B_3C4D, 0x0000_0001]));
    want.extend([0xFF; 8]);
    want.extend(words(&[28]));
    // Interface Description Blocks (section 4.2): link type 101 (RAW), reserved, snap length
    // 0; if_name (2), if_description (3), if_tsresol (9) = 9 (nanoseconds), opt_endofopt.
    for (id, name, description) in [
        (
            0,
            &b"tun-in\0\0"[..],
            &b"inside: the backend pool's side\0"[..],
        ),
        (1, &b"tun-out\0"[..], &b"outside: the internet's side"[..]),
    ] {
        let name_len = if id == 0 { 6 } else { 7 };
        let description_len = if id == 0 { 31 } else { 28 };
        let total = 16 + 4 + name.len() + 4 + description.len() + 8 + 4 + 4;
        want.extend(words(&[1, total as u32, 101, 0]));
        want.extend(words(&[2 | name_len << 16]));
        want.extend(name);
        want.extend(words(&[3 | description_len << 16]));
        want.extend(description);
        want.extend(words(&[9 | 1 << 16, 9, 0, total as u32]));
    }
    // Enhanced Packet Block (section 4.3): interface 1 (outside), the stamp's high and low
    // words, captured and original lengths 5, the packet padded to 8, epb_flags (2) = 0b10
    // (outbound, section 4.3.1), opt_endofopt, length again.
    want.extend(words(&[6, 52, 1, 1, 2, 5, 5]));
    want.extend([0x45, 0x00, 0x00, 0x05, 0xAB, 0, 0, 0]);
    want.extend(words(&[2 | 4 << 16, 0b10, 0, 52]));
    assert_eq!(got, want);
}

#[test]
fn a_pcapng_reader_finds_each_packet_on_its_side_with_its_direction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.pcapng");
    let packets: [(Interface, Direction, Vec<u8>); 4] = [
        (Interface::Outside, Direction::Inbound, vec![0x45, 0, 0, 40]),
        (
            Interface::Inside,
            Direction::Outbound,
            vec![0x45, 0, 0, 40, 1],
        ),
        (Interface::Inside, Direction::Inbound, vec![0x60; 48]),
        (
            Interface::Outside,
            Direction::Outbound,
            (0..1500).map(|i| (i % 251) as u8).collect(),
        ),
    ];
    let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let mut capture = Capture::create(&path, &devices()).expect("create");
    for (side, direction, packet) in &packets {
        capture.record(*side, *direction, packet).expect("record");
    }
    capture.flush().expect("flush");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");

    let mut reader = PcapNgReader::new(File::open(&path).expect("open")).expect("a pcapng file");
    let mut interfaces = Vec::new();
    let mut read = Vec::new();
    while let Some(block) = reader.next_block() {
        match block.expect("a whole block") {
            Block::InterfaceDescription(idb) => {
                assert_eq!(idb.linktype, pcap_file::DataLink::RAW);
                interfaces.push(idb.into_owned().options);
            }
            Block::EnhancedPacket(epb) => read.push(epb.into_owned()),
            other => panic!("an unexpected block {other:?}"),
        }
    }
    assert_eq!(interfaces.len(), 2);
    assert!(interfaces[0].contains(&InterfaceDescriptionOption::IfName("tun-in".into())));
    assert!(interfaces[1].contains(&InterfaceDescriptionOption::IfName("tun-out".into())));
    assert!(interfaces[0].contains(&InterfaceDescriptionOption::IfTsResol(9)));
    assert_eq!(read.len(), packets.len());
    for (got, (side, direction, packet)) in read.iter().zip(&packets) {
        assert_eq!(got.data.as_ref(), packet.as_slice());
        assert_eq!(got.original_len as usize, packet.len());
        assert_eq!(got.interface_id, interface_id(*side));
        let flags = match direction {
            Direction::Inbound => 1,
            Direction::Outbound => 2,
        };
        assert_eq!(got.options, vec![EnhancedPacketOption::Flags(flags)]);
        assert!(got.timestamp >= before && got.timestamp <= after);
    }
}

#[test]
fn capture_holds_packets_until_flushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.pcap");
    let mut capture = Capture::create(&path, &devices()).expect("create");
    capture
        .record(Interface::Inside, Direction::Inbound, &[0x45; 20])
        .expect("record");
    let len = |path: &Path| std::fs::metadata(path).expect("metadata").len();
    assert_eq!(len(&path), 0, "head and packet still buffered");
    capture.flush().expect("flush");
    // The 28-byte section header, two interfaces of 80 and 76 bytes, and a 64-byte block for
    // the 20-byte packet.
    assert_eq!(len(&path), 28 + 80 + 76 + 64);
}

/// A file whose disk fills at `full_at` bytes: the write that reaches it is cut short, the next
/// fails (no space), and then space is back and writes succeed again, as when another program
/// frees some. It keeps what it took where the test can see it.
#[derive(Clone)]
struct FillingFile {
    taken: Arc<Mutex<Vec<u8>>>,
    full_at: usize,
    failed: Arc<Mutex<bool>>,
}

impl Write for FillingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut taken = self.taken.lock().expect("lock");
        let mut failed = self.failed.lock().expect("lock");
        let room = if *failed {
            buf.len()
        } else {
            self.full_at - taken.len()
        };
        if room == 0 {
            *failed = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        let n = buf.len().min(room);
        taken.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_write_stops_the_capture_for_every_worker_and_nothing_is_appended_after_it() {
    let file = FillingFile {
        taken: Arc::new(Mutex::new(Vec::new())),
        full_at: 10_000,
        failed: Arc::new(Mutex::new(false)),
    };
    let capture = Capture::over(file.clone(), Path::new("full.pcapng"), &devices()).expect("head");
    // Two workers share it, as the gateway's do.
    let first = Arc::new(Mutex::new(capture));
    let second = Arc::clone(&first);
    let packet = [0x45; 1500];
    // The first worker's packets fill the 8 KiB buffer, which goes to the file, and then the
    // next: that write stops at 10,000 bytes, part-way through a block, and fails.
    let mut error = None;
    for _ in 0..20 {
        let recorded =
            first
                .lock()
                .expect("lock")
                .record(Interface::Inside, Direction::Inbound, &packet);
        match recorded {
            Ok(r) => assert_eq!(r, Recording::On),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("the disk filled within 20 packets of 1.5 KB");
    assert_eq!(
        format!("{error:#}"),
        "writing to the capture file full.pcapng: no space left on device"
    );
    let at_failure = file.taken.lock().expect("lock").clone();
    assert_eq!(at_failure.len(), 10_000);

    // Space is back, but the capture has stopped: for the other worker too, for flushes, and
    // when the capture is dropped (a BufWriter writes its buffer out as it is dropped).
    for worker in [&second, &first] {
        let mut capture = worker.lock().expect("lock");
        let recorded = capture.record(Interface::Outside, Direction::Outbound, &packet);
        assert_eq!(recorded.expect("no error"), Recording::Stopped);
        assert_eq!(capture.flush().expect("no error"), Recording::Stopped);
    }
    drop(second);
    drop(first);
    assert!(
        *file.taken.lock().expect("lock") == at_failure,
        "bytes were appended after the failed write"
    );
}
