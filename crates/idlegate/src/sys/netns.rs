//! Named Linux network namespaces, as `ip netns` (iproute2) manages them: one file per
//! namespace in `/run/netns`, a bind mount of the namespace's nsfs file. Made with syscalls
//! only, so that namespaces made here and by `ip netns add` are interchangeable.
//!
//! Contract: every function needs root (CAP_SYS_ADMIN) except [`list`], [`exists`] and
//! [`pids`]. [`create`] fails if the namespace exists (a plain file left in its place by a
//! process killed while making it is stale, and replaced) and leaves nothing behind on
//! failure; it makes `/run/netns` and its parents if missing; [`delete`] is idempotent. Code runs inside a namespace either in a dedicated thread
//! ([`spawn_in`]: sockets it creates live in that namespace, the caller's thread is
//! untouched) or in a child process ([`exec`] and [`spawn`], as `ip netns exec`). Errors name the
//! namespace and the step that failed. [`Namespace`] deletes on drop.

use super::rtnl::Rtnl;
use anyhow::{bail, ensure, Context, Result};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::{self, JoinHandle};

/// Directory where `ip netns` keeps one bind-mounted file per named namespace.
const NETNS_DIR: &str = "/run/netns";
/// Directory whose `NAME/FILE` files `ip netns exec NAME` bind-mounts over `/etc/FILE`.
const NETNS_ETC_DIR: &str = "/etc/netns";

/// Creates namespace `name` (`ip netns add`) and brings its `lo` up.
/// Fails if it already exists. A plain file in its place (not a mount point: what a process
/// killed between creating the file and bind-mounting onto it leaves) is stale: removed.
pub fn create(name: &str) -> Result<()> {
    check_name(name)?;
    let creating = || format!("creating network namespace {name}");
    // Held until the namespace is made: other idlegate processes wait for it.
    let _lock = prepare_run_dir().with_context(creating)?;
    let path = ns_path(name);
    remove_if_stale(&path).with_context(creating)?;
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path);
    match made {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
            "network namespace {name} already exists\n\
             hint: choose another name, or delete it first (`ip netns delete {name}`)"
        ),
        Err(e) => {
            let what = format!("creating {}", path.display());
            return Err(read_only_hint(e, what)).with_context(creating);
        }
        Ok(_) => {}
    }
    let made = thread::Builder::new()
        .name(format!("netns-add:{name}"))
        .spawn({
            let (name, path) = (name.to_owned(), path.clone());
            move || make_and_bind(&name, &path)
        })
        .context("spawning a thread to make a network namespace");
    let made = match made {
        Ok(thread) => match thread.join() {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the thread making it panicked")),
        },
        Err(err) => Err(err),
    };
    if let Err(err) = made {
        // Whatever was done is undone: a bind mount made, then the file.
        let _ = unmount(&path);
        let _ = std::fs::remove_file(&path);
        return Err(err.context(format!("creating network namespace {name}")));
    }
    Ok(())
}

