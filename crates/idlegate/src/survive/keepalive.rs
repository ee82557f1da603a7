//! TCP keepalive: the settings that keep a flow alive through a box that forgets idle ones,
//! and how to give them to sockets of programs that cannot be changed.
//!
//! Contract: [`Keepalive`] is the setting (first probe after `idle`, then every `interval`,
//! `count` probes, and a matching TCP_USER_TIMEOUT). [`SocketKeepalive::read`] reads what a
//! socket really has. [`Process`] takes duplicates of another process's TCP sockets with
//! `pidfd_getfd(2)` (Linux 5.6+; the caller needs ptrace access to the process: the same user
//! under `kernel.yama.ptrace_scope` 0, or CAP_SYS_PTRACE) and sets keepalive on them: a socket
//! option set on a duplicate is set on the one socket both descriptors share, so the program
//! keeps its connection and gains keepalive without a restart. Nothing else about the socket
//! is changed.

use crate::sys::socket::{self, Handle};
use anyhow::{bail, Result};
use idlegate_core::config::{half_the_idle_timeout, LAB_ENV, TIME_SCALE_ENV};
use idlegate_core::profile::Profile;
use socket2::SockRef;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// Reading keepalive back and taking other processes' sockets: Linux only (procfs, pidfds).
#[cfg(target_os = "linux")]
mod take;
#[cfg(target_os = "linux")]
pub use take::*;

