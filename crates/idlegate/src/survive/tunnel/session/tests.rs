//! The session's unit tests: its turns, frames and buffers, over loopback sockets.

use super::*;
use crate::sys::poll::{poll, Watch};
use std::net::TcpListener;
use std::sync::mpsc;

/// A leg over loopback, handshaken, both ends non-blocking as a worker holds them: the
/// entry's and the exit's.
fn legs() -> (Leg, Leg) {
    let key = super::super::key::Key::random().unwrap();
    let (entry, exit) = super::super::leg::tests::pair(&key, &key);
    let (entry, exit) = (entry.unwrap(), exit.unwrap());
    entry.go_nonblocking().unwrap();
    exit.go_nonblocking().unwrap();
    (entry, exit)
}

/// A connected pair of sockets on loopback.
fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (near, listener.accept().unwrap().0)
}

/// A session of `side` on `app` (made non-blocking), with a replay buffer of `replay` bytes and
/// heartbeats every `heartbeat`; its id and token are the tests' own.
fn session(app: TcpStream, side: Side, replay: usize, heartbeat: Duration) -> Session {
    app.set_nonblocking(true).unwrap();
    let (id, token) = (SessionId([1; 16]), Token([2; 32]));
    Session::new(id, token, app, side, replay, heartbeat, Arc::default()).unwrap()
}

#[test]
fn a_session_that_moved_4_mib_and_went_idle_gives_its_buffers_back() {
    const MOVED: usize = 4 << 20;
    // Enough for an idle session's leg (RX_MIN, TX_MIN) and a heartbeat's frames; before,
    // an idle session held an outbox of 1 MiB and a leg's 320 KiB and 256 KiB.
    const IDLE_MOST: usize = 8 << 10;
    let (mut entry_leg, mut exit_leg) = legs();
    // The client writes 4 MiB into the entry; the server reads them from the exit.
    let (mut client, entry_app) = socket_pair();
    let (exit_app, mut server) = socket_pair();
    let heartbeat = Duration::from_millis(200);
    let mut entry = session(entry_app, Side::Entry, 4 << 20, heartbeat);
    let mut exit = session(exit_app, Side::Exit, 4 << 20, heartbeat);
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![5u8; MOVED]).unwrap();
        client
    });
    let reader = std::thread::spawn(move || {
        let mut all = vec![0u8; MOVED];
        server.read_exact(&mut all).unwrap();
        assert!(all.iter().all(|&b| b == 5));
        server
    });
    let mut scratch = Scratch::new();
    let ready = Ready {
        app: true,
        app_hangup: false,
        app_fin: false,
        leg_fin: false,
        leg: true,
    };
    let until = Instant::now() + Duration::from_secs(60);
    let mut grew = 0;
    loop {
        for (s, leg) in [(&mut entry, &mut entry_leg), (&mut exit, &mut exit_leg)] {
            assert!(s.on_ready(leg, ready, &mut scratch).is_none());
            s.turn(leg, &mut scratch).unwrap();
        }
        let held = entry.buffered(Some(&entry_leg)) + exit.buffered(Some(&exit_leg));
        grew = grew.max(held);
        if reader.is_finished() && held <= 2 * IDLE_MOST {
            break;
        }
        assert!(
            Instant::now() < until,
            "an idle session still holds {held} bytes of buffers"
        );
        std::thread::yield_now();
    }
    assert!(grew > MOVED / 8, "the buffers grew with the bytes: {grew}");
    assert!(entry.buffered(Some(&entry_leg)) <= IDLE_MOST);
    assert!(exit.buffered(Some(&exit_leg)) <= IDLE_MOST);
    let (_client, _server) = (writer.join().unwrap(), reader.join().unwrap());
}

