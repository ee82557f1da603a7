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