/// Removes `path` if it is a plain file of `/run/netns`, not a mount point: a namespace
/// file is a bind mount of an nsfs file, whose device is nsfs's, not the directory's.
/// (An `ip netns add` running at this very moment, between its create and its mount, would
/// lose its file: it then fails, as it would had it lost the race to us.)
fn remove_if_stale(path: &Path) -> Result<()> {
    let file = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.with_context(|| format!("reading {}", path.display()))?,
    };
    let dir = std::fs::metadata(NETNS_DIR).with_context(|| format!("reading {NETNS_DIR}"))?;
    if file.is_file() && file.dev() == dir.dev() {
        tracing::warn!(
            "{} is a plain file, not a mounted namespace (left by a process that died while \
             making it): removing it",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    Ok(())
}

/// `err` of `what`, with a hint when it is EROFS: a read-only root filesystem (a container's
/// `--read-only`) has no writable `/run`.
fn read_only_hint(err: io::Error, what: String) -> anyhow::Error {
    if err.raw_os_error() == Some(libc::EROFS) {
        anyhow::anyhow!(
            "{what}: {err}\n\
             hint: {NETNS_DIR} must be writable: mount a tmpfs at /run (`docker run --tmpfs /run`, \
             `podman run --tmpfs /run`, or `mount -t tmpfs tmpfs /run`)"
        )
    } else {
        anyhow::Error::new(err).context(what)
    }
}

/// In a throwaway thread: a new network namespace for this thread only, bind-mounted onto
/// `path` (which keeps it alive after the thread ends), with `lo` up.
fn make_and_bind(name: &str, path: &Path) -> Result<()> {
    // SAFETY: plain syscall; it changes only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    // /proc/self would be the process's main thread, still in the old namespace.
    let own = "/proc/thread-self/ns/net";
    mount(Some(own), path, None, libc::MS_BIND)
        .with_context(|| format!("bind-mounting {own} onto {}", path.display()))?;
    let mut rtnl = Rtnl::here(format!("network namespace {name}"))?;
    let lo = rtnl.link("lo")?;
    rtnl.set_up(&lo)
}

/// Makes `/run/netns` (and any missing parent: an empty container image has no `/run`) a
/// shared mount point, exactly as `ip netns add` does (iproute2 ip/ipnetns.c): make it shared;
/// if that fails with EINVAL (not a mount point yet), bind-mount it onto itself (MS_BIND |
/// MS_REC) and try once more. A new bind mount of a shared mount joins its peer group, so
/// other mount namespaces (systemd's PrivateTmp or ProtectSystem services, containers) keep
/// seeing namespaces made later; this is why it is never made private in between. Shared so
/// that a namespace file unmounted in one mount namespace is unmounted in all (and the
/// namespace freed). Returns the directory, flock-ed: idlegate processes making namespaces
/// wait for each other while they hold it (`ip netns add` takes no lock).
fn prepare_run_dir() -> Result<File> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_DIR)
        .map_err(|e| read_only_hint(e, format!("making {NETNS_DIR}")))?;
    let dir = File::open(NETNS_DIR).with_context(|| format!("opening {NETNS_DIR}"))?;
    // SAFETY: flock on a descriptor `dir` keeps open; released when `dir` closes.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        tracing::warn!(
            "could not lock {NETNS_DIR}: {}; going on without",
            io::Error::last_os_error()
        );
    }
    let dir_path = Path::new(NETNS_DIR);
    let mut made_mount_point = false;
    loop {
        let shared = mount(None, dir_path, None, libc::MS_SHARED | libc::MS_REC);
        match shared {
            Ok(()) => return Ok(dir),
            // EINVAL: not a mount point yet; make it one, once.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !made_mount_point => {
                mount(
                    Some(NETNS_DIR),
                    dir_path,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                )
                .with_context(|| format!("bind-mounting {NETNS_DIR} onto itself"))?;
                made_mount_point = true;
            }
            Err(e) => return Err(e).with_context(|| format!("making {NETNS_DIR} a shared mount")),
        }
    }
}

/// Deletes namespace `name` (`ip netns delete`: detach the bind mount, remove the file);
/// succeeds if it does not exist. The namespace itself lives on while a process or an open
/// descriptor is in it.
pub fn delete(name: &str) -> Result<()> {
    check_name(name)?;
    let path = ns_path(name);
    // Not mounted (a half-made namespace of another program) is fine: the file goes anyway.
    let _ = unmount(&path);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()), // none, or lost a race
        Err(e) => Err(e).with_context(|| {
            format!(
                "deleting network namespace {name}: removing {}",
                path.display()
            )
        }),
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

/// Opens namespace `name`'s file, the descriptor `setns` and IFLA_NET_NS_FD take.
pub fn open(name: &str) -> Result<File> {
    check_name(name)?;
    let path = ns_path(name);
    File::open(&path)
        .with_context(|| format!("opening network namespace {name} ({})", path.display()))
}

/// Moves the calling thread into namespace `name`, for good.
/// Only the network namespace changes; other threads of the process are unaffected.
fn enter_current_thread(name: &str) -> Result<()> {
    enter_file(&open(name)?, name)
}

