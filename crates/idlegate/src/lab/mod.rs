//! The lab: real Linux hosts, each in its own network namespace, wired to the gateway.
//!
//! [`Lab::up`] creates one namespace per backend pool member (with the member's address from
//! the config) and one for the `internet` host (203.0.113.100). Each host gets its own TUN
//! device whose file descriptor the gateway holds; the host's default route points into it,
//! so every packet a host sends off-host reaches the gateway, and the gateway delivers to a
//! host by writing to its device; packets for outside addresses that are no host's go to the
//! `internet` host, which may route them further. Namespaces are called `ig-LAB-HOST`.
//!
//! A lab owns a lock file, `/run/idlegate/lab-LAB.lock`, while it is up: a second `up` of the
//! same lab is refused, and an `up` that finds the lock free removes whatever namespaces a
//! crashed run of that lab left behind. Dropping the [`Lab`] removes its namespaces; the TUN
//! devices vanish with the file descriptors. Once its gateway exists, a lab also describes
//! itself in `/run/idlegate/lab-LAB.json` ([`Info`]: config, pid, hosts, time scale) for
//! [`list`] and [`exec`], which gives the programs it runs the lab's time scale in
//! [`idlegate_core::config::TIME_SCALE_ENV`]. A lab that is not up is reported one way,
//! [`not_up`], by every command that needs one.

pub mod demo;
pub mod demo_html;
pub mod demo_rule;
pub mod scenario;

use crate::gateway::{self, Attachment, Gateway, Options};
use crate::obs::report::{Report, Status};
use crate::sys::file::{self, Lock};
use crate::sys::netns::{self, Namespace};
use crate::sys::tun::Tun;
use crate::sys::{errno, job, process, signal};
use crate::LOG_TARGET;
use anyhow::{anyhow, bail, ensure, Context, Result};
use idlegate_core::config::{LAB_ENV, TIME_SCALE_ENV};
use idlegate_core::Config;
use idlegate_core::{Counters, Interface};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitStatus;

/// What a lab's gateway offers besides forwarding and `idlegate flows`.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// A capture file (pcapng) of every packet seen and made, on its side, in or out.
    pub pcap: Option<PathBuf>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// The file the config was read from, for `lab list`.
    pub config_path: Option<PathBuf>,
    /// Where to serve the HTTP API and the live page.
    pub api: Option<crate::gateway::ApiOptions>,
}

/// What a lab that is up says of itself (`/run/idlegate/lab-LAB.json`, `lab list --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    /// The config file, if the lab was started from one.
    pub config: Option<PathBuf>,
    /// The process running the lab's gateway (`lab up`'s).
    pub pid: u32,
    pub hosts: Vec<HostInfo>,
    /// Every timer of the lab runs 1/time_scale as long.
    pub time_scale: u32,
    /// Where the lab's API and live page are served (`http://ADDR/`), if `--api` was given.
    #[serde(default)]
    pub api: Option<String>,
}

/// A host, as [`Info`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    pub address: IpAddr,
    pub namespace: String,
}

/// The outside host every lab has.
pub const INTERNET: &str = "internet";
/// Its address.
pub const INTERNET_ADDRESS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
/// Its IPv6 address, for configs with IPv6 frontends (fd00::/8, unique local).
pub const INTERNET_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 0x100);

const LOCK_DIR: &str = "/run/idlegate";
/// How long programs left in a host get between SIGTERM and SIGKILL when the lab goes down.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A host of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: IpAddr,
    pub interface: Interface,
}

/// A running lab: its namespaces and the TUN devices that join them to the gateway.
pub struct Lab {
    name: String,
    hosts: Vec<Host>,
    ports: Vec<Attachment>,
    /// Gateway workers, so queues per device.
    workers: usize,
    // Declared after `ports`: devices close before their namespaces go.
    namespaces: Vec<Namespace>,
    /// Holds `PID` while the lab is being built and `PID ready` once it is up.
    lock: File,
}

