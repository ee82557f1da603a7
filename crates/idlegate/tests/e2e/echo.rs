//! `idlegate echo` over loopback: the protocol's happy path, frames that break it, a client
//! that vanishes mid-frame, and two probes at once. No root needed.

use idlegate::measure::echo::frame::{ConnId, Decoder, Frame, LaterOutcome, Report};
use idlegate::measure::echo::Echo;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a test waits for any one frame.
const WAIT: Duration = Duration::from_secs(5);

/// An echo on a loopback port, stopped when dropped.
struct Running {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    fn start() -> Running {
        Running::start_with(idlegate::measure::echo::MAX_CONNECTIONS)
    }

    /// An echo that serves at most `max` connections at once.
    fn start_with(max: usize) -> Running {
        let mut echo = Echo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        echo.set_max_connections(max);
        let addr = echo.local_addr().unwrap();
        let stop = echo.stop_flag();
        let thread = Some(std::thread::spawn(move || echo.run()));
        Running { addr, stop, thread }
    }

    fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            stream,
            decoder: Decoder::default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

struct Client {
    stream: TcpStream,
    decoder: Decoder,
}

impl Client {
    fn send(&mut self, frame: &Frame) {
        self.stream.write_all(&frame.encode()).unwrap();
    }

    /// The next frame, or `None` at EOF.
    fn recv(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(frame) = self.decoder.decode().unwrap() {
                return Some(frame);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.feed(&buf[..n]).unwrap(),
                Err(e) => panic!("no frame within {WAIT:?}: {e}"),
            }
        }
    }

    fn hello(&mut self, id: ConnId) {
        self.send(&Frame::Hello(id));
        assert_eq!(self.recv(), Some(Frame::Welcome(id)));
    }
}

fn id(run: u64, conn: u32) -> ConnId {
    ConnId { run, conn }
}

/// What echo reports of `conn`, asked on a fresh connection.
fn status(echo: &Running, conn: ConnId) -> Option<Report> {
    let mut c = echo.connect();
    c.send(&Frame::Status(conn));
    match c.recv() {
        Some(Frame::Report(report)) => report,
        other => panic!("expected a report, got {other:?}"),
    }
}

#[test]
fn echo_confirms_data_answers_later_and_reports_on_another_connection() {
    let echo = Running::start();
    let mut c = echo.connect();
    let me = id(1, 0);
    c.hello(me);
    c.send(&Frame::Data {
        seq: 1,
        payload: b"a".to_vec(),
    });
    assert_eq!(c.recv(), Some(Frame::Received { seq: 1 }));
    let asked = Instant::now();
    c.send(&Frame::Later {
        seq: 2,
        delay_ms: 300,
    });
    assert_eq!(c.recv(), Some(Frame::Received { seq: 2 }));
    assert_eq!(
        status(&echo, me),
        Some(Report {
            last_received: Some(1),
            later: LaterOutcome::Pending
        })
    );
    assert_eq!(c.recv(), Some(Frame::LaterReply { seq: 2 }));
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "not before its delay"
    );
    // Echo watches for TCP's acknowledgement of its reply: here it comes at once.
    let deadline = Instant::now() + WAIT;
    while status(&echo, me).map(|r| r.later) != Some(LaterOutcome::Acknowledged) {
        assert!(Instant::now() < deadline, "{:?}", status(&echo, me));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&echo, me).and_then(|r| r.last_received), Some(1));
    assert_eq!(status(&echo, id(1, 99)), None, "never named");
}

#[test]
fn a_stream_that_breaks_the_protocol_gets_an_error_and_is_closed_alone() {
    let echo = Running::start();
    let mut good = echo.connect();
    good.hello(id(2, 0));
    for bad in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"IG\x07\x01\x00\x00".to_vec(),
        b"IG\x01\x02\xff\xff".to_vec(),
        Frame::Data {
            seq: 1,
            payload: Vec::new(),
        }
        .encode(), // data before hello
    ] {
        let mut c = echo.connect();
        c.stream.write_all(&bad).unwrap();
        match c.recv() {
            Some(Frame::Error(why)) => assert!(!why.is_empty()),
            other => panic!("{bad:?}: expected an error frame, got {other:?}"),
        }
        assert_eq!(c.recv(), None, "then closed");
    }
    good.send(&Frame::Data {
        seq: 7,
        payload: Vec::new(),
    });
    assert_eq!(good.recv(), Some(Frame::Received { seq: 7 }), "unaffected");
}

