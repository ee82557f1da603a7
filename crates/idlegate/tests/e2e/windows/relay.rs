//! `idlegate.exe relay` under Wine, between Linux programs: the bytes it carries (both ways,
//! with a half-close), the keepalive it puts on its sockets (read back from Linux), and, in a
//! lab, an unmodified client's idle connection kept alive through a gateway that forgets idle
//! flows silently.
//!
//! Under Wine the relay's sockets are Linux sockets held by the prefix's wineserver, so Linux
//! tools see them as they are: `ss -tnoi` shows their keepalive timers, and a duplicate taken
//! from the wineserver with pidfd_getfd(2) reads back TCP_KEEPIDLE and TCP_KEEPINTVL.

use super::{ss, OwnPrefix, RunningExe};
use crate::common::tunnel::{read_to_end_hashed, Noise};
use crate::common::{self, free_port, require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::survive::keepalive::{Process, SocketKeepalive};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A socket read or write that waits longer than this has failed (Wine on a loaded 2-core
/// machine included).
const WAIT: Duration = Duration::from_secs(30);

/// Writes `bytes` bytes of seeded noise to `conn`, then shuts its sending down; their SHA-256.
fn send_hashed(conn: &mut TcpStream, bytes: usize, seed: u64) -> [u8; 32] {
    let mut noise = Noise(seed | 1);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        noise.fill(&mut buf[..n]);
        conn.write_all(&buf[..n]).expect("write");
        hash.update(&buf[..n]);
        left -= n;
    }
    conn.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    hash.finalize().into()
}

/// [`send_hashed`] on `conn` while another thread reads it to its end: what was read (as
/// [`read_to_end_hashed`] says) and the SHA-256 of what was sent.
fn send_while_reading(
    conn: &mut TcpStream,
    bytes: usize,
    seed: u64,
) -> (([u8; 32], u64, Option<String>), [u8; 32]) {
    let reader = conn.try_clone().unwrap();
    let receiving = std::thread::spawn(move || read_to_end_hashed(reader));
    let sent = send_hashed(conn, bytes, seed);
    (receiving.join().unwrap(), sent)
}

/// `conn`, its reads and writes failing after [`WAIT`].
fn timed(conn: TcpStream) -> TcpStream {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.set_write_timeout(Some(WAIT)).unwrap();
    conn
}

/// idlegate.exe relaying from `listen` to `server` with `--keepalive KEEPALIVE` and `more`
/// arguments, in `wine_prefix` (in the named network namespace `netns` if given: see
/// [`RunningExe::spawn`]); listening when returned.
fn spawn_relay(
    wine_prefix: &Path,
    netns: Option<&str>,
    listen: SocketAddr,
    server: SocketAddr,
    keepalive: &str,
    more: &[&str],
) -> RunningExe {
    let (listen_arg, server_arg) = (listen.to_string(), server.to_string());
    let mut args = vec![
        "relay",
        "--listen",
        &listen_arg,
        "--connect",
        &server_arg,
        "--keepalive",
        keepalive,
    ];
    args.extend_from_slice(more);
    let mut relay = RunningExe::spawn(&args, wine_prefix, netns);
    relay.wait_listening(listen.port());
    relay
}

/// idlegate.exe relaying from a fresh loopback port to `server`, with the tests' keepalive,
/// and `more` arguments, in this process's shared prefix; listening when returned.
fn relay_to(server: SocketAddr, more: &[&str]) -> (RunningExe, SocketAddr) {
    let listen = free_port();
    let relay = spawn_relay(super::prefix(), None, listen, server, "60s,10s,3", more);
    (relay, listen)
}

/// A client connected to the relay at `listen` and the connection `server` accepted from
/// the relay, each reading with a [`WAIT`] timeout, once `hello` from the client has reached
/// the server: both legs are up.
fn connect_through(
    listen: SocketAddr,
    server: &TcpListener,
    hello: &[u8],
) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(listen).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(hello).unwrap();
    let (mut accepted, _) = server.accept().unwrap();
    accepted.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = vec![0u8; hello.len()];
    std::io::Read::read_exact(&mut accepted, &mut got).unwrap();
    (client, accepted)
}

