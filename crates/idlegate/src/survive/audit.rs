//! `idlegate audit`: every TCP connection of the host (or of a network namespace), judged
//! against a box's idle timeout: which will die when idle, and why.
//!
//! Contract: [`audit`] reads the connections through sock_diag netlink (`inet_diag` with
//! `tcp_info`, as `ss` does; not /proc/net/tcp: [`crate::sys::sock_diag`]), their owners from
//! /proc/PID/fd ([`crate::sys::proc`]), the system's
//! keepalive sysctls of the namespace, and, where this process may (root or ptrace access),
//! each socket's own keepalive settings from a duplicate taken with `pidfd_getfd`. Otherwise
//! keepalive is judged from the socket's armed timer (the kernel arms the keepalive timer on a
//! socket with SO_KEEPALIVE whenever no retransmission is pending) and its timers are
//! `null`. [`judge`] is the pure verdict: `stalled` (unacknowledged data being retransmitted:
//! the path is probably dead already), `at-risk` (no keepalive, or keepalive slower than the
//! timeout), `safe`. Loopback connections (127.0.0.0/8, ::1, and IPv4-mapped 127.x) never
//! cross a box: they are not judged, only counted ([`Report::loopback_connections`]), in the
//! text, the JSON and the metrics alike. [`metrics`] keeps the audit running and serves it to
//! Prometheus. Judged by a config ([`Basis::Config`]), each connection meets the timeout of the
//! rule its local port and direction name ([`crate::survive::timeouts`]), said in its
//! `judged_by`; the sysctls are judged against the shortest.

pub mod metrics;

use crate::survive::keepalive::{Process, SocketKeepalive};
use crate::survive::timeouts::{Among, Kind, RuleTimeout, Timeouts};
use crate::sys::proc;
use crate::sys::sock_diag::{tcp_connections, TcpConnection, Timer};
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A connection's verdict, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    Stalled,
    AtRisk,
    Safe,
}

impl std::fmt::Display for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Risk::Stalled => "stalled",
            Risk::AtRisk => "at-risk",
            Risk::Safe => "safe",
        })
    }
}

/// The namespace's keepalive sysctls: the timers of sockets that turn keepalive on without
/// setting their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sysctl {
    pub tcp_keepalive_time: u64,
    pub tcp_keepalive_intvl: u64,
    pub tcp_keepalive_probes: u64,
}

impl Sysctl {
    fn read() -> Result<Sysctl> {
        Ok(Sysctl {
            tcp_keepalive_time: proc::sysctl("net.ipv4.tcp_keepalive_time")?,
            tcp_keepalive_intvl: proc::sysctl("net.ipv4.tcp_keepalive_intvl")?,
            tcp_keepalive_probes: proc::sysctl("net.ipv4.tcp_keepalive_probes")?,
        })
    }
}

/// One connection and its verdict (null fields: not known).
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub pid: Option<i32>,
    pub command: Option<String>,
    pub state: &'static str,
    pub keepalive: Option<bool>,
    pub keepalive_idle_s: Option<u64>,
    pub keepalive_interval_s: Option<u64>,
    pub keepalive_count: Option<u32>,
    /// When the next keepalive probe is due, if its timer is armed.
    pub next_probe_s: Option<f64>,
    /// Since the last data sent or received, whichever is later.
    pub idle_s: f64,
    /// Segments sent and not acknowledged.
    pub unacked: u32,
    /// Retransmissions over the connection's life.
    pub retransmits: u32,
    pub verdict: Risk,
    pub reason: String,
    /// The idle timeout it was judged against.
    pub idle_timeout_s: u64,
    /// With a config: the rule whose timeout that is (null: one timeout for all).
    pub judged_by: Option<JudgedBy>,
}

/// The rule of a config a connection was judged by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JudgedBy {
    pub rule: String,
    pub kind: Kind,
    /// How many rules could have carried it; it is judged by the shortest of them.
    pub among: usize,
    /// What those rules are.
    pub of: Among,
    /// `lb_rule "app" (240 s)`, as the text says it.
    pub description: String,
}

/// What the connections are judged against.
#[derive(Debug, Clone)]
pub enum Basis {
    /// One idle timeout for every connection (`--idle-timeout`, `--profile`).
    One(Duration),
    /// A config's rules (`--config`), each connection by the rule it meets.
    Config { path: String, timeouts: Timeouts },
}

