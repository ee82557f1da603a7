//! The relay as a Windows service, under Wine's service control manager (services.exe, with
//! Wine's own sc.exe and reg.exe as the independent witnesses): `idlegate.exe service install`
//! writes the service's registry entry (automatic start, the `service run` command line), `sc
//! start` runs the relay so that bytes pass both ways, `sc stop` ends it, a "reboot" of the
//! test's own Wine machine starts it again with nobody asking, `service uninstall` stops it and
//! removes the entry; bad relay arguments install nothing; a relay that cannot bind ends the
//! service STOPPED with its error code; the book's `sc.exe` lines (docs/src/deploy/windows.md)
//! run as written. What Wine cannot show: a real machine's shutdown (SERVICE_CONTROL_SHUTDOWN; `wineserver -k` kills
//! instead), failure actions taking effect (Wine's services.exe stores none: the tests read
//! what it was asked from its FIXME line), the Event Log.

use super::{exe, idlegate_exe, in_shared_prefix, OwnPrefix, Ran};
use crate::common;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a started service has to listen, or a stopped one to be gone (a loaded 2-core
/// machine starting Wine processes: seconds).
const SERVICE_WAIT: Duration = Duration::from_secs(60);

/// The service's registry entry as `reg query` prints it, if there is one.
fn registry_entry(run: impl Fn(&str, &[&str]) -> Ran, name: &str) -> Option<String> {
    let key = format!("HKLM\\System\\CurrentControlSet\\Services\\{name}");
    let query = run("reg", &["query", &key]);
    query.status.success().then_some(query.stdout)
}

/// The service's state as `sc query` names it (RUNNING, STOPPED, …).
fn state(machine: &OwnPrefix, name: &str) -> String {
    let query = machine.run(Path::new("sc"), &["query", name]);
    query
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("STATE"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("(no state)")
        .to_string()
}

/// Whether the service comes to `wanted` state (as [`state`] names it) within
/// [`SERVICE_WAIT`].
fn comes_to(machine: &OwnPrefix, name: &str, wanted: &str) -> bool {
    common::tunnel::wait_until(SERVICE_WAIT, || state(machine, name) == wanted)
}

/// The test's own Wine machine ([`OwnPrefix`]), powered off and on: its services.exe runs.
fn booted_machine() -> OwnPrefix {
    let machine = OwnPrefix::new();
    machine.power_off();
    machine.power_on();
    machine
}

/// [`registry_entry`] as `machine`'s reg.exe reads it.
fn registry_entry_in(machine: &OwnPrefix, name: &str) -> Option<String> {
    registry_entry(|program, args| machine.run(Path::new(program), args), name)
}

/// The line of the registry entry `entry` (as `reg query` prints it) that names `value`, or
/// an empty one.
fn value_line(entry: &str, value: &str) -> String {
    entry
        .lines()
        .find(|l| l.trim_start().starts_with(value))
        .unwrap_or_default()
        .to_string()
}

/// `service install --name NAME -- RELAY_ARGS`.
fn install_line<'a>(name: &'a str, relay_args: &[&'a str]) -> Vec<&'a str> {
    let mut line = vec!["service", "install", "--name", name, "--"];
    line.extend_from_slice(relay_args);
    line
}

/// `idlegate.exe service uninstall --name NAME` in `machine`.
fn uninstall(machine: &OwnPrefix, name: &str) -> Ran {
    machine.run(exe(), &["service", "uninstall", "--name", name])
}

/// A server on Linux loopback that, for each connection, reads until the client's FIN, then
/// answers `reply:` and what it read and closes its side; what it read goes to the channel.
fn upstream() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let address = listener.local_addr().expect("its address");
    let (seen, received) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(SERVICE_WAIT));
            let mut got = Vec::new();
            if conn.read_to_end(&mut got).is_err() {
                continue;
            }
            let _ = conn.write_all(b"reply:");
            let _ = conn.write_all(&got);
            let _ = conn.shutdown(Shutdown::Write);
            if seen.send(got).is_err() {
                return;
            }
        }
    });
    (address, received)
}