/// [`connect_through`], and one byte back from the server to the client: both ways crossed.
fn one_byte_each_way(listen: SocketAddr, server: &TcpListener) -> (TcpStream, TcpStream) {
    let (mut client, mut accepted) = connect_through(listen, server, b"u");
    accepted.write_all(b"d").unwrap();
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut client, &mut byte).unwrap();
    (client, accepted)
}

#[test]
fn windows_relay_carries_bytes_exactly_both_ways_with_half_close() {
    const UP: usize = 3 << 20; // more than one 1 MiB buffer: the copy path's bulk mode too
    const DOWN: usize = 2 << 20;
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    // The server reads to the client's FIN, and only then answers: the half-close must reach
    // it while its own direction stays open.
    let served = std::thread::spawn(move || {
        let mut conn = timed(server.accept().unwrap().0);
        let received = read_to_end_hashed(conn.try_clone().unwrap());
        let sent = send_hashed(&mut conn, DOWN, 0xd0_77);
        (received, sent)
    });

    let (relay, listen) = relay_to(server_addr, &[]);

    let mut client = timed(TcpStream::connect(listen).unwrap());
    let ((down_hash, down_len, down_error), sent_up) = send_while_reading(&mut client, UP, 0x0b_77);
    let ((up_hash, up_len, up_error), sent_down) = served.join().unwrap();

    assert_eq!(up_error, None, "the server's read: {}", relay.stderr());
    assert_eq!(up_len, UP as u64, "bytes the server got before the EOF");
    assert!(up_hash == sent_up, "client → server: SHA-256 differs");
    assert_eq!(down_error, None, "the client's read: {}", relay.stderr());
    assert_eq!(
        down_len, DOWN as u64,
        "bytes the client got after its half-close"
    );
    assert!(down_hash == sent_down, "server → client: SHA-256 differs");
}

/// The pid of the process that holds the TCP socket listening on `port` (under Wine: the
/// prefix's wineserver), from `ss -ltnp`.
fn holder_of_listener(port: u16) -> i32 {
    let line = ss(None, &["-Hltnp", &format!("sport = :{port}")]);
    let pid = line
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok());
    pid.unwrap_or_else(|| panic!("no pid in ss's line for port {port}: {line:?}"))
}

/// The keepalive of the socket `process` holds from `local` to `peer`, read back through a
/// duplicate (pidfd_getfd).
fn keepalive_of(process: &Process, local: SocketAddr, peer: SocketAddr) -> SocketKeepalive {
    let sockets = process
        .tcp_sockets(None)
        .expect("the wineserver's TCP sockets");
    let socket = sockets
        .iter()
        .find(|s| s.local == Some(local) && s.peer == Some(peer))
        .unwrap_or_else(|| panic!("no socket {local} → {peer} among the wineserver's"));
    let duplicate = process.duplicate(socket.fd).expect("pidfd_getfd");
    SocketKeepalive::read(&duplicate).expect("getsockopt")
}

/// The `timer:(keepalive,REMAINING,PROBES)` ss shows for the connection from `local` to
/// `peer`: the time left before its next probe.
fn keepalive_timer(local: SocketAddr, peer: SocketAddr) -> Duration {
    let out = ss(
        None,
        &[
            "-Htno",
            "state",
            "established",
            &format!("( src {local} and dst {peer} )"),
        ],
    );
    let timer = out
        .split("timer:(keepalive,")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no keepalive timer on {local} → {peer}: {out:?}"));
    ss_time(timer)
}