/// What `leg` has received, handed to `s` frame by frame: the frames' types, in order.
fn frames_arrived(s: &mut Session, leg: &mut Leg) -> Vec<u8> {
    assert!(matches!(
        leg.fill().unwrap(),
        Filled::Bytes(_) | Filled::WouldBlock
    ));
    let mut plain = vec![0u8; MAX_PLAINTEXT];
    let mut kinds = Vec::new();
    while let Some(n) = leg.next_frame(&mut plain).unwrap() {
        kinds.push(plain[0]);
        s.handle(&plain[..n]).unwrap();
    }
    kinds
}

#[test]
fn an_acknowledgement_waits_for_the_answer_and_rides_with_it() {
    const DATA: u8 = 4;
    const ACK: u8 = 5;
    const FIN: u8 = 6;
    let (mut entry_leg, mut exit_leg) = legs();
    let (mut client, entry_app) = socket_pair();
    let (exit_app, mut server) = socket_pair();
    let heartbeat = Duration::from_secs(10);
    let mut entry = session(entry_app, Side::Entry, 1 << 20, heartbeat);
    let mut exit = session(exit_app, Side::Exit, 1 << 20, heartbeat);
    let mut scratch = Scratch::new();
    let (app, leg) = (
        Ready {
            app: true,
            app_hangup: false,
            app_fin: false,
            leg_fin: false,
            leg: false,
        },
        Ready {
            app: false,
            app_hangup: false,
            app_fin: false,
            leg_fin: false,
            leg: true,
        },
    );
    // Each end grants its window at its first turn; the client's request goes with the
    // entry's grant, in one write.
    client.write_all(b"?").unwrap();
    assert!(exit.attach(&mut exit_leg, &mut scratch).is_none());
    exit.turn(&mut exit_leg, &mut scratch).unwrap();
    assert!(entry.attach(&mut entry_leg, &mut scratch).is_none());
    assert!(entry.on_ready(&mut entry_leg, app, &mut scratch).is_none());
    entry.turn(&mut entry_leg, &mut scratch).unwrap();
    assert!(exit.on_ready(&mut exit_leg, leg, &mut scratch).is_none());
    // The exit hands the request to its server; its acknowledgement waits for the answer
    // (loopback: what a write sent is there to read when it returns).
    let wants = exit.turn(&mut exit_leg, &mut scratch).unwrap();
    let mut got = [0u8; 1];
    server.read_exact(&mut got).unwrap();
    assert!(wants.until <= Instant::now() + ACK_DELAY);
    assert_eq!(frames_arrived(&mut entry, &mut entry_leg), [ACK]);
    // The answer and the acknowledgement leave in one write.
    server.write_all(b"!").unwrap();
    assert!(exit.on_ready(&mut exit_leg, app, &mut scratch).is_none());
    exit.turn(&mut exit_leg, &mut scratch).unwrap();
    assert_eq!(frames_arrived(&mut entry, &mut entry_leg), [DATA, ACK]);
    // With nothing to ride with, the entry's acknowledgement leaves once ACK_DELAY passed.
    let wants = entry.turn(&mut entry_leg, &mut scratch).unwrap();
    assert!(frames_arrived(&mut exit, &mut exit_leg).is_empty());
    let until = wants.until;
    while Instant::now() < until {
        std::thread::sleep(until - Instant::now());
    }
    entry.turn(&mut entry_leg, &mut scratch).unwrap();
    assert_eq!(frames_arrived(&mut exit, &mut exit_leg), [ACK]);
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"!");
    // The server, then the client, finish: each FIN carries the acknowledgement owed, and
    // the exit's last one stays sealed for the Done its end seals next (one write).
    server.shutdown(Shutdown::Write).unwrap();
    assert!(exit.on_ready(&mut exit_leg, app, &mut scratch).is_none());
    exit.turn(&mut exit_leg, &mut scratch).unwrap();
    assert_eq!(frames_arrived(&mut entry, &mut entry_leg), [FIN]);
    entry.turn(&mut entry_leg, &mut scratch).unwrap();
    assert_eq!(client.read(&mut got).unwrap(), 0);
    client.shutdown(Shutdown::Write).unwrap();
    assert!(entry.on_ready(&mut entry_leg, app, &mut scratch).is_none());
    entry.turn(&mut entry_leg, &mut scratch).unwrap();
    assert_eq!(frames_arrived(&mut exit, &mut exit_leg), [FIN, ACK]);
    let end = exit.turn(&mut exit_leg, &mut scratch).unwrap_err();
    assert!(matches!(end, LegEnd::Done(Whole::OnLeg)), "{end:?}");
    assert!(exit_leg.pending() > 0, "the last Ack waits for the Done");
}

