//! The tunnel's legs reused: a leg whose session ended whole carries the next session (the
//! exit says Done first), so sessions one after another cost one handshake; a free leg that
//! the exit closed, or that no longer answers, costs the next session nothing but a dial; a
//! leg whose session ended with a reset is never given back. In the per-peer mode a leg kept
//! idle at the exit is closed once its peer is taken off the list, and a reused leg serves only
//! its own peer's sessions. A leg whose FIN came with its Welcome is found lost at once, not
//! when its heartbeats are missed. Over loopback.

use crate::common;

use common::tunnel::*;
use idlegate::survive::relay::Stats;
use idlegate::survive::tunnel::frame::{Frame, SessionId, Token, MAX_PLAINTEXT};
use idlegate::survive::tunnel::key::{Key, PrivateKey};
use idlegate::survive::tunnel::leg::{EntryKeys, ExitKeys, Leg, LegError};
use idlegate::survive::tunnel::peers::Peers;
use idlegate::survive::tunnel::pool::IDLE_AT_EXIT;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

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

/// An exit in the per-peer mode serving the sites `sites` (each a key pair written in `dir`
/// under its name), with its peers list at `dir/peers`; the keys of each site's entry.
fn exit_for_sites(dir: &Path, sites: &[&str]) -> (Running, Vec<EntryKeys>) {
    let exit_key = PrivateKey::generate(&dir.join("exit.key")).unwrap();
    let mut list = String::new();
    let mut entries = Vec::new();
    for site in sites {
        let own = PrivateKey::generate(&dir.join(format!("{site}.key"))).unwrap();
        list.push_str(&format!("{} {site}\n", own.public()));
        entries.push(EntryKeys::Peer {
            own,
            exit: exit_key.public(),
        });
    }
    std::fs::write(dir.join("peers"), list).unwrap();
    let peers = Arc::new(Peers::load(&dir.join("peers")).unwrap());
    let keys = ExitKeys::Peers {
        own: exit_key,
        peers,
    };
    let (exit, _) = start_exit_with(echo_each(), keys, settings(1000, WAIT));
    (exit, entries)
}

/// A leg to the exit at `exit` as the entry with `keys` would dial it, the test playing the
/// entry's part by hand (blocking, up to [`WAIT`] in all).
fn dial(exit: SocketAddr, keys: &EntryKeys) -> Leg {
    let stream = TcpStream::connect(exit).unwrap();
    Leg::initiate(stream, keys, WAIT).unwrap()
}

fn send(leg: &mut Leg, frame: Frame) {
    leg.send_now(&frame).unwrap();
}

/// Opens a new session on `leg` (or resumes `session`): the exit's answer, decoded into
/// `plain`.
fn greet<'p>(
    leg: &mut Leg,
    session: SessionId,
    token: Token,
    plain: &'p mut [u8],
) -> Result<Frame<'p>, LegError> {
    let hello = Frame::Hello {
        session,
        token,
        received: 0,
    };
    leg.send_now(&hello)?;
    let n = leg.recv_now(plain)?;
    Ok(Frame::decode(&plain[..n]).unwrap())
}

/// One session on `leg`, opened, echoed and ended whole by hand (`msg` and a FIN each way,
/// each acknowledged), up to the exit's Done: the leg is then idle at the exit.
fn whole_session(leg: &mut Leg, msg: &[u8]) {
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    let answer = greet(leg, SessionId::NEW, Token::default(), &mut plain).unwrap();
    assert!(matches!(answer, Frame::Welcome { .. }), "{answer:?}");
    send(
        leg,
        Frame::Data {
            offset: 0,
            bytes: msg,
        },
    );
    let end = msg.len() as u64;
    send(leg, Frame::Fin { offset: end });
    let mut echoed = Vec::new();
    loop {
        let n = leg.recv_now(&mut plain).unwrap();
        match Frame::decode(&plain[..n]).unwrap() {
            Frame::Data { bytes, .. } => echoed.extend_from_slice(bytes),
            Frame::Fin { offset } => {
                assert_eq!(offset, end);
                // A FIN takes the offset after the last byte.
                let received = end + 1;
                send(
                    leg,
                    Frame::Ack {
                        received,
                        limit: 1 << 22,
                    },
                );
            }
            Frame::Ack { .. } => {}
            Frame::Done => break,
            other => panic!("{other:?} before Done"),
        }
    }
    assert_eq!(echoed, msg);
}

#[test]
fn an_idle_leg_of_a_peer_taken_off_the_peers_list_is_closed_at_once_not_when_its_idle_time_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (exit, keys) = exit_for_sites(dir.path(), &["site-r", "site-s"]);
    let mut leg = dial(exit.addr, &keys[0]);
    whole_session(&mut leg, b"ping");
    assert!(
        wait_until(WAIT, || free(&exit.stats) == 1),
        "the leg is idle at the exit"
    );
    // Site r is taken off the list. The exit acts on a change once two reads a second apart
    // agree, and looks at its idle legs' peers every second: about three seconds, against
    // the ten an idle leg is otherwise kept.
    let listed = std::fs::read_to_string(dir.path().join("peers")).unwrap();
    let rest: String = listed.lines().filter(|l| !l.ends_with("site-r")).collect();
    std::fs::write(dir.path().join("peers"), format!("{rest}\n")).unwrap();
    let revoked = Instant::now();
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    let answer = leg.recv_now(&mut plain);
    let took = revoked.elapsed();
    assert!(
        matches!(answer, Err(LegError::Closed) | Err(LegError::Io(_))),
        "the exit closed the leg: {:?}",
        answer.map(|n| format!("{:?}", Frame::decode(&plain[..n])))
    );
    assert!(
        took < IDLE_AT_EXIT - Duration::from_secs(2),
        "closed {took:?} after the peer was taken off the list: at the end of its idle time \
         ({IDLE_AT_EXIT:?}), not because of it"
    );
    assert!(wait_until(WAIT, || free(&exit.stats) == 0));
    // Site s, still listed, is served.
    let mut other = dial(exit.addr, &keys[1]);
    whole_session(&mut other, b"still listed");
}

