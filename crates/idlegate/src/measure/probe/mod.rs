//! `idlegate probe`: measure a path's idle timeout, and what it does at expiry, in both
//! directions.
//!
//! Contract: [`run`] connects to `target` again and again. If the far end is `idlegate echo`
//! (it answers the first frame), every check is made; against any other TCP server only the
//! client-to-server ones, and the report names what it could not check. Two rounds of
//! connections, planned by [`search`], each opened together and left idle for their own
//! durations before a test:
//!
//! 1. **Coarse**: client-to-server tests at geometric idle times, until the first dead one.
//! 2. **Fine and behaviour**: client-to-server tests that split the bracket at the resolution;
//!    at the bracket's top plus the resolution, one connection per direction whose failure
//!    says what the box does (reset at expiry, reset on the next packet, silent, ACKed but not
//!    delivered); and one with TCP keepalive at half the lower bound, which must outlive the
//!    timeout if keepalive refreshes this path.
//!
//! A test never waits longer than [`Options::wait`] for an answer; sockets carry a
//! TCP_USER_TIMEOUT just above it, so a silent path never holds one for the kernel's 15 minutes.
//! Everything that happens to the connections is data in the [`Report`]; failing to reach the
//! target at all is an error, and so is a connection to echo that ends in a way echo's
//! protocol does not allow (an `Error` frame, bytes that are not frames, a frame echo never
//! sends at that point, a flood): then nothing was measured, and [`run`] says so rather than
//! reporting a timeout. What a connection holds of echo's frames is bounded by the decoder
//! ([`MAX_BUFFERED`]), and frames are taken as they come, the idle period included.

pub mod html;
mod idle;
mod progress;
pub mod search;
mod text;
pub mod tried;
mod trust;

pub use text::summary;

#[cfg(doc)]
use crate::measure::echo::frame::MAX_BUFFERED;
use crate::measure::echo::frame::{ConnId, Decoder, Frame, LaterOutcome, Report as EchoReport};
use crate::obs::report::Report as _;
use crate::sys::errno::{self, errno_name};
use crate::sys::evidence::{self, Acknowledgement};
use crate::sys::socket::set_keepalive;
use anyhow::{bail, Context, Result};
pub use progress::ProgressTo;
use progress::{Known, Progress, Round};
use search::{Outcome, Phase, Search, Settings};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use tried::{Part, Tried, Way};
pub use trust::{Doubt, DoubtCode};

/// What `idlegate probe` is asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: SocketAddr,
    /// The longest idle time tried.
    pub max: Duration,
    /// The width of the bracket wanted.
    pub resolution: Duration,
    /// How long a test waits for an answer before it calls the path silent.
    pub wait: Duration,
    /// At most this many connections open at once (`None`: as many as the search wants).
    pub connections: Option<usize>,
    /// Where the progress goes.
    pub progress: ProgressTo,
}

/// How much longer each coarse idle time is than the one before: the run takes about
/// `2 × RATIO × T`.
const RATIO: f64 = 1.07;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The payload of a plain (non-echo) test.
const PLAIN_PAYLOAD: &[u8] = b"idlegate probe\n";
/// The sequence number of a client-to-server test's data.
const DATA_SEQ: u32 = 2;
/// TCP_KEEPCNT of the keepalive test.
const KEEPALIVE_PROBES: u32 = 3;

/// What a direction of the path does to an idle connection once the box forgot it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Nothing: the connection still works (no timeout found).
    Alive,
    /// A RST ends the connection, at the moment of expiry or on the next packet.
    Reset,
    /// Packets vanish; nobody is told.
    Silent,
    /// The sender's data is acknowledged but never reaches the far end.
    AckedNotDelivered,
    /// An ICMP error (host unreachable, administratively prohibited...) answers the packet.
    Icmp,
    /// The connection was closed with a FIN while idle: by the far end, or by a proxy on the
    /// way (AWS ALB closes idle connections). Against a server that is not echo, possibly the
    /// server's own idle timeout.
    Closed,
}

