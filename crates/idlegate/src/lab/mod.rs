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
//! devices vanish with the file descriptors.

pub mod demo;
pub mod scenario;

use crate::gateway::{self, Attachment, Gateway, Options};
use crate::sys::file::{self, Lock};
use crate::sys::netns::{self, Namespace};
use crate::sys::process;
use crate::sys::tun::Tun;
use anyhow::{bail, ensure, Context, Result};
use idlegate_core::Config;
use idlegate_core::{Counters, Interface};
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
        };
        let gateway = Gateway::new(config, std::mem::take(&mut self.ports), &options)?;
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
        let mut lab = Lab::up(name, config)?;
        let mut gateway = lab.gateway(config, Extras::default())?;
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

/// Namespaces and TUN devices need CAP_SYS_ADMIN and CAP_NET_ADMIN.
pub fn ensure_root() -> Result<()> {
    if !process::is_root() {
        bail!(
            "the lab needs root: it creates network namespaces and TUN devices (run it with sudo)"
        );
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
            bail!(
                "lab {lab} is already up (pid {}); stop it first or pick another --name",
                holder.trim()
            );
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
            State::Down if waited > DOWN_GRACE => {
                bail!("lab {lab} is not up: start it with `idlegate lab up --config FILE --name {lab}`")
            }
            State::Starting if waited > STARTING_GRACE => {
                bail!("lab {lab} did not become ready in {STARTING_GRACE:?}")
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
            tracing::warn!("removing namespace {ns} left by an earlier run of lab {lab}");
            netns::stop_processes(&ns, STOP_GRACE)?;
            netns::delete(&ns)?;
        }
    }
    Ok(())
}

/// Runs `program` in `host` of the running lab `lab`; its exit status passes through.
pub fn exec(lab: &str, host: &str, program: &str, args: &[String]) -> Result<ExitStatus> {
    check_lab_name(lab)?;
    ensure_root()?;
    wait_ready(lab)?;
    let ns = namespace(lab, host);
    if !netns::exists(&ns) {
        let prefix = format!("ig-{lab}-");
        let hosts: Vec<String> = netns::list()?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .collect();
        bail!("lab {lab} has no host {host} (hosts: {})", hosts.join(", "));
    }
    netns::exec(&ns, program, args)
}