#[test]
fn a_leg_reused_by_one_peer_cannot_resume_another_peers_session() {
    let dir = tempfile::tempdir().unwrap();
    let (exit, keys) = exit_for_sites(dir.path(), &["site-a", "site-b"]);
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    // Site b's session, open, its id and token known (as if they had leaked).
    let mut leg_b = dial(exit.addr, &keys[1]);
    let (session, token) =
        match greet(&mut leg_b, SessionId::NEW, Token::default(), &mut plain).unwrap() {
            Frame::Welcome { session, token, .. } => (session, token),
            other => panic!("{other:?}"),
        };
    // Site a's leg, idle at the exit after a whole session, then asked to resume b's.
    let mut leg_a = dial(exit.addr, &keys[0]);
    whole_session(&mut leg_a, b"ping");
    assert!(wait_until(WAIT, || free(&exit.stats) == 1));
    let answer = greet(&mut leg_a, session, token, &mut plain);
    assert!(
        !matches!(answer, Ok(Frame::Welcome { .. })),
        "site a resumed site b's session: {answer:?}"
    );
    // Site b's session carries on, on its own leg.
    send(
        &mut leg_b,
        Frame::Data {
            offset: 0,
            bytes: b"mine",
        },
    );
    send(&mut leg_b, Frame::Fin { offset: 4 });
    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        let n = leg_b.recv_now(&mut plain).unwrap();
        match Frame::decode(&plain[..n]).unwrap() {
            Frame::Data { bytes, .. } => echoed.extend_from_slice(bytes),
            Frame::Ack { .. } => {}
            other => panic!("site b's session: {other:?}"),
        }
    }
    assert_eq!(echoed, b"mine");
    assert_eq!(exit.stats.reconnects.load(Ordering::Relaxed), 0);
}

/// One length-prefixed record of a leg (a handshake message or a sealed frame), whole.
fn read_leg_record(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut record = len.to_vec();
    record.resize(2 + u16::from_be_bytes(len) as usize, 0);
    stream.read_exact(&mut record[2..]).unwrap();
    record
}

/// A proxy from an entry to the exit at `exit`. Its first connection passes the entry's bytes
/// on, but of the exit's only the first two records (its handshake answer, then its Welcome
/// with a FIN in the same segment: TCP_CORK), so that the entry's dial reads the Welcome and
/// the end of the leg in one report; then it closes the exit's side and swallows
/// what the entry still sends. Later connections are passed on whole, both ways.
fn cut_after_the_welcome(exit: SocketAddr) -> SocketAddr {
    let (listener, addr) = loopback_server();
    std::thread::spawn(move || {
        for (n, entry_side) in listener.incoming().flatten().enumerate() {
            let Ok(mut exit_side) = TcpStream::connect(exit) else {
                return;
            };
            let (mut from_entry, mut to_exit) = (
                entry_side.try_clone().unwrap(),
                exit_side.try_clone().unwrap(),
            );
            // The entry's bytes: on to the exit while it is there, then thrown away.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(k @ 1..) = from_entry.read(&mut buf) {
                    let _ = to_exit.write_all(&buf[..k]);
                }
                let _ = to_exit.shutdown(Shutdown::Write);
            });
            let mut entry_side = entry_side;
            if n > 0 {
                let _ = std::io::copy(&mut exit_side, &mut entry_side);
                let _ = entry_side.shutdown(Shutdown::Write);
                continue;
            }
            let answer = read_leg_record(&mut exit_side);
            entry_side.write_all(&answer).unwrap();
            let welcome = read_leg_record(&mut exit_side);
            let corked = socket2::SockRef::from(&entry_side);
            corked.set_tcp_cork(true).unwrap();
            entry_side.write_all(&welcome).unwrap();
            entry_side.shutdown(Shutdown::Write).unwrap();
            drop(exit_side);
        }
    });
    addr
}

#[test]
fn a_leg_whose_fin_came_with_its_welcome_is_found_lost_at_once_not_when_its_heartbeats_are_missed()
{
    // The entry's dial read the Welcome and stopped there, short; the FIN behind it was in
    // the same report, and no new report follows a FIN: the leg the session took must be
    // looked at again, not taken over from the dial as it was.
    let key = Key::random().unwrap();
    let server = echo_each();
    let heartbeat = Duration::from_secs(2);
    let s = || settings(heartbeat.as_millis() as u64, WAIT);
    let (exit, _) = start_exit(server, &key, s());
    let entry = start_entry(cut_after_the_welcome(exit.addr), &key, s());
    let start = Instant::now();
    let mut client = TcpStream::connect(entry.addr).unwrap();
    client.write_all(b"ping").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"ping");
    assert_eq!(entry.stats.reconnects.load(Ordering::Relaxed), 1);
    // Found at its heartbeats, the loss would have taken three intervals (6 s).
    assert!(
        start.elapsed() < heartbeat + heartbeat / 2,
        "resumed after {:?}",
        start.elapsed()
    );
}