/// A time as ss prints a timer (iproute2's `print_ms_timer`): `[Nmin][S(sec|.)][MMMms]`,
/// e.g. `6.480ms` (6 s 480 ms), `6sec`, `480ms`, `1min6sec`.
fn ss_time(text: &str) -> Duration {
    let number = |digits: &str| -> u64 {
        digits
            .parse()
            .unwrap_or_else(|_| panic!("ss timer {text:?}: {digits:?} is not a number"))
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    if let Some((minutes, after)) = rest.split_once("min") {
        total += Duration::from_secs(60 * number(minutes));
        rest = after;
    }
    if let Some((seconds, after)) = rest.split_once("sec").or_else(|| rest.split_once('.')) {
        total += Duration::from_secs(number(seconds));
        rest = after;
    }
    if let Some((millis, _)) = rest.split_once("ms") {
        total += Duration::from_millis(number(millis));
    }
    total
}

#[test]
fn ss_timers_read_as_iproute2_prints_them() {
    assert_eq!(ss_time("6.480ms"), Duration::from_millis(6_480));
    assert_eq!(ss_time("6sec"), Duration::from_secs(6));
    assert_eq!(ss_time("480ms"), Duration::from_millis(480));
    assert_eq!(ss_time("1min6sec"), Duration::from_secs(66));
    assert_eq!(ss_time("12min"), Duration::from_secs(720));
}

/// What the test asked for: `--keepalive 7s,3s,4`. Wine 8.0 maps SIO_KEEPALIVE_VALS (idle,
/// interval) onto the Linux socket and answers TCP_KEEPCNT and TCP_MAXRT with WSAENOPROTOOPT:
/// the count stays the namespace's default, the user timeout unset, and the relay says so.
#[test]
fn windows_relay_keepalive_idle_and_interval_are_on_both_sockets_and_wine_refuses_keepcnt_and_maxrt(
) {
    require_root(); // pidfd_getfd on the wineserver
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let listen = free_port();
    let relay = spawn_relay(super::prefix(), None, listen, server_addr, "7s,3s,4", &[]);
    // One byte each way: the relay has both sockets set up and connected.
    let (client, accepted) = one_byte_each_way(listen, &server);

    let client_addr = client.local_addr().unwrap();
    let outbound_addr = accepted.peer_addr().unwrap();
    let wineserver = Process::open(holder_of_listener(listen.port())).expect("the wineserver");
    let default_count: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_probes")
        .expect("net.ipv4.tcp_keepalive_probes")
        .trim()
        .parse()
        .unwrap();
    for (what, local, peer) in [
        ("accepted (client's side)", listen, client_addr),
        ("outbound (server's side)", outbound_addr, server_addr),
    ] {
        let k = keepalive_of(&wineserver, local, peer);
        assert!(k.enabled, "{what}: SO_KEEPALIVE off");
        assert_eq!(k.idle, Duration::from_secs(7), "{what}: TCP_KEEPIDLE");
        assert_eq!(k.interval, Duration::from_secs(3), "{what}: TCP_KEEPINTVL");
        assert_eq!(
            k.count, default_count,
            "{what}: TCP_KEEPCNT (Wine refuses it)"
        );
        assert_eq!(
            k.user_timeout,
            Duration::ZERO,
            "{what}: TCP_USER_TIMEOUT (Wine refuses TCP_MAXRT)"
        );
        let left = keepalive_timer(local, peer);
        assert!(
            left <= Duration::from_secs(7),
            "{what}: the keepalive timer has {left:?} left, more than the idle time"
        );
    }
    for refused in ["did not take TCP_KEEPCNT", "did not take TCP_MAXRT"] {
        assert!(
            relay.wait_said(refused),
            "{refused} not said:\n{}",
            relay.stderr()
        );
    }
}

/// A lab whose gateway forgets idle flows after 3 s, silently (Azure's 4 min scaled 1/80); a
/// client in `internet` without keepalive sends "a", idles 5 s, sends "b", directly to the
/// frontend and through idlegate.exe relaying next to it (in the same lab host, with its own
/// wineserver there: see [`OwnPrefix`]), with keepalive every second.
#[test]
fn windows_relay_in_a_lab_host_keeps_an_idle_connection_alive_where_the_direct_one_dies() {
    require_root();
    let config = common::direct_and_relayed_lab("silent");
    let ([direct, relayed], _) = Lab::with_gateway(&unique("wr"), &config, |lab| {
        let internet = lab.namespace_of(INTERNET)?;
        let own = OwnPrefix::new();
        let relay = spawn_relay(
            own.path(),
            Some(&internet),
            common::RELAY_LISTEN.parse()?,
            common::RELAYED_RULE.parse()?,
            "1s,1s,3",
            &[],
        );
        let seen = common::idle_direct_and_relayed(lab, &internet);
        drop(relay);
        drop(own);
        seen
    })
    .expect("lab run");
    assert_eq!(
        direct,
        (vec!["a".to_string()], None),
        "direct: \"b\" lost silently"
    );
    assert_eq!(
        relayed,
        (vec!["a".to_string(), "b".to_string()], None),
        "through idlegate.exe"
    );
}

/// Closes `conn` with a RST (SO_LINGER 0).
fn reset(conn: TcpStream) {
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// A RST from either side is passed on to the other side as a RST, as on Linux. On Windows
/// recv says WSAECONNRESET; under Wine 8.0 it returns 0 as for a FIN (measured: SO_ERROR is 0
/// too), and the relay tells the two apart by WSAPoll's POLLERR (`sys::evidence`).
#[test]
fn windows_relay_passes_a_reset_from_either_side_on_as_a_reset_though_wine_reads_it_as_eof() {
    use std::io::{ErrorKind, Read};
    for server_resets in [true, false] {
        let what = if server_resets { "server" } else { "client" };
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let (relay, listen) = relay_to(server.local_addr().unwrap(), &[]);
        // One byte across: both legs are up before one side resets.
        let (client, accepted) = connect_through(listen, &server, b"x");
        let mut byte = [0u8; 1];
        let (resetting, mut other) = if server_resets {
            (accepted, client)
        } else {
            (client, accepted)
        };
        reset(resetting);
        let seen = other.read(&mut byte).map_err(|e| e.kind());
        assert!(
            matches!(seen, Err(ErrorKind::ConnectionReset)),
            "a RST from the {what}: the other side saw {seen:?}, not a RST\n{}",
            relay.stderr()
        );
    }
}

#[test]
fn windows_relay_serves_its_metrics_under_wine() {
    use std::io::Read;
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (relay, listen, metrics) = relay_with_metrics_to(server.local_addr().unwrap());
    let (mut client, mut accepted) = connect_through(listen, &server, b"hello");
    accepted.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    client.read_exact(&mut back).unwrap();
    drop((client, accepted));

    let label = format!("listen=\"{listen}\"");
    let wanted = [
        format!("idlegate_relay_connections_total{{{label}}} 1"),
        format!("idlegate_relay_bytes_total{{{label},direction=\"to_server\"}} 5"),
        format!("idlegate_relay_bytes_total{{{label},direction=\"to_client\"}} 2"),
        format!("idlegate_relay_connections_open{{{label}}} 0"),
    ];
    // The counters settle once the relay has seen both FINs: ask until they do (bounded).
    let (settled, page) = metrics_settle(metrics, &wanted);
    assert!(
        settled,
        "wanted {wanted:#?}\nin:\n{page}\n{}",
        relay.stderr()
    );
}

/// [`relay_to`] `server` with `--metrics` at a fresh loopback port, both listening when
/// returned: the relay, the address it relays from, its metrics' address.
fn relay_with_metrics_to(server: SocketAddr) -> (RunningExe, SocketAddr, SocketAddr) {
    let metrics = free_port();
    let (mut relay, listen) = relay_to(server, &["--metrics", &metrics.to_string()]);
    relay.wait_listening(metrics.port());
    (relay, listen, metrics)
}

/// Scrapes `metrics` until its page holds every line of `wanted`, at most [`WAIT`]: whether
/// it came to, and the last page.
fn metrics_settle(metrics: SocketAddr, wanted: &[String]) -> (bool, String) {
    let mut page = String::new();
    let settled = crate::common::tunnel::wait_until(WAIT, || {
        page = scrape(metrics);
        wanted.iter().all(|line| page.contains(line.as_str()))
    });
    (settled, page)
}

/// `GET /metrics` from `addr`: the answer's body.
fn scrape(addr: SocketAddr) -> String {
    use std::io::Read;
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: idlegate\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// mio's Windows selector emulates edge-triggering: a read that would block re-arms every
/// interest of its socket (mio's `src/sys/windows/selector.rs`). A relay that watched its
/// sockets for writing all the time was woken at once by every such re-arm, pumped, read
/// nothing, re-armed: one idle connection kept a core busy. Watched for writing only while
/// bytes wait, an idle connection costs what an idle relay costs: the wake-ups to look at the
/// stop flag.
#[test]
fn windows_relay_holding_an_idle_connection_uses_almost_no_cpu_under_wine() {
    use std::io::Read;
    const WINDOW: Duration = Duration::from_secs(3);
    const MOST: Duration = Duration::from_millis(300);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (relay, listen) = relay_to(server.local_addr().unwrap(), &[]);
    // Idle with no connection first: what the process costs on its own (reported).
    let alone = relay.cpu_over(WINDOW);
    let (mut client, mut accepted) = one_byte_each_way(listen, &server);
    // Both ways crossed: the connection is set up, and now idle.
    let idle = relay.cpu_over(WINDOW);
    assert!(
        idle < MOST,
        "idlegate.exe used {idle:?} of CPU over {WINDOW:?} holding one idle connection (with \
         none: {alone:?})\n{}",
        relay.stderr()
    );
    // Still relaying after the idle time.
    client.write_all(b"again").unwrap();
    let mut again = [0u8; 5];
    accepted.read_exact(&mut again).unwrap();
    assert_eq!(&again, b"again");
}

/// 8 MiB each way at once, both directions in bulk mode (the copy path) together, each side
/// writing and reading at the same time: every byte arrives, in order, both ways. On Windows
/// the copy path's reads and writes must re-arm mio's emulated edge-triggering as its own
/// reads do, or a direction that once would block is never woken again.
#[test]
fn windows_relay_carries_bulk_both_ways_at_once_exactly() {
    const EACH_WAY: usize = 8 << 20;
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let served = std::thread::spawn(move || {
        let mut conn = timed(server.accept().unwrap().0);
        send_while_reading(&mut conn, EACH_WAY, 0x5e_77)
    });
    let (relay, listen) = relay_to(server_addr, &[]);
    let mut client = timed(TcpStream::connect(listen).unwrap());
    let ((down_hash, down_len, down_error), sent_up) =
        send_while_reading(&mut client, EACH_WAY, 0xc1_77);
    let ((up_hash, up_len, up_error), sent_down) = served.join().unwrap();
    assert_eq!(up_error, None, "the server's read: {}", relay.stderr());
    assert_eq!(up_len, EACH_WAY as u64, "bytes the server got");
    assert!(up_hash == sent_up, "client → server: SHA-256 differs");
    assert_eq!(down_error, None, "the client's read: {}", relay.stderr());
    assert_eq!(down_len, EACH_WAY as u64, "bytes the client got");
    assert!(down_hash == sent_down, "server → client: SHA-256 differs");
}

/// The start line names the option the user timeout is set with on Windows (Linux's says
/// TCP_USER_TIMEOUT).
#[test]
fn windows_relay_start_line_names_the_user_timeout_tcp_maxrt_as_windows_calls_it() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let (relay, listen) = relay_to(server_addr, &[]);
    // --keepalive 60s,10s,3: a user timeout of 60 s + 3 × 10 s.
    let line = format!("relay {listen} → {server_addr}, keepalive 60s/10s/3, TCP_MAXRT 90s");
    assert!(
        relay.wait_said(&line),
        "{line:?} not said:\n{}",
        relay.stderr()
    );
}

/// A client that sent its FIN and then resets, while the server says nothing: the relay
/// ends the connection and the server is reset too. Wine 8.0 leaves SO_ERROR 0 after that
/// RST, so the relay asks WSAPoll too (`sys::socket::failed_after_end`).
#[test]
fn windows_relay_passes_a_reset_after_a_half_close_on_though_the_server_is_quiet() {
    use std::io::Read;
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (relay, listen, metrics) = relay_with_metrics_to(server.local_addr().unwrap());
    let client = TcpStream::connect(listen).unwrap();
    let (mut conn, _) = server.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "the FIN first");
    reset(client); // then a RST, while the server says nothing
    let label = format!("listen=\"{listen}\"");
    let wanted = [
        format!("idlegate_relay_connections_open{{{label}}} 0"),
        format!("idlegate_relay_resets_total{{{label}}} 1"),
    ];
    let (ended, page) = metrics_settle(metrics, &wanted);
    assert!(ended, "wanted {wanted:#?}\nin:\n{page}\n{}", relay.stderr());
    // The server's side was reset: its next write fails (after a FIN, reads say only EOF).
    let failed = crate::common::tunnel::wait_until(WAIT, || conn.write_all(b"late").is_err());
    assert!(failed, "the server's writes still succeed");
}