/// What one test saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    Alive,
    /// A RST arrived while the connection was idle.
    ResetAtExpiry,
    /// A RST answered the test's packet.
    ResetOnNext,
    Silent,
    AckedNotDelivered,
    /// The far end of a server-to-client test got a RST.
    ServerReset,
    /// An ICMP error reached the client (read through IP_RECVERR): its errno.
    Icmp(i32),
    /// A FIN arrived while the connection was idle.
    Closed,
    /// The client's data reached echo, but echo's confirmation never came back.
    ConfirmationLost,
}

impl Observed {
    fn alive(self) -> bool {
        self == Observed::Alive
    }

    /// Its name in the report's `tried` list.
    fn name(self) -> &'static str {
        match self {
            Observed::Alive => "alive",
            Observed::ResetAtExpiry => "reset-at-expiry",
            Observed::ResetOnNext => "reset-on-next",
            Observed::Silent => "silent",
            Observed::AckedNotDelivered => "acked-not-delivered",
            Observed::ServerReset => "server-reset",
            Observed::Icmp(_) => "icmp",
            Observed::Closed => "closed",
            Observed::ConfirmationLost => "confirmation-lost",
        }
    }

    fn behaviour(self) -> Behaviour {
        match self {
            Observed::Alive => Behaviour::Alive,
            Observed::ResetAtExpiry | Observed::ResetOnNext | Observed::ServerReset => {
                Behaviour::Reset
            }
            Observed::Silent | Observed::ConfirmationLost => Behaviour::Silent,
            Observed::AckedNotDelivered => Behaviour::AckedNotDelivered,
            Observed::Icmp(_) => Behaviour::Icmp,
            Observed::Closed => Behaviour::Closed,
        }
    }

    /// What a failed read or write on the client's socket says.
    fn from_error(e: &io::Error, after_send: bool) -> Observed {
        match e.raw_os_error() {
            Some(errno) if evidence::ICMP_ERRNOS.contains(&errno) => Observed::Icmp(errno),
            Some(errno::ETIMEDOUT) => Observed::Silent,
            _ if after_send => Observed::ResetOnNext,
            _ => Observed::ResetAtExpiry,
        }
    }

    fn detail(self, direction: Direction) -> String {
        if let Observed::Icmp(errno) = self {
            let name = errno_name(&io::Error::from_raw_os_error(errno));
            return format!("an ICMP error reached the client ({name})");
        }
        self.fixed_detail(direction).to_string()
    }

    fn fixed_detail(self, direction: Direction) -> &'static str {
        match (self, direction) {
            (Observed::Icmp(_), _) => "an ICMP error reached the client",
            (Observed::Closed, _) => "the connection was closed (FIN) while idle",
            (Observed::ConfirmationLost, _) => {
                "the client's data arrived, but echo's confirmation never came back"
            }
            (Observed::Alive, _) => "the connection still works",
            (Observed::ResetAtExpiry, _) => "a RST reached the client at the moment of expiry",
            (Observed::ResetOnNext, _) => "the client's next packet was answered with a RST",
            (Observed::ServerReset, _) => "the server's packet was answered with a RST",
            (Observed::Silent, Direction::ClientToServer) => {
                "the client's data was never acknowledged; nobody was told"
            }
            (Observed::Silent, _) => "the server's data never arrived; nobody was told",
            (Observed::AckedNotDelivered, Direction::ClientToServer) => {
                "the client's data was acknowledged but never reached the server"
            }
            (Observed::AckedNotDelivered, Direction::ServerToClient) => {
                "the server's data was acknowledged but never reached the client"
            }
        }
    }
}

/// The idle timeout found: the longest idle survived and the shortest not survived.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bracket {
    pub low: f64,
    /// `None`: no timeout up to the maximum tried.
    pub high: Option<f64>,
}