/// TCP keepalive settings: first probe after `idle`, then every `interval`, `count` probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// Parses `IDLE,INTERVAL,COUNT`, e.g. `120s,30s,8`. The error names the part that is
    /// wrong and why (`COUNT "abc" is not a number`), not where the text came from: the
    /// caller says that (`--keepalive "…"`, or a file's line and key).
    pub fn parse(s: &str) -> Result<Keepalive> {
        const PARTS: [&str; 3] = ["IDLE", "INTERVAL", "COUNT"];
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if let Some(extra) = parts.get(PARTS.len()) {
            bail!("{extra:?} is one part too many: expected IDLE,INTERVAL,COUNT");
        }
        let part = |i: usize| -> Result<&str> {
            match parts.get(i) {
                Some(p) if !p.is_empty() => Ok(p),
                _ => bail!("{} is missing: expected IDLE,INTERVAL,COUNT", PARTS[i]),
            }
        };
        let duration = |i: usize| -> Result<Duration> {
            let (what, v) = (PARTS[i], part(i)?);
            let d = humantime::parse_duration(v)
                .map_err(|_| anyhow::anyhow!("{what} {v:?} is not a duration (like 30s or 2m)"))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(32_767) {
                bail!(
                    "{what} {v:?} must be 1 s to 32,767 s (whole seconds, as the kernel takes it)"
                );
            }
            Ok(d)
        };
        let idle = duration(0)?;
        let interval = duration(1)?;
        let count = part(2)?;
        let count: u32 = count
            .parse()
            .map_err(|_| anyhow::anyhow!("COUNT {count:?} is not a number"))?;
        if !(1..=127).contains(&count) {
            bail!("COUNT {count} must be 1 to 127");
        }
        Ok(Keepalive {
            idle,
            interval,
            count,
        })
    }

    /// Keepalive that fires well before `profile`'s default idle timeout `T`: first probe at
    /// T/2, then every T/8, 8 probes (for Azure's 4 min: 120 s, 30 s, 8). The shortest of the
    /// profile's LB and outbound rule timeouts is taken.
    pub fn for_profile(profile: &Profile) -> Keepalive {
        Keepalive::for_idle_timeout(profile_idle_timeout(profile))
    }

    /// [`Keepalive::for_profile`] with the profile's idle timeout divided by `time_scale`, as a
    /// lab with that `time_scale` runs it.
    pub fn for_profile_scaled(profile: &Profile, time_scale: u32) -> Keepalive {
        Keepalive::for_idle_timeout(profile_idle_timeout(profile) / time_scale.max(1))
    }

    /// [`Keepalive::for_profile`] for this process: scaled by the lab's time scale when it runs
    /// in a lab host (`lab exec` sets [`TIME_SCALE_ENV`] and [`LAB_ENV`]), which it says once
    /// at info ([`time_scale_from_env`]). A value that is not a whole number ≥ 1 is refused.
    pub fn for_profile_here(profile: &Profile) -> Result<Keepalive> {
        let Some(scale) = time_scale_from_env()? else {
            return Ok(Keepalive::for_profile(profile));
        };
        let k = Keepalive::for_profile_scaled(profile, scale);
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            let lab =
                std::env::var(LAB_ENV).map_or("the lab".to_string(), |l| format!("lab \"{l}\""));
            tracing::info!(target: crate::LOG_TARGET,
                "profile {} in {lab}'s time scale 1/{scale} ({TIME_SCALE_ENV}): keepalive {}s,{}s,{} (half, then an eighth, of the idle timeout {:?}, in whole seconds)",
                profile.name,
                k.idle.as_secs(),
                k.interval.as_secs(),
                k.count,
                profile_idle_timeout(profile) / scale
            );
        }
        Ok(k)
    }

    /// Keepalive for a box that forgets flows idle for `timeout`: the first probe at half the
    /// idle timeout, then every eighth of it, 8 probes. Whole seconds, as the kernel takes
    /// them (TCP_KEEPIDLE, TCP_KEEPINTVL): the first probe at [`half_the_idle_timeout`] (to the
    /// nearest second, never reaching the timeout: 3.98 s → 2 s, not 1 s), the interval rounded
    /// down (more probes, never fewer), both at least 1 s.
    pub fn for_idle_timeout(timeout: Duration) -> Keepalive {
        Keepalive {
            idle: half_the_idle_timeout(timeout),
            interval: Duration::from_secs((timeout / 8).as_secs().max(1)),
            count: 8,
        }
    }

    /// How long unacknowledged data (or unanswered probes) may wait: the same as keepalive
    /// takes to give up, so both find a dead peer at once.
    pub fn user_timeout(&self) -> Duration {
        self.idle + self.interval * self.count
    }

    /// Sets the keepalive on `socket` with the system's own options
    /// ([`crate::sys::socket::set_keepalive`]). Linux: SO_KEEPALIVE, the three timers and the
    /// matching TCP_USER_TIMEOUT, all of which must take. Windows: SIO_KEEPALIVE_VALS (idle
    /// and interval) must take; TCP_KEEPCNT and TCP_MAXRT (the user timeout) are tried, and one
    /// the system refuses is logged once per process (a warning naming the option and what it
    /// means), never fatal: the probes still go out.
    pub fn apply(&self, socket: &impl Handle) -> io::Result<()> {
        let not_taken = socket::set_keepalive(
            socket,
            self.idle,
            self.interval,
            self.count,
            self.user_timeout(),
        )?;
        for socket::NotTaken { option, error } in not_taken {
            warn_once(option, &error);
        }
        Ok(())
    }

    /// [`Keepalive::apply`]; TCP_NODELAY, since a relay passes bytes on as they come, so Nagle
    /// must not hold them a second time; and SO_LINGER 0, so that the socket ends with a RST
    /// if it is closed before its connection has ended in order, even when the kernel closes
    /// it for a relay killed with SIGKILL: a stream cut short must never look whole to the
    /// application (a FIN would say it was). [`ended_in_order`] takes that back.
    pub(crate) fn apply_relayed(&self, socket: &impl Handle) -> io::Result<()> {
        crate::sys::socket::reset(socket)?;
        SockRef::from(socket).set_tcp_nodelay(true)?;
        self.apply(socket)
    }

    /// [`Keepalive::apply_relayed`] on a listener, once, for the sockets it will accept: on
    /// Linux an accepted socket inherits these options from its listener (the kernel clones
    /// the listener's socket; `sys::socket`'s tests read them back), so it needs no system
    /// call for them ([`Keepalive::apply_relayed_accepted`]). Nothing elsewhere.
    pub(crate) fn apply_relayed_listener(&self, listener: &impl Handle) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            self.apply_relayed(listener)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = listener;
            Ok(())
        }
    }

    /// [`Keepalive::apply_relayed`] on a socket accepted from a listener given
    /// [`Keepalive::apply_relayed_listener`]: nothing on Linux, where it inherited them.
    pub(crate) fn apply_relayed_accepted(&self, socket: &impl Handle) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = socket;
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.apply_relayed(socket)
        }
    }
}

/// Logs, the first time only, that the system did not take `option`.
fn warn_once(option: &str, error: &io::Error) {
    static COUNT: AtomicBool = AtomicBool::new(false);
    static MAXRT: AtomicBool = AtomicBool::new(false);
    static OTHER: AtomicBool = AtomicBool::new(false);
    let (said, means) = match option {
        "TCP_KEEPCNT" => (
            &COUNT,
            "the system's default probe count applies (10 on Windows)",
        ),
        "TCP_MAXRT" => (
            &MAXRT,
            "unacknowledged data is retransmitted for the system's own time, not the keepalive's",
        ),
        _ => (&OTHER, "the system's own value applies"),
    };
    if !said.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "keepalive: the system did not take {option} ({}): {means}; the idle time and interval are set (said once)",
            crate::sys::errno::errno_name(error)
        );
    }
}

