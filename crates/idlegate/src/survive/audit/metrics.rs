//! `idlegate audit --metrics ADDR`: the audit kept running, its findings served to Prometheus.
//!
//! Contract: [`Summary::of`] boils one [`Report`] down to what an operator alerts on, with
//! bounded labels: connections by verdict, and by owning command and verdict for at most
//! [`MAX_COMMANDS`] commands (names cut to [`MAX_COMMAND_BYTES`]; the rest folded into
//! `command="other"` ([`OTHER`]), a connection with no owner found, or whose owner's name
//! could not be read or is empty, counted as `"unknown"` ([`UNKNOWN`])), the longest idle
//! time by verdict and by command and verdict (what the at-risk alert compares with the box's
//! timeout: a connection at risk is in danger only once it idles), the system keepalive
//! sysctls and their verdict.
//! [`render`] writes the exposition ([`crate::obs::prometheus`]). [`Exporter::start`] binds
//! the listener and takes a first scan, either failing refuses to start; [`Exporter::run`]
//! then scans every interval on a thread of its own and serves scrapes through
//! [`crate::obs::scrape`] on the calling one. A scrape renders the last snapshot and never
//! waits for a scan; a scan that fails is counted and logged and the last good values stay.
//! A [`Stopper`] (SIGINT, SIGTERM) ends both threads.

use super::{audit, Report, Risk, Sysctl};
use crate::obs::prometheus::{Kind, Writer};
use crate::obs::scrape::Server;
use crate::LOG_TARGET as LOG;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Commands named per scan at most; the others are summed as [`OTHER`].
pub const MAX_COMMANDS: usize = 50;
/// A command label's longest value in bytes: what Linux keeps of a name in /proc/PID/comm
/// (`TASK_COMM_LEN` 16, with its NUL).
pub const MAX_COMMAND_BYTES: usize = 15;
/// The command label of the connections of the commands past [`MAX_COMMANDS`].
pub const OTHER: &str = "other";
/// The command label of a connection whose owning process was not found.
pub const UNKNOWN: &str = "unknown";
/// The shortest scan interval: a scan reads every process's descriptors.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The scan interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// The verdicts in the order their samples are written.
const VERDICTS: [Risk; 3] = [Risk::Stalled, Risk::AtRisk, Risk::Safe];

/// Counts (or seconds) by verdict, indexed as [`VERDICTS`].
type ByVerdict<T> = [T; 3];

/// One command's connections by verdict and the longest idle time among them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerCommand {
    pub connections: ByVerdict<u64>,
    /// Seconds; 0 for a verdict without connections.
    pub max_idle: ByVerdict<f64>,
}

impl PerCommand {
    fn add(&mut self, verdict: usize, idle_s: f64) {
        self.connections[verdict] += 1;
        self.max_idle[verdict] = self.max_idle[verdict].max(idle_s);
    }

    fn fold(&mut self, other: &PerCommand) {
        for i in 0..VERDICTS.len() {
            self.connections[i] += other.connections[i];
            self.max_idle[i] = self.max_idle[i].max(other.max_idle[i]);
        }
    }
}

fn slot(verdict: Risk) -> usize {
    match verdict {
        Risk::Stalled => 0,
        Risk::AtRisk => 1,
        Risk::Safe => 2,
    }
}

/// What one scan found, as the metrics show it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub idle_timeout: Duration,
    pub sysctl: Sysctl,
    pub sysctl_verdict: Risk,
    pub connections: ByVerdict<u64>,
    /// Loopback connections, not judged (no box sits on loopback).
    pub loopback: u64,
    /// The longest idle time by verdict, in seconds (0 without connections).
    pub max_idle: ByVerdict<f64>,
    /// Connections by command (cut to [`MAX_COMMAND_BYTES`]), at most [`MAX_COMMANDS`] of
    /// them and then [`OTHER`] if there were more; sorted by name, [`OTHER`] last.
    pub by_command: Vec<(String, PerCommand)>,
    /// Distinct command labels found, before the cap ([`UNKNOWN`] counted as one).
    pub commands: usize,
}