/// What `idlegate probe` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    /// Whether the far end is `idlegate echo`.
    pub echo: bool,
    pub idle_timeout_s: Bracket,
    /// False when outcomes contradicted each other (flows meeting different timers).
    pub consistent: bool,
    /// False when the result cannot be trusted: `doubts` says why.
    pub trusted: bool,
    /// Each reason the bracket may not be one box's idle timeout (empty when trusted).
    pub doubts: Vec<Doubt>,
    pub client_to_server: Behaviour,
    /// `None` without echo: only echo can send after an idle period.
    pub server_to_client: Option<Behaviour>,
    /// What each direction's failing test saw, in words.
    pub details: Vec<String>,
    /// Whether TCP keepalive at half the timeout kept a connection alive past it; `None` if
    /// there was no timeout to outlive.
    pub keepalive_refreshes: Option<bool>,
    pub connections_used: usize,
    pub duration_s: f64,
    /// Checks not made, and why.
    pub not_checked: Vec<String>,
    /// What went wrong along the way (connections that could not be opened).
    pub warnings: Vec<String>,
    /// Behaviours this system cannot tell apart, and why (empty on Linux): evidence the probe's
    /// own system does not give (Windows has no IP_RECVERR for TCP; Wine no SIO_TCP_INFO).
    pub cannot_tell_apart: Vec<String>,
    /// Every test that ended, in the order of the search: each idle time tried, per direction.
    pub tried: Vec<Tried>,
}

/// Which way a test sends after the idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// One test: its direction, idle time and whether the client socket has keepalive.
#[derive(Debug, Clone, Copy)]
struct Test {
    direction: Direction,
    idle: Duration,
    keepalive: Option<Duration>,
}

/// A connection ready for its test: named, its idle period begun.
struct Armed {
    test: Test,
    /// Whether the far end is echo (else a plain server: only TCP's acknowledgement counts).
    echo: bool,
    stream: TcpStream,
    decoder: Decoder,
    id: ConnId,
    idle_since: Instant,
    /// Echo's delayed reply, if it came during the idle period (clocks that disagree).
    early_reply: bool,
}

/// Why a test measured nothing: its connection broke echo's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Broken(String);

/// What one test gives: what it saw, or why it saw nothing that counts.
type Seen = Result<Observed, Broken>;

