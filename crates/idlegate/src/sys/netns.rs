//! Named Linux network namespaces, as managed by `ip netns` (bind mounts in `/run/netns`).
//!
//! Contract: every function needs root (CAP_SYS_ADMIN) except [`list`] and [`exists`].
//! [`create`] fails if the namespace exists and leaves nothing behind on failure;
//! [`delete`] is idempotent. Code runs inside a namespace either in a dedicated thread
//! ([`spawn_in`]: sockets it creates live in that namespace, the caller's thread is
//! untouched) or in a child process ([`exec`]). Errors name the namespace and, for
//! commands, the full command line and its stderr. [`Namespace`] deletes on drop.

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::thread::{self, JoinHandle};

/// Directory where `ip netns` keeps one bind-mounted file per named namespace.
const NETNS_DIR: &str = "/run/netns";

/// Creates namespace `name` (`ip netns add`) and brings its `lo` up.
/// Fails if it already exists.
pub fn create(name: &str) -> Result<()> {
    check_name(name)?;
    ensure!(!exists(name), "network namespace {name} already exists");
    ip(&["netns", "add", name])?;
    if let Err(err) = ip(&["-n", name, "link", "set", "lo", "up"]) {
        let _ = delete(name);
        return Err(err.context(format!("bringing lo up in network namespace {name}")));
    }
    Ok(())
}

/// Deletes namespace `name` (`ip netns delete`); succeeds if it does not exist.
pub fn delete(name: &str) -> Result<()> {
    check_name(name)?;
    if !exists(name) {
        return Ok(());
    }
    match ip(&["netns", "delete", name]) {
        Err(_) if !exists(name) => Ok(()), // lost a race with another deleter
        other => other,
    }
}

/// Names of the existing named namespaces, sorted; empty if `/run/netns` does not exist.
pub fn list() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("reading {NETNS_DIR}"))?,
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {NETNS_DIR}"))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Whether namespace `name` exists (its `/run/netns` file is present).
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && ns_path(name).exists()
}

/// Runs `ip ARGS...`; the error carries the command line, exit status and stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let cmdline = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("could not run `{cmdline}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("`{cmdline}` failed ({}): {}", output.status, stderr.trim());
    }
    Ok(())
}

/// Moves the calling thread into namespace `name`, for good.
/// Only the network namespace changes; other threads of the process are unaffected.
pub fn enter_current_thread(name: &str) -> Result<()> {
    check_name(name)?;
    let path = ns_path(name);
    let file = File::open(&path)
        .with_context(|| format!("opening network namespace {name} ({})", path.display()))?;
    // SAFETY: plain syscall on a file descriptor that `file` keeps open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        return Err(err).with_context(|| format!("setns into network namespace {name}"));
    }
    Ok(())
}

/// Spawns a thread that runs `f` inside namespace `name`.
///
/// A short-lived launcher thread enters the namespace and spawns the worker, which
/// inherits it (Linux threads start in their creator's network namespace). So when
/// this returns `Ok`, `f` is guaranteed to run in `name` (and so are threads it spawns);
/// failures to enter the namespace are returned here.
pub fn spawn_in<T, F>(name: &str, f: F) -> Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ns = name.to_owned();
    let launcher = thread::Builder::new()
        .name(format!("netns-launch:{name}"))
        .spawn(move || -> Result<JoinHandle<T>> {
            enter_current_thread(&ns)?;
            thread::Builder::new()
                .name(format!("netns:{ns}"))
                .spawn(f)
                .with_context(|| format!("spawning a thread in network namespace {ns}"))
        })
        .with_context(|| format!("spawning the launcher thread for network namespace {name}"))?;
    match launcher.join() {
        Ok(result) => result,
        Err(_) => bail!("launcher thread for network namespace {name} panicked"),
    }
}

/// Runs `program args...` inside namespace `name` (`ip netns exec`), inheriting
/// stdin/stdout/stderr, and returns its exit status unchanged.
pub fn exec(name: &str, program: &str, args: &[String]) -> Result<ExitStatus> {
    check_name(name)?;
    Command::new("ip")
        .args(["netns", "exec", name, program])
        .args(args)
        .status()
        .with_context(|| format!("could not run `ip netns exec {name} {program}`"))
}

/// The processes running in namespace `name` (`ip netns pids`).
pub fn pids(name: &str) -> Result<Vec<libc::pid_t>> {
    check_name(name)?;
    let output = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .with_context(|| format!("could not run `ip netns pids {name}`"))?;
    ensure!(
        output.status.success(),
        "`ip netns pids {name}` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Stops every process in namespace `name`: SIGTERM, up to `grace` to exit, then SIGKILL.
/// Returns how many processes there were.
pub fn stop_processes(name: &str, grace: std::time::Duration) -> Result<usize> {
    let running = pids(name)?;
    signal_all(&running, libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while !pids(name)?.is_empty() && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = pids(name)?;
    if !left.is_empty() {
        tracing::warn!(
            "{} process(es) in {name} ignored SIGTERM for {grace:?}: SIGKILL",
            left.len()
        );
        signal_all(&left, libc::SIGKILL);
    }
    Ok(running.len())
}

fn signal_all(pids: &[libc::pid_t], signal: libc::c_int) {
    for &pid in pids {
        // A process that is gone already needs no signal.
        let _ = super::process::signal(pid, signal);
    }
}

/// A named namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates the namespace (see [`create`]).
    pub fn create(name: &str) -> Result<Namespace> {
        create(name)?;
        Ok(Namespace {
            name: name.to_owned(),
        })
    }

    /// The namespace name, as used by `ip -n NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(err) = delete(&self.name) {
            tracing::warn!("deleting network namespace {}: {err:#}", self.name);
        }
    }
}

/// Rejects names that `ip netns` refuses or that would escape `/run/netns`.
fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    ensure!(!bad, "invalid network namespace name {name:?}");
    Ok(())
}

fn ns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}
