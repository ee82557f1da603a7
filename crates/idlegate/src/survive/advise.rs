//! `idlegate advise`: the keepalive settings that keep a connection alive through a box, for an
//! operating system and, if asked, a library, each with where it comes from.
//!
//! Contract: pure. [`Advice::new`] derives the timers from the box's idle timeout `T` (as
//! [`Keepalive::for_idle_timeout`]: first probe at T/2, then every T/8, 8 probes, so a dead
//! peer is declared 1.5 T after the last data, and a box that loses one probe still sees
//! another well before `T`). [`Advice::render`] writes them as the chosen system's settings
//! and the chosen library's code; [`Advice::json`] gives the same settings as data (each with
//! its value, unit, where it goes and its source). For Azure's 4 minutes: Linux 120/30/8;
//! Windows KeepAliveTime 120000 ms, KeepAliveInterval 30000 ms, TcpMaxDataRetransmissions 8;
//! macOS net.inet.tcp.keepidle 120000 ms, keepintvl 30000 ms, keepcnt 8. Each system's advice
//! says only what is true there; what it says of a program that never turns keepalive on is
//! that system's fix: on Linux `keepalive --pid` and `run`; on Windows, which has neither,
//! `relay` (with the exact command line for this timeout) kept running as a service; on macOS
//! the kernel's `net.inet.tcp.always_keepalive`.

use crate::survive::keepalive::Keepalive;
use crate::survive::timeouts::{RuleTimeout, Timeouts};
use std::fmt::Write;
use std::time::Duration;

/// The operating system whose settings are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Os {
    Linux,
    Windows,
    Macos,
}

impl Os {
    /// The system this build runs on: `advise`'s default.
    pub const fn this_build() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::Macos
        } else {
            Os::Linux
        }
    }
}

/// Microsoft's pages for what the Windows advice says (SO_KEEPALIVE is off until a program
/// turns it on; the registry values; the per-socket options).
pub mod sources {
    pub const SO_KEEPALIVE: &str =
        "https://learn.microsoft.com/en-us/windows/win32/winsock/so-keepalive";
    pub const KEEPALIVE_TIME: &str = "https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-2000-server/cc957549(v=technet.10)";
    pub const KEEPALIVE_INTERVAL: &str = "https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-2000-server/cc957548(v=technet.10)";
    pub const TCP_MAX_DATA_RETRANSMISSIONS: &str = "https://learn.microsoft.com/en-us/previous-versions/windows/it-pro/windows-2000-server/cc938210(v=technet.10)";
    pub const TCP_SOCKET_OPTIONS: &str =
        "https://learn.microsoft.com/en-us/windows/win32/winsock/ipproto-tcp-socket-options";
    /// Linux: tcp(7), the net.ipv4.tcp_keepalive_* sysctls and the per-socket options.
    pub const LINUX_TCP: &str = "https://man7.org/linux/man-pages/man7/tcp.7.html";
    /// macOS: XNU's tcp(4) (TCP_KEEPALIVE in seconds, its default net.inet.tcp.keepidle;
    /// TCP_KEEPINTVL, TCP_KEEPCNT).
    pub const MACOS_TCP: &str =
        "https://github.com/apple-oss-distributions/xnu/blob/main/bsd/man/man4/tcp.4";
    /// The BSD tcp(4) macOS's stack comes from: net.inet.tcp.keepidle, keepintvl (in
    /// milliseconds) and always_keepalive.
    pub const FREEBSD_TCP: &str = "https://man.freebsd.org/cgi/man.cgi?query=tcp&sektion=4";
}

/// The client library whose code is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Library {
    /// Python requests (urllib3 `socket_options`).
    PythonRequests,
    /// PostgreSQL's libpq and what builds on it (psycopg, psql): connection parameters.
    Psycopg,
    /// The PostgreSQL JDBC driver.
    Jdbc,
    /// Go's net.Dialer.
    Go,
    /// Node.js net sockets.
    Node,
    /// .NET sockets.
    Dotnet,
    /// OpenSSH.
    Ssh,
}