/// A probe in progress.
struct Probe {
    options: Options,
    run: u64,
    echo: bool,
    next_conn: u32,
    used: usize,
    /// Where progress lines go.
    progress: Progress,
    /// What each direction's timing tests showed so far (client to server, server to
    /// client).
    known: (Known, Known),
    /// The shortest idle time the search tries.
    shortest: Duration,
    /// Behaviour tests past the bracket that survived in a direction that had failed
    /// shorter: which way, how long idle.
    beyond_survived: Vec<(&'static str, Duration)>,
    warnings: Vec<String>,
    /// Set once a connection broke echo's protocol: the probe ends without a report.
    broken: Option<String>,
    /// Whether ICMP errors fail the probe's sockets (IP_RECVERR); `None` before a connection.
    icmp_errors: Option<bool>,
    /// Whether this system says what TCP acknowledged (TCP_INFO, SIO_TCP_INFO).
    acknowledgements: bool,
    /// Every test that ended so far.
    tried: Vec<Tried>,
}

/// Runs a probe against `options.target` and returns what it found.
pub fn run(options: &Options) -> Result<Report> {
    let started = Instant::now();
    let mut probe = Probe {
        options: options.clone(),
        run: run_id(),
        echo: false,
        next_conn: 0,
        used: 0,
        progress: Progress::new(options.progress, started),
        known: Default::default(),
        shortest: Duration::ZERO,
        beyond_survived: Vec::new(),
        warnings: Vec::new(),
        broken: None,
        icmp_errors: None,
        acknowledgements: true,
        tried: Vec::new(),
    };
    probe.echo = probe
        .detect_echo()
        .with_context(|| format!("reaching {}", options.target))?;
    if !probe.echo && !probe.acknowledgements {
        return Err(anyhow::anyhow!(
            "cannot measure {}: it is not idlegate echo, and this system does not say what TCP acknowledged (no TCP_INFO or SIO_TCP_INFO), so a live connection cannot be told from a silent path",
            options.target
        ))
        .hint("run `idlegate echo` at the far end, or probe from a system that has SIO_TCP_INFO (Windows 10 1703 or later) or from Linux");
    }
    // Each idle time takes two connections when echo answers, one otherwise; a few more go
    // to the behaviour and keepalive tests.
    let per_idle = if probe.echo { 2 } else { 1 };
    let settings = Settings {
        first: (options.resolution * 2).max(Duration::from_secs(1)),
        max: options.max,
        ratio: RATIO,
        resolution: options.resolution,
        budget: options
            .connections
            .map_or(usize::MAX, |n| (n.saturating_sub(4) / per_idle).max(2)),
    };
    probe.shortest = settings.first;
    let mut search = Search::new(settings);
    let client = |idle| Test {
        direction: Direction::ClientToServer,
        idle,
        keepalive: None,
    };
    // Each idle time is tried in both directions when echo can send: a box may forget the
    // flow for one direction only (Linux conntrack's loose pickup lets the client's packets
    // back in, never the server's).
    let echo = probe.echo;
    let both_ways = |idle| {
        let server = Test {
            direction: Direction::ServerToClient,
            ..client(idle)
        };
        if echo {
            vec![client(idle), server]
        } else {
            vec![client(idle)]
        }
    };
    // Round 1: coarse.
    let tests: Vec<Test> = search.round().into_iter().flat_map(both_ways).collect();
    let coarse = probe.round(&tests, Round::Coarse, None)?;
    probe.note(&coarse, |_| Part::Coarse);
    record(&mut search, &coarse, per_idle);
    search.end_round();
    let verdict = search.bracket();
    let mut details = Vec::new();
    let mut not_checked = Vec::new();
    if !probe.echo {
        not_checked.push(
            "server to client, and data acknowledged but not delivered: the server is not idlegate echo"
                .to_string(),
        );
    }
    let Some(high) = verdict.high else {
        return Ok(probe.report(
            &search,
            Behaviour::Alive,
            probe.echo.then_some(Behaviour::Alive),
            (details, not_checked),
            None,
            started,
        ));
    };
    // Round 2: behaviour and keepalive (armed first: if the box takes few connections, these
    // matter most), then the fine split of the bracket.
    let beyond = high + options.resolution;
    let mut tests = both_ways(beyond);
    let every = Duration::from_secs((verdict.low.as_secs() / 2).max(1));
    tests.push(Test {
        direction: Direction::ClientToServer,
        idle: beyond,
        keepalive: Some(every),
    });
    if search.phase() == Phase::Fine {
        tests.extend(search.round().into_iter().flat_map(both_ways));
    }
    let second = match probe.round(&tests, Round::Fine, Some(high)) {
        Ok(second) => second,
        Err(e) if probe.broken.is_some() => return Err(e),
        Err(e) => {
            probe.warnings.push(format!(
                "the second round could not start ({e:#}): the bracket is the coarse round's"
            ));
            Vec::new()
        }
    };
    probe.note(&second, |t| match (t.keepalive, t.idle < beyond) {
        (Some(_), _) => Part::Keepalive,
        (None, true) => Part::Fine,
        (None, false) => Part::Behaviour,
    });
    let (fine, behaviour): (Vec<_>, Vec<_>) =
        second.into_iter().partition(|(t, _)| t.idle < beyond);
    record(&mut search, &fine, per_idle);
    search.end_round();
    // Until the behaviour tests say otherwise: what the coarse round's first failures saw.
    let first_dead = |direction| {
        coarse
            .iter()
            .find(|(t, s)| t.direction == direction && !s.alive())
            .map(|(_, s)| s.behaviour())
    };
    let mut c2s = first_dead(Direction::ClientToServer).unwrap_or(Behaviour::Alive);
    let mut s2c = if probe.echo {
        first_dead(Direction::ServerToClient).or(Some(Behaviour::Alive))
    } else {
        None
    };
    let mut keepalive = None;
    for (test, seen) in &behaviour {
        match (test.keepalive, test.direction) {
            (Some(_), _) => keepalive = Some(seen.alive()),
            (None, direction) => {
                let (side, known) = match direction {
                    Direction::ClientToServer => {
                        c2s = seen.behaviour();
                        ("client to server", probe.known.0)
                    }
                    Direction::ServerToClient => {
                        s2c = Some(seen.behaviour());
                        ("server to client", probe.known.1)
                    }
                };
                if seen.alive() && known.failed.is_some_and(|f| f < test.idle) {
                    probe.beyond_survived.push((side, test.idle));
                }
                details.push(format!("{side}: {}", seen.detail(direction)));
            }
        }
    }
    Ok(probe.report(
        &search,
        c2s,
        s2c,
        (details, not_checked),
        keepalive,
        started,
    ))
}

impl Probe {
    /// Adds what a round's tests saw to the report's `tried` list, each in its `part`.
    fn note(&mut self, seen: &[(Test, Observed)], part: impl Fn(&Test) -> Part) {
        self.tried.extend(seen.iter().map(|(t, s)| Tried {
            direction: match t.direction {
                Direction::ClientToServer => Way::ClientToServer,
                Direction::ServerToClient => Way::ServerToClient,
            },
            idle_s: t.idle.as_secs_f64(),
            keepalive_s: t.keepalive.map(|k| k.as_secs_f64()),
            part: part(t),
            alive: s.alive(),
            seen: s.name(),
        }));
    }