impl Basis {
    /// The timeout the system's sysctls must beat: the only one, or the config's shortest.
    fn shortest(&self) -> Duration {
        match self {
            Basis::One(t) => *t,
            Basis::Config { timeouts, .. } => timeouts
                .shortest()
                .map_or(Duration::MAX, |r| r.idle_timeout),
        }
    }

    /// The timeout a connection from `local` to `remote` meets, and the rule it comes from.
    fn for_connection(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> (Duration, Option<JudgedBy>) {
        match self {
            Basis::One(t) => (*t, None),
            Basis::Config { timeouts, .. } => match timeouts.judging(local.port(), remote.port()) {
                Some(m) => (
                    m.rule.idle_timeout,
                    Some(JudgedBy {
                        rule: m.rule.rule.clone(),
                        kind: m.rule.kind,
                        among: m.among,
                        of: m.of,
                        description: m.describe(),
                    }),
                ),
                None => (self.shortest(), None),
            },
        }
    }
}

/// What `idlegate audit` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The timeout the sysctls are judged against: the only one, or a config's shortest.
    pub idle_timeout_s: u64,
    /// With `--config`: its path, null otherwise.
    pub config: Option<String>,
    /// With `--member`: the member of the config this host is, null otherwise.
    pub member: Option<String>,
    /// With `--config` and no `--member`, when the config has several outbound paths: that an
    /// outbound connection is judged by the shortest, and how to say the member.
    pub member_hint: Option<String>,
    /// With `--config`: each TCP rule's effective timeout (empty otherwise).
    pub rules: Vec<RuleTimeout>,
    pub sysctl: Sysctl,
    /// The sysctls against the timeout.
    pub sysctl_verdict: Risk,
    pub sysctl_reason: String,
    pub connections: Vec<Connection>,
    /// Loopback connections seen and not judged: no box sits on loopback.
    pub loopback_connections: usize,
}

