//! Links, addresses, routes and namespaces made by idlegate's own netlink and syscalls
//! (`sys::rtnl`, `sys::netns`), checked with iproute2's `ip` as an independent witness, and
//! namespaces shared both ways between idlegate and `ip netns`.
//!
//! They must run as root with `ip` (iproute2, installed by scripts/setup). Every name is
//! unique per process and test; the `Namespace`/`Tun` guards and [`IpNamespace`] remove what
//! a test made even when an assertion fails.

use crate::common;

use anyhow::{Context, Result};
use idlegate::sys::netns::{self, Namespace};
use idlegate::sys::rtnl::{Dad, Rtnl};
use idlegate::sys::tun::Tun;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process started with `ip netns exec` may take to show up in the namespace.
const SHOW_UP: Duration = Duration::from_secs(10);

/// A fresh name, ≤ 15 bytes so it is also a valid interface name.
fn unique() -> String {
    common::require_root();
    common::unique("ign")
}

/// A namespace made by `ip netns add`, removed with `ip netns delete` when dropped.
struct IpNamespace(String);

impl IpNamespace {
    fn add(name: &str) -> Result<IpNamespace> {
        common::ip(&["netns", "add", name])?;
        Ok(IpNamespace(name.to_owned()))
    }
}

impl Drop for IpNamespace {
    fn drop(&mut self) {
        if netns::exists(&self.0) {
            let _ = common::ip(&["netns", "delete", &self.0]);
        }
    }
}

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn addresses_routes_and_addrgenmode_set_over_rtnetlink_are_what_ip_shows() -> Result<()> {
    let ns = Namespace::create(&unique())?;
    let tun = Tun::create(&unique())?;
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 60));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x60));
    tun.move_to(ns.name(), &[v4, v6])?;
    let (n, dev) = (ns.name(), tun.name());

    let addrs = common::ip_stdout(&["-n", n, "-o", "addr", "show", "dev", dev])?;
    assert!(addrs.contains("inet 192.0.2.60/32"), "{addrs}");
    assert!(addrs.contains("inet6 fd00::60/128"), "{addrs}");
    // addrgenmode none: no link-local address; nodad: not tentative.
    assert!(!addrs.contains("fe80"), "{addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");

    let link = common::ip_stdout(&["-n", n, "-d", "link", "show", "dev", dev])?;
    assert!(link.contains(",UP"), "{link}");
    assert!(link.contains("addrgenmode none"), "{link}");

    let v4_default = common::ip_stdout(&["-n", n, "-4", "route", "show", "default"])?;
    assert!(
        v4_default.contains(&format!("default dev {dev}")),
        "{v4_default}"
    );
    let v6_default = common::ip_stdout(&["-n", n, "-6", "route", "show", "default"])?;
    assert!(
        v6_default.contains(&format!("default dev {dev}")),
        "{v6_default}"
    );
    // Nothing was made in the caller's namespace.
    assert!(common::ip(&["link", "show", "dev", dev]).is_err());
    Ok(())
}

#[test]
fn a_refused_request_names_the_device_the_namespace_and_the_step() -> Result<()> {
    let ns = Namespace::create(&unique())?;
    let tun = Tun::create(&unique())?;
    let address = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 61));
    tun.move_to(ns.name(), &[address])?;
    let (n, dev) = (ns.name(), tun.name());
    let mut rtnl = Rtnl::open_in(n)?;

    // The kernel's EEXIST for an address the device has.
    let link = rtnl.link(dev)?;
    let err = rtnl
        .add_address(&link, address, 32, Dad::Skip)
        .expect_err("adding an address twice");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "configuring device {dev} in network namespace {n}: adding address \
             192.0.2.61/32: File exists (os error 17)"
        )
    );

    // The kernel's ENODEV for a device that is not there.
    let missing = unique();
    let err = rtnl.link(&missing).expect_err("a missing device");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "looking up device {missing} in network namespace {n}: No such device (os error 19)"
        )
    );

    // Moving into a namespace that does not exist is refused before anything changes.
    let other = Tun::create(&unique())?;
    let gone = unique();
    let err = other
        .move_to(&gone, &[address])
        .expect_err("a missing namespace");
    assert!(format!("{err:#}").contains(&gone), "{err:#}");
    common::ip(&["link", "show", "dev", other.name()]).context("the device stayed here")?;
    Ok(())
}