/// What a setting's value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    Seconds,
    Milliseconds,
    Probes,
    Retransmissions,
    /// 1 on, 0 off.
    Switch,
}

/// One setting: its name, value and unit, where it goes, and the public page that says so.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    pub name: String,
    pub value: u64,
    pub unit: Unit,
    /// Where it goes: a sysctl file, the registry, a socket option.
    #[serde(rename = "where")]
    pub place: String,
    pub source: &'static str,
}

/// The settings for one box, system and library.
#[derive(Debug, Clone)]
pub struct Advice {
    /// The box's idle timeout, and what it was taken from.
    pub idle_timeout: Duration,
    pub from: String,
    pub keepalive: Keepalive,
    pub os: Os,
    pub library: Option<Library>,
}

impl Advice {
    pub fn new(idle_timeout: Duration, from: String, os: Os, library: Option<Library>) -> Advice {
        Advice {
            idle_timeout,
            from,
            keepalive: Keepalive::for_idle_timeout(idle_timeout),
            os,
            library,
        }
    }

    /// The advice as text: the timers and why, the system's settings, what to do for a program
    /// that never turns keepalive on, the library's code.
    pub fn render(&self) -> String {
        let k = &self.keepalive;
        let (idle, intvl, count) = (k.idle.as_secs(), k.interval.as_secs(), k.count);
        let mut out = String::new();
        let _ = write!(
            out,
            "Idle timeout {} ({}): first keepalive probe after {idle} s (half of it), then every \
             {intvl} s, {count} probes",
            humantime::format_duration(self.idle_timeout),
            self.from,
        );
        let _ = match self.os {
            Os::Linux => writeln!(
                out,
                "; on Linux a dead peer is found {} s after the last data.\n",
                k.user_timeout().as_secs()
            ),
            Os::Windows => writeln!(
                out,
                " (a per-socket count, TCP_KEEPCNT, needs Windows 10 version 1703 or later; \
                 otherwise Windows sends 10).\n"
            ),
            Os::Macos => writeln!(out, ".\n"),
        };
        out += &self.system();
        out += "\n";
        out += &self.unchangeable_program();
        if let Some(library) = self.library {
            out += "\n";
            out += &self.library(library);
        }
        out
    }

    /// The `idlegate relay` line that gives this keepalive to an unchangeable server's
    /// connections: its clients (or the load balancer's rule) connect to PORT, the relay to
    /// the application on APP_PORT of the same machine.
    pub fn relay_args(&self) -> String {
        let k = &self.keepalive;
        format!(
            "--listen 0.0.0.0:PORT --connect 127.0.0.1:APP_PORT --keepalive {}s,{}s,{}",
            k.idle.as_secs(),
            k.interval.as_secs(),
            k.count
        )
    }

    /// What to do for a program that never sets SO_KEEPALIVE, which the system settings do not
    /// reach.
    fn unchangeable_program(&self) -> String {
        match self.os {
            Os::Windows => format!(
                "Keepalive is off on a socket until the program turns it on (SO_KEEPALIVE): the \
                 registry values above only set its timers and do nothing for a program that \
                 never sets SO_KEEPALIVE. For a program you cannot change, put idlegate's \
                 keepalive relay in front of it on the same machine (its clients, or the load \
                 balancer's rule, connect to PORT; the relay connects to the program's APP_PORT \
                 and sets keepalive on both sockets):\n\
                 idlegate relay {args}\n\
                 To keep it running across reboots, install it as a Windows service (an \
                 Administrator prompt):\n\
                 idlegate service install --name idlegate-relay -- {args}\n\
                 Source: Microsoft, \"SO_KEEPALIVE socket option\" ({so}).\n",
                args = self.relay_args(),
                so = sources::SO_KEEPALIVE,
            ),
            Os::Linux => "Keepalive is off on a socket until the program turns it \
                on (SO_KEEPALIVE): the system settings above only set its timers. For a program \
                you cannot change: `idlegate keepalive --pid PID` or `idlegate run -- PROGRAM`.\n"
                .to_string(),
            Os::Macos => format!(
                "Keepalive is off on a socket until the program turns it on (SO_KEEPALIVE): the \
                 timers above do nothing for a program that never sets it. For a program you \
                 cannot change, the kernel can turn keepalive on for every TCP connection:\n\
                 sudo sysctl -w net.inet.tcp.always_keepalive=1\n\
                 Source: tcp(4) of FreeBSD, whose stack macOS's comes from ({}).\n",
                sources::FREEBSD_TCP
            ),
        }
    }

