//! `idlegate probe` (the real binary) against far ends that break echo's protocol or cannot
//! serve it: a server that floods valid `received` frames, a full echo, an echo that ends a
//! test connection with an error frame. In each the probe must measure nothing, say so and
//! exit non-zero, promptly and in bounded memory, instead of reporting a timeout. Loopback
//! only, no root needed.

use idlegate::measure::echo::frame::{Decoder, Frame};
use idlegate::measure::echo::{Echo, FULL};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long a probe that must fail may run: its first idle period is 2 s, a wait 1 s.
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// Its resident memory at most (a probe holds a few MB; the flood grew it by 500 MB a second).
const RSS_LIMIT_KB: u64 = 200 * 1024;

/// A finished probe: exit status, stdout, stderr, and the most resident memory seen.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    max_rss_kb: u64,
}

/// Runs `idlegate probe TARGET --max 20s --wait 1s --json`, watching its resident memory
/// (VmRSS in /proc) every 20 ms; kills it and fails the test if it runs past `PROBE_LIMIT` or
/// grows past `RSS_LIMIT_KB` (which also keeps the old, unbounded probe from taking the machine's
/// memory).
fn probe(target: SocketAddr) -> Finished {
    let mut child = Command::new(IDLEGATE)
        .args(["probe", &target.to_string(), "--max", "20s", "--wait", "1s"])
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting idlegate probe");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + PROBE_LIMIT;
    let mut max_rss_kb = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        max_rss_kb = max_rss_kb.max(rss_kb(child.id()));
        if Instant::now() >= deadline || max_rss_kb > RSS_LIMIT_KB {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the probe still ran after {:?} with {max_rss_kb} kB resident; stderr:\n{}",
                PROBE_LIMIT.saturating_sub(deadline.saturating_duration_since(Instant::now())),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        max_rss_kb,
    }
}

/// The resident memory of process `pid` in kB (0 once it is gone).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Asserts the probe measured nothing and said so: non-zero exit, no report, one error line
/// in the project's form that contains `why`.
fn assert_could_not_measure(f: &Finished, why: &str) {
    assert!(
        !f.status.success(),
        "exit {:?}; stdout:\n{}",
        f.status,
        f.stdout
    );
    assert!(
        f.stdout.trim().is_empty(),
        "a report was printed:\n{}",
        f.stdout
    );
    let error = f
        .stderr
        .lines()
        .find(|l| l.starts_with("idlegate: "))
        .unwrap_or_else(|| panic!("no `idlegate: ` error line:\n{}", f.stderr));
    assert!(error.contains(why), "{error:?} does not say {why:?}");
}

/// Serves each connection of `listener` on a thread of its own with `serve`.
fn serve_each(listener: TcpListener, serve: fn(TcpStream)) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
}

/// Reads frames from `conn` until EOF or an error, passing each to `answer`.
fn each_frame(conn: &TcpStream, mut answer: impl FnMut(Frame)) {
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 1024];
    loop {
        match (&*conn).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if decoder.feed(&buf[..n]).is_err() {
                    return;
                }
            }
        }
        while let Ok(Some(frame)) = decoder.decode() {
            answer(frame);
        }
    }
}

#[test]
fn probe_fails_promptly_in_bounded_memory_against_a_server_flooding_received_frames() {
    // Answers hello with a valid welcome, then sends valid `received` frames without stopping
    // (seq 1, so even the probe's `later` request seems confirmed).
    fn flood(conn: TcpStream) {
        let mut writer = conn.try_clone().unwrap();
        let flood: Vec<u8> = (0..4096)
            .flat_map(|_| Frame::Received { seq: 1 }.encode())
            .collect();
        let mut welcomed = false;
        each_frame(&conn, |frame| {
            if let (Frame::Hello(id), false) = (frame, welcomed) {
                welcomed = true;
                writer.write_all(&Frame::Welcome(id).encode()).unwrap();
                let mut w = writer.try_clone().unwrap();
                let flood = flood.clone();
                // Until the probe closes the connection.
                std::thread::spawn(move || while w.write_all(&flood).is_ok() {});
            }
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    serve_each(listener, flood);

    let started = Instant::now();
    let f = probe(target);
    eprintln!(
        "the probe ended after {:.2?} with at most {} kB resident",
        started.elapsed(),
        f.max_rss_kb
    );
    assert_could_not_measure(&f, "received frame while the connection was idle");
    assert!(f.stderr.contains("could not measure"), "{}", f.stderr);
    assert!(f.max_rss_kb <= RSS_LIMIT_KB, "{} kB", f.max_rss_kb);
}

#[test]
fn a_full_echo_refuses_the_probe_with_an_error_frame_and_the_probe_says_it_could_not_measure() {
    let mut echo = Echo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    echo.set_max_connections(2);
    let target = echo.local_addr().unwrap();
    let stop = echo.stop_flag();
    let server = std::thread::spawn(move || echo.run());
    // Both slots taken by idle connections that said hello.
    let held: Vec<TcpStream> = (0..2u32)
        .map(|conn| {
            let mut s = TcpStream::connect(target).unwrap();
            let id = idlegate::measure::echo::frame::ConnId { run: 7, conn };
            s.write_all(&Frame::Hello(id).encode()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut decoder = Decoder::default();
            let mut buf = [0u8; 64];
            while decoder.pending() < Frame::Welcome(id).encode().len() {
                let n = s.read(&mut buf).expect("echo's welcome");
                assert!(n > 0, "echo closed a connection it had room for");
                decoder.feed(&buf[..n]).unwrap();
            }
            assert_eq!(decoder.decode(), Ok(Some(Frame::Welcome(id))));
            s
        })
        .collect();

    let f = probe(target);
    assert_could_not_measure(&f, &format!("echo refused the probe: {FULL}"));

    drop(held);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap().unwrap();
}

#[test]
fn an_echo_that_ends_a_test_connection_with_an_error_frame_makes_the_probe_say_it_could_not_measure(
) {
    // Speaks echo's protocol, but a second after each welcome sends an error frame, a FIN,
    // and reads the rest (as echo does when it stops serving a connection).
    fn quits(conn: TcpStream) {
        let mut writer = conn.try_clone().unwrap();
        let welcomed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        each_frame(&conn, |frame| {
            let answer = match frame {
                Frame::Hello(id) => Frame::Welcome(id),
                Frame::Later { seq, .. } => Frame::Received { seq },
                Frame::Data { seq, .. } => Frame::Received { seq },
                _ => return,
            };
            let _ = writer.write_all(&answer.encode());
            if !welcomed.swap(true, Ordering::Relaxed) {
                let mut w = writer.try_clone().unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(1));
                    let _ = w.write_all(&Frame::Error("shutting down".into()).encode());
                    let _ = w.shutdown(std::net::Shutdown::Write);
                });
            }
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    serve_each(listener, quits);

    let f = probe(target);
    assert_could_not_measure(&f, "echo ended it: shutting down");
    assert!(f.stderr.contains("could not measure"), "{}", f.stderr);
}