impl Summary {
    /// The summary of `report`. The commands kept by name are those with the most stalled
    /// connections, then at-risk, then in all (then by name): the ones an alert is about.
    pub fn of(report: &Report) -> Summary {
        let mut connections = [0u64; 3];
        let mut max_idle = [0f64; 3];
        let mut commands: HashMap<String, PerCommand> = HashMap::new();
        for c in &report.connections {
            let i = slot(c.verdict);
            connections[i] += 1;
            max_idle[i] = max_idle[i].max(c.idle_s);
            let name = c.command.as_deref().map_or(UNKNOWN, command_label);
            commands
                .entry(name.to_string())
                .or_default()
                .add(i, c.idle_s);
        }
        let found = commands.len();
        let mut ranked: Vec<(String, PerCommand)> = commands.into_iter().collect();
        ranked.sort_by(|(a, ca), (b, cb)| {
            let key = |c: &PerCommand| {
                let n = &c.connections;
                (n[0], n[1], n.iter().sum::<u64>())
            };
            key(cb).cmp(&key(ca)).then_with(|| a.cmp(b))
        });
        let mut other = PerCommand::default();
        for (_, counts) in ranked.iter().skip(MAX_COMMANDS) {
            other.fold(counts);
        }
        ranked.truncate(MAX_COMMANDS);
        ranked.sort_by(|(a, _), (b, _)| a.cmp(b));
        if found > MAX_COMMANDS {
            ranked.push((OTHER.to_string(), other));
        }
        Summary {
            idle_timeout: Duration::from_secs(report.idle_timeout_s),
            sysctl: report.sysctl,
            sysctl_verdict: report.sysctl_verdict,
            connections,
            loopback: u64::try_from(report.loopback_connections).unwrap_or(u64::MAX),
            max_idle,
            by_command: ranked,
            commands: found,
        }
    }
}