impl Drop for Lab {
    /// Programs still running in the hosts are stopped; then devices go, then namespaces,
    /// then the lock file (unlinked while still locked).
    fn drop(&mut self) {
        for ns in &self.namespaces {
            match netns::stop_processes(ns.name(), STOP_GRACE) {
                Ok(0) => {}
                Ok(n) => tracing::info!("stopped {n} process(es) still running in {}", ns.name()),
                Err(e) => tracing::warn!("stopping the processes in {}: {e:#}", ns.name()),
            }
        }
        self.ports.clear();
        self.namespaces.clear();
        let _ = std::fs::remove_file(info_path(&self.name));
        let _ = std::fs::remove_file(lock_path(&self.name));
    }
}

impl Lab {
    /// Builds the lab `name` for `config`'s backend pool members plus the internet host, for a
    /// gateway of [`gateway::default_workers`] workers.
    pub fn up(name: &str, config: &Config) -> Result<Lab> {
        Lab::up_with_workers(name, config, gateway::default_workers())
    }

    /// [`Lab::up`] for a gateway of `workers` workers (one queue each on every device).
    pub fn up_with_workers(name: &str, config: &Config, workers: usize) -> Result<Lab> {
        check_lab_name(name)?;
        ensure_root()?;
        let hosts = hosts(config)?;
        let lock = lock(name)?;
        remove_stale(name)?;
        let mut lab = Lab {
            name: name.to_string(),
            hosts: Vec::new(),
            ports: Vec::new(),
            workers: workers.clamp(1, gateway::MAX_WORKERS),
            namespaces: Vec::new(),
            lock,
        };
        for (i, host) in hosts.into_iter().enumerate() {
            lab.add_host(i, host)?;
        }
        Ok(lab)
    }