#[test]
fn a_namespace_made_by_idlegate_serves_ip_netns_and_one_made_by_ip_netns_serves_idlegate(
) -> Result<()> {
    // idlegate's, used by `ip`: listed, entered (with /sys showing its devices), lo up.
    let ours = Namespace::create(&unique())?;
    let listed = common::ip_stdout(&["netns", "list"])?;
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ours.name())),
        "{listed}"
    );
    let devices = Command::new("ip")
        .args(["netns", "exec", ours.name(), "ls", "/sys/class/net"])
        .output()
        .context("running ip netns exec")?;
    assert!(devices.status.success(), "{devices:?}");
    assert_eq!(String::from_utf8_lossy(&devices.stdout).trim(), "lo");
    let lo = common::ip_stdout(&["-n", ours.name(), "link", "show", "lo"])?;
    assert!(lo.contains(",UP"), "lo is up: {lo}");

    // `ip netns add`'s, used by idlegate: entered by a thread, run in, its processes found,
    // deleted.
    let theirs = IpNamespace::add(&unique())?;
    let name = theirs.0.clone();
    assert!(netns::exists(&name));
    let file = std::fs::metadata(format!("/run/netns/{name}"))?;
    let inside = netns::spawn_in(&name, || {
        std::fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino()))
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))??;
    assert_eq!(inside, (file.dev(), file.ino()), "spawn_in entered it");
    let status = netns::exec(
        &name,
        "sh",
        &["-c".into(), r#"test "$(ls /sys/class/net)" = lo"#.into()],
    )?;
    assert!(
        status.success(),
        "exec sees only the namespace's lo: {status}"
    );

    // `ip netns pids`' rule: a process whose /proc/PID/ns/net is the namespace.
    let sleeper = Reaped(
        Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .context("starting a process in the namespace")?,
    );
    let pid = sleeper.0.id() as i32;
    let deadline = Instant::now() + SHOW_UP;
    while !netns::pids(&name)?.contains(&pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} not in {name} after {SHOW_UP:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!netns::pids(ours.name())?.contains(&pid));
    drop(sleeper);

    netns::delete(&name)?;
    let listed = common::ip_stdout(&["netns", "list"])?;
    assert!(
        !listed
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{listed}"
    );
    netns::delete(&name).context("deleting twice is fine")?;
    Ok(())
}

/// A plain file `/run/netns/NAME` (what a process killed between creating a namespace's file
/// and bind-mounting onto it leaves), removed when dropped if still there.
struct PlainFile(std::path::PathBuf);

impl PlainFile {
    fn make(name: &str) -> Result<PlainFile> {
        std::fs::create_dir_all("/run/netns")?;
        let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
        std::fs::File::create_new(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(PlainFile(path))
    }
}

impl Drop for PlainFile {
    fn drop(&mut self) {
        // A test that failed may have left a mount on it.
        let _ = netns::delete(&self.0.file_name().unwrap_or_default().to_string_lossy());
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The calling thread's errno after a failed call named `what`, as an error.
fn os_check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).context(what.to_owned())
    }
}

/// mount(2) for the tests below.
fn mount(source: &str, target: &std::path::Path, fstype: &str, flags: libc::c_ulong) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let source = std::ffi::CString::new(source)?;
    let path = std::ffi::CString::new(target.as_os_str().as_bytes())?;
    let fstype = std::ffi::CString::new(fstype)?;
    // SAFETY: NUL-terminated strings alive for the call; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    os_check(
        rc == 0,
        &format!("mounting {fstype:?} on {}", target.display()),
    )
}

/// Runs `f` in a thread of its own whose root directory is a new, empty tmpfs holding only
/// `/proc` (no `/run`: a `FROM scratch` container), read-only with `read_only`, a shared
/// mount as a host's `/` is. The thread has a mount namespace of its own, made private first,
/// so nothing it mounts reaches the host; its mounts (and any network namespace left bound in
/// them) go when it ends, even if `f` panics.
fn in_empty_root<T: Send>(read_only: bool, f: impl FnOnce() -> T + Send) -> Result<T> {
    let dir = tempfile::tempdir().context("making a directory for the new root")?;
    let root = dir.path();
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || -> Result<T> {
            // SAFETY: plain syscalls; CLONE_FS | CLONE_NEWNS change this thread's root
            // directory and mounts only.
            unsafe {
                let unshared = libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) == 0;
                os_check(unshared, "unshare(CLONE_FS | CLONE_NEWNS)")?;
            }
            let root_dir = std::path::Path::new("/");
            mount("", root_dir, "none", libc::MS_REC | libc::MS_PRIVATE)?;
            mount("tmpfs", root, "tmpfs", 0)?;
            std::fs::create_dir(root.join("proc"))?;
            mount("proc", &root.join("proc"), "proc", 0)?;
            if read_only {
                mount("", root, "none", libc::MS_REMOUNT | libc::MS_RDONLY)?;
            }
            mount("", root, "none", libc::MS_SHARED)?;
            std::os::unix::fs::chroot(root).context("chroot")?;
            std::env::set_current_dir("/")?;
            Ok(f())
        });
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in the empty root panicked"))?
    })
}