    fn report(
        &self,
        search: &Search,
        c2s: Behaviour,
        s2c: Option<Behaviour>,
        (details, not_checked): (Vec<String>, Vec<String>),
        keepalive: Option<bool>,
        started: Instant,
    ) -> Report {
        self.progress.done();
        let v = search.bracket();
        let doubts = trust::doubts(
            v.low,
            v.high,
            v.consistent,
            self.shortest,
            &self.beyond_survived,
        );
        Report {
            trusted: doubts.is_empty(),
            doubts,
            target: self.options.target.to_string(),
            echo: self.echo,
            idle_timeout_s: Bracket {
                low: v.low.as_secs_f64(),
                high: v.high.map(|h| h.as_secs_f64()),
            },
            consistent: v.consistent,
            client_to_server: c2s,
            server_to_client: s2c,
            details,
            keepalive_refreshes: keepalive,
            connections_used: self.used,
            duration_s: started.elapsed().as_secs_f64(),
            not_checked,
            warnings: self.warnings.clone(),
            cannot_tell_apart: self.cannot_tell_apart(),
            tried: self.tried.clone(),
        }
    }

    /// What this system's missing evidence leaves undecided, in words.
    fn cannot_tell_apart(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.icmp_errors == Some(false) {
            out.push(
                "silent and icmp: this system has no IP_RECVERR for TCP, so an ICMP error that answers the probe's packets reads as silence".to_string(),
            );
        }
        if !self.acknowledgements && self.echo {
            out.push(
                "silent and acked-not-delivered, client to server: this system does not say what TCP acknowledged (no SIO_TCP_INFO), so data a box acknowledged and dropped reads as silence".to_string(),
            );
        }
        out
    }

    fn next_id(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId {
            run: self.run,
            conn: self.next_conn,
        }
    }

    /// Whether the target speaks the echo protocol: it answers `hello` within the wait.
    fn detect_echo(&mut self) -> Result<bool> {
        let id = self.next_id();
        let mut stream = self.connect(None)?;
        self.used += 1;
        if evidence::acknowledgement(&stream) == Acknowledgement::Unknown {
            self.acknowledgements = false;
        }
        stream.write_all(&Frame::Hello(id).encode())?;
        let mut decoder = Decoder::default();
        match read_frame(
            &mut stream,
            &mut decoder,
            Instant::now() + self.options.wait,
        ) {
            Ok(Some(Frame::Welcome(got))) if got == id => Ok(true),
            // Echo, refusing (full, or this probe's hello broke its protocol): nothing can be
            // measured, and the target is no plain server either.
            Ok(Some(Frame::Error(why))) => Err(anyhow::anyhow!("echo refused the probe: {why}"))
                .hint("nothing was measured; try again when echo has room (see its log)"),
            _ => Ok(false),
        }
    }

