//! `idlegate echo` and `idlegate probe` of the Windows build under Wine, against the Linux
//! build, across the lab's gateway (Azure LB's rule, idle timeout 438 s scaled 1/60 to 7.3 s):
//! a Linux probe measures the path to echo.exe, and probe.exe measures the path to a Linux
//! echo. Each Wine program runs in its lab host's network namespace with a prefix, and so a
//! wineserver, of its own there ([`OwnPrefix`]). Root only.

use super::{exe, wine_in, OwnPrefix, RunningExe};
use crate::common::{self, require_root, unique};
use idlegate::lab::{Lab, INTERNET};
use idlegate::measure::echo::Echo;
use idlegate::measure::probe::{self, Behaviour, Options, Report};
use idlegate::sys::netns;
use idlegate_core::Config;
use std::time::Duration;

/// The path's idle timeout: 438 s at a time scale of 60.
const TRUTH: f64 = 7.3;
const RESOLUTION: f64 = 1.0;
/// A whole probe under Wine: about 2 × 1.07 × the timeout per round, with margins.
const PROBE_RUN: Duration = Duration::from_secs(300);

/// Azure LB in front of vm1's port 9300, with `expiry` at its idle timeout.
fn config(expiry: &str) -> Config {
    common::echo_lab("azure-lb", 60, "438s", expiry)
}

/// The bracket `(low, high)` holds the truth and is no wider than the resolution.
fn assert_bracket(low: f64, high: Option<f64>, shown: &dyn std::fmt::Debug) {
    let high = high.unwrap_or_else(|| panic!("no timeout found: {shown:#?}"));
    assert!(
        low < TRUTH && TRUTH <= high,
        "{TRUTH} s not in ({low}, {high}]: {shown:#?}"
    );
    assert!(high - low <= RESOLUTION + 1e-9, "{shown:#?}");
}

/// A Linux probe in the lab's `internet` host against echo.exe under Wine in vm1, through
/// the gateway with `expiry`: it must find echo and bracket the timeout, with all its evidence.
fn linux_probe_to_wine_echo(expiry: &str) -> Report {
    require_root();
    let (report, _) = Lab::with_gateway(&unique("we"), &config(expiry), |lab| {
        let vm = lab.namespace_of("vm1")?;
        let prefix = OwnPrefix::new();
        let mut echo = RunningExe::spawn(
            &["echo", "--listen", "0.0.0.0:9300"],
            prefix.path(),
            Some(&vm),
        );
        echo.wait_listening(9300);
        let options = Options {
            target: "203.0.113.10:9300".parse()?,
            max: Duration::from_secs(20),
            resolution: Duration::from_secs_f64(RESOLUTION),
            wait: Duration::from_secs(2),
            connections: None,
            progress: probe::ProgressTo::Off,
        };
        let report: Report =
            netns::spawn_in(&lab.namespace_of(INTERNET)?, move || probe::run(&options))?
                .join()
                .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
        drop(echo);
        Ok(report)
    })
    .expect("lab run");
    assert!(
        report.echo,
        "the probe took echo.exe for a plain server: {report:#?}"
    );
    assert_bracket(
        report.idle_timeout_s.low,
        report.idle_timeout_s.high,
        &report,
    );
    assert!(report.consistent, "{report:#?}");
    // The Linux probe has all its evidence.
    assert!(report.cannot_tell_apart.is_empty(), "{report:#?}");
    report
}

#[test]
fn windows_echo_under_wine_answers_a_linux_probe_that_finds_a_silent_drop() {
    let report = linux_probe_to_wine_echo("silent");
    assert_eq!(
        (report.client_to_server, report.server_to_client),
        (Behaviour::Silent, Some(Behaviour::Silent)),
        "{report:#?}"
    );
    assert_eq!(report.keepalive_refreshes, Some(true), "{report:#?}");
}

