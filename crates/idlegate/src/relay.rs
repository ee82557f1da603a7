//! `idlegate relay`: keeps unmodified applications' connections alive through boxes that
//! forget idle flows.
//!
//! Contract: a [`Relay`] listens where the application connects (or accepts its clients) and
//! forwards each connection to `connect`, byte for byte in both directions. Both of its sockets
//! carry TCP keepalive ([`Keepalive`]: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)
//! and a matching TCP_USER_TIMEOUT, so the kernel refreshes the path under an idle application
//! and a dead peer is found in bounded time. Each direction is copied on its own thread with
//! splice(2) through a pipe (zero-copy; read/write where splice cannot be used), which bounds
//! what the relay holds to one pipe per direction: a slow reader slows the writer, never grows
//! a buffer. A FIN one way is passed on as a FIN (the other way keeps flowing); a RST from
//! either side is passed on as a RST to the other. Many connections run at once, each on its
//! own two threads.

use crate::echo::wait_readable;
use anyhow::{bail, Context, Result};
use idlegate_core::profile::Profile;
use socket2::{SockRef, TcpKeepalive};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// TCP keepalive settings: first probe after `idle`, then every `interval`, `count` probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Keepalive {
    /// Parses `IDLE,INTERVAL,COUNT`, e.g. `120s,30s,8` (Linux's fix in seeds 000 and 003).
    pub fn parse(s: &str) -> Result<Keepalive> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [idle, interval, count] = parts[..] else {
            bail!("--keepalive {s:?}: expected IDLE,INTERVAL,COUNT, e.g. 120s,30s,8");
        };
        let duration = |what: &str, v: &str| -> Result<Duration> {
            let d = humantime::parse_duration(v)
                .with_context(|| format!("--keepalive {s:?}: {what} {v:?} is not a duration"))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(32_767) {
                bail!("--keepalive {s:?}: {what} must be 1 s to 32,767 s (whole seconds, as the kernel takes it)");
            }
            Ok(d)
        };
        let count: u32 = count
            .parse()
            .ok()
            .filter(|c| (1..=127).contains(c))
            .with_context(|| format!("--keepalive {s:?}: COUNT {count:?} must be 1 to 127"))?;
        Ok(Keepalive {
            idle: duration("IDLE", idle)?,
            interval: duration("INTERVAL", interval)?,
            count,
        })
    }

    /// Keepalive that fires well before `profile`'s default idle timeout `T`: first probe at
    /// T/2, then every T/8, 8 probes (for Azure's 4 min: 120 s, 30 s, 8, the fix of seeds 000
    /// and 003). The shortest of the profile's LB and outbound rule timeouts is taken.
    pub fn for_profile(profile: &Profile) -> Keepalive {
        let t = profile
            .lb_rule_idle
            .default
            .min(profile.outbound_rule_idle.default)
            .as_secs();
        Keepalive {
            idle: Duration::from_secs((t / 2).max(1)),
            interval: Duration::from_secs((t / 8).max(1)),
            count: 8,
        }
    }

    /// How long unacknowledged data (or unanswered probes) may wait: the same as keepalive
    /// takes to give up, so both find a dead peer at once.
    pub fn user_timeout(&self) -> Duration {
        self.idle + self.interval * self.count
    }

    /// Sets it all on `stream`.
    pub(crate) fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let sock = SockRef::from(stream);
        let params = TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.count);
        sock.set_tcp_keepalive(&params)?;
        sock.set_tcp_user_timeout(Some(self.user_timeout()))?;
        sock.set_tcp_nodelay(true)
    }
}

/// How often the accept loop looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// What a relay counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections being relayed now.
    pub open: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Connections that ended with a RST passed on.
    pub resets: AtomicU64,
    /// Tunnel: sessions resumed on a new leg.
    pub reconnects: AtomicU64,
    /// Tunnel: bytes sent again after a resume.
    pub replayed_bytes: AtomicU64,
    /// Tunnel: legs lost because no heartbeat arrived in time.
    pub heartbeat_misses: AtomicU64,
    /// Tunnel: sessions ended because no new leg came within the resume limit, or the far
    /// end no longer knew them.
    pub expired: AtomicU64,
}

