//! A relaying end killed with SIGKILL mid-stream: the application on the far side of it must
//! see a reset, never a clean end of stream, since its stream did not end whole. Covers the
//! keepalive relay (upload and download) and both ends of the tunnel (the exit killed during
//! an upload, the entry during a download), each a real `idlegate relay` process over
//! loopback; no root needed.

use crate::common;

use common::free_port;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
/// Bytes that must have crossed before the kill: the stream is well under way.
const BEFORE_KILL: usize = 4 << 20;

/// An `idlegate relay` process, killed however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `idlegate relay ARGS` and waits (bounded) for the stderr line that says it
/// listens, which contains `ready`.
fn start(args: &[&str], ready: &str) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .arg("relay")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn idlegate relay");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    let wanted = ready.to_string();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut told = false;
        // Keep draining stderr after the line, so the relay never blocks on its log.
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !told && line.contains(&wanted) {
                told = true;
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("idlegate relay {args:?} did not say {ready:?}"));
    running
}

/// Kills `end` with SIGKILL and waits until it is gone.
fn kill(end: &mut Running) {
    end.0.kill().expect("SIGKILL");
    end.0.wait().expect("wait");
}

/// Reads `conn` until it ends; returns how many bytes came and how the stream ended: `Ok(())`
/// for a clean end of stream, the error otherwise. Tells `progress` once `BEFORE_KILL` bytes
/// have come.
fn read_to_end(mut conn: TcpStream, progress: mpsc::Sender<()>) -> (usize, std::io::Result<()>) {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    let mut told = false;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (total, Err(e)),
        }
        if !told && total >= BEFORE_KILL {
            told = true;
            let _ = progress.send(());
        }
    }
}

/// Writes to `conn` without end, until a write fails (the test is over).
fn write_forever(mut conn: TcpStream) {
    let chunk = vec![0x5a; 1 << 16];
    while conn.write_all(&chunk).is_ok() {}
}

/// Which way the bytes flow through the killed end.
#[derive(Clone, Copy)]
enum Flow {
    /// From the client to the server: the server must see the reset.
    Upload,
    /// From the server to the client: the client must see the reset.
    Download,
}

/// Runs a transfer `flow` from a client that connects to `listen` to the server on `server`,
/// kills `victim` once it is well under way, and returns how the reading side's stream ended.
fn transfer_and_kill(
    server: TcpListener,
    listen: SocketAddr,
    flow: Flow,
    victim: &mut Running,
) -> (usize, std::io::Result<()>) {
    let (progress_tx, progress_rx) = mpsc::channel();
    let client_progress = progress_tx.clone();
    let server_side = std::thread::spawn(move || {
        let (conn, _) = server.accept().expect("accept");
        match flow {
            Flow::Upload => Some(read_to_end(conn, progress_tx)),
            Flow::Download => {
                write_forever(conn);
                None
            }
        }
    });
    let client = TcpStream::connect_timeout(&listen, WAIT).expect("connect to the relay");
    let client_side = std::thread::spawn(move || match flow {
        Flow::Upload => {
            write_forever(client);
            None
        }
        Flow::Download => Some(read_to_end(client, client_progress)),
    });
    progress_rx
        .recv_timeout(WAIT)
        .expect("the transfer did not get under way");
    kill(victim);
    let reader = match flow {
        Flow::Upload => server_side.join().unwrap(),
        Flow::Download => client_side.join().unwrap(),
    };
    reader.expect("the reading side's result")
}

fn assert_reset(what: &str, (bytes, end): (usize, std::io::Result<()>)) {
    match end {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(()) => panic!(
            "{what}: a clean end of stream after {bytes} bytes, though the stream was cut short"
        ),
        Err(e) => panic!("{what}: {e} after {bytes} bytes, not a reset"),
    }
    assert!(bytes >= BEFORE_KILL, "{what}: only {bytes} bytes");
}

fn relay(server: SocketAddr) -> (Running, SocketAddr) {
    let listen = free_port();
    let relay = start(
        &[
            "--listen",
            &listen.to_string(),
            "--connect",
            &server.to_string(),
            "--keepalive",
            "1s,1s,3",
        ],
        "relay ",
    );
    (relay, listen)
}

#[test]
fn a_relay_killed_during_an_upload_resets_the_server() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut relay, listen) = relay(server.local_addr().unwrap());
    let ended = transfer_and_kill(server, listen, Flow::Upload, &mut relay);
    assert_reset("the server", ended);
}

#[test]
fn a_relay_killed_during_a_download_resets_the_client() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut relay, listen) = relay(server.local_addr().unwrap());
    let ended = transfer_and_kill(server, listen, Flow::Download, &mut relay);
    assert_reset("the client", ended);
}

/// A tunnel pair in front of `server`, with a key of its own in `dir`: (entry, exit, the
/// entry's address).
fn tunnel(server: SocketAddr, dir: &std::path::Path) -> (Running, Running, SocketAddr) {
    let key = dir.join("tunnel.key");
    idlegate::survive::tunnel::key::Key::generate(&key).expect("a key");
    let key = key.to_str().unwrap().to_string();
    let exit_addr = free_port();
    let exit = start(
        &[
            "--tunnel-listen",
            &exit_addr.to_string(),
            "--connect",
            &server.to_string(),
            "--key",
            &key,
        ],
        "tunnel exit",
    );
    let listen = free_port();
    let entry = start(
        &[
            "--listen",
            &listen.to_string(),
            "--tunnel",
            &exit_addr.to_string(),
            "--key",
            &key,
        ],
        "tunnel entry",
    );
    (entry, exit, listen)
}

#[test]
fn a_tunnel_exit_killed_during_an_upload_resets_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_entry, mut exit, listen) = tunnel(server.local_addr().unwrap(), dir.path());
    let ended = transfer_and_kill(server, listen, Flow::Upload, &mut exit);
    assert_reset("the server", ended);
}

#[test]
fn a_tunnel_entry_killed_during_a_download_resets_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut entry, _exit, listen) = tunnel(server.local_addr().unwrap(), dir.path());
    let ended = transfer_and_kill(server, listen, Flow::Download, &mut entry);
    assert_reset("the client", ended);
}
