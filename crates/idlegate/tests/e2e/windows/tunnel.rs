//! The resumable tunnel between the Windows build (under Wine) and the Linux build, both ways
//! round: an application's connection crosses a leg that is cut again and again, and every
//! byte arrives once and in order (the SHA-256 of each direction on arrival equals the one
//! sent). The pair's key comes from the other build's `keygen`, so key files carry across too.
//! Everything runs over 127.0.0.1 in the test's own namespace, where the wineserver of the
//! test's prefix (which owns a Wine program's sockets) runs too.

use super::{idlegate_exe, prefix, windows_path, RunningExe};
use crate::common::free_port;
use crate::common::tunnel::*;
use idlegate::survive::relay::Stats;
use idlegate::survive::tunnel::key::Key;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bytes each application sends: enough to be cut mid-stream three times over Wine's sockets.
const BYTES: u64 = 16 << 20;
const CUTS: u64 = 3;
/// Heartbeat and resume limit of both ends: a cut closes the leg, which both ends see at once,
/// so the heartbeat only has to be long enough for Wine on a loaded machine not to miss three.
const HEARTBEAT: &str = "1s";
const RESUME_WITHIN: &str = "60s";

#[test]
fn windows_build_under_wine_tunnel_entry_resumes_to_a_linux_exit_after_cuts_with_every_byte_in_order(
) {
    // The pair's key, made by idlegate.exe, loaded by the Linux build.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("tunnel.key");
    let made = idlegate_exe(&["keygen", &windows_path(&key_path)]);
    assert!(made.status.success(), "keygen: {}", made.stderr);
    let text = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(text.trim().len(), 64, "64 hex digits: {text:?}");
    // Wine gives the file a Unix mode from the umask; a copy to Linux must be made 0600, as the
    // book's Windows page says, and then loads as a key made there would.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let key = Key::load(&key_path).expect("the Linux build loads idlegate.exe's key");

    let (server_addr, server) = exchange_server(BYTES, Duration::ZERO);
    let (exit, _) = start_exit(server_addr, &key, settings(1000, WAIT));
    let path = CutPath::new(exit.addr);
    let (entry, listen) = windows_end(
        Role::Entry,
        path.addr,
        &key_path,
        &["--resume-within", RESUME_WITHIN],
    );
    // The exit counts what the Windows entry carried and each resume.
    carries_every_byte_across_cuts(listen, 42, server, &exit.stats, &path, &entry, Role::Entry);
}

#[test]
fn windows_build_under_wine_tunnel_exit_resumes_a_linux_entrys_session_after_cuts_with_every_byte_in_order(
) {
    // The pair's key, made by the Linux build (mode 0600), loaded by idlegate.exe.
    let (_dir, key_path, key) = linux_key();

    let (server_addr, server) = exchange_server(BYTES, Duration::ZERO);
    let (exit, tunnel_listen) = windows_end(
        Role::Exit,
        server_addr,
        &key_path,
        &["--resume-within", RESUME_WITHIN],
    );
    let path = CutPath::new(tunnel_listen);
    let entry = start_entry(path.addr, &key, settings(1000, WAIT));
    carries_every_byte_across_cuts(
        entry.addr,
        43,
        server,
        &entry.stats,
        &path,
        &exit,
        Role::Exit,
    );
}

/// A tunnel end's role.
#[derive(Clone, Copy)]
enum Role {
    /// `--listen` for applications, `--tunnel` to the exit.
    Entry,
    /// `--tunnel-listen` for entries, `--connect` to the server.
    Exit,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Entry => "entry",
            Role::Exit => "exit",
        }
    }
}

/// The pair's key, made by the Linux build (mode 0600) in a new temporary directory (removed
/// when the first value is dropped): the directory, the key file's path, the key.
fn linux_key() -> (tempfile::TempDir, std::path::PathBuf, Key) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("tunnel.key");
    let key = Key::generate(&key_path).unwrap();
    (dir, key_path, key)
}

/// idlegate.exe as the tunnel's `role` under Wine, in this process's shared prefix, at a
/// fresh loopback port, to `to` (the exit for an entry, the server for an exit), with the key
/// file at `key_path`, [`HEARTBEAT`] and `more` arguments; listening when returned: it and
/// the address it listens on.
fn windows_end(
    role: Role,
    to: SocketAddr,
    key_path: &Path,
    more: &[&str],
) -> (RunningExe, SocketAddr) {
    let (listen_flag, to_flag) = match role {
        Role::Entry => ("--listen", "--tunnel"),
        Role::Exit => ("--tunnel-listen", "--connect"),
    };
    let listen = free_port();
    let (listen_arg, to_arg, key_arg) =
        (listen.to_string(), to.to_string(), windows_path(key_path));
    let mut args = vec![
        "relay",
        listen_flag,
        &listen_arg,
        to_flag,
        &to_arg,
        "--key",
        &key_arg,
        "--heartbeat",
        HEARTBEAT,
    ];
    args.extend_from_slice(more);
    let mut end = RunningExe::spawn(&args, prefix(), None);
    end.wait_listening(listen.port());
    (end, listen)
}