    /// A connected client socket, with TCP_USER_TIMEOUT (or TCP_MAXRT) and the test's
    /// keepalive; ICMP errors fail it where the system allows (IP_RECVERR).
    fn connect(&mut self, keepalive: Option<Duration>) -> Result<TcpStream> {
        let target = self.options.target;
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_tcp_nodelay(true)?;
        // Unanswered data gives up just after the wait; with keepalive, not before the kernel
        // has sent all its probes (TCP_USER_TIMEOUT would cut them short).
        let user_timeout = match keepalive {
            Some(every) => every * (KEEPALIVE_PROBES + 2),
            None => self.options.wait + Duration::from_secs(1),
        };
        // Where refused (Wine), the probe's own waits still bound every test.
        if !evidence::limit_unanswered(&socket, user_timeout)? {
            tracing::debug!("probe: this system refuses a limit on retransmissions");
        }
        // ICMP errors fail the socket at once instead of being retried away (ip(7)).
        let icmp = evidence::report_icmp_errors(&socket, target.is_ipv6())
            .context("setting IP_RECVERR")?;
        self.icmp_errors = Some(self.icmp_errors.unwrap_or(true) && icmp);
        if let Some(every) = keepalive {
            // On Linux every option must take (an error otherwise); on Windows the count is
            // tried on its own where the system takes it (Windows 10 1703 and later): Wine
            // refuses TCP_KEEPCNT, and Windows' own count (10) only makes a dead connection
            // end later.
            let not_taken = set_keepalive(&socket, every, every, KEEPALIVE_PROBES, user_timeout)?;
            for n in not_taken {
                tracing::debug!("probe: this system did not take {}: {}", n.option, n.error);
            }
        }
        socket
            .connect_timeout(&target.into(), CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {target}"))?;
        Ok(socket.into())
    }

    /// Opens a connection for `test`, names it to echo, and for a server-to-client test asks
    /// echo to send after the idle time. The idle period begins with the last answer.
    fn arm(&mut self, test: Test) -> Result<Armed> {
        let id = self.next_id();
        let mut stream = self.connect(test.keepalive)?;
        self.used += 1;
        let mut decoder = Decoder::default();
        let deadline = Instant::now() + self.options.wait;
        if self.echo {
            stream.write_all(&Frame::Hello(id).encode())?;
            expect(&mut stream, &mut decoder, deadline, Frame::Welcome(id))?;
            if test.direction == Direction::ServerToClient {
                let delay_ms = u32::try_from(test.idle.as_millis()).unwrap_or(u32::MAX);
                stream.write_all(&Frame::Later { seq: 1, delay_ms }.encode())?;
                expect(
                    &mut stream,
                    &mut decoder,
                    deadline,
                    Frame::Received { seq: 1 },
                )?;
            }
        }
        Ok(Armed {
            test,
            echo: self.echo,
            stream,
            decoder,
            id,
            idle_since: Instant::now(),
            early_reply: false,
        })
    }

    /// Arms every test, runs them on their own threads, and returns what each saw, in the
    /// order of `tests`. In the coarse round, tests not yet made when one fails are abandoned
    /// (and left out). The progress counts the timing tests: no keepalive, and in the fine
    /// round under `top` (the coarse round's first failure; the behaviour tests are beyond).
    fn round(
        &mut self,
        tests: &[Test],
        round: Round,
        top: Option<Duration>,
    ) -> Result<Vec<(Test, Observed)>> {
        let stop_at_first_dead = round == Round::Coarse;
        let mut armed = Vec::new();
        for &test in tests {
            match self.arm(test) {
                Ok(a) => armed.push(a),
                // The box (or the far end) takes no more connections, e.g. a NAT out of SNAT
                // ports: go on with those open, and say so.
                Err(e) if !armed.is_empty() => {
                    self.warnings.push(format!(
                        "only {} of {} connections of a round could be opened ({e:#}): the longest idle times were not tried",
                        armed.len(),
                        tests.len()
                    ));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let tests = &tests[..armed.len()];
        let ids: Vec<ConnId> = armed.iter().map(|a| a.id).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        for (i, a) in armed.into_iter().enumerate() {
            let (tx, flag, wait) = (tx.clone(), stop.clone(), self.options.wait);
            std::thread::Builder::new()
                .name(format!("probe {}", a.id.conn))
                .spawn(move || {
                    let seen: Option<Seen> = idle::test(a, wait, &flag);
                    let _ = tx.send((i, seen));
                })
                .map_err(|e| {
                    // Let the tests already running go.
                    stop.store(true, Ordering::Relaxed);
                    anyhow::anyhow!("starting a test thread: {e}")
                })?;
        }
        drop(tx);
        let mut seen: Vec<Option<Observed>> = vec![None; tests.len()];
        let mut broken = None;
        let ends = Instant::now()
            + tests.iter().map(|t| t.idle).max().unwrap_or_default()
            + self.options.wait;
        // What the progress shows: each direction's bracket, narrowed by the timing tests.
        let timing = |t: &Test| t.keepalive.is_none() && top.is_none_or(|top| t.idle < top);
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok((i, Some(Err(Broken(why))))) => {
                    // Nothing that counts was measured: end the round and the probe.
                    tracing::debug!("probe: connection {}: {why}", ids[i].conn);
                    broken.get_or_insert_with(|| {
                        format!(
                            "connection {} to echo broke its protocol: {why}",
                            ids[i].conn
                        )
                    });
                    stop.store(true, Ordering::Relaxed);
                }
                Ok((i, Some(Ok(observed)))) => {
                    seen[i] = Some(observed);
                    let t = &tests[i];
                    tracing::debug!(
                        "probe: connection {} ({:?}, idle {:?}, keepalive {:?}): {observed:?}",
                        ids[i].conn,
                        t.direction,
                        t.idle,
                        t.keepalive
                    );
                    if timing(t) {
                        let known = match t.direction {
                            Direction::ClientToServer => &mut self.known.0,
                            Direction::ServerToClient => &mut self.known.1,
                        };
                        known.saw(t.idle, observed.alive());
                    }
                    if stop_at_first_dead && !observed.alive() {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Ok((_, None)) => {} // abandoned
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let s2c = self.echo.then_some(&self.known.1);
            self.progress.show(round, &self.known.0, s2c, ends);
        }
        if let Some(why) = broken {
            self.progress.done();
            self.broken = Some(why.clone());
            return Err(anyhow::anyhow!(
                "could not measure {}: {why}",
                self.options.target
            ))
            .hint("nothing was measured; is the target a current idlegate echo, and the only thing answering at that address?");
        }
        let mut out = Vec::new();
        for (i, s) in seen.into_iter().enumerate() {
            if let Some(s) = s {
                let s = self.echo_side(tests[i], ids[i], s)?;
                out.push((tests[i], s));
            }
        }
        out.sort_by_key(|(t, _)| t.idle);
        Ok(out)
    }

    /// Completes what the client saw with echo's side, asked over a fresh connection: a
    /// server-to-client test that heard nothing (did echo's reply leave, or did echo get a
    /// RST?), and data acknowledged without echo's confirmation (did it arrive?).
    fn echo_side(&mut self, test: Test, id: ConnId, seen: Observed) -> Result<Observed> {
        if !self.echo {
            return Ok(seen);
        }
        let wait = self.options.wait;
        let needs_echo = matches!(
            (test.direction, seen),
            (Direction::ServerToClient, Observed::Silent)
                | (Direction::ClientToServer, Observed::AckedNotDelivered)
        );
        if !needs_echo {
            return Ok(seen);
        }
        self.used += 1;
        let report = match echo_status(self.options.target, id, wait) {
            Ok(report) => report,
            Err(e) => {
                // What the client saw stands; say why it is not completed.
                self.warnings.push(format!(
                    "echo could not be asked about connection {}: {e:#}",
                    id.conn
                ));
                return Ok(seen);
            }
        };
        Ok(match (test.direction, report) {
            (Direction::ServerToClient, Some(r)) if matches!(r.later, LaterOutcome::Failed(_)) => {
                Observed::ServerReset
            }
            // Acknowledged on echo's side and never seen by the client: taken in by the box.
            (Direction::ServerToClient, Some(r)) if r.later == LaterOutcome::Acknowledged => {
                Observed::AckedNotDelivered
            }
            // It arrived; only echo's confirmation was lost on the way back.
            (Direction::ClientToServer, Some(r)) if r.last_received == Some(DATA_SEQ) => {
                Observed::ConfirmationLost
            }
            _ => seen,
        })
    }
}

/// Records a round's outcomes: an idle time is survived only if every test of it (one per
/// direction: `per_idle`) survived. An idle time the round ended before testing both ways
/// (the coarse round stops at its first dead connection, and a test due at a longer idle time
/// may already have run in one direction) is not recorded as survived: one direction alive
/// says nothing of the other, which may already have died at a shorter idle time. A dead test
/// is recorded whatever the rest did.
fn record(search: &mut Search, seen: &[(Test, Observed)], per_idle: usize) {
    let mut i = 0;
    while i < seen.len() {
        let idle = seen[i].0.idle;
        let same = seen[i..].iter().take_while(|(t, _)| t.idle == idle);
        let tested = same.clone().count();
        let alive = same.clone().all(|(_, s)| s.alive());
        i += tested;
        if alive && tested < per_idle {
            continue;
        }
        search.record(Outcome { idle, alive });
    }
}

/// A run id: the time and the process, so two probes against one echo never mix.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 48)
}

/// Reads until a whole frame, EOF (`None`) or `deadline` (an error of kind `TimedOut`). Bytes
/// that are not frames, or more than the decoder holds, are an error of kind `InvalidData`.
fn read_frame(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    deadline: Instant,
) -> io::Result<Option<Frame>> {
    let mut buf = [0u8; 512];
    loop {
        if let Some(frame) = decoder.decode().map_err(invalid)? {
            return Ok(Some(frame));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => decoder.feed(&buf[..n]).map_err(invalid)?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn invalid(e: crate::measure::echo::frame::ProtocolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads the next frame and fails unless it is `want`.
fn expect(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    deadline: Instant,
    want: Frame,
) -> Result<()> {
    match read_frame(stream, decoder, deadline) {
        Ok(Some(got)) if got == want => Ok(()),
        Ok(Some(Frame::Error(why))) => bail!("echo refused the probe: {why}"),
        Ok(Some(other)) => bail!("echo answered {other:?}, expected {want:?}"),
        Ok(None) => bail!(
            "echo closed the connection instead of answering {}",
            want.kind_name()
        ),
        Err(e) => Err(e).context("waiting for echo"),
    }
}

/// Asks echo, over a fresh connection, what became of its side of `id`.
pub fn echo_status(target: SocketAddr, id: ConnId, wait: Duration) -> Result<Option<EchoReport>> {
    let mut stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    stream.write_all(&Frame::Status(id).encode())?;
    let mut decoder = Decoder::default();
    match read_frame(&mut stream, &mut decoder, Instant::now() + wait)? {
        Some(Frame::Report(report)) => Ok(report),
        other => bail!("echo answered {other:?} to a status request"),
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    fn seen(direction: Direction, secs: u64, observed: Observed) -> (Test, Observed) {
        let test = Test {
            direction,
            idle: Duration::from_secs(secs),
            keepalive: None,
        };
        (test, observed)
    }

    #[test]
    fn an_idle_time_tested_one_way_only_after_the_round_ended_is_not_survived() {
        // Loose pickup (Linux conntrack): the server's direction dies at 8 s; the client's
        // test at 9 s had already run when the coarse round stopped, its server's had not.
        let mut search = Search::new(Settings {
            first: Duration::from_secs(2),
            max: Duration::from_secs(60),
            ratio: 1.07,
            resolution: Duration::from_secs(1),
            budget: usize::MAX,
        });
        let (c, s) = (Direction::ClientToServer, Direction::ServerToClient);
        let round = [
            seen(c, 7, Observed::Alive),
            seen(s, 7, Observed::Alive),
            seen(c, 8, Observed::Alive),
            seen(s, 8, Observed::ServerReset),
            seen(c, 9, Observed::Alive),
        ];
        record(&mut search, &round, 2);
        let b = search.bracket();
        assert!(b.consistent, "{b:?}");
        assert_eq!(
            (b.low, b.high),
            (Duration::from_secs(7), Some(Duration::from_secs(8)))
        );
        // One way only, and dead: recorded.
        record(&mut search, &[seen(s, 10, Observed::ServerReset)], 2);
        assert_eq!(search.outcomes().len(), 3);
    }
}
