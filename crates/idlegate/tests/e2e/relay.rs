//! `idlegate relay`: byte-exact forwarding with half-close, RSTs passed on and many
//! connections over loopback; and in the lab, an application without keepalive that loses its
//! idle connection directly and keeps it through the relay (the loopback tests need no root,
//! the lab ones do).

use crate::common;

use common::{raise_fd_limit, require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::survive::relay::{Keepalive, Relay};
use idlegate::sys::netns;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn keepalive() -> Keepalive {
    Keepalive::parse("1s,1s,3").unwrap()
}

/// A relay on a loopback port in front of `server`, stopped with the returned flag.
fn start_relay(server: SocketAddr) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), server, keepalive()).unwrap();
    let addr = relay.local_addr().unwrap();
    let stop = relay.stop_flag();
    std::thread::spawn(move || relay.run());
    (addr, stop)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What the relay promises of both its sockets: keepalive with a matching user timeout,
/// TCP_NODELAY, and SO_LINGER 0 (a RST if it is killed mid-stream). On Linux the client's
/// socket takes them from the listener: read here on the sockets themselves, as this process
/// holds them.
#[test]
fn both_relayed_sockets_have_keepalive_its_user_timeout_nodelay_and_a_reset_linger() {
    require_root(); // pidfd_getfd on this process's own sockets
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (relay, stop) = start_relay(server_addr);
    let mut client = TcpStream::connect(relay).unwrap();
    client.write_all(b"x").unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).unwrap();
    let here = idlegate::survive::keepalive::Process::open(std::process::id() as i32).unwrap();
    let sockets = here.tcp_sockets(None).unwrap();
    let client_side = sockets
        .iter()
        .find(|s| s.local == Some(relay) && s.peer == Some(client.local_addr().unwrap()))
        .expect("the relay's socket for the client");
    let server_side = sockets
        .iter()
        .find(|s| s.peer == Some(server_addr) && s.local == Some(server.peer_addr().unwrap()))
        .expect("the relay's socket to the server");
    for (side, socket) in [("client", client_side), ("server", server_side)] {
        common::assert_relayed_socket_options(socket, side);
    }
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn bytes_cross_exactly_both_ways_and_a_fin_one_way_leaves_the_other_flowing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let up = pattern(3 << 20, 1);
    let down = pattern(2 << 20, 7);
    let expected_up = up.clone();
    let reply = down.clone();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap(); // until the client's FIN
        assert!(
            got == expected_up,
            "upstream bytes differ ({} bytes)",
            got.len()
        );
        conn.write_all(&reply).unwrap(); // the other way still flows
    });
    let (relay, stop) = start_relay(server_addr);
    let mut client = TcpStream::connect(relay).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(&up).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert!(got == down, "downstream bytes differ ({} bytes)", got.len());
    server.join().unwrap();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_reset_from_the_server_reaches_the_client_as_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(conn); // a RST
    });
    let (relay, stop) = start_relay(server_addr);
    let mut client = TcpStream::connect(relay).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    server.join().unwrap();
    let mut buf = [0u8; 16];
    let seen = client.read(&mut buf).map_err(|e| e.kind());
    assert_eq!(seen, Err(ErrorKind::ConnectionReset));
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_reset_from_the_client_reaches_the_server_as_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (relay, stop) = start_relay(server_addr);
    let client = TcpStream::connect(relay).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // a RST
    let mut buf = [0u8; 16];
    let seen = conn.read(&mut buf).map_err(|e| e.kind());
    assert_eq!(seen, Err(ErrorKind::ConnectionReset));
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_reset_after_a_half_close_ends_the_relayed_connection_though_the_server_is_quiet() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), server_addr, keepalive()).unwrap();
    let (addr, stats, stop) = (
        relay.local_addr().unwrap(),
        relay.stats(),
        relay.stop_flag(),
    );
    std::thread::spawn(move || relay.run());
    let client = TcpStream::connect(addr).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "the FIN first");
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // then a RST, while the server says nothing
    let deadline = std::time::Instant::now() + WAIT;
    while stats.open.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        stats.open.load(Ordering::Relaxed),
        0,
        "the relay let the connection go"
    );
    assert_eq!(stats.resets.load(Ordering::Relaxed), 1, "as a reset");
    // The server's next write fails: its side was reset too (after a FIN, reads say only EOF).
    let mut failed = None;
    for _ in 0..50 {
        if let Err(e) = conn.write_all(b"late") {
            failed = Some(e.kind());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        matches!(
            failed,
            Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        ),
        "{failed:?}"
    );
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_server_that_refuses_the_connection_is_a_reset_for_the_client() {
    // A port with nothing listening: the relay's connect is refused.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = closed.local_addr().unwrap();
    drop(closed);
    let (relay, stop) = start_relay(server_addr);
    let mut client = TcpStream::connect(relay).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    let seen = client.read(&mut buf).map_err(|e| e.kind());
    assert_eq!(seen, Err(ErrorKind::ConnectionReset));
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn many_connections_are_relayed_at_once() {
    // About ten descriptors a connection (client, server, the relay's two sockets and two
    // pipes): raise this process's soft limit to its hard one.
    const N: usize = 1000;
    raise_fd_limit(12 * N as u64);
    let listener = idlegate::sys::socket::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (relay, stop) = start_relay(server_addr);
    // All open at once, then each checked.
    let mut clients: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(relay).unwrap()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(format!("{i:05}").as_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, format!("{i:05}").as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
}

/// [`common::idle_direct_and_relayed`] with `expiry` at the gateway and an idlegate relay
/// (keepalive every second) running in the `internet` host.
fn idle_client_direct_and_through_relay(expiry: &str) -> [(Vec<String>, Option<String>); 2] {
    require_root();
    let config = common::direct_and_relayed_lab(expiry);
    let (seen, _) = Lab::with_gateway(&unique("rl"), &config, |lab| {
        let internet = lab.namespace_of(INTERNET)?;
        let relay = netns::spawn_in(&internet, || {
            Relay::bind(
                common::RELAY_LISTEN.parse().unwrap(),
                common::RELAYED_RULE.parse().unwrap(),
                keepalive(),
            )
        })?
        .join()
        .expect("relay bind")?;
        let stop = relay.stop_flag();
        netns::spawn_in(&internet, move || relay.run())?;
        let seen = common::idle_direct_and_relayed(lab, &internet);
        stop.store(true, Ordering::Relaxed);
        seen
    })
    .expect("lab run");
    seen
}

#[test]
fn an_idle_connection_without_keepalive_dies_silently_directly_and_lives_through_the_relay() {
    let seen = idle_client_direct_and_through_relay("silent");
    assert_eq!(
        seen[0],
        (vec!["a".to_string()], None),
        "direct: \"b\" lost silently"
    );
    assert_eq!(
        seen[1],
        (vec!["a".to_string(), "b".to_string()], None),
        "relayed"
    );
}

#[test]
fn an_idle_connection_without_keepalive_is_reset_directly_and_lives_through_the_relay() {
    let seen = idle_client_direct_and_through_relay("reset");
    assert_eq!(
        seen[0],
        (vec!["a".to_string()], Some("ECONNRESET".to_string())),
        "direct"
    );
    assert_eq!(
        seen[1],
        (vec!["a".to_string(), "b".to_string()], None),
        "relayed"
    );
}

#[test]
fn a_client_that_never_reads_stops_the_server_instead_of_filling_the_relay() {
    // Backpressure: what the chain accepts from the server is bounded by socket buffers and
    // the relay's one pipe, however long the server keeps writing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let (relay, stop) = start_relay(server_addr);
    let client = TcpStream::connect(relay).unwrap(); // never reads
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 1 << 16];
    let mut written = 0usize;
    let mut stalled_since = std::time::Instant::now();
    while stalled_since.elapsed() < Duration::from_millis(500) {
        match conn.write(&chunk) {
            Ok(n) => {
                written += n;
                stalled_since = std::time::Instant::now();
                assert!(
                    written < 256 << 20,
                    "the relay kept taking bytes: {written}"
                );
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(
        written < 64 << 20,
        "{written} bytes accepted before the writer stalled"
    );
    drop(client);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn metrics_count_connections_bytes_and_resets() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong!!").unwrap();
    });
    let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), server_addr, keepalive()).unwrap();
    let (addr, stats, stop) = (
        relay.local_addr().unwrap(),
        relay.stats(),
        relay.stop_flag(),
    );
    std::thread::spawn(move || relay.run());
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"ping!").unwrap();
    let mut buf = [0u8; 6];
    client.read_exact(&mut buf).unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let relays = vec![(addr, stats)];
    idlegate::survive::relay::serve_metrics(metrics, move || {
        idlegate::survive::relay::render_metrics(&relays)
    });
    let scrape = || {
        let mut http = TcpStream::connect(metrics_addr).unwrap();
        http.set_read_timeout(Some(WAIT)).unwrap();
        http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).unwrap();
        text
    };
    let expected = [
        format!("idlegate_relay_connections_total{{listen=\"{addr}\"}} 1"),
        format!("idlegate_relay_connections_open{{listen=\"{addr}\"}} 1"),
        format!("idlegate_relay_bytes_total{{listen=\"{addr}\",direction=\"to_server\"}} 5"),
        format!("idlegate_relay_bytes_total{{listen=\"{addr}\",direction=\"to_client\"}} 6"),
        format!("idlegate_relay_resets_total{{listen=\"{addr}\"}} 0"),
    ];
    // The relay counts a chunk just after passing it on: scrape until it has (bounded).
    let deadline = std::time::Instant::now() + WAIT;
    let mut text = scrape();
    while !expected.iter().all(|l| text.contains(l)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        text = scrape();
    }
    for line in &expected {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    stop.store(true, Ordering::Relaxed);
}

