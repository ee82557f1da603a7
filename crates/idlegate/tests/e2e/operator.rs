//! What an operator's tools see and say: `idlegate flows` answering while anyone who reaches
//! the metrics address holds connections to it; the metrics endpoint's HTTP (scrapers that
//! cannot stall each other, an HTTP/0.9 request, an oversized request answered and closed
//! in order); a forced expiry logged as forced with the flow's true idle time; timeouts
//! reported as timeouts.
//!
//! The metrics and timeout tests run on loopback without root; the `lab up` tests need root
//! (namespaces, TUN devices) and fail loudly without it. Each lab has its own name, and its
//! guard stops `lab up` and deletes its namespaces even when an assertion fails.

use crate::common;

use common::free_port;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");
/// How long a command that must answer (or fail) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a test waits for an HTTP answer or a log line.
const WAIT: Duration = Duration::from_secs(10);
/// How many idle connections a test holds to the metrics (the number, and more than
/// the server serves at once, so that some displace others).
const IDLE_CLIENTS: usize = 300;

/// Runs `idlegate ARGS…` to completion (bounded): (success, stdout, stderr).
fn idlegate(args: &[&str]) -> (bool, String, String) {
    let out = common::output_within(
        Command::new(IDLEGATE).args(args).stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends `request` to `addr` and reads the whole answer until the server's FIN. An error
/// (a RST) fails the test: every answer must end in order.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let request = request.to_vec();
        // On a thread of its own: a large request may still be going out when the answer
        // comes back.
        std::thread::spawn(move || {
            stream.write_all(&request)?;
            stream.shutdown(std::net::Shutdown::Write)
        })
    };
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let written = writer.join().unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    read.unwrap_or_else(|e| panic!("reading the answer: {e}; got so far:\n{answer}"));
    written.unwrap_or_else(|e| panic!("sending the request: {e}; answer:\n{answer}"));
    answer
}

/// The status line of an HTTP answer.
fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

/// Opens `n` connections to `addr` that never send anything.
fn idle_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    common::raise_fd_limit(4096);
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("an idle metrics connection"))
        .collect()
}

/// A relay's metrics (the same HTTP server as the gateway's), served in this process.
fn relay_metrics() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    idlegate::survive::relay::serve_metrics(listener, || {
        "idlegate_relay_connections_total 0\n".into()
    });
    addr
}

#[test]
fn a_scrape_is_answered_while_hundreds_of_idle_clients_hold_metrics_connections() {
    let addr = relay_metrics();
    let _idle = idle_clients(addr, IDLE_CLIENTS);
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert!(
        answer.contains("idlegate_relay_connections_total 0"),
        "{answer}"
    );
}

#[test]
fn a_request_line_without_an_http_version_is_answered_400_as_go_net_http_does() {
    // HTTP/0.9's simple request. Go's net/http (Prometheus's own exporters) answers it 400
    // ("malformed HTTP request"); an HTTP/0.9 answer would have no status line at all.
    let addr = relay_metrics();
    let answer = http(addr, b"GET /metrics\r\n");
    assert_eq!(status(&answer), "HTTP/1.1 400 Bad Request", "{answer}");
    assert!(answer.contains("HTTP/0.9"), "the body says why: {answer}");
}

#[test]
fn a_200_kb_request_is_answered_431_and_closed_in_order_not_reset() {
    let addr = relay_metrics();
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    request.resize(200 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let answer = http(addr, &request);
    assert_eq!(
        status(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{answer}"
    );
}

#[test]
fn flows_says_timed_out_when_the_gateway_does_not_answer() {
    // A control socket whose "gateway" accepts and never answers.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let (ok, stdout, stderr) = idlegate(&["flows", "--control", path.to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("idlegate: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        error.contains("did not answer: timed out after 5s"),
        "{error}"
    );
    assert!(!stderr.contains("temporarily unavailable"), "{stderr}");
    drop(held.join());
}

#[test]
fn the_tunnel_entry_says_timed_out_when_the_exit_does_not_answer_its_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tunnel.key");
    let (ok, _, stderr) = idlegate(&["keygen", key.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    // An "exit" that accepts legs and never says a word.
    let exit = TcpListener::bind("127.0.0.1:0").unwrap();
    let exit_addr = exit.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = exit.incoming().flatten().collect();
        drop(held);
    });
    let listen = free_port();
    let mut entry = Guard(
        Command::new(IDLEGATE)
            .args(["relay", "--listen", &listen.to_string()])
            .args(["--tunnel", &exit_addr.to_string()])
            .args(["--key", key.to_str().unwrap(), "--heartbeat", "500ms"])
            .args(["--resume-within", "5s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the tunnel entry"),
    );
    let log = Log::of(entry.0.stderr.take().unwrap());
    let app = connect_within(listen, WAIT);
    // A silent exit may be one whose gate is slow: the entry dials again until
    // --resume-within. Each dial's limit: the exit's connect timeout to its target (three
    // heartbeats of 500 ms) and three heartbeats more.
    let line = log.wait_for(|l| l.contains("took the connection within 5s"), WAIT);
    assert!(line.contains("timed out after 3s"), "{line}");
    assert!(!line.contains("temporarily unavailable"), "{line}");
    drop(app);
}

/// Connects to `addr`, retrying until it listens (bounded).
fn connect_within(addr: SocketAddr, limit: Duration) -> TcpStream {
    let until = Instant::now() + limit;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() >= until => panic!("{addr} did not listen: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Kills the child it holds when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child's stderr, line by line, kept for waiting on and for failure messages.
struct Log {
    lines: Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn of(pipe: impl Read + Send + 'static) -> Log {
        let (tx, lines) = mpsc::channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = all.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Log { lines, all }
    }

    /// The first line from now on that `wanted` accepts, within `limit`.
    fn wait_for(&self, wanted: impl Fn(&str) -> bool, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no such line within {limit:?}; the log:\n{}",
                    self.all.lock().unwrap().join("\n")
                ),
            }
        }
    }
}