    fn system(&self) -> String {
        let k = &self.keepalive;
        let (idle, intvl, count) = (k.idle.as_secs(), k.interval.as_secs(), k.count);
        match self.os {
            Os::Linux => format!(
                "Linux, system-wide (/etc/sysctl.d/90-keepalive.conf, then `sysctl --system`):\n\
                 net.ipv4.tcp_keepalive_time = {idle}\n\
                 net.ipv4.tcp_keepalive_intvl = {intvl}\n\
                 net.ipv4.tcp_keepalive_probes = {count}\n\
                 Per socket instead: TCP_KEEPIDLE {idle}, TCP_KEEPINTVL {intvl}, TCP_KEEPCNT {count}, \
                 TCP_USER_TIMEOUT {} ms.\n\
                 Source: tcp(7) ({}).\n",
                k.user_timeout().as_millis(),
                sources::LINUX_TCP,
            ),
            Os::Windows => format!(
                "Windows, system-wide (REG_DWORD values, in milliseconds; a restart applies them):\n\
                 HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters\n\
                 KeepAliveTime = {}\n\
                 KeepAliveInterval = {}\n\
                 TcpMaxDataRetransmissions = {count}\n\
                 reg add HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters /v KeepAliveTime /t REG_DWORD /d {} /f\n\
                 reg add HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters /v KeepAliveInterval /t REG_DWORD /d {} /f\n\
                 reg add HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters /v TcpMaxDataRetransmissions /t REG_DWORD /d {count} /f\n\
                 Since Windows Vista the number of keepalive probes is fixed at 10; \
                 TcpMaxDataRetransmissions bounds retransmissions of data.\n\
                 Per socket instead: SIO_KEEPALIVE_VALS {} ms and {} ms, or TCP_KEEPIDLE {idle}, \
                 TCP_KEEPINTVL {intvl}, TCP_KEEPCNT {count} (Windows 10 version 1703 and later).\n\
                 Source: Microsoft, KeepAliveTime ({}), KeepAliveInterval ({}), \
                 TcpMaxDataRetransmissions ({}), IPPROTO_TCP socket options ({}).\n",
                idle * 1000,
                intvl * 1000,
                idle * 1000,
                intvl * 1000,
                idle * 1000,
                intvl * 1000,
                sources::KEEPALIVE_TIME,
                sources::KEEPALIVE_INTERVAL,
                sources::TCP_MAX_DATA_RETRANSMISSIONS,
                sources::TCP_SOCKET_OPTIONS,
            ),
            Os::Macos => format!(
                "macOS, system-wide (milliseconds; add to /etc/sysctl.conf to keep):\n\
                 sudo sysctl -w net.inet.tcp.keepidle={} net.inet.tcp.keepintvl={} net.inet.tcp.keepcnt={count}\n\
                 Per socket instead: TCP_KEEPALIVE {idle} s (macOS's name for the idle time; an \
                 accepted socket does not inherit it from its listener), TCP_KEEPINTVL {intvl} s, \
                 TCP_KEEPCNT {count}.\n\
                 Source: Apple, XNU tcp(4) ({}); FreeBSD tcp(4) ({}).\n",
                idle * 1000,
                intvl * 1000,
                sources::MACOS_TCP,
                sources::FREEBSD_TCP,
            ),
        }
    }