/// An echo server on a loopback port that serves every connection it gets.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Writes `data` and reads as many bytes back.
fn echo(client: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    client.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    client.read_exact(&mut back)?;
    Ok(back)
}

#[test]
fn a_relay_at_its_connection_limit_leaves_new_clients_waiting_until_one_ends() {
    let server_addr = echo_server();
    let mut relay = Relay::bind("127.0.0.1:0".parse().unwrap(), server_addr, keepalive()).unwrap();
    relay.set_max_connections(2);
    let addr = relay.local_addr().unwrap();
    let stop = relay.stop_flag();
    std::thread::spawn(move || relay.run());

    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (i, client) in held.iter_mut().enumerate() {
        client.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(echo(client, &[b'a' + i as u8]).unwrap(), [b'a' + i as u8]);
    }
    // The third is in the listen queue, not accepted: its byte gets no answer...
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let waited = echo(&mut third, b"c").unwrap_err();
    assert!(
        matches!(waited.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{waited}"
    );
    // ... until one of the two ends: then it is accepted and its byte goes through.
    drop(held.remove(0));
    third.set_read_timeout(Some(WAIT)).unwrap();
    let mut back = [0u8; 1];
    third.read_exact(&mut back).unwrap();
    assert_eq!(back[0], b'c');
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_relay_holds_exactly_its_connection_limit_when_many_clients_arrive_at_once() {
    let server_addr = echo_server();
    let mut relay = Relay::bind("127.0.0.1:0".parse().unwrap(), server_addr, keepalive()).unwrap();
    relay.set_max_connections(3);
    let addr = relay.local_addr().unwrap();
    let stats = relay.stats();
    let stop = relay.stop_flag();
    std::thread::spawn(move || relay.run());

    // Twelve clients at once, each sending one byte; every worker accepts as fast as it can.
    let clients: Vec<_> = (0..12u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = TcpStream::connect(addr).unwrap();
                client
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                let answered = echo(&mut client, &[i]).is_ok();
                (answered, client)
            })
        })
        .collect();
    let results: Vec<(bool, TcpStream)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let answered = results.iter().filter(|(answered, _)| *answered).count();
    assert_eq!(answered, 3, "clients relayed");
    assert_eq!(stats.open.load(Ordering::Relaxed), 3);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_relay_raises_its_descriptor_limit_to_fit_its_connection_limit() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let server_addr = echo_server();
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut relay = Command::new(env!("CARGO_BIN_EXE_idlegate"));
    relay
        .args(["relay", "--listen", &listen.to_string(), "--connect"])
        .arg(server_addr.to_string())
        .args(["--keepalive", "1s,1s,3", "--max-connections", "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Started with the common soft limit of 1,024 (about 500 relayed connections).
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        relay.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = 1024;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    /// Kills the relay however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let relay = Killed(relay.spawn().unwrap());
    // It raises the limit before it listens.
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(listen).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.0.id())).unwrap();
    let (soft, hard): (u64, u64) = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| {
            let mut v = l.split_whitespace().map(|v| v.parse().ok());
            Some((v.next()??, v.next()??))
        })
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"));
    // Two descriptors a connection, and room for the listener, the poll and the log; as far
    // as the hard limit allows.
    assert!(
        soft >= (2 * 2000 + 64).min(hard),
        "soft limit {soft}, hard {hard}"
    );
    assert!(soft > 1024, "soft limit {soft}");
}