/// This thread's mount at `mount_point`: its peer group, the `shared:N` of
/// /proc/thread-self/mountinfo (proc(5)), if it has one.
fn peer_group(mount_point: &str) -> Result<Option<String>> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mount_point))
        .with_context(|| format!("no mount at {mount_point} in {info}"))?;
    Ok(line
        .split(' ')
        .skip(6)
        .take_while(|f| *f != "-")
        .find(|f| f.starts_with("shared:"))
        .map(str::to_owned))
}

#[test]
fn a_namespace_is_made_where_run_does_not_exist_and_run_netns_joins_its_parents_peer_group(
) -> Result<()> {
    let name = unique();
    let outcome = in_empty_root(false, || -> Result<()> {
        assert!(
            !std::path::Path::new("/run").exists(),
            "the new root has no /run"
        );
        netns::create(&name)?;
        let result = (|| -> Result<()> {
            assert_eq!(netns::list()?, std::slice::from_ref(&name));
            // As iproute2: /run/netns, bound onto itself, stays in the peer group of the mount
            // it was bound from, so other mount namespaces keep seeing new namespaces.
            let root = peer_group("/")?.context("the root is shared")?;
            assert_eq!(peer_group("/run/netns")?, Some(root));
            let mut rtnl = Rtnl::open_in(&name)?;
            assert_eq!(rtnl.links()?.len(), 1, "a new namespace has lo only");
            Ok(())
        })();
        netns::delete(&name)?;
        result
    })?;
    outcome
}

#[test]
fn a_read_only_run_is_an_error_with_a_hint_to_mount_a_tmpfs() -> Result<()> {
    let name = unique();
    let err = in_empty_root(true, || netns::create(&name))?
        .expect_err("making a namespace on a read-only root");
    let text = format!("{err:#}");
    assert_eq!(
        text.lines().next(),
        Some(
            format!(
                "creating network namespace {name}: making /run/netns: Read-only file system \
                 (os error 30)"
            )
            .as_str()
        ),
        "{text}"
    );
    assert!(
        text.contains("\nhint: ") && text.contains("--tmpfs /run"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_stale_plain_file_in_run_netns_is_replaced_by_the_namespace() -> Result<()> {
    let name = unique();
    let _stale = PlainFile::make(&name)?;
    let ns = Namespace::create(&name)?;
    let lo = common::ip_stdout(&["-n", ns.name(), "link", "show", "lo"])?;
    assert!(lo.contains(",UP"), "a namespace with lo up: {lo}");
    // A namespace that is mounted is not stale: creating it again fails, naming it.
    let err = netns::create(&name).expect_err("creating it twice");
    let text = format!("{err:#}");
    assert!(
        text.starts_with(&format!("network namespace {name} already exists\nhint: ")),
        "{text}"
    );
    Ok(())
}

#[test]
fn exec_names_the_step_that_failed() -> Result<()> {
    // A plain file is no namespace: setns refuses it (EINVAL).
    let name = unique();
    let _file = PlainFile::make(&name)?;
    let err = netns::exec(&name, "true", &[]).expect_err("setns into a plain file");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "running `true` in network namespace {name}: entering it (setns): Invalid argument \
             (os error 22)"
        )
    );
    // A program that cannot be run is not blamed on a step.
    let ns = Namespace::create(&unique())?;
    let missing = format!("/nonexistent/{}", unique());
    let err = netns::exec(ns.name(), &missing, &[]).expect_err("a missing program");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "running `{missing}` in network namespace {}: No such file or directory (os error 2)",
            ns.name()
        )
    );
    Ok(())
}

#[test]
fn a_tun_device_that_cannot_be_brought_up_is_named_once() -> Result<()> {
    let tun = Tun::create(&unique())?;
    common::ip(&["link", "delete", "dev", tun.name()])?;
    let err = tun.bring_up().expect_err("the device is gone");
    assert_eq!(
        format!("{err:#}"),
        format!(
            "looking up device {} in the current network namespace: No such device (os error 19)",
            tun.name()
        )
    );
    Ok(())
}

#[test]
fn a_dump_lists_the_links_of_a_namespace_and_the_socket_stays_in_step() -> Result<()> {
    let ns = Namespace::create(&unique())?;
    let tun = Tun::create(&unique())?;
    tun.move_to(ns.name(), &[])?;
    let mut rtnl = Rtnl::open_in(ns.name())?;
    let names: Vec<String> = rtnl.links()?.into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo", tun.name()]);
    // The next request reads its own answer, not what the dump left behind.
    assert_eq!(rtnl.link(tun.name())?.name, tun.name());
    assert_eq!(rtnl.links()?.len(), 2);
    Ok(())
}