/// An application connected to `listen` exchanges [`BYTES`] each way (seeded with `seed`)
/// with `server` while `path` is cut [`CUTS`] times: every byte arrives once and in order,
/// `linux_end` counts every resume, and the Windows end (`windows`, the tunnel's `role`)
/// logs its resumes.
fn carries_every_byte_across_cuts(
    listen: SocketAddr,
    seed: u64,
    server: std::thread::JoinHandle<Seen>,
    linux_end: &Stats,
    path: &CutPath,
    windows: &RunningExe,
    role: Role,
) {
    let client = TcpStream::connect(listen).unwrap();
    let client = std::thread::spawn(move || exchange(client, BYTES, seed, Duration::ZERO));
    cut_as_bytes_flow(linux_end, path, &client, || windows.stderr());
    let (client, server) = (client.join().unwrap(), server.join().unwrap());
    assert_whole(&client, &server, BYTES);
    let role = role.name();
    assert!(
        linux_end.reconnects.load(Ordering::Relaxed) >= CUTS,
        "every cut was resumed; the {role} said:\n{}",
        windows.stderr()
    );
    assert!(
        windows.wait_said("resumed after"),
        "the Windows {role} logs its resumes:\n{}",
        windows.stderr()
    );
}

/// What the server sends the application that half-closed: far more than every buffer on the
/// way holds (the client's receive buffer, the entry's send buffer, the tunnel's window), so
/// that the Windows entry keeps bytes it cannot write.
const TO_SLOW_READER: u64 = 32 << 20;
/// How long the Windows entry is watched while the application does not read, and the CPU
/// time it may use meanwhile: a session that waits uses next to none; one that spins, a
/// large part of a core.
const WATCHED: Duration = Duration::from_secs(3);
const CPU_BOUND: Duration = Duration::from_millis(300);

/// WSAPoll reports POLLHUP on a socket as soon as its peer's FIN arrives (Linux's poll only
/// once both directions are closed): a session whose application half-closed and then reads
/// slowly must not spin on it while it waits to write.
#[test]
fn windows_build_under_wine_tunnel_entry_does_not_spin_while_an_application_that_half_closed_reads_slowly(
) {
    let (_dir, key_path, key) = linux_key();
    let (server_addr, server) = exchange_server(TO_SLOW_READER, Duration::ZERO);
    let (exit, _) = start_exit(server_addr, &key, settings(1000, WAIT));
    let (entry, listen) = windows_end(Role::Entry, exit.addr, &key_path, &[]);
    // The application: a small receive buffer, a request, its FIN, and then it reads nothing.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.connect(&listen.into()).unwrap();
    let mut client: TcpStream = socket.into();
    let request = vec![0x5au8; 64 << 10];
    client.write_all(&request).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The server's bytes flow until every buffer on the way is full, then stop.
    let (mut last, mut still_since) = (0, Instant::now());
    let stalled = wait_until(WAIT, || {
        let now = exit.stats.bytes_to_client.load(Ordering::Relaxed);
        if now != last || now == 0 {
            (last, still_since) = (now, Instant::now());
        }
        still_since.elapsed() >= Duration::from_secs(1)
    });
    assert!(
        stalled && last < TO_SLOW_READER,
        "the bytes to the application never stopped ({last} of {TO_SLOW_READER}):
{}",
        entry.stderr()
    );
    let used = entry.cpu_over(WATCHED);
    eprintln!("idlegate.exe used {used:?} of CPU in {WATCHED:?} with bytes it could not write");
    // The application reads at last: every byte comes, in order, then the FIN.
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (received, received_len, error) = read_to_end_hashed(client);
    let server = server.join().unwrap();
    assert_eq!(error, None, "the application's read");
    assert_eq!(
        received_len, TO_SLOW_READER,
        "bytes the application received"
    );
    assert_eq!(
        received, server.sent,
        "what the application received, in order"
    );
    assert_eq!(
        server.received_len,
        request.len() as u64,
        "bytes the server received"
    );
    assert_eq!(server.error, None, "the server application saw an error");
    assert!(
        used < CPU_BOUND,
        "idlegate.exe used {used:?} of CPU in {WATCHED:?} while the application did not read \
         (at most {CPU_BOUND:?}): its session spins"
    );
}

/// Cuts `path` [`CUTS`] times, each after another share of [`BYTES`] has reached the server
/// (as the Linux end counts it), and waits for the Linux end to count each resume; a failure
/// shows what the Windows end logged (`said`).
fn cut_as_bytes_flow<T>(
    linux_end: &Stats,
    path: &CutPath,
    client: &std::thread::JoinHandle<T>,
    said: impl Fn() -> String,
) {
    for cut in 1..=CUTS {
        wait_until(WAIT, || {
            linux_end.bytes_to_server.load(Ordering::Relaxed) >= cut * BYTES / (CUTS + 1)
                || client.is_finished()
        });
        path.cut();
        assert!(
            wait_until(WAIT, || linux_end.reconnects.load(Ordering::Relaxed) >= cut
                || client.is_finished()),
            "no resume after cut {cut}; idlegate.exe said:\n{}",
            said()
        );
    }
}

#[test]
fn windows_build_under_wine_keygen_says_the_key_file_gets_its_directorys_acl() {
    let help = idlegate_exe(&["keygen", "--help"]);
    assert!(help.status.success(), "{}", help.stderr);
    for said in [
        "access control list (ACL)",
        "icacls",
        "neither keygen nor the relay",
    ] {
        assert!(
            help.stdout.contains(said),
            "{said:?} missing:\n{}",
            help.stdout
        );
    }
    assert!(
        !help.stdout.contains("0600"),
        "no Unix mode on Windows:\n{}",
        help.stdout
    );
    let dir = tempfile::tempdir().unwrap();
    let made = idlegate_exe(&["keygen", &windows_path(&dir.path().join("t.key"))]);
    assert!(made.status.success(), "{}", made.stderr);
    assert!(
        made.stdout.contains("the ACL its directory passes on") && !made.stdout.contains("0600"),
        "{}",
        made.stdout
    );
}