#[test]
fn a_relay_killed_with_a_client_connected_resets_it_and_starts_again_on_the_same_port() {
    use std::process::{Command, Stdio};
    let server_addr = echo_server();
    // A free port for the relay, which each run binds again.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .args(["relay", "--listen", &listen, "--connect"])
            .arg(server_addr.to_string())
            .args(["--keepalive", "1s,1s,3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let connect = || {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match TcpStream::connect(&listen) {
                Ok(c) => return c,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("the relay does not listen on {listen}: {e}"),
            }
        }
    };
    let mut relay = start();
    let mut client = connect();
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(echo(&mut client, b"before").unwrap(), b"before");
    relay.kill().unwrap();
    relay.wait().unwrap();
    // Its connections die with it: the client is told, not left hanging.
    let after = echo(&mut client, b"after");
    assert!(after.is_err(), "{after:?}");
    // Nothing of it is left to stop a restart on the same port.
    let mut relay = start();
    let mut client = connect();
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(echo(&mut client, b"again").unwrap(), b"again");
    relay.kill().unwrap();
    relay.wait().unwrap();
}

#[test]
fn the_relay_start_line_names_the_user_timeout_tcp_user_timeout_as_linux_calls_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let server_addr = echo_server();
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    /// Kills the relay however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut relay = Killed(
        Command::new(env!("CARGO_BIN_EXE_idlegate"))
            .args(["relay", "--listen", &listen.to_string(), "--connect"])
            .arg(server_addr.to_string())
            .args(["--keepalive", "1s,1s,3"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = relay.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(&format!("relay {listen} → ")) => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no start line within {WAIT:?}; it said:\n{}",
                seen.join("\n")
            ),
        }
    };
    assert!(
        line.ends_with(&format!(
            "relay {listen} → {server_addr}, keepalive 1s/1s/3, TCP_USER_TIMEOUT 4s"
        )),
        "{line}"
    );
}