#[test]
fn a_client_that_vanishes_mid_frame_leaves_echo_serving_and_its_report_says_closed() {
    let echo = Running::start();
    let mut c = echo.connect();
    let gone = id(3, 0);
    c.hello(gone);
    c.send(&Frame::Later {
        seq: 1,
        delay_ms: 60_000,
    });
    assert_eq!(c.recv(), Some(Frame::Received { seq: 1 }));
    let half = Frame::Data {
        seq: 2,
        payload: vec![0; 40],
    }
    .encode();
    c.stream.write_all(&half[..10]).unwrap();
    c.stream.shutdown(Shutdown::Both).unwrap();
    drop(c);
    let deadline = Instant::now() + WAIT;
    while status(&echo, gone).map(|r| r.later) != Some(LaterOutcome::Closed) {
        assert!(
            Instant::now() < deadline,
            "echo never noticed the client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut next = echo.connect();
    next.hello(id(3, 1));
}

#[test]
fn two_probes_at_once_keep_their_own_reports() {
    let echo = Running::start();
    let threads: Vec<_> = (0..2u64)
        .map(|run| {
            let addr = echo.addr;
            std::thread::spawn(move || {
                for conn in 0..20u32 {
                    let stream = TcpStream::connect(addr).unwrap();
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    let mut c = Client {
                        stream,
                        decoder: Decoder::default(),
                    };
                    c.hello(id(run, conn));
                    c.send(&Frame::Data {
                        seq: conn + 100 * run as u32,
                        payload: Vec::new(),
                    });
                    assert!(matches!(c.recv(), Some(Frame::Received { .. })));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for run in 0..2u64 {
        for conn in [0u32, 19] {
            let report = status(&echo, id(run, conn)).expect("a report");
            assert_eq!(report.last_received, Some(conn + 100 * run as u32));
        }
    }
}

#[test]
fn echo_stops_when_asked() {
    let echo = Running::start();
    let addr = echo.addr;
    drop(echo);
    let refused = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| e.kind());
    assert_eq!(refused.err(), Some(ErrorKind::ConnectionRefused));
}

/// The kernel's TCP state of `stream` (TCP_INFO's `tcpi_state`: 7 is CLOSE).
fn tcp_state(stream: &TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    idlegate::sys::tcp_info::TcpInfo::read(stream.as_raw_fd())
        .expect("TCP_INFO")
        .state
        .0
}

#[test]
fn a_full_echo_refuses_with_an_error_frame_and_an_orderly_close_never_a_reset() {
    let echo = Running::start_with(1);
    let mut held = echo.connect();
    held.hello(id(4, 0));

    // The hello of a refused connection, sent at once and again after echo's FIN, must not
    // turn echo's close into a RST: the probe is to learn echo is full, not see a reset.
    let mut refused = echo.connect();
    refused.send(&Frame::Hello(id(4, 1)));
    match refused.recv() {
        Some(Frame::Error(why)) => assert_eq!(why, idlegate::measure::echo::FULL),
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(refused.recv(), None, "then a FIN");
    refused.send(&Frame::Hello(id(4, 2)));
    refused.stream.shutdown(Shutdown::Write).unwrap();
    // Both FINs exchanged and acknowledged: CLOSE, with no error (a RST leaves ECONNRESET).
    let until = Instant::now() + WAIT;
    while tcp_state(&refused.stream) != 7 {
        assert!(Instant::now() < until, "not closed within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(refused.stream.take_error().unwrap().map(|e| e.kind()), None);

    // The held connection is served as before.
    held.send(&Frame::Data {
        seq: 3,
        payload: Vec::new(),
    });
    assert_eq!(held.recv(), Some(Frame::Received { seq: 3 }));
}