/// Moves the calling thread, for good, into the network namespace `ns` refers to (an open
/// namespace file), which errors call `name`. Only for threads made to be moved.
pub(crate) fn enter_file(ns: &File, name: &str) -> Result<()> {
    // SAFETY: plain syscall on a file descriptor that `ns` keeps open for the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
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

/// Runs `program args...` inside namespace `name`, inheriting stdin/stdout/stderr, and
/// returns its exit status unchanged ([`spawn`], then wait).
pub fn exec(name: &str, program: &str, args: &[String]) -> Result<ExitStatus> {
    let running = || format!("running `{program}` in network namespace {name}");
    let mut command = Command::new(program);
    command.args(args);
    match spawn(name, &mut command) {
        Ok(mut child) => child.wait().with_context(running),
        Err(SpawnError::Entering(e)) => Err(e).with_context(running),
        Err(SpawnError::Exec(e)) => Err(e).with_context(running),
    }
}

/// How [`spawn`] failed.
#[derive(Debug)]
pub enum SpawnError {
    /// A step before the program, in the child (entering the namespace, its mounts) or in
    /// the parent (the pipe, the fork): the error names the step; the caller names the
    /// namespace and the program.
    Entering(anyhow::Error),
    /// The program itself could not be executed: execve(2)'s errno (ENOENT: not found;
    /// EACCES: not executable, or a directory; ENOEXEC: not a format the kernel runs).
    Exec(io::Error),
}

/// Starts `command` inside namespace `name` and returns it running.
///
/// As `ip netns exec` does, the child also gets a mount namespace of its own (mounts do not
/// propagate back), with `/sys` mounted afresh so that `/sys/class/net` lists the namespace's
/// devices, and each file `/etc/netns/NAME/FILE` bind-mounted over `/etc/FILE` (a failed
/// bind is skipped, as iproute2 does with a warning). It does not, as iproute2 does not,
/// touch `/proc` or other namespaces. Unlike `ip netns exec`, the child is killed (SIGKILL,
/// PR_SET_PDEATHSIG) when the thread that started it ends, so a caller that is killed does
/// not leave it running: call it from a thread that lives until the child is waited for (the
/// main thread).
pub fn spawn(name: &str, command: &mut Command) -> Result<std::process::Child, SpawnError> {
    let ns = open(name).map_err(SpawnError::Entering)?;
    let fd = ns.as_raw_fd();
    let sysfs_source = CString::new(name)
        .context("namespace name with a NUL byte")
        .map_err(SpawnError::Entering)?;
    let etc = etc_binds(name);
    let sys_flags = if read_only("/sys") {
        libc::MS_RDONLY
    } else {
        0
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // The child writes the number of the step that failed here before it gives up: the error
    // std reports is only an errno. Both ends close on exec; non-blocking, so that reading an
    // empty pipe cannot wait.
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills `ends` with two new descriptors, owned right below.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(SpawnError::Entering(
            anyhow::Error::new(io::Error::last_os_error()).context("making a pipe"),
        ));
    }
    // SAFETY: just made, owned by nothing else.
    let (read_end, write_end) = unsafe { (File::from_raw_fd(ends[0]), File::from_raw_fd(ends[1])) };
    let report = write_end.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes syscalls (prctl, getppid, setns, unshare,
    // mount, umount2, write) on descriptors and C strings prepared before the fork,
    // allocates nothing and takes no lock.
    unsafe {
        command
            .pre_exec(move || enter_for_exec(fd, &sysfs_source, &etc, sys_flags, parent, report));
    }
    let spawned = command.spawn();
    // spawn returns once the child has exec'd or died: its step, if any, is in the pipe.
    drop(write_end);
    drop(ns);
    spawned.map_err(|err| {
        let mut step = [0u8; 1];
        let failed = match (&read_end).read(&mut step) {
            Ok(1) => Step::ALL.get(usize::from(step[0])).map(|s| s.describe()),
            _ => None,
        };
        match failed {
            Some(what) => SpawnError::Entering(anyhow::Error::new(err).context(what)),
            None => SpawnError::Exec(err),
        }
    })
}

/// Whether the filesystem at `path` is mounted read-only (statvfs(3); false if unknown).
fn read_only(path: &str) -> bool {
    let Ok(path) = CString::new(path) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed statvfs, both alive for the call.
    unsafe {
        let mut fs = std::mem::zeroed::<libc::statvfs>();
        libc::statvfs(path.as_ptr(), &mut fs) == 0 && fs.f_flag & libc::ST_RDONLY != 0
    }
}

/// The steps of `exec`'s child before exec, numbered as the child reports a failed one.
#[derive(Debug, Clone, Copy)]
enum Step {
    Setns = 0,
    Unshare = 1,
    Slave = 2,
    Sysfs = 3,
    DeathSignal = 4,
}

impl Step {
    const ALL: [Step; 5] = [
        Step::Setns,
        Step::Unshare,
        Step::Slave,
        Step::Sysfs,
        Step::DeathSignal,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::Setns => "entering it (setns)",
            Step::Unshare => "giving it a mount namespace of its own (unshare CLONE_NEWNS)",
            Step::Slave => "keeping its mounts from propagating back (mount / MS_SLAVE|MS_REC)",
            Step::Sysfs => "mounting the namespace's sysfs on /sys",
            Step::DeathSignal => {
                "tying the program's life to its starter's (prctl PR_SET_PDEATHSIG; the starter had ended)"
            }
        }
    }
}

/// The (source, target) pairs of the `/etc/netns/NAME` bind mounts `exec` makes.
fn etc_binds(name: &str) -> Vec<(CString, CString)> {
    let Ok(entries) = std::fs::read_dir(Path::new(NETNS_ETC_DIR).join(name)) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let source = CString::new(entry.path().as_os_str().as_bytes()).ok()?;
            let target = Path::new("/etc").join(entry.file_name());
            let target = CString::new(target.as_os_str().as_bytes()).ok()?;
            Some((source, target))
        })
        .collect()
}

