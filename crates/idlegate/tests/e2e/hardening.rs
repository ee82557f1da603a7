//! The gateway at its limits, with real Linux stacks in namespaces: a flood of new flows from
//! many sources fills the table to `max_flows` and no further, and the connection it already
//! holds carries on. Root only; each test builds and removes its own lab.

use crate::common;

use idlegate::lab::Lab;
use idlegate::sys::netns::spawn_in;
use idlegate_core::DropReason;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

/// Sends argv[1] TCP SYNs to 203.0.113.10:7000 from random sources in 203.0.113.0/24 (never
/// the frontend or the lab's own internet host) and random ports, through a raw socket, with
/// valid checksums; prints how many.
const SYN_FLOOD: &str = r#"
import random, socket, struct, sys
def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
n = int(sys.argv[1])
rnd = random.Random(7)
dst = bytes([203, 0, 113, 10])
hosts = [h for h in range(1, 255) if h not in (10, 100)]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(n):
    src = bytes([203, 0, 113, rnd.choice(hosts)])
    tcp = struct.pack("!HHIIBBHHH", rnd.randrange(1024, 65536), 7000, rnd.getrandbits(32), 0,
                      5 << 4, 0x02, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst)
    s.sendto(ip + tcp, ("203.0.113.10", 0))
print("sent %d" % n)
"#;

const MAX_FLOWS: usize = 500;
const FLOOD: usize = 5_000;

/// Writes one byte and reads it back through the echo server.
fn echo(client: &mut TcpStream, byte: u8) -> std::io::Result<u8> {
    client.write_all(&[byte])?;
    let mut back = [0u8; 1];
    client.read_exact(&mut back)?;
    Ok(back[0])
}

#[test]
fn a_syn_flood_fills_the_table_to_max_flows_and_the_held_connection_carries_on() {
    common::require_root();
    let mut config = common::one_rule_lab("silent");
    config.max_flows = MAX_FLOWS;
    // Real timers: no flood flow expires during the test, so the table stays full.
    config.time_scale = 1;
    let (flooded, counters) = Lab::with_gateway(&common::unique("fl"), &config, |lab| {
        let vm1 = lab.namespace_of("vm1")?;
        let internet = lab.namespace_of("internet")?;
        let server: SocketAddr = "192.0.2.11:7000".parse()?;
        let frontend: SocketAddr = "203.0.113.10:7000".parse()?;
        let listener = spawn_in(&vm1, move || TcpListener::bind(server))?
            .join()
            .expect("bind thread")?;
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut conn, _) = listener.accept()?;
            let mut byte = [0u8; 1];
            while conn.read(&mut byte)? == 1 {
                conn.write_all(&byte)?;
            }
            Ok(())
        });
        let mut client = spawn_in(&internet, move || {
            TcpStream::connect_timeout(&frontend, Duration::from_secs(5))
        })?
        .join()
        .expect("connect thread")?;
        client.set_read_timeout(Some(Duration::from_secs(5)))?;
        assert_eq!(echo(&mut client, b'a')?, b'a');

        let flood = common::output_within(
            Command::new("ip")
                .args(["netns", "exec", &internet, "python3", "-c", SYN_FLOOD])
                .arg(FLOOD.to_string()),
            Duration::from_secs(60),
        );
        assert!(
            flood.status.success(),
            "{}",
            String::from_utf8_lossy(&flood.stderr)
        );

        // The connection the gateway held before the flood is untouched by it.
        assert_eq!(echo(&mut client, b'b')?, b'b');
        Ok(String::from_utf8_lossy(&flood.stdout).trim().to_string())
    })
    .expect("the lab runs");
    assert_eq!(flooded, format!("sent {FLOOD}"));
    // The table filled (the held connection and the first SYNs) and went no further; the
    // rest of the flood that reached the gateway was refused and counted.
    let refused = counters.dropped(DropReason::TableFull);
    assert_eq!(
        counters.flows_created as usize, MAX_FLOWS,
        "{refused} SYNs refused as table-full"
    );
    assert!(refused > 0);
}