    /// Every setting of the chosen system: system-wide ones, then the per-socket options.
    pub fn settings(&self) -> Vec<Setting> {
        let k = &self.keepalive;
        let (idle, intvl, count) = (k.idle.as_secs(), k.interval.as_secs(), u64::from(k.count));
        let set = |name: &str, value: u64, unit: Unit, place: &str, source: &'static str| Setting {
            name: name.to_string(),
            value,
            unit,
            place: place.to_string(),
            source,
        };
        match self.os {
            Os::Linux => {
                let sysctl = "sysctl (/etc/sysctl.d/90-keepalive.conf, then `sysctl --system`)";
                let socket = "setsockopt(IPPROTO_TCP), per socket";
                let url = sources::LINUX_TCP;
                let user_ms = u64::try_from(k.user_timeout().as_millis()).unwrap_or(u64::MAX);
                vec![
                    set(
                        "net.ipv4.tcp_keepalive_time",
                        idle,
                        Unit::Seconds,
                        sysctl,
                        url,
                    ),
                    set(
                        "net.ipv4.tcp_keepalive_intvl",
                        intvl,
                        Unit::Seconds,
                        sysctl,
                        url,
                    ),
                    set(
                        "net.ipv4.tcp_keepalive_probes",
                        count,
                        Unit::Probes,
                        sysctl,
                        url,
                    ),
                    set("TCP_KEEPIDLE", idle, Unit::Seconds, socket, url),
                    set("TCP_KEEPINTVL", intvl, Unit::Seconds, socket, url),
                    set("TCP_KEEPCNT", count, Unit::Probes, socket, url),
                    set("TCP_USER_TIMEOUT", user_ms, Unit::Milliseconds, socket, url),
                ]
            }
            Os::Windows => {
                let registry = "registry: REG_DWORD in HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters (a restart applies it)";
                let socket =
                    "setsockopt(IPPROTO_TCP), per socket (Windows 10 version 1703 and later)";
                let options = sources::TCP_SOCKET_OPTIONS;
                let ms = Unit::Milliseconds;
                vec![
                    set(
                        "KeepAliveTime",
                        idle * 1000,
                        ms,
                        registry,
                        sources::KEEPALIVE_TIME,
                    ),
                    set(
                        "KeepAliveInterval",
                        intvl * 1000,
                        ms,
                        registry,
                        sources::KEEPALIVE_INTERVAL,
                    ),
                    set(
                        "TcpMaxDataRetransmissions",
                        count,
                        Unit::Retransmissions,
                        registry,
                        sources::TCP_MAX_DATA_RETRANSMISSIONS,
                    ),
                    set("TCP_KEEPIDLE", idle, Unit::Seconds, socket, options),
                    set("TCP_KEEPINTVL", intvl, Unit::Seconds, socket, options),
                    set("TCP_KEEPCNT", count, Unit::Probes, socket, options),
                ]
            }
            Os::Macos => {
                let sysctl = "sysctl (`sudo sysctl -w`; /etc/sysctl.conf to keep)";
                let socket = "setsockopt(IPPROTO_TCP), per socket";
                let (bsd, apple, ms) =
                    (sources::FREEBSD_TCP, sources::MACOS_TCP, Unit::Milliseconds);
                vec![
                    set("net.inet.tcp.keepidle", idle * 1000, ms, sysctl, bsd),
                    set("net.inet.tcp.keepintvl", intvl * 1000, ms, sysctl, bsd),
                    set("net.inet.tcp.keepcnt", count, Unit::Probes, sysctl, apple),
                    set(
                        "net.inet.tcp.always_keepalive",
                        1,
                        Unit::Switch,
                        sysctl,
                        bsd,
                    ),
                    set("TCP_KEEPALIVE", idle, Unit::Seconds, socket, apple),
                    set("TCP_KEEPINTVL", intvl, Unit::Seconds, socket, apple),
                    set("TCP_KEEPCNT", count, Unit::Probes, socket, apple),
                ]
            }
        }
    }

    /// The advice as one JSON document: the system, the profile (if the idle timeout is a
    /// profile's), the box's idle timeout and where it came from, the timers, every setting,
    /// and the library's code if one was asked for.
    pub fn json(&self, profile: Option<&str>) -> serde_json::Value {
        let k = &self.keepalive;
        serde_json::json!({
            "os": self.os,
            "profile": profile,
            "idle_timeout_s": self.idle_timeout.as_secs_f64(),
            "from": self.from,
            "keepalive": {
                "idle_s": k.idle.as_secs(),
                "interval_s": k.interval.as_secs(),
                "count": k.count,
            },
            "settings": self.settings(),
            "library": self.library.map(|l| serde_json::json!({
                "name": l,
                "text": self.library(l),
            })),
        })
    }

    /// With a config: each rule's timeout, where it comes from, and the keepalive that fits
    /// it, then the one system-wide setting that fits them all (this advice's, for the
    /// shortest) as text.
    pub fn render_rules(&self, path: &str, timeouts: &Timeouts) -> String {
        let whose = timeouts
            .member
            .as_deref()
            .map_or(String::new(), |m| format!(" for member {m}"));
        let mut out = format!("Idle timeouts of {path}{whose}, rule by rule:\n");
        for (r, k) in per_rule(timeouts) {
            let _ = writeln!(
                out,
                "  {} ({}): {} ({}); keepalive {}s,{}s,{}",
                r.name(),
                r.direction.as_str(),
                humantime::format_duration(r.idle_timeout),
                r.reason,
                k.idle.as_secs(),
                k.interval.as_secs(),
                k.count,
            );
        }
        if let Some(hint) = timeouts.member_hint() {
            let _ = writeln!(out, "Note: {hint}.");
        }
        let _ = writeln!(
            out,
            "One system-wide setting fits them all: the shortest's, below.\n"
        );
        out + &self.render()
    }

    /// [`Advice::json`] with a config's rules: `config`, the `member` they were kept for (and
    /// without one, `member_hint` when several outbound paths leave it open), each rule's
    /// timeout and keepalive in `rules`, and the rule whose (shortest) timeout the system-wide settings fit in
    /// `system_wide_rule`.
    pub fn json_rules(&self, path: &str, timeouts: &Timeouts) -> serde_json::Value {
        let mut json = self.json(None);
        let rules: Vec<serde_json::Value> = per_rule(timeouts)
            .map(|(r, k)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["keepalive"] = serde_json::json!({
                    "idle_s": k.idle.as_secs(),
                    "interval_s": k.interval.as_secs(),
                    "count": k.count,
                });
                v
            })
            .collect();
        json["config"] = path.into();
        json["member"] = timeouts.member.clone().into();
        json["member_hint"] = timeouts.member_hint().into();
        json["rules"] = rules.into();
        json["system_wide_rule"] = timeouts.shortest().map(|r| r.rule.clone()).into();
        json
    }

    fn library(&self, library: Library) -> String {
        let k = &self.keepalive;
        let (idle, intvl, count) = (k.idle.as_secs(), k.interval.as_secs(), k.count);
        let user_ms = k.user_timeout().as_millis();
        match library {
            Library::PythonRequests => format!(
                "Python requests (urllib3 socket_options, keeping urllib3's defaults):\n\
                 import socket, requests\n\
                 from urllib3.connection import HTTPConnection\n\
                 \n\
                 class KeepaliveAdapter(requests.adapters.HTTPAdapter):\n\
                 \x20   def init_poolmanager(self, *args, **kwargs):\n\
                 \x20       kwargs[\"socket_options\"] = HTTPConnection.default_socket_options + [\n\
                 \x20           (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),\n\
                 \x20           (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, {idle}),   # macOS: socket.TCP_KEEPALIVE\n\
                 \x20           (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, {intvl}),\n\
                 \x20           (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, {count}),\n\
                 \x20       ]\n\
                 \x20       super().init_poolmanager(*args, **kwargs)\n\
                 \n\
                 session = requests.Session()\n\
                 session.mount(\"http://\", KeepaliveAdapter())\n\
                 session.mount(\"https://\", KeepaliveAdapter())\n\
                 Source: urllib3, HTTPConnection socket_options; the fix of \"Azure TCP Idle Timeout, \
                 TCP keepalive, and Python\".\n"
            ),
            Library::Psycopg => format!(
                "PostgreSQL libpq (psycopg, psql, …), connection parameters:\n\
                 keepalives=1 keepalives_idle={idle} keepalives_interval={intvl} keepalives_count={count} tcp_user_timeout={user_ms}\n\
                 e.g. psycopg.connect(\"host=db dbname=app keepalives=1 keepalives_idle={idle} \
                 keepalives_interval={intvl} keepalives_count={count} tcp_user_timeout={user_ms}\")\n\
                 Source: PostgreSQL documentation, libpq \"Parameter Key Words\".\n"
            ),
            Library::Jdbc => format!(
                "PostgreSQL JDBC: tcpKeepAlive=true turns keepalive on; its timers are the system's \
                 (set them as above):\n\
                 jdbc:postgresql://db:5432/app?tcpKeepAlive=true\n\
                 For your own sockets (Java 11+): socket.setOption(ExtendedSocketOptions.TCP_KEEPIDLE, {idle}); \
                 TCP_KEEPINTERVAL {intvl}; TCP_KEEPCOUNT {count}.\n\
                 Source: pgJDBC documentation, connection parameters; jdk.net.ExtendedSocketOptions.\n"
            ),
            Library::Go => format!(
                "Go 1.23 or later:\n\
                 dialer := &net.Dialer{{KeepAliveConfig: net.KeepAliveConfig{{\n\
                 \x20   Enable: true, Idle: {idle} * time.Second, Interval: {intvl} * time.Second, Count: {count},\n\
                 }}}}\n\
                 Older Go: net.Dialer{{KeepAlive: {intvl} * time.Second}} (idle and interval both).\n\
                 Source: Go documentation, package net (Dialer, KeepAliveConfig).\n"
            ),
            Library::Node => format!(
                "Node.js (this sets the first probe only; the interval and count come from libuv \
                 or the system):\n\
                 const socket = net.connect({{ host, port, keepAlive: true, keepAliveInitialDelay: {} }});\n\
                 or socket.setKeepAlive(true, {});\n\
                 Source: Node.js documentation, net.Socket.setKeepAlive.\n",
                idle * 1000,
                idle * 1000,
            ),
            Library::Dotnet => format!(
                ".NET Core 3.0 or later:\n\
                 socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);\n\
                 socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, {idle});\n\
                 socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, {intvl});\n\
                 socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, {count});\n\
                 Source: .NET documentation, SocketOptionName.\n"
            ),
            Library::Ssh => format!(
                "OpenSSH: messages inside the encrypted channel, which the box sees as data:\n\
                 ~/.ssh/config:   ServerAliveInterval {intvl}   ServerAliveCountMax {count}\n\
                 sshd_config:     ClientAliveInterval {intvl}   ClientAliveCountMax {count}\n\
                 Source: ssh_config(5), sshd_config(5).\n"
            ),
        }
    }
}