#[test]
fn a_session_that_ends_whole_without_a_leg_never_waits_for_a_slow_application() {
    // More bytes left for the application than its socket's buffers hold (a receive buffer
    // grows only as its reader reads): a blocking write would wait for it to read (up to
    // LAST_WRITE), holding every session of the worker.
    const LEFT: usize = 8 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut reader, _) = listener.accept().unwrap();
    socket2::SockRef::from(&app)
        .set_send_buffer_size(4096)
        .unwrap();
    let mut s = session(app, Side::Entry, 16 << 20, Duration::from_secs(1));
    // Both streams whole: the peer's bytes and FIN here, this end's FIN acknowledged.
    s.inbox.accept(0, &vec![7u8; LEFT]).unwrap();
    s.inbox.accept_fin(LEFT as u64).unwrap();
    s.outbox.finish();
    assert!(matches!(
        s.outbox.next(MAX_DATA),
        Some(Next::Fin { offset: 0 })
    ));
    s.outbox.ack(1).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let whole = s.finish_without_leg();
        let _ = tx.send((whole, s));
    });
    let (whole, mut s) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the session ended without waiting for its application");
    assert!(whole);
    assert!(s.finishing(), "its last bytes wait for the application");
    // The application reads: the rest is written without blocking, then its FIN.
    let read = std::thread::spawn(move || {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        all
    });
    let until = Instant::now() + Duration::from_secs(60);
    while !s.write_last().unwrap() {
        assert!(
            Instant::now() < until,
            "the application read nothing for a minute"
        );
        let mut writable = [Watch::new(s.app_raw(), false, true)];
        poll(&mut writable, Some(Duration::from_secs(1))).unwrap();
    }
    assert!(!s.finishing());
    drop(s);
    let all = read.join().unwrap();
    assert_eq!(all.len(), LEFT);
    assert!(all.iter().all(|&b| b == 7));
}

#[test]
fn a_short_read_is_the_last_until_the_socket_reports_again_unless_its_fin_was_reported() {
    // Edge-triggered: a read shorter than its room emptied the socket, and what comes after
    // it is a new report; the FIN that had come when the socket reported is not.
    let (mut entry_leg, mut exit_leg) = legs();
    let (mut client, entry_app) = socket_pair();
    let heartbeat = Duration::from_secs(10);
    let mut entry = session(entry_app, Side::Entry, 1 << 20, heartbeat);
    let mut scratch = Scratch::new();
    let reported = |app, leg, fin| Ready {
        app,
        app_hangup: false,
        app_fin: app && fin,
        leg,
        leg_fin: leg && fin,
    };
    // The client's byte and its FIN are both there (loopback: a write is there to read when
    // it returns); a report without the FIN: the byte is read, and no read follows it.
    client.write_all(b"x").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let app_only = reported(true, false, false);
    assert!(entry
        .on_ready(&mut entry_leg, app_only, &mut scratch)
        .is_none());
    assert!(entry.turn(&mut entry_leg, &mut scratch).unwrap().app_read);
    // The report said the FIN had come: read on to it.
    let app_fin = reported(true, false, true);
    assert!(entry
        .on_ready(&mut entry_leg, app_fin, &mut scratch)
        .is_none());
    assert!(!entry.turn(&mut entry_leg, &mut scratch).unwrap().app_read);
    // The same on the leg: a frame then the peer's FIN.
    exit_leg
        .send_now(&Frame::Ack {
            received: 0,
            limit: 1 << 20,
        })
        .unwrap();
    exit_leg.shutdown_write().unwrap();
    let leg_only = reported(false, true, false);
    assert!(entry
        .on_ready(&mut entry_leg, leg_only, &mut scratch)
        .is_none());
    assert!(entry_leg.drained());
    let leg_fin = reported(false, true, true);
    let end = entry.on_ready(&mut entry_leg, leg_fin, &mut scratch);
    assert!(matches!(end, Some(LegEnd::Lost(Lost::Closed))), "{end:?}");
}