/// A relayed connection ended in order (each direction passed on whole, with its FIN): its
/// socket may now close with a FIN, delivering whatever it still holds, as any socket does.
pub(crate) fn ended_in_order(socket: &impl Handle) {
    let _ = crate::sys::socket::orderly(socket);
}

/// The time scale this process runs under: [`TIME_SCALE_ENV`] when it runs in a lab host,
/// that is with [`LAB_ENV`] set too (`lab exec` sets both), else none. Set outside a lab (by
/// hand, inherited by a service, left in a shell), it is ignored with a warning said once, so
/// that a production relay never probes at a lab's pace. In a lab, a value that is not a whole
/// number ≥ 1 is refused, naming the variable.
pub fn time_scale_from_env() -> Result<Option<u32>> {
    let scale = std::env::var(TIME_SCALE_ENV).ok();
    let lab = std::env::var(LAB_ENV).ok();
    match time_scale_of(scale.as_deref(), lab.as_deref())? {
        TimeScale::Lab(scale) => Ok(Some(scale)),
        TimeScale::None => Ok(None),
        TimeScale::IgnoredOutsideALab => {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: crate::LOG_TARGET,
                    "{TIME_SCALE_ENV} is set but {LAB_ENV} is not: not in a lab host, so profiles keep their real timeouts ({TIME_SCALE_ENV} ignored; said once)"
                );
            }
            Ok(None)
        }
    }
}

/// What the two variables say of the time scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeScale {
    /// Not in a lab, and no scale asked.
    None,
    /// In a lab host, with the lab's scale.
    Lab(u32),
    /// A scale without a lab: ignored.
    IgnoredOutsideALab,
}

/// [`time_scale_from_env`]'s decision from the values of [`TIME_SCALE_ENV`] and [`LAB_ENV`].
fn time_scale_of(scale: Option<&str>, lab: Option<&str>) -> Result<TimeScale> {
    let Some(text) = scale else {
        return Ok(TimeScale::None);
    };
    if lab.is_none() {
        return Ok(TimeScale::IgnoredOutsideALab);
    }
    match text.trim().parse::<u32>() {
        Ok(scale) if scale >= 1 => Ok(TimeScale::Lab(scale)),
        _ => {
            use crate::obs::report::{Report, Status};
            Err(anyhow::anyhow!(
                "{TIME_SCALE_ENV}={text:?}: not a time scale (a whole number, 1 or more)"
            ))
            .hint(format!(
                "unset {TIME_SCALE_ENV}, or set it to the lab's time_scale"
            ))
            .status(Status::Usage)
        }
    }
}