/// Each rule with the keepalive that fits its timeout.
fn per_rule(timeouts: &Timeouts) -> impl Iterator<Item = (&RuleTimeout, Keepalive)> {
    timeouts
        .rules
        .iter()
        .map(|r| (r, Keepalive::for_idle_timeout(r.idle_timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure(os: Os, library: Option<Library>) -> String {
        Advice::new(Duration::from_secs(240), "azure-lb".into(), os, library).render()
    }

    #[test]
    fn azure_on_linux_gives_the_sysctls_120_30_8() {
        // Half of Azure's 4 minutes, then every 30 s, 8 probes.
        let text = azure(Os::Linux, None);
        for line in [
            "net.ipv4.tcp_keepalive_time = 120",
            "net.ipv4.tcp_keepalive_intvl = 30",
            "net.ipv4.tcp_keepalive_probes = 8",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains("on Linux a dead peer is found 360 s after the last data"));
    }

    #[test]
    fn azure_on_windows_gives_the_registry_values_in_milliseconds() {
        // KeepAliveTime and KeepAliveInterval are milliseconds (Microsoft's pages in sources).
        let text = azure(Os::Windows, None);
        for line in [
            "KeepAliveTime = 120000",
            "KeepAliveInterval = 30000",
            "TcpMaxDataRetransmissions = 8",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn azure_on_windows_fixes_an_unchangeable_program_with_the_relay_not_linux_commands() {
        // Windows has no `keepalive --pid`, `run` or sysctl: the relay line (with the timers
        // for 4 minutes) and the service that keeps it, nothing of Linux.
        let text = azure(Os::Windows, None);
        for line in [
            "idlegate relay --listen 0.0.0.0:PORT --connect 127.0.0.1:APP_PORT --keepalive 120s,30s,8",
            "idlegate service install --name idlegate-relay -- --listen 0.0.0.0:PORT --connect 127.0.0.1:APP_PORT --keepalive 120s,30s,8",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(
            text.contains("do nothing for a program that never sets SO_KEEPALIVE"),
            "{text}"
        );
        for linux in [
            "keepalive --pid",
            "idlegate run",
            "sysctl",
            "Linux",
            "TCP_USER_TIMEOUT",
        ] {
            assert!(!text.contains(linux), "{linux} in\n{text}");
        }
    }

    #[test]
    fn the_windows_advice_cites_microsofts_pages_for_each_registry_value_and_so_keepalive() {
        let text = azure(Os::Windows, None);
        for url in [
            sources::SO_KEEPALIVE,
            sources::KEEPALIVE_TIME,
            sources::KEEPALIVE_INTERVAL,
            sources::TCP_MAX_DATA_RETRANSMISSIONS,
        ] {
            assert!(url.starts_with("https://learn.microsoft.com/"), "{url}");
            assert!(text.contains(url), "{url} in\n{text}");
        }
    }

    #[test]
    fn the_advised_relay_keepalive_is_the_advice_itself() {
        for seconds in [3, 240, 350, 6000] {
            let advice = Advice::new(Duration::from_secs(seconds), "t".into(), Os::Windows, None);
            let args = advice.relay_args();
            let given = args
                .split_once("--keepalive ")
                .map(|(_, k)| k)
                .expect("a --keepalive");
            assert_eq!(Keepalive::parse(given).unwrap(), advice.keepalive, "{args}");
        }
    }

    #[test]
    fn the_default_system_is_the_builds_own() {
        let expected = if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::Macos
        } else {
            Os::Linux
        };
        assert_eq!(Os::this_build(), expected);
    }

    #[test]
    fn azure_with_python_requests_gives_urllib3_socket_options() {
        // Keepalive through urllib3's socket_options, keeping its defaults.
        let text = azure(Os::Linux, Some(Library::PythonRequests));
        for part in [
            "HTTPConnection.default_socket_options + [",
            "(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)",
            "(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 120)",
            "(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30)",
            "(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 8)",
            "session.mount(\"https://\", KeepaliveAdapter())",
        ] {
            assert!(text.contains(part), "{part} in\n{text}");
        }
    }

    #[test]
    fn every_system_and_library_names_its_source() {
        for os in [Os::Linux, Os::Windows, Os::Macos] {
            for library in [
                Library::PythonRequests,
                Library::Psycopg,
                Library::Jdbc,
                Library::Go,
                Library::Node,
                Library::Dotnet,
                Library::Ssh,
            ] {
                let text = azure(os, Some(library));
                assert!(
                    text.matches("Source:").count() >= 2,
                    "{os:?} {library:?}:\n{text}"
                );
            }
        }
    }

    #[test]
    fn short_timeouts_keep_whole_seconds_of_at_least_one() {
        // The kernel takes whole seconds; a 3 s box gets 1 s, 1 s, 8.
        let advice = Advice::new(Duration::from_secs(3), "test".into(), Os::Linux, None);
        let k = advice.keepalive;
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(1), Duration::from_secs(1), 8)
        );
    }
    #[test]
    fn macos_advice_says_only_what_exists_on_macos() {
        let text = azure(Os::Macos, None);
        for line in [
            "sudo sysctl -w net.inet.tcp.keepidle=120000 net.inet.tcp.keepintvl=30000 net.inet.tcp.keepcnt=8",
            "sudo sysctl -w net.inet.tcp.always_keepalive=1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains("TCP_KEEPALIVE 120 s"), "{text}");
        assert!(text.contains(sources::MACOS_TCP), "{text}");
        assert!(text.contains(sources::FREEBSD_TCP), "{text}");
        // Linux's and Windows's tools and options are not macOS's.
        for absent in [
            "Linux",
            "keepalive --pid",
            "idlegate run",
            "idlegate relay",
            "service install",
            "TCP_USER_TIMEOUT",
            "TCP_KEEPIDLE",
            "net.ipv4",
            "KeepAliveTime",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn linux_advice_names_linux_tools_and_nothing_of_windows_or_macos() {
        let text = azure(Os::Linux, None);
        for present in [
            "keepalive --pid PID",
            "idlegate run -- PROGRAM",
            "TCP_USER_TIMEOUT",
        ] {
            assert!(text.contains(present), "{present} in\n{text}");
        }
        for absent in [
            "KeepAliveTime",
            "service install",
            "net.inet.tcp",
            "TCP_KEEPALIVE ",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn windows_advice_says_nothing_of_linux_or_macos() {
        let text = azure(Os::Windows, None);
        for absent in [
            "on Linux",
            "net.inet.tcp",
            "always_keepalive",
            "keepalive --pid",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn every_setting_in_the_json_is_in_the_text_with_its_value_unit_place_and_source() {
        for os in [Os::Linux, Os::Windows, Os::Macos] {
            let advice = Advice::new(
                Duration::from_secs(240),
                "profile azure-lb".into(),
                os,
                None,
            );
            let text = advice.render();
            let json = advice.json(Some("azure-lb"));
            let parsed: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&json).unwrap()).unwrap();
            assert_eq!(parsed["profile"], "azure-lb");
            assert_eq!(parsed["idle_timeout_s"], 240.0);
            assert_eq!(parsed["keepalive"]["idle_s"], 120);
            let settings = parsed["settings"].as_array().unwrap();
            assert!(settings.len() >= 6, "{os:?}: {parsed:#}");
            for s in settings {
                let name = s["name"].as_str().unwrap();
                let value = s["value"].as_u64().unwrap();
                assert!(text.contains(name), "{os:?}: {name} not in\n{text}");
                assert!(text.contains(&value.to_string()), "{os:?}: {name} {value}");
                assert!(s["unit"].as_str().is_some_and(|u| !u.is_empty()));
                assert!(s["where"].as_str().is_some_and(|w| !w.is_empty()));
                let source = s["source"].as_str().unwrap();
                assert!(source.starts_with("https://"), "{source}");
                assert!(text.contains(source), "{os:?}: {source} not in\n{text}");
            }
        }
        let os = serde_json::to_value(Os::Macos).unwrap();
        assert_eq!(os, "macos");
    }
}