#[test]
fn a_read_stopped_at_its_budget_is_noted_so_that_its_socket_is_reported_again() {
    let (mut entry_leg, _exit_leg) = legs();
    let (mut client, entry_app) = socket_pair();
    // Blocking, unlike a worker's: each read waits for bytes rather than finding none while
    // the writer is behind, so that reads come back full until the budget is spent.
    let (id, token) = (SessionId([1; 16]), Token([2; 32]));
    let heartbeat = Duration::from_secs(10);
    let mut entry = Session::new(
        id,
        token,
        entry_app,
        Side::Entry,
        8 << 20,
        heartbeat,
        Arc::default(),
    )
    .unwrap();
    entry.outbox.grant(u64::MAX);
    let mut scratch = Scratch::new();
    // More than the budget, written by another thread as the session reads.
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![1u8; 3 * APP_READ_BUDGET]).unwrap();
        client
    });
    // A head start: the session reads once the writer has filled what the socket queues.
    let mut peeked = vec![0u8; 1 << 20];
    let head_start = Instant::now() + Duration::from_secs(10);
    while entry.app().peek(&mut peeked).unwrap() < 64 << 10 && Instant::now() < head_start {
        std::thread::yield_now();
    }
    let ready = Ready {
        app: true,
        ..Ready::default()
    };
    let until = Instant::now() + Duration::from_secs(30);
    let mut stopped = false;
    while !stopped {
        assert!(Instant::now() < until, "no read reached its budget");
        assert!(entry
            .on_ready(&mut entry_leg, ready, &mut scratch)
            .is_none());
        stopped = entry.take_unread().0;
        // What was read leaves the outbox as if acknowledged, so room never runs out.
        let sent = entry.outbox.acked() + entry.outbox.unacked() as u64;
        while entry.outbox.next(usize::MAX).is_some() {}
        entry.outbox.ack(sent).unwrap();
    }
    assert_eq!(entry.take_unread(), (false, false), "taken once");
    drop(writer);
}

#[test]
fn a_read_stopped_at_a_full_outbox_is_noted_so_that_its_socket_is_reported_again() {
    // An acknowledgement read in the same turn may make room: no new report would say that
    // bytes are still there.
    const REPLAY: usize = 64 << 10;
    let (mut entry_leg, _exit_leg) = legs();
    let (mut client, entry_app) = socket_pair();
    let heartbeat = Duration::from_secs(10);
    let mut entry = session(entry_app, Side::Entry, REPLAY, heartbeat);
    // Written by another thread: the socket's buffers may not hold it all.
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![1u8; 2 * REPLAY]).unwrap();
        client
    });
    let mut scratch = Scratch::new();
    let ready = Ready {
        app: true,
        ..Ready::default()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while entry.outbox.room() > 0 {
        assert!(Instant::now() < until, "the outbox never filled");
        assert!(entry
            .on_ready(&mut entry_leg, ready, &mut scratch)
            .is_none());
    }
    assert!(entry
        .on_ready(&mut entry_leg, ready, &mut scratch)
        .is_none());
    assert_eq!(entry.take_unread(), (true, false));
    drop(writer);
}