/// In `exec`'s child, before exec: what iproute2's `netns_switch` does (lib/namespace.c).
/// A failed step's number goes to `report` (a pipe) before its errno is returned.
fn enter_for_exec(
    ns: RawFd,
    sysfs_source: &CStr,
    etc: &[(CString, CString)],
    sys_flags: libc::c_ulong,
    parent: libc::pid_t,
    report: RawFd,
) -> io::Result<()> {
    let check = |ok: bool, step: Step| {
        if ok {
            return Ok(());
        }
        // Taken first: write may change errno. An Os error allocates nothing.
        let err = io::Error::last_os_error();
        let code = step as u8;
        // SAFETY: a one-byte write from a live local to a descriptor open until exec; if it
        // fails the parent reports the errno without the step.
        let _ = unsafe { libc::write(report, (&code as *const u8).cast(), 1) };
        Err(err)
    };
    let none = c"none".as_ptr();
    // SAFETY: syscalls on a descriptor the parent keeps open until the child has exec'd, and
    // on NUL-terminated strings that outlive the calls.
    unsafe {
        // Killed with the thread that started it; if that already ended before this took,
        // the child has a new parent and gives up at once.
        let tied = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0;
        check(tied, Step::DeathSignal)?;
        if libc::getppid() != parent {
            *libc::__errno_location() = libc::ESRCH;
            check(false, Step::DeathSignal)?;
        }
        check(libc::setns(ns, libc::CLONE_NEWNET) == 0, Step::Setns)?;
        check(libc::unshare(libc::CLONE_NEWNS) == 0, Step::Unshare)?;
        // Mounts made here must not propagate back to the caller's mount namespace.
        let flags = libc::MS_SLAVE | libc::MS_REC;
        let slave = libc::mount(c"".as_ptr(), c"/".as_ptr(), none, flags, std::ptr::null());
        check(slave == 0, Step::Slave)?;
        let sys = c"/sys".as_ptr();
        let mut flags: libc::c_ulong = 0;
        if libc::umount2(sys, libc::MNT_DETACH) != 0 {
            // Cannot unmount it: mount over it, read-only if it is (a read-only sysfs
            // cannot be shadowed by a read-write one). Found out before the fork: the child's
            // mount namespace is a copy of the parent's.
            flags = sys_flags;
        }
        let sysfs = c"sysfs".as_ptr();
        let mounted = libc::mount(sysfs_source.as_ptr(), sys, sysfs, flags, std::ptr::null());
        check(mounted == 0, Step::Sysfs)?;
        for (source, target) in etc {
            let _ = libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            );
        }
    }
    Ok(())
}

/// The processes running in namespace `name` (`ip netns pids`): those whose
/// `/proc/PID/ns/net` is the same nsfs inode as the namespace's file. A process that ends
/// during the scan is left out.
pub fn pids(name: &str) -> Result<Vec<libc::pid_t>> {
    check_name(name)?;
    let path = ns_path(name);
    let ns = std::fs::metadata(&path)
        .with_context(|| format!("reading network namespace {name} ({})", path.display()))?;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(net) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if (net.dev(), net.ino()) == (ns.dev(), ns.ino()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
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

/// mount(2): `source` (none: an empty string), fstype "none" unless given.
fn mount(source: Option<&str>, target: &Path, fstype: Option<&str>, flags: u64) -> io::Result<()> {
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let source = CString::new(source.unwrap_or("")).map_err(invalid)?;
    let target = CString::new(target.as_os_str().as_bytes()).map_err(invalid)?;
    let fstype = CString::new(fstype.unwrap_or("none")).map_err(invalid)?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// umount2(2) with MNT_DETACH: gone from the tree now, freed when no longer busy.
fn unmount(target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