/// Connects to the relay once it listens, within [`SERVICE_WAIT`].
fn connect_when_listening(address: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + SERVICE_WAIT;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(conn) => return conn,
            Err(e) if Instant::now() >= deadline => {
                panic!("the service's relay never listened on {address}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One exchange through the relay: `message` and a FIN out, the upstream's answer back to
/// its FIN, and what the upstream read.
fn exchange(relay: SocketAddr, seen: &mpsc::Receiver<Vec<u8>>, message: &[u8]) {
    let mut conn = connect_when_listening(relay);
    conn.set_read_timeout(Some(SERVICE_WAIT)).expect("timeout");
    conn.write_all(message).expect("sending");
    conn.shutdown(Shutdown::Write).expect("FIN");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .expect("the answer, to its FIN");
    assert_eq!(answer, [b"reply:", message].concat());
    assert_eq!(
        seen.recv_timeout(SERVICE_WAIT)
            .expect("the upstream's read"),
        message
    );
}

#[test]
fn windows_service_under_wine_starts_at_boot_relays_stops_and_uninstalls() {
    let machine = booted_machine();
    let name = common::unique("igsvc");
    let (upstream_address, seen) = upstream();
    let relay_address = common::free_port();
    let listen = relay_address.to_string();
    let connect = upstream_address.to_string();
    let relay_args = [
        "--listen",
        &listen,
        "--connect",
        &connect,
        "--keepalive",
        "120s,30s,8",
    ];
    let installed = machine.run(exe(), &install_line(&name, &relay_args));
    assert!(
        installed.status.success(),
        "install: {}{}",
        installed.stdout,
        installed.stderr
    );
    // The entry a boot starts it from: automatic start (SERVICE_AUTO_START = 2), and the
    // command line that runs the relay under the service manager.
    let entry = registry_entry_in(&machine, &name).expect("the service's registry entry");
    let value = |key: &str| value_line(&entry, key);
    assert!(value("Start").ends_with("0x2"), "{entry}");
    assert!(
        value("ObjectName").ends_with("NT AUTHORITY\\LocalService"),
        "{entry}"
    );
    assert!(value("ImagePath").contains("idlegate.exe"), "{entry}");
    assert!(
        value("ImagePath").ends_with(&format!(
            "service run --name {name} -- {}",
            relay_args.join(" ")
        )),
        "{entry}"
    );

    let started = machine.run(Path::new("sc"), &["start", &name]);
    assert!(
        started.status.success(),
        "sc start: {}{}",
        started.stdout,
        started.stderr
    );
    exchange(relay_address, &seen, b"through the service");
    assert_eq!(state(&machine, &name), "RUNNING");

    // Stop: the service manager sees it stopped, and the relay's port is closed.
    let stopped = machine.run(Path::new("sc"), &["stop", &name]);
    assert!(stopped.status.success(), "sc stop: {}", stopped.stdout);
    assert!(
        comes_to(&machine, &name, "STOPPED"),
        "still {} after sc stop",
        state(&machine, &name)
    );
    assert!(
        TcpStream::connect_timeout(&relay_address, Duration::from_secs(5)).is_err(),
        "the relay still listens after the service stopped"
    );

    // A reboot: everything killed, then the machine powered on again; the first program
    // starts services.exe, which starts the service with nobody asking.
    machine.power_off();
    machine.power_on();
    assert!(
        comes_to(&machine, &name, "RUNNING"),
        "{} after the reboot",
        state(&machine, &name)
    );
    exchange(relay_address, &seen, b"after the reboot");

    let uninstalled = uninstall(&machine, &name);
    assert!(
        uninstalled.status.success(),
        "uninstall: {}",
        uninstalled.stderr
    );
    assert!(
        uninstalled.stdout.contains("(stopped it first)"),
        "{}",
        uninstalled.stdout
    );
    assert_eq!(registry_entry_in(&machine, &name), None);
    assert!(
        TcpStream::connect_timeout(&relay_address, Duration::from_secs(5)).is_err(),
        "the relay still listens after uninstall"
    );
}

#[test]
fn windows_service_install_under_wine_refuses_bad_relay_arguments_and_installs_nothing() {
    let name = common::unique("igbad");
    for (relay_args, said) in [
        (
            vec![
                "--listen",
                "127.0.0.1:1",
                "--connect",
                "127.0.0.1:2",
                "--profile",
                "aws-nat-gateway",
            ],
            "--profile aws-nat-gateway: no such profile",
        ),
        (
            vec!["--config", "relays.toml"],
            "--config relays.toml: a relative path",
        ),
        (vec!["--listen", "127.0.0.1:1"], "the relay's arguments"),
    ] {
        let refused = idlegate_exe(&install_line(&name, &relay_args));
        assert!(!refused.status.success(), "{relay_args:?} installed");
        assert!(
            refused.stderr.contains(said),
            "{relay_args:?}: {}",
            refused.stderr
        );
        assert_eq!(
            registry_entry(in_shared_prefix, &name),
            None,
            "{relay_args:?}"
        );
    }
}

#[test]
fn windows_service_run_under_wine_by_hand_fails_saying_it_needs_the_service_manager() {
    let name = common::unique("ighand");
    let ran = idlegate_exe(&[
        "service",
        "run",
        "--name",
        &name,
        "--",
        "--listen",
        "127.0.0.1:1",
        "--connect",
        "127.0.0.1:2",
    ]);
    assert!(!ran.status.success(), "{}", ran.stdout);
    assert!(
        ran.stderr.contains(&format!("sc.exe start {name}")),
        "{}",
        ran.stderr
    );
}

/// The book's `sc.exe` lines (docs/src/deploy/windows.md, the block after "The same with
/// Windows' own `sc.exe`"), as written there.
fn readme_sc_lines() -> Vec<String> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/src/deploy/windows.md");
    let text = std::fs::read_to_string(&page).expect("docs/src/deploy/windows.md");
    let after = text
        .split_once("The same with Windows' own `sc.exe`")
        .expect("the Windows page's sc.exe section")
        .1;
    let block = after
        .split_once("```bat\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("its bat block")
        .0;
    block
        .lines()
        .filter(|l| l.starts_with("sc.exe "))
        .map(str::to_string)
        .collect()
}

#[test]
fn windows_service_made_with_sc_create_as_the_readme_writes_it_relays_under_wine_whose_sc_has_no_failureflag(
) {
    // The book's sc.exe lines, each run by cmd.exe from a batch file as written, with this
    // test's name and ports; the executable where the book has it, under
    // C:\Program Files\idlegate (a path with a space, which binPath's \" quoting is for).
    let machine = booted_machine();
    let name = common::unique("igsc");
    let (upstream_address, seen) = upstream();
    let relay_address = common::free_port();
    let drive_c = machine.path().join("drive_c");
    let installed = drive_c.join("Program Files/idlegate/idlegate.exe");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    if std::fs::hard_link(exe(), &installed).is_err() {
        std::fs::copy(exe(), &installed).expect("copying idlegate.exe into Program Files");
    }
    let lines = readme_sc_lines();
    let verbs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        verbs,
        [
            "create",
            "failure",
            "failureflag",
            "start",
            "stop",
            "delete"
        ],
        "{lines:#?}"
    );
    let run_line = |line: &str| {
        let line = line
            .replace("idlegate-relay", &name)
            .replace("0.0.0.0:5001", &relay_address.to_string())
            .replace("127.0.0.1:5000", &upstream_address.to_string());
        let batch = drive_c.join(format!("{name}.bat"));
        std::fs::write(&batch, format!("@{line}\r\n")).unwrap();
        let ran = machine.run(Path::new("cmd"), &["/c", &format!("C:\\{name}.bat")]);
        (line, ran)
    };
    for line in &lines {
        let verb = line.split_whitespace().nth(1).unwrap_or_default();
        let (line, ran) = run_line(line);
        match verb {
            // Wine 8.0's sc.exe has no failureflag command ("command not supported"): `service
            // install` sets the flag through the service manager instead.
            "failureflag" => assert!(!ran.status.success(), "{line}: Wine's sc.exe took it"),
            _ => assert!(ran.status.success(), "{line}: {}{}", ran.stdout, ran.stderr),
        }
        match verb {
            "create" => {
                let entry =
                    registry_entry_in(&machine, &name).expect("the service's registry entry");
                let image = value_line(&entry, "ImagePath");
                assert!(
                    image.ends_with(&format!(
                        "\"C:\\Program Files\\idlegate\\idlegate.exe\" service run --name {name} -- --listen {relay_address} --connect {upstream_address} --keepalive 120s,30s,8"
                    )),
                    "{entry}"
                );
            }
            "start" => {
                exchange(relay_address, &seen, b"through sc create");
                assert_eq!(state(&machine, &name), "RUNNING");
            }
            "stop" => assert!(
                comes_to(&machine, &name, "STOPPED"),
                "still {} after sc stop",
                state(&machine, &name)
            ),
            _ => {}
        }
    }
    assert_eq!(registry_entry_in(&machine, &name), None);
}

#[test]
fn windows_service_under_wine_whose_port_is_taken_ends_stopped_with_its_error_code() {
    // The relay cannot bind (a Linux listener holds the port): the service never serves,
    // and the service manager is told so: STOPPED, WIN32_EXIT_CODE 1066
    // (ERROR_SERVICE_SPECIFIC_ERROR) with SERVICE_EXIT_CODE 1, what the book says to read.
    let machine = booted_machine();
    let name = common::unique("igtaken");
    let holder = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let taken = holder.local_addr().unwrap().to_string();
    let installed = machine.run(
        exe(),
        &install_line(&name, &["--listen", &taken, "--connect", "192.0.2.1:9"]),
    );
    assert!(installed.status.success(), "install: {}", installed.stderr);
    // Whether `sc start` itself reports the failure depends on when the service manager
    // answers; the state it ends in does not.
    let _ = machine.run(Path::new("sc"), &["start", &name]);
    let query = || machine.run(Path::new("sc"), &["query", &name]).stdout;
    assert!(comes_to(&machine, &name, "STOPPED"), "{}", query());
    let stopped = query();
    let field = |key: &str| {
        stopped
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("WIN32_EXIT_CODE"), "1066", "{stopped}");
    assert_eq!(field("SERVICE_EXIT_CODE"), "1", "{stopped}");
    let uninstalled = uninstall(&machine, &name);
    assert!(uninstalled.status.success(), "{}", uninstalled.stderr);
    drop(holder);
}

#[test]
fn windows_service_install_under_wine_asks_for_restarts_which_wine_takes_unstored_and_refuses_the_non_crash_flag(
) {
    // `service install` asks the service manager for restarts after 10 s, 10 s, 60 s, the
    // count reset after a day (SERVICE_CONFIG_FAILURE_ACTIONS), also after a failure that is
    // not a crash (SERVICE_CONFIG_FAILURE_ACTIONS_FLAG). Wine 8.0's services.exe takes the
    // first without storing it (no FailureActions value; its FIXME line shows what it was
    // asked) and refuses the second with ERROR_INVALID_LEVEL: install says so and goes on.
    let machine = OwnPrefix::new();
    machine.power_off();
    let services_log = machine.path().join("services.log");
    machine.power_on_logging_services(&services_log);
    let name = common::unique("igrec");
    let installed = machine.run(
        exe(),
        &install_line(
            &name,
            &["--listen", "127.0.0.1:1", "--connect", "127.0.0.1:2"],
        ),
    );
    assert!(installed.status.success(), "{}", installed.stderr);
    let asked = std::fs::read_to_string(&services_log).unwrap_or_default();
    assert!(
        asked.contains("SERVICE_CONFIG_FAILURE_ACTIONS not implemented: period 86400"),
        "services.exe's log:\n{asked}"
    );
    assert!(
        installed.stderr.lines().any(|line| {
            line.contains("WARN")
                && line.contains(&format!(
                    "setting the restart on a failure that is not a crash of service {name}: \
                     Invalid level. (os error 124)"
                ))
        }) && installed
            .stderr
            .contains(&format!("sc.exe failureflag {name} 1")),
        "{}",
        installed.stderr
    );
    let entry = registry_entry_in(&machine, &name).expect("the service's registry entry");
    assert!(!entry.contains("FailureActions"), "{entry}");
    let uninstalled = uninstall(&machine, &name);
    assert!(uninstalled.status.success(), "{}", uninstalled.stderr);
}