    fn add_host(&mut self, index: usize, host: Host) -> Result<()> {
        let ns = Namespace::create(&namespace(&self.name, &host.name))?;
        let queues = Tun::create_queues(&device_name(&self.name, index), self.workers)?;
        let tun = queues.first().context("a TUN device has a queue")?;
        let addresses = match host.interface {
            Interface::Inside => vec![host.address],
            Interface::Outside => vec![INTERNET_ADDRESS.into(), INTERNET_ADDRESS_V6.into()],
        };
        tun.move_to(ns.name(), &addresses)
            .with_context(|| format!("wiring host {} of lab {}", host.name, self.name))?;
        self.namespaces.push(ns);
        // The internet host is also the way to every other outside address, so that a test
        // can put more of the internet behind it (a router, a narrower link).
        let only = match host.interface {
            Interface::Inside => Some(host.address),
            Interface::Outside => None,
        };
        self.ports.push(Attachment {
            queues,
            interface: host.interface,
            host: only,
        });
        self.hosts.push(host);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The namespace of `host`, for running code there.
    pub fn namespace_of(&self, host: &str) -> Result<String> {
        ensure!(
            self.hosts.iter().any(|h| h.name == host),
            "lab {} has no host {host} (hosts: {})",
            self.name,
            self.hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(namespace(&self.name, host))
    }

    /// The lab's gateway, holding its devices, answering `idlegate flows --lab`, with `extras`;
    /// marks the lab ready for `lab exec`. The lab must outlive its run.
    pub fn gateway(&mut self, config: &Config, extras: Extras) -> Result<Gateway> {
        let options = Options {
            control: Some(control_path(&self.name)),
            pcap: extras.pcap,
            metrics: extras.metrics,
            api: extras.api,
        };
        let gateway = Gateway::new(config, std::mem::take(&mut self.ports), &options)?;
        let info = Info {
            name: self.name.clone(),
            config: extras.config_path,
            pid: std::process::id(),
            hosts: self
                .hosts
                .iter()
                .map(|h| HostInfo {
                    name: h.name.clone(),
                    address: h.address,
                    namespace: namespace(&self.name, &h.name),
                })
                .collect(),
            time_scale: config.time_scale,
            api: gateway.api_addr().map(|addr| format!("http://{addr}/")),
        };
        let path = info_path(&self.name);
        std::fs::write(&path, serde_json::to_string_pretty(&info)?)
            .with_context(|| format!("writing {}", path.display()))?;
        write!(self.lock, " {READY}").context("marking the lab ready in its lock file")?;
        Ok(gateway)
    }

    /// Brings lab `name` up, runs its gateway on a thread while `work` runs, then takes it all
    /// down. Returns what `work` returned and the gateway's counters.
    pub fn with_gateway<T>(
        name: &str,
        config: &Config,
        work: impl FnOnce(&Lab) -> Result<T>,
    ) -> Result<(T, Counters)> {
        Lab::with_gateway_and(name, config, Extras::default(), work)
    }

    /// [`Lab::with_gateway`] with `extras` (e.g. the config file, for `lab list`).
    pub fn with_gateway_and<T>(
        name: &str,
        config: &Config,
        extras: Extras,
        work: impl FnOnce(&Lab) -> Result<T>,
    ) -> Result<(T, Counters)> {
        let mut lab = Lab::up(name, config)?;
        let mut gateway = lab.gateway(config, extras)?;
        let stopper = gateway.stopper();
        let thread = std::thread::Builder::new()
            .name("gateway".into())
            .spawn(move || gateway.run().map(|()| gateway.counters().clone()))
            .context("starting the gateway thread")?;
        let result = work(&lab);
        stopper.stop();
        let counters = match thread.join() {
            Ok(counters) => counters?,
            Err(_) => bail!("the gateway thread panicked"),
        };
        drop(lab);
        Ok((result?, counters))
    }
}

/// Whether `config` makes a lab: its members can be hosts (none is called `internet` or has
/// that host's address). A failure is the config's; the caller names the file.
pub fn check(config: &Config) -> Result<()> {
    hosts(config).map(drop)
}

/// The backend pool members and the internet host, refused if two would share an address.
fn hosts(config: &Config) -> Result<Vec<Host>> {
    let mut hosts: Vec<Host> = Vec::new();
    for member in config.backend_pools.iter().flat_map(|p| &p.members) {
        ensure!(
            member.name != INTERNET,
            "a member may not be called \"{INTERNET}\": the lab's outside host has that name"
        );
        ensure!(
            member.address != IpAddr::from(INTERNET_ADDRESS)
                && member.address != IpAddr::from(INTERNET_ADDRESS_V6),
            "member {} has address {}, which is the lab's {INTERNET} host",
            member.name,
            member.address,
        );
        hosts.push(Host {
            name: member.name.clone(),
            address: member.address,
            interface: Interface::Inside,
        });
    }
    hosts.push(Host {
        name: INTERNET.to_string(),
        address: INTERNET_ADDRESS.into(),
        interface: Interface::Outside,
    });
    Ok(hosts)
}

/// The namespace name of `host` in lab `lab`.
pub fn namespace(lab: &str, host: &str) -> String {
    format!("ig-{lab}-{host}")
}

/// A TUN name unique to the lab and host index, within IFNAMSIZ (15 bytes).
fn device_name(lab: &str, index: usize) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(lab) as u32;
    format!("ig{hash:08x}-{index}")
}

fn check_lab_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    // No '-': it separates the lab from the host in `ig-LAB-HOST`, so `ig-a-b-c` cannot
    // belong to two labs.
    ensure!(
        ok,
        "lab name {name:?}: use 1–32 letters, digits or '_' (it becomes part of namespace names ig-NAME-HOST)"
    );
    Ok(())
}