/// `name` cut to at most [`MAX_COMMAND_BYTES`] bytes, at a character's boundary; [`UNKNOWN`]
/// if empty (Prometheus takes an empty label for no label).
fn command_label(name: &str) -> &str {
    if name.is_empty() {
        return UNKNOWN;
    }
    let mut end = name.len().min(MAX_COMMAND_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The last good scan and how scanning goes.
#[derive(Debug, Clone)]
pub struct Scans {
    pub last: Summary,
    /// When the last good scan ended.
    pub last_at: SystemTime,
    /// How long the last good scan took.
    pub last_took: Duration,
    /// Scans that succeeded.
    pub scans: u64,
    /// Scans that failed.
    pub errors: u64,
    /// The time from one scan's start to the next's.
    pub interval: Duration,
}

/// The Prometheus text of `scans`, written by [`crate::obs::prometheus`].
pub fn render(scans: &Scans) -> String {
    let s = &scans.last;
    let mut w = Writer::new();
    let mut family = w.family(
        "idlegate_audit_connections",
        Kind::Gauge,
        "TCP connections at the last scan, by verdict against the box's idle timeout: stalled (data unacknowledged, retransmitting), at-risk (no keepalive, or keepalive slower than the timeout), safe.",
    );
    for verdict in VERDICTS {
        family.sample(
            &[("verdict", &verdict.to_string())],
            s.connections[slot(verdict)],
        );
    }
    w.family(
        "idlegate_audit_loopback_connections",
        Kind::Gauge,
        "TCP connections over loopback at the last scan (127.0.0.0/8, ::1, IPv4-mapped 127.x): not judged and in no other series, as no box sits on loopback.",
    )
    .sample(&[], s.loopback);
    let mut family = w.family(
        "idlegate_audit_command_connections",
        Kind::Gauge,
        "TCP connections at the last scan by owning command (/proc/PID/comm; \"unknown\": no owner found; \"other\": the commands past the first 50) and verdict; counts above zero only.",
    );
    for (command, counts) in &s.by_command {
        for verdict in VERDICTS {
            let n = counts.connections[slot(verdict)];
            if n > 0 {
                family.sample(
                    &[("command", command), ("verdict", &verdict.to_string())],
                    n,
                );
            }
        }
    }
    let mut family = w.family(
        "idlegate_audit_command_max_idle_seconds",
        Kind::Gauge,
        "The longest time a connection had sent and received no data, at the last scan, by owning command and verdict (the same series as idlegate_audit_command_connections).",
    );
    for (command, counts) in &s.by_command {
        for verdict in VERDICTS {
            let i = slot(verdict);
            if counts.connections[i] > 0 {
                family.sample_f64(
                    &[("command", command), ("verdict", &verdict.to_string())],
                    counts.max_idle[i],
                );
            }
        }
    }
    w.family(
        "idlegate_audit_commands",
        Kind::Gauge,
        "Distinct command labels at the last scan (\"unknown\" counted as one), before those past the first 50 were folded into command=\"other\".",
    )
    .sample(&[], s.commands as u64);
    let mut family = w.family(
        "idlegate_audit_max_idle_seconds",
        Kind::Gauge,
        "The longest time a connection had sent and received no data, at the last scan, by verdict (0 without connections).",
    );
    for verdict in VERDICTS {
        family.sample_f64(
            &[("verdict", &verdict.to_string())],
            s.max_idle[slot(verdict)],
        );
    }
    w.family(
        "idlegate_audit_idle_timeout_seconds",
        Kind::Gauge,
        "The box's idle timeout the connections are judged against.",
    )
    .sample(&[], s.idle_timeout.as_secs());
    let mut family = w.family(
        "idlegate_audit_system_keepalive_verdict",
        Kind::Gauge,
        "1 for the verdict on the system keepalive settings: would a socket that turns SO_KEEPALIVE on without timers of its own probe before the box's idle timeout (safe) or not (at-risk).",
    );
    for verdict in [Risk::AtRisk, Risk::Safe] {
        family.sample(
            &[("verdict", &verdict.to_string())],
            u64::from(s.sysctl_verdict == verdict),
        );
    }
    w.family(
        "idlegate_audit_system_keepalive_time_seconds",
        Kind::Gauge,
        "net.ipv4.tcp_keepalive_time: idle time before the first keepalive probe.",
    )
    .sample(&[], s.sysctl.tcp_keepalive_time);
    w.family(
        "idlegate_audit_system_keepalive_interval_seconds",
        Kind::Gauge,
        "net.ipv4.tcp_keepalive_intvl: time between keepalive probes.",
    )
    .sample(&[], s.sysctl.tcp_keepalive_intvl);
    w.family(
        "idlegate_audit_system_keepalive_probes",
        Kind::Gauge,
        "net.ipv4.tcp_keepalive_probes: unanswered probes before the connection is dropped.",
    )
    .sample(&[], s.sysctl.tcp_keepalive_probes);
    let at = scans
        .last_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    w.family(
        "idlegate_audit_last_scan_timestamp_seconds",
        Kind::Gauge,
        "When the last successful scan ended, in seconds since the Unix epoch.",
    )
    .sample_f64(&[], at.as_secs_f64());
    w.family(
        "idlegate_audit_scan_interval_seconds",
        Kind::Gauge,
        "The time from one scan's start to the next's (--interval).",
    )
    .sample_f64(&[], scans.interval.as_secs_f64());
    w.family(
        "idlegate_audit_scan_duration_seconds",
        Kind::Gauge,
        "How long the last successful scan took.",
    )
    .sample_f64(&[], scans.last_took.as_secs_f64());
    w.family(
        "idlegate_audit_scans_total",
        Kind::Counter,
        "Scans that succeeded.",
    )
    .sample(&[], scans.scans);
    w.family(
        "idlegate_audit_scan_errors_total",
        Kind::Counter,
        "Scans that failed (the values shown stay the last good scan's).",
    )
    .sample(&[], scans.errors);
    w.finish()
}

/// What to audit, how often, and where to serve it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub idle_timeout: Duration,
    /// The namespace to audit (this process's if None).
    pub netns: Option<String>,
}

/// One scan and how long it took.
fn scan(settings: &Settings) -> Result<(Summary, Duration)> {
    let started = Instant::now();
    let report = audit(settings.idle_timeout, settings.netns.as_deref())?;
    Ok((Summary::of(&report), started.elapsed()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The audit serving its metrics: bound and scanned once, not yet running.
pub struct Exporter {
    server: Server,
    settings: Settings,
    scans: Arc<Mutex<Scans>>,
    stop: Arc<AtomicBool>,
    stop_scan: Sender<()>,
    stopped_scan: Receiver<()>,
}

/// Stops a running [`Exporter`] (from a signal handler's thread, say).
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    stop_scan: Sender<()>,
}

impl Stopper {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        let _ = self.stop_scan.send(());
    }
}

impl Exporter {
    /// Listens on `settings.listen` and takes the first scan. `settings.interval` is at
    /// least [`MIN_INTERVAL`] (the command line checks it).
    pub fn start(settings: Settings) -> Result<Exporter> {
        let server = crate::obs::report::listening(
            Server::bind(settings.listen),
            "--metrics",
            settings.listen,
        )?;
        let (last, last_took) = scan(&settings).context("the first scan")?;
        let (stop_scan, stopped_scan) = mpsc::channel();
        Ok(Exporter {
            server,
            scans: Arc::new(Mutex::new(Scans {
                last,
                last_at: SystemTime::now(),
                last_took,
                scans: 1,
                errors: 0,
                interval: settings.interval,
            })),
            settings,
            stop: Arc::default(),
            stop_scan,
            stopped_scan,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.server.local_addr()
    }

    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
            waker: self.server.waker(),
            stop_scan: self.stop_scan.clone(),
        }
    }

    /// Scans and serves until stopped.
    pub fn run(self) -> Result<()> {
        let Exporter {
            mut server,
            settings,
            scans,
            stop,
            stop_scan,
            stopped_scan,
        } = self;
        let stopper = Stopper {
            stop: stop.clone(),
            waker: server.waker(),
            stop_scan,
        };
        let scanner = {
            let scans = scans.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("audit-scan".into())
                .spawn(move || scan_until_stopped(&settings, &scans, &stop, &stopped_scan))
                .context("starting the scan thread")?
        };
        let served = server.run(&|| stop.load(Ordering::SeqCst), &mut || {
            let snapshot = lock(&scans).clone();
            Some(render(&snapshot))
        });
        stopper.stop();
        let _ = scanner.join();
        served
    }
}

/// Scans every `settings.interval` (from one scan's start to the next) until stopped.
fn scan_until_stopped(
    settings: &Settings,
    scans: &Mutex<Scans>,
    stop: &AtomicBool,
    stopped: &Receiver<()>,
) {
    let mut next = Instant::now() + settings.interval;
    loop {
        match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        next = Instant::now() + settings.interval;
        match scan(settings) {
            Ok((summary, took)) => {
                let mut s = lock(scans);
                s.last = summary;
                s.last_at = SystemTime::now();
                s.last_took = took;
                s.scans += 1;
            }
            Err(e) => {
                lock(scans).errors += 1;
                tracing::warn!(target: LOG, "audit scan failed, the metrics keep the last good scan's values: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survive::audit::Connection;

    fn connection(command: Option<&str>, verdict: Risk, idle_s: f64) -> Connection {
        Connection {
            local: "192.0.2.1:40000".parse().unwrap(),
            remote: "203.0.113.10:443".parse().unwrap(),
            pid: command.map(|_| 42),
            command: command.map(str::to_string),
            state: "ESTABLISHED",
            keepalive: Some(verdict == Risk::Safe),
            keepalive_idle_s: None,
            keepalive_interval_s: None,
            keepalive_count: None,
            next_probe_s: None,
            idle_s,
            unacked: 0,
            retransmits: 0,
            verdict,
            reason: String::new(),
            idle_timeout_s: 240,
            judged_by: None,
        }
    }

    fn report(connections: Vec<Connection>) -> Report {
        Report {
            idle_timeout_s: 240,
            config: None,
            member: None,
            member_hint: None,
            rules: Vec::new(),
            sysctl: Sysctl {
                tcp_keepalive_time: 7200,
                tcp_keepalive_intvl: 75,
                tcp_keepalive_probes: 9,
            },
            sysctl_verdict: Risk::AtRisk,
            sysctl_reason: String::new(),
            connections,
            loopback_connections: 4,
        }
    }

    fn scans(report: &Report) -> Scans {
        Scans {
            last: Summary::of(report),
            last_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_500),
            last_took: Duration::from_millis(12),
            scans: 3,
            errors: 1,
            interval: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_scan_is_shown_as_the_exposition_in_testdata() {
        let report = report(vec![
            connection(Some("curl"), Risk::AtRisk, 120.5),
            connection(Some("curl"), Risk::AtRisk, 7.0),
            connection(Some("curl"), Risk::Safe, 3.25),
            connection(Some("postgres"), Risk::Safe, 600.0),
            connection(None, Risk::Stalled, 30.0),
            connection(Some("a \"quoted\" name"), Risk::AtRisk, 1.0),
            connection(Some("postgres"), Risk::AtRisk, 0.5),
            connection(Some("postgres"), Risk::AtRisk, 2.0),
        ]);
        assert_eq!(
            render(&scans(&report)),
            include_str!("../testdata/audit-metrics.prom")
        );
    }

    #[test]
    fn without_connections_every_verdict_still_shows_zero() {
        let text = render(&scans(&report(Vec::new())));
        for line in [
            "idlegate_audit_connections{verdict=\"stalled\"} 0",
            "idlegate_audit_connections{verdict=\"at-risk\"} 0",
            "idlegate_audit_connections{verdict=\"safe\"} 0",
            "idlegate_audit_max_idle_seconds{verdict=\"stalled\"} 0",
            "idlegate_audit_max_idle_seconds{verdict=\"at-risk\"} 0",
            "idlegate_audit_max_idle_seconds{verdict=\"safe\"} 0",
            "idlegate_audit_commands 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("idlegate_audit_command_connections{"));
        assert!(!text.contains("idlegate_audit_command_max_idle_seconds{"));
    }

    #[test]
    fn past_50_commands_the_rest_are_one_other_series_and_troubled_commands_keep_their_name() {
        let mut connections: Vec<Connection> = (0..60)
            .map(|i| connection(Some(&format!("safe{i:02}")), Risk::Safe, f64::from(i)))
            .collect();
        connections.push(connection(Some("zz-stalled"), Risk::Stalled, 1.0));
        connections.push(connection(Some("zz-at-risk"), Risk::AtRisk, 1.0));
        let summary = Summary::of(&report(connections));
        assert_eq!(summary.commands, 62);
        assert_eq!(summary.by_command.len(), MAX_COMMANDS + 1);
        let names: Vec<&str> = summary.by_command.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"zz-stalled") && names.contains(&"zz-at-risk"));
        assert_eq!(
            summary.by_command.last().unwrap(),
            &(
                OTHER.to_string(),
                PerCommand {
                    connections: [0, 0, 12],
                    max_idle: [0.0, 0.0, 59.0],
                }
            ),
            "the 12 safe commands that did not fit, their longest idle the longest of theirs"
        );
        let total: u64 = summary
            .by_command
            .iter()
            .flat_map(|(_, c)| c.connections)
            .sum();
        assert_eq!(total, 62, "no connection lost in the folding");
        let text = render(&scans(&report(Vec::new())));
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains("command=\"other\"")),
            "no other series without a cap reached"
        );
        let text = render(&Scans {
            last: summary,
            ..scans(&report(Vec::new()))
        });
        for family in [
            "idlegate_audit_command_connections{",
            "idlegate_audit_command_max_idle_seconds{",
        ] {
            let series = text.lines().filter(|l| l.starts_with(family)).count();
            assert_eq!(series, MAX_COMMANDS + 1, "{family}");
        }
    }

    #[test]
    fn a_connection_whose_owner_has_an_empty_name_is_counted_as_unknown() {
        let summary = Summary::of(&report(vec![
            connection(Some(""), Risk::AtRisk, 5.0),
            connection(None, Risk::AtRisk, 9.0),
        ]));
        assert_eq!(
            summary.by_command,
            [(
                UNKNOWN.to_string(),
                PerCommand {
                    connections: [0, 2, 0],
                    max_idle: [0.0, 9.0, 0.0],
                }
            )]
        );
        let text = render(&Scans {
            last: summary,
            ..scans(&report(Vec::new()))
        });
        assert!(!text.contains("command=\"\""), "{text}");
    }

    #[test]
    fn a_metrics_port_in_use_is_refused_with_a_hint() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap();
        let Err(e) = Exporter::start(Settings {
            listen,
            interval: DEFAULT_INTERVAL,
            idle_timeout: Duration::from_secs(240),
            netns: None,
        }) else {
            panic!("a port in use accepted");
        };
        let port = listen.port();
        assert_eq!(
            crate::obs::report::render(&e),
            format!(
                "idlegate: listening for metrics on {listen}: Address already in use (os error 98)\n\
                 hint: another process has port {port}: pick another --metrics port"
            )
        );
    }

    #[test]
    fn command_labels_are_cut_to_15_bytes_at_a_character_boundary() {
        assert_eq!(command_label("postgres"), "postgres");
        assert_eq!(command_label("0123456789abcdefgh"), "0123456789abcde");
        // 'é' is two bytes: 15 bytes would end in its middle, so 14 are kept.
        assert_eq!(command_label("abcdefghijklmné"), "abcdefghijklmn");
        assert_eq!(command_label("abcdefghijklmé"), "abcdefghijklmé");
        let summary = Summary::of(&report(vec![connection(
            Some("0123456789abcdefgh"),
            Risk::Safe,
            1.0,
        )]));
        assert_eq!(summary.by_command[0].0, "0123456789abcde");
        assert_eq!(command_label(""), UNKNOWN);
    }
}