/// A running `idlegate lab up` of `examples/azure-lb.toml` (4 min scaled to 4 s). Dropping it
/// stops the lab and deletes whatever namespaces of it are left.
struct LabUp {
    name: String,
    child: Guard,
    log: Log,
    /// Read to its end, so that `lab up` never writes to a closed pipe.
    _stdout: Log,
}

impl LabUp {
    fn start(extra: &[&str]) -> LabUp {
        common::require_root();
        let name = common::unique("op");
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/azure-lb.toml");
        let mut child = Guard(
            Command::new(IDLEGATE)
                .args(["lab", "up", "--config"])
                .arg(config)
                .args(["--name", &name])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting idlegate lab up"),
        );
        let log = Log::of(child.0.stderr.take().unwrap());
        let stdout = Log::of(child.0.stdout.take().unwrap());
        // Built first, so that a lab that never gets ready is still taken down.
        let lab = LabUp {
            name,
            child,
            log,
            _stdout: stdout,
        };
        lab._stdout
            .wait_for(|l| l == "ready", Duration::from_secs(30));
        lab
    }

    /// The namespace of `host`.
    fn ns(&self, host: &str) -> String {
        idlegate::lab::namespace(&self.name, host)
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        crate::common::take_lab_down(&mut self.child.0, &self.name);
    }
}

#[test]
fn flows_answers_while_hundreds_of_idle_clients_hold_the_gateways_metrics() {
    let metrics = free_port();
    let lab = LabUp::start(&["--metrics", &metrics.to_string()]);
    let _idle = idle_clients(metrics, IDLE_CLIENTS);

    // The operator's command is not held up by anyone who can reach the metrics address...
    let (ok, stdout, stderr) = idlegate(&["flows", "--lab", &lab.name, "--json"]);
    assert!(ok, "flows failed: {stderr}");
    assert_eq!(stdout.trim(), "[]", "no flows yet");
    // ...and neither is a scrape.
    let answer = http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert!(
        answer.contains("idlegate_flows_created_total 0"),
        "{answer}"
    );

    // The gateway's metrics speak the same HTTP as the relay's.
    let simple = http(metrics, b"GET /metrics\r\n");
    assert_eq!(status(&simple), "HTTP/1.1 400 Bad Request", "{simple}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    big.resize(200 * 1024, b'a');
    let answer = http(metrics, &big);
    assert_eq!(
        status(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{answer}"
    );
}

#[test]
fn a_forced_expiry_is_logged_as_forced_with_the_flows_true_idle_time() {
    let lab = LabUp::start(&[]);
    // A server on port 7000 in both members (rule "app"), and a client in the internet host.
    let (accepted, got) = mpsc::channel();
    for vm in ["vm1", "vm2"] {
        let accepted = accepted.clone();
        let listener = idlegate::sys::netns::spawn_in(&lab.ns(vm), || {
            TcpListener::bind("0.0.0.0:7000").expect("listening in the member")
        })
        .unwrap()
        .join()
        .unwrap();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut byte = [0u8; 1];
                let _ = conn.read_exact(&mut byte);
                let _ = accepted.send(conn);
            }
        });
    }
    let client = idlegate::sys::netns::spawn_in(&lab.ns("internet"), || {
        let mut s = TcpStream::connect_timeout(&"203.0.113.10:7000".parse().unwrap(), WAIT)
            .expect("connecting through the frontend");
        s.write_all(b"a").unwrap();
        s
    })
    .unwrap()
    .join()
    .unwrap();
    let _server = got
        .recv_timeout(WAIT)
        .expect("a member got the client's byte");
    let created = Instant::now();
    lab.log.wait_for(|l| l.contains("flow created"), WAIT);

    let (ok, stdout, stderr) = idlegate(&["flows", "expire", "--lab", &lab.name, "--all"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "expired 1 flow(s)");
    let idle_at_most = created.elapsed().as_secs_f64();
    let line = lab.log.wait_for(|l| l.contains("flow expired"), WAIT);
    assert!(line.contains("on request (flows expire)"), "{line}");
    let idle: f64 = line
        .split_once("after ")
        .and_then(|(_, rest)| rest.split_once("s idle"))
        .and_then(|(secs, _)| secs.parse().ok())
        .unwrap_or_else(|| panic!("no idle time in {line:?}"));
    assert!(
        idle <= idle_at_most + 0.1,
        "idle {idle} s, but the flow was created {idle_at_most:.1} s before: {line}"
    );
    assert!(idle < 4.0, "not the 4 s timeout: {line}");
    drop(client);
}