/// Namespaces and TUN devices need CAP_SYS_ADMIN and CAP_NET_ADMIN: `lab up` and `lab demo`.
pub fn ensure_root() -> Result<()> {
    if !process::is_root() {
        return Err(anyhow!(
            "building a lab needs root: it creates network namespaces and TUN devices (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        ))
        .hint("run it as root, e.g. with sudo");
    }
    Ok(())
}

/// Entering a host's namespace (setns) needs CAP_SYS_ADMIN: `lab exec`.
fn ensure_may_enter(lab: &str, host: &str) -> Result<()> {
    if !process::is_root() {
        return Err(anyhow!(
            "lab exec: entering host {host} of {} needs CAP_SYS_ADMIN (setns into its network namespace)",
            called(lab)
        ))
        .hint("run it as root, e.g. with sudo");
    }
    Ok(())
}

/// How messages name lab `lab`: `the lab "lab"`, so the default name reads well too.
pub fn called(lab: &str) -> String {
    format!("the lab \"{lab}\"")
}

/// The one error every command gives for a lab that is not up, with how to start it and
/// which labs are up.
pub fn not_up(lab: &str) -> anyhow::Error {
    let others = names_up();
    let start = format!("start it with `idlegate lab up --name {lab} --config FILE`");
    let hint = if others.is_empty() {
        start
    } else {
        format!("{start} (labs up: {})", others.join(", "))
    };
    crate::obs::report::hinted(anyhow!("{} is not up", called(lab)), hint)
}

/// Fails with [`not_up`] unless lab `lab` is up or coming up.
pub fn ensure_up(lab: &str) -> Result<()> {
    check_lab_name(lab)?;
    if !is_up(lab)? {
        return Err(not_up(lab));
    }
    Ok(())
}

fn info_path(lab: &str) -> PathBuf {
    PathBuf::from(LOCK_DIR).join(format!("lab-{lab}.json"))
}

/// What lab `lab` says of itself, if it is up and has said it.
pub fn info(lab: &str) -> Option<Info> {
    let text = std::fs::read_to_string(info_path(lab)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The names of the labs that are up (or coming up), sorted. A lock file that cannot be read
/// is said in a warning (its lab may be up), and left out.
pub fn names_up() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(LOCK_DIR) else {
        return Vec::new();
    };
    let locks = entries.filter_map(|e| e.ok()).filter_map(|e| {
        let file = e.file_name().to_string_lossy().into_owned();
        Some(
            file.strip_prefix("lab-")?
                .strip_suffix(".lock")?
                .to_string(),
        )
    });
    let (names, unreadable) = up_among(locks, is_up);
    for (name, e) in unreadable {
        tracing::warn!(target: LOG_TARGET,
            "{} may be up, but its lock file cannot be read: {e:#}",
            called(&name)
        );
    }
    names
}

/// The labs among `names` that `is_up` says are up, sorted, and those it could not tell.
fn up_among(
    names: impl Iterator<Item = String>,
    is_up: impl Fn(&str) -> Result<bool>,
) -> (Vec<String>, Vec<(String, anyhow::Error)>) {
    let (mut up, mut unreadable) = (Vec::new(), Vec::new());
    for name in names {
        match is_up(&name) {
            Ok(true) => up.push(name),
            Ok(false) => {}
            Err(e) => unreadable.push((name, e)),
        }
    }
    up.sort();
    (up, unreadable)
}

/// A lab that is up, as `lab list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    /// `ready`, or `starting` while `lab up` builds it.
    pub state: &'static str,
    /// `lab up`'s pid, from the lock file.
    pub pid: Option<u32>,
    pub config: Option<PathBuf>,
    pub time_scale: Option<u32>,
    pub hosts: Vec<HostInfo>,
    /// `http://ADDR/` where its API and live page are served, or null.
    pub api: Option<String>,
}

/// The labs that are up or coming up.
pub fn list() -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for name in names_up() {
        let Some(state) = shown(state(&name)?) else {
            continue;
        };
        let info = info(&name);
        out.push(Listed {
            state,
            pid: info.as_ref().map(|i| i.pid).or_else(|| holder(&name)),
            config: info.as_ref().and_then(|i| i.config.clone()),
            time_scale: info.as_ref().map(|i| i.time_scale),
            api: info.as_ref().and_then(|i| i.api.clone()),
            hosts: info.map(|i| i.hosts).unwrap_or_default(),
            name,
        });
    }
    Ok(out)
}

/// How `lab list` shows a lab in `state`; a lab down (gone since it was listed) is not shown.
fn shown(state: State) -> Option<&'static str> {
    match state {
        State::Ready => Some("ready"),
        State::Starting => Some("starting"),
        State::Down => None,
    }
}