/// Whether `addr` is a loopback address: 127.0.0.0/8, ::1, or 127.x mapped into IPv6
/// (`::ffff:127.0.0.1`, what a dual-stack socket shows).
pub fn is_loopback(addr: std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What [`judge`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// None: cannot tell (a retransmission timer hides the keepalive one, and the socket
    /// could not be read).
    pub keepalive: Option<bool>,
    /// The socket's keepalive idle time, if read.
    pub keepalive_idle: Option<Duration>,
    /// When the armed keepalive timer fires, from now.
    pub next_probe: Option<Duration>,
    /// Since the last packet received (what the kernel's keepalive counts from).
    pub since_received: Duration,
    pub unacked: u32,
    /// A retransmission is pending now.
    pub retransmitting: bool,
    pub idle: Duration,
}

/// The verdict for one connection against `timeout`.
pub fn judge(facts: &Facts, timeout: Duration) -> (Risk, String) {
    let t = timeout.as_secs();
    if facts.unacked > 0 && facts.retransmitting {
        return (
            Risk::Stalled,
            format!(
                "{} segment(s) unacknowledged and retransmitting: the path is probably dead already",
                facts.unacked
            ),
        );
    }
    match facts.keepalive {
        Some(true) => {
            let Some(idle) = facts.keepalive_idle else {
                return judge_unknown_timers(facts, timeout);
            };
            if idle < timeout {
                (
                    Risk::Safe,
                    format!(
                        "keepalive probes after {} s, before the {t} s timeout",
                        idle.as_secs()
                    ),
                )
            } else {
                (
                    Risk::AtRisk,
                    format!(
                        "keepalive probes only after {} s: the {t} s timeout comes first",
                        idle.as_secs()
                    ),
                )
            }
        }
        Some(false) => (
            Risk::AtRisk,
            format!(
                "no keepalive: the box forgets it after {t} s idle (idle {:.0} s now)",
                facts.idle.as_secs_f64()
            ),
        ),
        None => (
            Risk::AtRisk,
            "keepalive unknown: a retransmission timer hides it and the socket could not be read"
                .into(),
        ),
    }
}

/// Keepalive is on but its timers could not be read: the armed timer gives only a lower
/// bound on the first probe (the kernel re-arms it when it fires, so it may fire early and
/// wait again), which can prove a socket at risk but never safe.
fn judge_unknown_timers(facts: &Facts, timeout: Duration) -> (Risk, String) {
    let t = timeout.as_secs();
    match facts.next_probe {
        Some(next) if facts.since_received + next >= timeout => (
            Risk::AtRisk,
            format!(
                "keepalive probes no sooner than {} s after the last packet received: the {t} s timeout comes first",
                (facts.since_received + next).as_secs()
            ),
        ),
        _ => (
            Risk::AtRisk,
            "keepalive is on, but its timers cannot be read without privilege (run as root to know)".into(),
        ),
    }
}

/// Judges the system's keepalive sysctls.
fn judge_sysctl(sysctl: &Sysctl, timeout: Duration) -> (Risk, String) {
    let t = timeout.as_secs();
    if sysctl.tcp_keepalive_time < t {
        (
            Risk::Safe,
            format!(
                "a socket with keepalive on and no timers of its own probes after {} s, before the {t} s timeout",
                sysctl.tcp_keepalive_time
            ),
        )
    } else {
        (
            Risk::AtRisk,
            format!(
                "a socket with keepalive on and no timers of its own probes only after {} s, later than the {t} s timeout (`idlegate advise`)",
                sysctl.tcp_keepalive_time
            ),
        )
    }
}

/// Audits the connections of namespace `netns` (this process's if None) against one timeout.
pub fn audit(timeout: Duration, netns: Option<&str>) -> Result<Report> {
    audit_by(&Basis::One(timeout), netns)
}

/// Audits the connections of namespace `netns` (this process's if None) against `basis`.
pub fn audit_by(basis: &Basis, netns: Option<&str>) -> Result<Report> {
    let (sysctl, raw) = match netns {
        Some(ns) => cannot_enter(
            crate::sys::netns::spawn_in(ns, || -> Result<_> {
                Ok((Sysctl::read()?, tcp_connections()?))
            }),
            ns,
        )?
        .join()
        .map_err(|_| anyhow::anyhow!("the audit thread panicked"))??,
        None => (Sysctl::read()?, tcp_connections()?),
    };
    let owners = owners();
    // Inode 0: closed by its program, the kernel only finishing it; no one to warn.
    let (loopback, through): (Vec<_>, Vec<_>) = raw
        .into_iter()
        .filter(|r| r.inode != 0)
        .partition(|r| is_loopback(r.remote.ip()));
    let mut connections: Vec<Connection> = through
        .into_iter()
        .map(|r| connection(r, &owners, basis))
        .collect();
    connections.sort_by(|a, b| {
        (a.verdict, b.idle_s)
            .partial_cmp(&(b.verdict, a.idle_s))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let timeout = basis.shortest();
    let (sysctl_verdict, sysctl_reason) = judge_sysctl(&sysctl, timeout);
    let (config, rules, member, member_hint) = match basis {
        Basis::One(_) => (None, Vec::new(), None, None),
        Basis::Config { path, timeouts } => (
            Some(path.clone()),
            timeouts.rules.clone(),
            timeouts.member.clone(),
            timeouts.member_hint(),
        ),
    };
    Ok(Report {
        idle_timeout_s: timeout.as_secs(),
        config,
        member,
        member_hint,
        rules,
        sysctl,
        sysctl_verdict,
        sysctl_reason,
        connections,
        loopback_connections: loopback.len(),
    })
}

/// A failure to enter namespace `ns` gets what to do: for want of privilege, root (setns(2)
/// into another network namespace needs CAP_SYS_ADMIN); for a name that is not there, where
/// the names are (a usage error: nothing was audited). Any other failure is kept as it is.
fn cannot_enter<T>(entered: Result<T>, ns: &str) -> Result<T> {
    use crate::obs::report::{io_kind as kind, Report, Status};
    match entered {
        Err(e) if kind(&e) == Some(std::io::ErrorKind::PermissionDenied) => Err(e).with_hint(|| {
            format!(
                "entering another network namespace needs CAP_SYS_ADMIN: run the audit as root: sudo idlegate audit --netns {ns}"
            )
        }),
        Err(e) if kind(&e) == Some(std::io::ErrorKind::NotFound) => Err(e)
            .hint(
                "`ip netns list` shows the names (a lab host's namespace is ig-LAB-HOST: \
                 `idlegate lab list`)",
            )
            .status(Status::Usage),
        other => other,
    }
}

/// Socket inode → (pid, its descriptor, command), from every process's descriptors.
fn owners() -> HashMap<u64, (i32, i32, String)> {
    let mut map = HashMap::new();
    for pid in proc::pids() {
        let Ok(sockets) = proc::socket_fds(pid) else {
            continue;
        };
        let mut command = None;
        for (fd, inode) in sockets {
            let command = command.get_or_insert_with(|| proc::comm(pid).unwrap_or_default());
            map.entry(inode).or_insert((pid, fd, command.clone()));
        }
    }
    map
}

/// The socket's own keepalive settings, through a duplicate from its owner, if allowed.
fn read_own(pid: i32, fd: i32, inode: u64) -> Option<SocketKeepalive> {
    let process = Process::open(pid).ok()?;
    let dup = process.duplicate(fd).ok()?;
    // The descriptor may have been closed and reused since /proc was read.
    if crate::sys::file::inode(&dup) != Some(inode) {
        return None;
    }
    SocketKeepalive::read(&dup).ok()
}

fn connection(
    r: TcpConnection,
    owners: &HashMap<u64, (i32, i32, String)>,
    basis: &Basis,
) -> Connection {
    let (timeout, judged_by) = basis.for_connection(r.local, r.remote);
    let owner = owners.get(&r.inode);
    let own = owner.and_then(|&(pid, fd, _)| read_own(pid, fd, r.inode));
    let from_timer = match r.timer {
        Some(Timer::Keepalive(_)) => Some(true),
        None => Some(false),
        _ => None,
    };
    let keepalive = own.map(|k| k.enabled).or(from_timer);
    let info = r.info.as_ref();
    let idle_ms = info.map_or(0, |i| i.last_data_sent_ms.min(i.last_data_recv_ms));
    let idle = Duration::from_millis(u64::from(idle_ms));
    let unacked = info.map_or(0, |i| i.unacked);
    // Retransmitting for real: an RTO has fired and not been recovered (a pending loss-probe
    // or retransmission timer alone, or a zero-window probe, is not that).
    let retransmitting = info.is_some_and(|i| i.retransmits > 0 || i.backoff > 0);
    let since_received = Duration::from_millis(u64::from(
        info.map_or(0, |i| i.last_data_recv_ms.min(i.last_ack_recv_ms)),
    ));
    let facts = Facts {
        keepalive,
        keepalive_idle: own.filter(|k| k.enabled).map(|k| k.idle),
        next_probe: match r.timer {
            Some(Timer::Keepalive(d)) => Some(d),
            _ => None,
        },
        unacked,
        retransmitting,
        idle,
        since_received,
    };
    let (verdict, reason) = judge(&facts, timeout);
    let on = keepalive == Some(true);
    Connection {
        local: r.local,
        remote: r.remote,
        pid: owner.map(|o| o.0),
        // An empty name (the process renamed itself so, or exited before it was read) is no
        // name.
        command: owner.map(|o| o.2.clone()).filter(|c| !c.is_empty()),
        state: r.state.name(),
        keepalive,
        keepalive_idle_s: own.filter(|_| on).map(|k| k.idle.as_secs()),
        keepalive_interval_s: own.filter(|_| on).map(|k| k.interval.as_secs()),
        keepalive_count: own.filter(|_| on).map(|k| k.count),
        next_probe_s: match r.timer {
            Some(Timer::Keepalive(d)) => Some(d.as_secs_f64()),
            _ => None,
        },
        idle_s: f64::from(idle_ms) / 1000.0,
        unacked,
        retransmits: info.map_or(0, |i| i.total_retrans),
        verdict,
        reason,
        idle_timeout_s: timeout.as_secs(),
        judged_by,
    }
}

impl Report {
    /// The table `idlegate audit` prints: the sysctls first, then each connection, worst first.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let s = &self.sysctl;
        let mut out = String::new();
        if let Some(path) = &self.config {
            let whose = self
                .member
                .as_deref()
                .map_or(String::new(), |m| format!(" for member {m}"));
            let _ = writeln!(out, "idle timeouts of {path}{whose}:");
            for r in &self.rules {
                let _ = writeln!(
                    out,
                    "  {} {} s ({})",
                    r.name(),
                    r.idle_timeout.as_secs(),
                    r.reason
                );
            }
        }
        if let Some(hint) = &self.member_hint {
            let _ = writeln!(out, "note: {hint}");
        }
        let shortest = if self.config.is_some() {
            ", the shortest"
        } else {
            ""
        };
        let _ = write!(
            out,
            "idle timeout {} s{shortest}; system keepalive {}/{}/{}: {} ({})\n\n",
            self.idle_timeout_s,
            s.tcp_keepalive_time,
            s.tcp_keepalive_intvl,
            s.tcp_keepalive_probes,
            self.sysctl_verdict,
            self.sysctl_reason
        );
        let _ = writeln!(
            out,
            "{:<8} {:<26} {:<26} {:<11} {:<22} {:<13} {:>7} {:>7} {:>7} {:>7}  REASON",
            "VERDICT",
            "LOCAL",
            "REMOTE",
            "STATE",
            "PROCESS",
            "KEEPALIVE",
            "NEXT",
            "IDLE",
            "UNACKED",
            "RETRANS"
        );
        for c in &self.connections {
            let process = match (c.pid, &c.command) {
                (Some(pid), Some(cmd)) => format!("{pid} {cmd}"),
                _ => "-".into(),
            };
            let keepalive = match (c.keepalive, c.keepalive_idle_s) {
                (Some(true), Some(idle)) => format!(
                    "on {idle}/{}/{}",
                    c.keepalive_interval_s.unwrap_or(0),
                    c.keepalive_count.unwrap_or(0)
                ),
                (Some(true), None) => "on, timers ?".into(),
                (Some(false), _) => "off".into(),
                (None, _) => "?".into(),
            };
            let _ = writeln!(
                out,
                "{:<8} {:<26} {:<26} {:<11} {:<22} {:<13} {:>7} {:>6.1}s {:>7} {:>7}  {}",
                c.verdict.to_string(),
                c.local.to_string(),
                c.remote.to_string(),
                c.state,
                process,
                keepalive,
                c.next_probe_s
                    .map_or("-".to_string(), |s| format!("{s:.0}s")),
                c.idle_s,
                c.unacked,
                c.retransmits,
                match &c.judged_by {
                    Some(by) => format!("{}; judged by {}", c.reason, by.description),
                    None => c.reason.clone(),
                }
            );
        }
        if self.connections.is_empty() {
            out += "(no TCP connections through a box)\n";
        }
        if self.loopback_connections > 0 {
            let _ = writeln!(
                out,
                "not through a box: {} loopback connections, not judged (no box sits on loopback)",
                self.loopback_connections
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: Sysctl = Sysctl {
        tcp_keepalive_time: 7200,
        tcp_keepalive_intvl: 75,
        tcp_keepalive_probes: 9,
    };

    fn facts(
        keepalive: Option<bool>,
        idle_s: Option<u64>,
        unacked: u32,
        retransmitting: bool,
    ) -> Facts {
        Facts {
            keepalive,
            keepalive_idle: idle_s.map(Duration::from_secs),
            next_probe: None,
            since_received: Duration::from_secs(10),
            unacked,
            retransmitting,
            idle: Duration::from_secs(10),
        }
    }

    #[test]
    fn verdicts_against_azures_four_minutes() {
        let t = Duration::from_secs(240);
        let v = |f: Facts| judge(&f, t).0;
        assert_eq!(v(facts(Some(true), Some(120), 0, false)), Risk::Safe);
        assert_eq!(
            v(facts(Some(true), Some(300), 0, false)),
            Risk::AtRisk,
            "slower than the box"
        );
        // On, but its timers unreadable: never called safe on a guess.
        assert_eq!(v(facts(Some(true), None, 0, false)), Risk::AtRisk);
        assert_eq!(v(facts(Some(false), None, 0, false)), Risk::AtRisk);
        assert_eq!(v(facts(None, None, 0, false)), Risk::AtRisk);
        assert_eq!(v(facts(Some(true), Some(120), 2, true)), Risk::Stalled);
        assert_eq!(
            v(facts(Some(false), None, 2, false)),
            Risk::AtRisk,
            "unacked but not yet retransmitting"
        );
    }

    #[test]
    fn the_system_sysctls_are_judged_too() {
        let t = Duration::from_secs(240);
        assert_eq!(judge_sysctl(&LINUX, t).0, Risk::AtRisk);
        let fixed = Sysctl {
            tcp_keepalive_time: 120,
            tcp_keepalive_intvl: 30,
            tcp_keepalive_probes: 8,
        };
        assert_eq!(judge_sysctl(&fixed, t).0, Risk::Safe);
    }

    #[test]
    fn loopback_of_every_form_is_loopback_and_nothing_else_is() {
        for a in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(a.parse().unwrap()), "{a}");
        }
        for a in ["192.0.2.1", "fd00::1", "::ffff:192.0.2.1", "::", "0.0.0.0"] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn stalled_sorts_before_at_risk_before_safe() {
        assert!(Risk::Stalled < Risk::AtRisk && Risk::AtRisk < Risk::Safe);
    }
}