/// The relays of a config file: `[[relay]]` tables with `listen`, `connect`, and `keepalive`
/// (`"120s,30s,8"`) or `profile` (`"azure-lb"`).
pub fn parse_config(text: &str, file: &str) -> Result<Vec<(SocketAddr, SocketAddr, Keepalive)>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        relay: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        listen: String,
        connect: String,
        keepalive: Option<String>,
        profile: Option<String>,
    }
    let parsed: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    if parsed.relay.is_empty() {
        bail!("{file}: no [[relay]]");
    }
    let mut out = Vec::new();
    for (i, r) in parsed.relay.iter().enumerate() {
        let at = format!("{file}: relay {} ({})", i + 1, r.listen);
        let addr = |what: &str, v: &str| -> Result<SocketAddr> {
            use std::net::ToSocketAddrs;
            v.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("{at}: {what} = {v:?} is not HOST:PORT"))
        };
        let keepalive = match (&r.keepalive, &r.profile) {
            (Some(k), None) => Keepalive::parse(k).with_context(|| at.clone())?,
            (None, Some(p)) => match idlegate_core::profile::find(p) {
                Some(profile) => Keepalive::for_profile(profile),
                None => bail!("{at}: profile = {p:?} is not a known profile"),
            },
            (None, None) => Keepalive::for_profile(idlegate_core::profile::default_profile()),
            (Some(_), Some(_)) => bail!("{at}: keepalive and profile: give one"),
        };
        out.push((
            addr("listen", &r.listen)?,
            addr("connect", &r.connect)?,
            keepalive,
        ));
    }
    Ok(out)
}