/// The idle timeout a profile's flows get by default: the shorter of its LB and outbound rule
/// timeouts.
pub fn profile_idle_timeout(profile: &Profile) -> Duration {
    profile
        .lb_rule_idle
        .default
        .min(profile.outbound_rule_idle.default)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn keepalive_settings_parse_and_refuse_what_the_kernel_would() {
        let k = Keepalive::parse("120s,30s,8").unwrap();
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(120), Duration::from_secs(30), 8)
        );
        assert_eq!(k.user_timeout(), Duration::from_secs(360));
        for bad in [
            "120s,30s",
            "0s,30s,8",
            "120s,30s,0",
            "2m,1x,8",
            "120s,30s,200",
        ] {
            assert!(Keepalive::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keepalive_fires_at_half_the_idle_timeout_rounded_to_the_nearest_second() {
        // Half the idle timeout: AWS NLB's 350 s scaled 1/88 is 3.98 s, whose half is 1.99 s:
        // 2 s, not the 1 s that rounding down gave.
        let aws = Keepalive::for_idle_timeout(Duration::from_secs(350) / 88);
        assert_eq!(aws.idle, Duration::from_secs(2));
        assert_eq!(
            half_the_idle_timeout(Duration::from_millis(3_980)),
            Duration::from_secs(2)
        );
        // A tie goes to the earlier second.
        assert_eq!(
            half_the_idle_timeout(Duration::from_secs(5)),
            Duration::from_secs(2)
        );
        assert_eq!(
            half_the_idle_timeout(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        // Never at or past the timeout where a whole second below it exists.
        assert_eq!(
            half_the_idle_timeout(Duration::from_millis(1_800)),
            Duration::from_secs(1)
        );
        assert_eq!(
            half_the_idle_timeout(Duration::from_millis(2_500)),
            Duration::from_secs(1)
        );
        // The kernel takes no less than 1 s.
        assert_eq!(
            half_the_idle_timeout(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_profiles_keepalive_in_a_labs_time_scale_is_the_scaled_timeouts_half() {
        // Azure LB's 4 min at time_scale 60 (examples/azure-lb.toml): 4 s, so 2 s, 1 s, 8.
        let k = Keepalive::for_profile_scaled(&idlegate_core::profile::AZURE_LB, 60);
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(2), Duration::from_secs(1), 8)
        );
        assert_eq!(
            Keepalive::for_profile_scaled(&idlegate_core::profile::AZURE_LB, 1),
            Keepalive::for_profile(&idlegate_core::profile::AZURE_LB)
        );
    }

    #[test]
    fn a_bad_keepalive_names_the_part_that_is_wrong_and_why() {
        for (bad, why) in [
            (
                "2m,abc",
                "INTERVAL \"abc\" is not a duration (like 30s or 2m)",
            ),
            ("2m,30s,abc", "COUNT \"abc\" is not a number"),
            ("2m,30s", "COUNT is missing: expected IDLE,INTERVAL,COUNT"),
            (
                "2m,30s,8,9",
                "\"9\" is one part too many: expected IDLE,INTERVAL,COUNT",
            ),
            (
                "0s,30s,8",
                "IDLE \"0s\" must be 1 s to 32,767 s (whole seconds, as the kernel takes it)",
            ),
            ("2m,30s,200", "COUNT 200 must be 1 to 127"),
        ] {
            assert_eq!(Keepalive::parse(bad).unwrap_err().to_string(), why, "{bad}");
        }
    }

    #[test]
    fn the_time_scale_counts_only_in_a_lab_host() {
        assert_eq!(time_scale_of(None, None).unwrap(), TimeScale::None);
        assert_eq!(time_scale_of(None, Some("demo")).unwrap(), TimeScale::None);
        assert_eq!(
            time_scale_of(Some("60"), Some("demo")).unwrap(),
            TimeScale::Lab(60)
        );
        // Left in a shell or inherited by a service outside any lab: ignored, whatever it says.
        assert_eq!(
            time_scale_of(Some("60"), None).unwrap(),
            TimeScale::IgnoredOutsideALab
        );
        assert_eq!(
            time_scale_of(Some("abc"), None).unwrap(),
            TimeScale::IgnoredOutsideALab
        );
        for bad in ["abc", "0", ""] {
            let e = time_scale_of(Some(bad), Some("demo")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "IDLEGATE_TIME_SCALE={bad:?}: not a time scale (a whole number, 1 or more)"
                )
            );
        }
    }

    #[test]
    fn a_profiles_keepalive_fires_at_half_its_idle_timeout() {
        // Azure LB: 4 min → 120 s, 30 s, 8.
        let k = Keepalive::for_profile(&idlegate_core::profile::AZURE_LB);
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(120), Duration::from_secs(30), 8)
        );
    }

    #[test]
    fn a_sockets_keepalive_reads_back_as_set() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = SocketKeepalive::read(&listener).unwrap();
        assert!(!before.enabled);
        let k = Keepalive::parse("7s,3s,4").unwrap();
        k.apply(&listener).unwrap();
        let after = SocketKeepalive::read(&listener).unwrap();
        assert_eq!(
            after,
            SocketKeepalive {
                enabled: true,
                idle: Duration::from_secs(7),
                interval: Duration::from_secs(3),
                count: 4,
                user_timeout: Duration::from_secs(19),
            }
        );
        assert_eq!(after.to_string(), "keepalive on 7s/3s/4, user timeout 19s");
    }

    #[test]
    fn a_processs_own_tcp_sockets_are_found_and_fixed_through_duplicates() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = Process::open(std::process::id() as i32).unwrap();
        let sockets = me.tcp_sockets(Some(client.as_raw_fd())).unwrap();
        assert_eq!(sockets.len(), 1, "only the one TCP descriptor asked for");
        assert_eq!(sockets[0].state, "ESTABLISHED");
        assert_eq!(sockets[0].peer, Some(listener.local_addr().unwrap()));
        let change = fix(
            sockets.into_iter().next().unwrap(),
            &Keepalive::parse("5s,2s,3").unwrap(),
        )
        .unwrap();
        assert!(!change.before.enabled);
        // The program's own descriptor sees the change: it is the same socket.
        let own = SocketKeepalive::read(&client).unwrap();
        assert!(own.enabled);
        assert_eq!(own.idle, Duration::from_secs(5));
    }

    #[test]
    fn a_process_that_does_not_exist_is_named_in_the_error() {
        let e = Process::open(i32::MAX).err().unwrap();
        assert!(matches!(e, TakeError::NoProcess(_)), "{e}");
    }
}