/// The pid `lab up` wrote into lab `lab`'s lock file.
fn holder(lab: &str) -> Option<u32> {
    let text = std::fs::read_to_string(lock_path(lab)).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// How long [`down`] waits for a lab to go.
pub const DOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes lab `lab` down: SIGTERM to its `lab up`, then waits until its lock is free.
pub fn down(lab: &str) -> Result<()> {
    ensure_up(lab)?;
    let pid =
        holder(lab).with_context(|| format!("{}: its lock file names no process", called(lab)))?;
    process::signal(pid as i32, libc::SIGTERM)
        .with_context(|| format!("stopping {} (SIGTERM to lab up, pid {pid})", called(lab)))
        .with_hint(|| {
            "only the user who started it (root) may stop it: run it as root, e.g. with sudo"
        })?;
    let start = std::time::Instant::now();
    while is_up(lab)? {
        if start.elapsed() > DOWN_TIMEOUT {
            return Err(anyhow!(
                "{} did not go down within {DOWN_TIMEOUT:?} of SIGTERM (pid {pid})",
                called(lab)
            ))
            .hint(format!(
                "kill it with `kill -KILL {pid}`; the next `lab up --name {lab}` removes what it leaves"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// The control socket of lab `lab`'s gateway, for `idlegate flows --lab`.
pub fn control_path(lab: &str) -> PathBuf {
    PathBuf::from(LOCK_DIR).join(format!("lab-{lab}.sock"))
}

fn lock_path(lab: &str) -> PathBuf {
    PathBuf::from(LOCK_DIR).join(format!("lab-{lab}.lock"))
}

/// Takes the lab's lock, or says who holds it.
fn lock(lab: &str) -> Result<File> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let path = lock_path(lab);
    // A lab going down unlinks its lock file while holding it: a lock won on a file that is no
    // longer at `path` is worthless, so try again with the new one.
    let mut file = loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !file::try_lock(&file, Lock::Exclusive) {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = holder.split_whitespace().next().unwrap_or("?").to_string();
            return Err(anyhow!("{} is already up (pid {pid})", called(lab))).hint(format!(
                "take it down with `idlegate lab down {lab}`, or pick another --name"
            ));
        }
        if same_file(&file, &path) {
            break file;
        }
    };
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

fn same_file(file: &File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// What `lab exec` finds of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    Starting,
    Ready,
}

const READY: &str = "ready";

fn state(lab: &str) -> Result<State> {
    if !is_up(lab)? {
        return Ok(State::Down);
    }
    let content = std::fs::read_to_string(lock_path(lab)).unwrap_or_default();
    Ok(if content.split_whitespace().any(|w| w == READY) {
        State::Ready
    } else {
        State::Starting
    })
}

/// Waits until lab `lab` is ready: briefly if it is down (its `lab up` may have just been
/// started in the background), longer while it is being built.
fn wait_ready(lab: &str) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let waited = start.elapsed();
        match state(lab)? {
            State::Ready => return Ok(()),
            State::Down if waited > DOWN_GRACE => return Err(not_up(lab)),
            State::Starting if waited > STARTING_GRACE => {
                bail!("{} did not become ready in {STARTING_GRACE:?}", called(lab))
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

const DOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
const STARTING_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a process holds lab `lab`'s lock, i.e. the lab is up or coming up.
fn is_up(lab: &str) -> Result<bool> {
    let file = match File::open(lock_path(lab)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}", lock_path(lab).display())),
    };
    // The shared lock is released when `file` closes.
    let free = file::try_lock(&file, Lock::Shared);
    Ok(!free)
}

/// Removes the namespaces of an earlier run of `lab` that did not clean up (crash, kill -9).
fn remove_stale(lab: &str) -> Result<()> {
    let prefix = format!("ig-{lab}-");
    for ns in netns::list()? {
        if ns.starts_with(&prefix) {
            tracing::warn!(target: LOG_TARGET,
                "removing namespace {ns} left by an earlier run of {}",
                called(lab)
            );
            netns::stop_processes(&ns, STOP_GRACE)?;
            netns::delete(&ns)?;
        }
    }
    Ok(())
}

/// Runs `program` in `host` of the running lab `lab`, in the foreground: its exit status
/// passes through. The program runs in a process group of its own, which takes the terminal
/// when this process's group holds it; Ctrl-Z stops both, `fg` continues both ([`job`]).
/// Every signal sent to this one (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2, SIGALRM,
/// SIGWINCH), alone or with its whole group, is passed on to the program once, and this one
/// returns only once the program has ended ([`signal::PassOn`]). Killed with SIGKILL, this process takes the
/// program with it (PR_SET_PDEATHSIG, [`netns::spawn`]). The program finds the lab's time
/// scale in [`TIME_SCALE_ENV`] and the lab's name in [`LAB_ENV`].
///
/// A program that cannot be run fails with [`Status::NotFound`] (127) or
/// [`Status::CannotExecute`] (126), as a shell does.
pub fn exec(lab: &str, host: &str, program: &str, args: &[String]) -> Result<ExitStatus> {
    check_lab_name(lab)?;
    ensure_may_enter(lab, host)?;
    wait_ready(lab)?;
    let ns = namespace(lab, host);
    if !netns::exists(&ns) {
        let prefix = format!("ig-{lab}-");
        let hosts: Vec<String> = netns::list()?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .collect();
        return Err(anyhow!("{} has no host {host}", called(lab)))
            .hint(format!("its hosts: {}", hosts.join(", ")))
            .status(Status::Usage);
    }
    let mut command = std::process::Command::new(program);
    command.args(args).env(LAB_ENV, lab);
    if let Some(info) = info(lab) {
        command.env(TIME_SCALE_ENV, info.time_scale.to_string());
    }
    let signals = signal::PassOn::catch().context("lab exec: catching signals to pass on")?;
    let running = || format!("lab exec: running {program:?} in {host}");
    let terminal = job::Terminal::controlling();
    job::own_group(&mut command, terminal.as_ref());
    let spawned = netns::spawn(&ns, &mut command);
    if spawned.is_err() {
        // The child may have taken the terminal before it failed.
        job::take_back(terminal.as_ref());
    }
    let child = match spawned {
        Ok(child) => child,
        Err(netns::SpawnError::Entering(e)) => return Err(e).with_context(running),
        Err(netns::SpawnError::Exec(e)) => {
            let reason = errno::reason(&e);
            return Err(crate::obs::report::cannot_start(program, e.kind(), reason))
                .with_context(|| format!("starting {program:?} in {host}"));
        }
    };
    let pid = child.id() as i32;
    signals.to(pid);
    job::wait(pid, terminal.as_ref()).with_context(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_list_leaves_out_a_lab_gone_down_since_it_was_listed() {
        assert_eq!(shown(State::Ready), Some("ready"));
        assert_eq!(shown(State::Starting), Some("starting"));
        assert_eq!(shown(State::Down), None);
    }

    #[test]
    fn a_lock_file_that_cannot_be_read_is_told_apart_from_a_lab_down() {
        let names = ["b", "gone", "a", "unreadable"].map(String::from);
        let (up, unreadable) = up_among(names.into_iter(), |name| match name {
            "gone" => Ok(false),
            "unreadable" => Err(anyhow!("opening /run/idlegate/lab-unreadable.lock: denied")),
            _ => Ok(true),
        });
        assert_eq!(up, ["a", "b"]);
        let unreadable: Vec<String> = unreadable
            .iter()
            .map(|(name, e)| format!("{name}: {e}"))
            .collect();
        assert_eq!(
            unreadable,
            ["unreadable: opening /run/idlegate/lab-unreadable.lock: denied"]
        );
    }
}
