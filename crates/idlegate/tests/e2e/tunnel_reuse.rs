//! The tunnel's legs reused: a leg whose session ended whole carries the next session (the
//! exit says Done first), so sessions one after another cost one handshake; a free leg that
//! the exit closed, or that no longer answers, costs the next session nothing but a dial; a
//! leg whose session ended with a reset is never given back. Over loopback.

use crate::common;

use common::tunnel::*;
use idlegate::survive::relay::Stats;
use idlegate::survive::tunnel::key::Key;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

/// A server that echoes each connection's bytes until its FIN, then closes, one connection
/// after another.
fn echo_each() -> SocketAddr {
    let (listener, addr) = loopback_server();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                conn.set_read_timeout(Some(WAIT)).unwrap();
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).is_ok() {
                    let _ = conn.write_all(&got);
                }
            });
        }
    });
    addr
}

/// One session through the entry at `entry`: sends `n` bytes of seed `seed`, then its FIN;
/// the echo must come back exact, then the server's FIN.
fn echoed(entry: SocketAddr, n: usize, seed: u64) {
    let mut client = TcpStream::connect(entry).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut up = vec![0u8; n];
    Noise(seed).fill(&mut up);
    client.write_all(&up).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), n, "session {seed}: bytes back");
    assert!(got == up, "session {seed}: the echo differs");
}

fn legs(stats: &Stats) -> (u64, u64) {
    (
        stats.legs_dialed.load(Ordering::Relaxed),
        stats.legs_reused.load(Ordering::Relaxed),
    )
}

fn free(stats: &Stats) -> u64 {
    stats.legs_free.load(Ordering::Relaxed)
}

#[test]
fn fifty_sessions_one_after_another_cost_one_leg_and_each_echoes_its_bytes_exactly() {
    let key = Key::random().unwrap();
    let (exit, _) = start_exit(echo_each(), &key, settings(500, WAIT));
    let entry = start_entry(exit.addr, &key, settings(500, WAIT));
    for i in 0..50u64 {
        // Sizes from one byte to more than a Data frame.
        echoed(entry.addr, 1 + (i as usize * 2_777) % 100_000, i);
        // The exit's Done frees the leg at the entry.
        assert!(
            wait_until(WAIT, || free(&entry.stats) == 1),
            "session {i}: the leg is free again at the entry"
        );
    }
    assert_eq!(legs(&entry.stats), (1, 49), "entry: legs dialed, reused");
    assert_eq!(legs(&exit.stats), (1, 49), "exit: legs greeted, reused");
    assert!(wait_until(WAIT, || exit.stats.open.load(Ordering::Relaxed) == 0));
    assert_eq!(exit.stats.connections.load(Ordering::Relaxed), 50);
    assert_eq!(entry.stats.resets.load(Ordering::Relaxed), 0);
    assert_eq!(exit.stats.resets.load(Ordering::Relaxed), 0);
}

#[test]
fn a_free_leg_the_exit_closed_or_that_no_longer_answers_is_passed_over_and_the_session_opens() {
    let key = Key::random().unwrap();
    let (exit, _) = start_exit(echo_each(), &key, settings(100, WAIT));
    let path = CutPath::new(exit.addr);
    let entry = start_entry(path.addr, &key, settings(100, WAIT));
    echoed(entry.addr, 1000, 1);
    assert!(wait_until(WAIT, || free(&entry.stats) == 1));
    // Closed under the free leg (as an exit that restarts closes it), and a session at once,
    // before or after the entry has seen the close.
    path.cut();
    echoed(entry.addr, 1000, 2);
    assert_eq!(legs(&entry.stats), (2, 0), "a new leg carried the session");
    assert!(wait_until(WAIT, || free(&entry.stats) == 1));
    // A free leg that takes the Hello and never answers (a box that forgot the flow and
    // acknowledges what it carries): after the dial's timeout, a new leg carries it.
    path.swallow();
    echoed(entry.addr, 1000, 3);
    assert_eq!(legs(&entry.stats), (3, 0), "a new leg carried the session");
    assert!(wait_until(WAIT, || free(&entry.stats) == 1));
    echoed(entry.addr, 1000, 4);
    assert_eq!(legs(&entry.stats), (3, 1), "and is then reused");
    for stats in [&entry.stats, &exit.stats] {
        assert_eq!(stats.resets.load(Ordering::Relaxed), 0);
        assert_eq!(stats.expired.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_leg_whose_session_ended_with_a_reset_is_not_given_back() {
    let key = Key::random().unwrap();
    let (listener, server_addr) = loopback_server();
    let (exit, _) = start_exit(server_addr, &key, settings(500, WAIT));
    let entry = start_entry(exit.addr, &key, settings(500, WAIT));
    let (got_tx, got_rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        // The first connection: bytes arrive, then the client's reset.
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        got_tx.send(()).unwrap();
        let mut rest = Vec::new();
        let reset = conn.read_to_end(&mut rest).is_err();
        // The second: echoed.
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(&got).unwrap();
        reset
    });
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.write_all(b"hello").unwrap();
    got_rx.recv_timeout(WAIT).unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    assert!(
        wait_until(WAIT, || entry.stats.open.load(Ordering::Relaxed) == 0),
        "the reset session ended"
    );
    echoed(entry.addr, 1000, 5);
    assert!(server.join().unwrap(), "the server saw the client's reset");
    assert_eq!(
        legs(&entry.stats),
        (2, 0),
        "the reset session's leg was closed, not given to the next one"
    );
}