/// A relay: one listener and where its connections go.
pub struct Relay {
    listener: TcpListener,
    connect: SocketAddr,
    keepalive: Keepalive,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn bind(listen: SocketAddr, connect: SocketAddr, keepalive: Keepalive) -> Result<Relay> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        Ok(Relay {
            listener,
            connect,
            keepalive,
            stats: Arc::default(),
            stop: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// A flag that stops [`Relay::run`] when set (connections already open go on).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Makes `stop` the flag that stops this relay (one flag for several relays).
    pub fn set_stop_flag(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    /// Accepts and relays until stopped.
    pub fn run(&self) -> Result<()> {
        self.listener.set_nonblocking(true)?;
        while !self.stop.load(Ordering::Relaxed) {
            let (client, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = wait_readable(self.listener.as_raw_fd(), Some(STOP_CHECK));
                    continue;
                }
                Err(e) => {
                    tracing::warn!("relay: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let (connect, keepalive, stats) = (self.connect, self.keepalive, self.stats.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("relay {peer}"))
                .spawn(move || {
                    if let Err(e) = relay_one(client, connect, keepalive, &stats) {
                        tracing::info!("relay: {peer}: {e:#}");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("relay: no thread for {peer}: {e}");
            }
        }
        Ok(())
    }
}

/// Relays one accepted connection until both directions are done.
fn relay_one(
    client: TcpStream,
    connect: SocketAddr,
    keepalive: Keepalive,
    stats: &Arc<Stats>,
) -> Result<()> {
    client.set_nonblocking(false)?;
    keepalive.apply(&client)?;
    let server = match TcpStream::connect(connect) {
        Ok(s) => s,
        Err(e) => {
            // The application is told as a refused connection would tell it.
            reset(&client);
            return Err(e).with_context(|| format!("connecting to {connect}"));
        }
    };
    keepalive.apply(&server)?;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(stats);
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let up_stats = stats.clone();
    let upstream = std::thread::Builder::new()
        .name("relay up".into())
        .spawn(move || pipe(&c2, &s2, &up_stats.bytes_to_server))?;
    let down = pipe(&server, &client, &stats.bytes_to_client);
    let up = upstream.join().unwrap_or(End::Failed);
    if down == End::Reset || up == End::Reset {
        stats.resets.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Counts a connection as no longer open when dropped, however `relay_one` returns.
struct OpenGuard<'a>(&'a Arc<Stats>);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The Prometheus text of `relays` (each named by its listening address).
pub fn render_metrics(relays: &[(SocketAddr, Arc<Stats>)]) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&Stats) -> Vec<(String, u64)>| {
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for (listen, stats) in relays {
                for (labels, v) in value(stats) {
                    out += &format!("{name}{{listen=\"{listen}\"{labels}}} {v}\n");
                }
            }
        };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(
        "idlegate_relay_connections_total",
        "counter",
        "Connections relayed.",
        &|s| vec![(String::new(), load(&s.connections))],
    );
    family(
        "idlegate_relay_connections_open",
        "gauge",
        "Connections being relayed now.",
        &|s| vec![(String::new(), load(&s.open))],
    );
    family(
        "idlegate_relay_bytes_total",
        "counter",
        "Bytes relayed, by direction.",
        &|s| {
            vec![
                (",direction=\"to_server\"".into(), load(&s.bytes_to_server)),
                (",direction=\"to_client\"".into(), load(&s.bytes_to_client)),
            ]
        },
    );
    family(
        "idlegate_relay_resets_total",
        "counter",
        "Connections that ended with a RST passed on.",
        &|s| vec![(String::new(), load(&s.resets))],
    );
    family(
        "idlegate_relay_reconnects_total",
        "counter",
        "Tunnel sessions resumed on a new leg.",
        &|s| vec![(String::new(), load(&s.reconnects))],
    );
    family(
        "idlegate_relay_replayed_bytes_total",
        "counter",
        "Tunnel bytes sent again after a resume.",
        &|s| vec![(String::new(), load(&s.replayed_bytes))],
    );
    family(
        "idlegate_relay_heartbeat_misses_total",
        "counter",
        "Tunnel legs lost because no heartbeat arrived in time.",
        &|s| vec![(String::new(), load(&s.heartbeat_misses))],
    );
    family(
        "idlegate_relay_sessions_expired_total",
        "counter",
        "Tunnel sessions ended unresumed (time limit, or unknown to the far end).",
        &|s| vec![(String::new(), load(&s.expired))],
    );
    out
}

/// Serves `render()` at http://ADDR/metrics (any path) until the process ends: one short
/// HTTP/1.0 answer per connection, a client that says nothing for a second is dropped.
pub fn serve_metrics(listener: TcpListener, render: impl Fn() -> String + Send + 'static) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
            let mut request = [0u8; 1024];
            let _ = (&conn).read(&mut request);
            let body = render();
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = (&conn).write_all(head.as_bytes());
            let _ = (&conn).write_all(body.as_bytes());
        }
    });
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// EOF from the source, passed on as a FIN.
    Fin,
    /// The source was reset (or timed out): passed on as a RST.
    Reset,
    /// The destination failed: the source was reset.
    Failed,
}

/// Copies `from` to `to` until EOF or an error, and passes the ending on.
fn pipe(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> End {
    let end = match splice_all(from, to, counter) {
        Ok(()) => End::Fin,
        Err(Side::Source) => End::Reset,
        Err(Side::Destination) => End::Failed,
    };
    match end {
        End::Fin => {
            let _ = to.shutdown(Shutdown::Write);
        }
        End::Reset => reset(to),
        End::Failed => reset(from),
    }
    end
}

/// Which socket an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Makes `stream` end with a RST: SO_LINGER 0, so the last close sends one, and a shutdown of
/// its read side, which wakes the thread copying from it.
fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Read);
}

/// Moves bytes with splice(2) through a pipe; falls back to read/write where splice fails
/// with EINVAL (a kernel or socket that cannot splice).
fn splice_all(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> Result<(), Side> {
    let Ok((pipe_r, pipe_w)) = make_pipe() else {
        return copy_all(from, to, counter);
    };
    // The default 64 KiB pipe at first; a connection that fills it (bulk data) gets a larger
    // one, which moves more per system call. Short connections never pay for it. The kernel
    // may refuse (pipe-max-size): the default then serves.
    let mut chunk = 1 << 16;
    let mut grown = false;
    loop {
        // SAFETY: plain syscalls on descriptors owned for the duration of the call.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                pipe_w.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
                libc::SPLICE_F_MOVE,
            )
        };
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) => return copy_all(from, to, counter),
                _ => return Err(Side::Source),
            }
        }
        if n as usize == chunk && !grown {
            grown = true;
            // SAFETY: fcntl on a descriptor this function owns.
            let size = unsafe { libc::fcntl(pipe_w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            if size > 0 {
                chunk = size as usize;
            }
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe {
                libc::splice(
                    pipe_r.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            if m < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Side::Destination);
            }
            if m == 0 {
                return Err(Side::Destination);
            }
            left -= m as usize;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The pipe size asked for per direction: what the relay holds at most.
const PIPE_SIZE: libc::c_int = 1 << 20;

fn make_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors this function now owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The read/write fallback of [`splice_all`].
fn copy_all(mut from: &TcpStream, mut to: &TcpStream, counter: &AtomicU64) -> Result<(), Side> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Side::Source),
        };
        to.write_all(&buf[..n]).map_err(|_| Side::Destination)?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_profiles_keepalive_fires_at_half_its_idle_timeout() {
        // Azure LB: 4 min → 120 s, 30 s, 8 (seeds 000 and 003).
        let k = Keepalive::for_profile(&idlegate_core::profile::AZURE_LB);
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Duration::from_secs(120), Duration::from_secs(30), 8)
        );
    }
}