#[test]
fn windows_echo_under_wine_reports_its_delayed_reply_answered_with_a_rst() {
    // The gateway answers each sender's first packet after expiry with a RST: echo.exe's
    // delayed reply meets one, and echo must say so when asked (Wine may read that RST as an
    // end of stream).
    let report = linux_probe_to_wine_echo("reset-on-next");
    assert_eq!(
        (report.client_to_server, report.server_to_client),
        (Behaviour::Reset, Some(Behaviour::Reset)),
        "{report:#?}"
    );
    assert!(
        report.details.iter().any(|d| d.contains("server's packet")),
        "{report:#?}"
    );
}

#[test]
fn windows_probe_under_wine_finds_a_reset_at_expiry_from_a_linux_echo_and_names_what_it_cannot_tell_apart(
) {
    require_root();
    let (out, _) = Lab::with_gateway(&unique("wp"), &config("reset"), |lab| {
        let echo = netns::spawn_in(&lab.namespace_of("vm1")?, || {
            Echo::bind("0.0.0.0:9300".parse()?)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
        let stop = echo.stop_flag();
        let server = std::thread::spawn(move || echo.run());
        let prefix = OwnPrefix::new();
        let ns = lab.namespace_of(INTERNET)?;
        let args = [
            "probe",
            "203.0.113.10:9300",
            "--max",
            "20s",
            "--resolution",
            "1s",
            "--wait",
            "2s",
            "--json",
        ];
        // `ip netns exec NS wine64 idlegate.exe probe …`, with the prefix's own wineserver.
        let out = common::output_within(
            wine_in(prefix.path(), Some(&ns)).arg(exe()).args(args),
            PROBE_RUN,
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
        Ok(out)
    })
    .expect("lab run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe.exe under Wine failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("probe.exe printed no JSON ({e}): {stdout}"));
    assert_eq!(report["echo"], true, "{report:#}");
    assert_bracket(
        report["idle_timeout_s"]["low"].as_f64().unwrap_or(f64::NAN),
        report["idle_timeout_s"]["high"].as_f64(),
        &report,
    );
    // Wine reads a RST as an end of stream; WSAPoll's POLLERR tells it from a FIN.
    assert_eq!(report["client_to_server"], "reset", "{report:#}");
    assert_eq!(report["server_to_client"], "reset", "{report:#}");
    assert!(
        report["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d
                .as_str()
                .is_some_and(|d| d.contains("at the moment of expiry")))),
        "{report:#}"
    );
    // Keepalive through SIO_KEEPALIVE_VALS reaches the Linux socket under Wine.
    assert_eq!(report["keepalive_refreshes"], true, "{report:#}");
    let undecided: Vec<&str> = report["cannot_tell_apart"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(
        undecided
            .iter()
            .any(|c| c.starts_with("silent and icmp") && c.contains("IP_RECVERR")),
        "{report:#}"
    );
    assert!(
        undecided
            .iter()
            .any(|c| c.starts_with("silent and acked-not-delivered") && c.contains("SIO_TCP_INFO")),
        "Wine 8.0 answers SIO_TCP_INFO with WSAEOPNOTSUPP: {report:#}"
    );
}

#[test]
fn windows_probe_under_wine_without_sio_tcp_info_refuses_a_plain_server_and_says_why() {
    // Wine 8.0 answers SIO_TCP_INFO with WSAEOPNOTSUPP: against a server that is not echo,
    // only TCP's acknowledgements would tell a live connection from a silent path.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listening");
    let target = listener.local_addr().expect("address").to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let done = done.clone();
        std::thread::spawn(move || {
            // Holds what it accepts and says nothing, until the probe has ended.
            let mut held = Vec::new();
            listener.set_nonblocking(true).expect("non-blocking");
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            held.len()
        })
    };
    let ran = super::idlegate_exe(&["probe", &target, "--max", "5s", "--wait", "2s"]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(!ran.status.success(), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "idlegate: cannot measure {target}: it is not idlegate echo"
        )),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("SIO_TCP_INFO"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("hint: run `idlegate echo`"),
        "{}",
        ran.stderr
    );
    assert!(
        server.join().expect("server thread") >= 1,
        "the probe never connected"
    );
}
