//! Integration tests of `scenario` against the real kernel: two namespaces joined by a
//! veth pair, scripted connections between them, and the network broken mid-conversation.
//!
//! They must run as root (CAP_SYS_ADMIN + CAP_NET_ADMIN) with `ip` and `ss` (iproute2)
//! and `nft` (nftables). They never skip: missing privileges or tools make them fail
//! loudly. Namespace and interface names are unique per process and test; the
//! `Namespace` guards delete them (and so the veth pair) even when an assertion fails.

use crate::common;

use anyhow::{anyhow, Context, Result};
use idlegate::lab::scenario::{self, Moment, Outcome, Script, Side};
use idlegate::sys::netns::Namespace;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// A fresh name, ≤ 15 bytes so it is also a valid interface name: `igs` + pid + counter.
fn unique() -> String {
    common::require_root();
    common::unique("igs")
}

/// Two namespaces joined by a veth pair: `client` has [`CLIENT`], `server` has [`SERVER`].
struct Pair {
    client: Namespace,
    server: Namespace,
}

fn pair() -> Result<Pair> {
    let client = Namespace::create(&unique())?;
    let server = Namespace::create(&unique())?;
    let (client_if, server_if) = (unique(), unique());
    #[rustfmt::skip]
    crate::common::ip(&["link", "add", &client_if, "netns", client.name(), "type", "veth",
                "peer", "name", &server_if, "netns", server.name()])?;
    for (ns, dev, addr) in [(&client, &client_if, CLIENT), (&server, &server_if, SERVER)] {
        let cidr = format!("{addr}/24");
        crate::common::ip(&["-n", ns.name(), "addr", "add", &cidr, "dev", dev])?;
        crate::common::ip(&["-n", ns.name(), "link", "set", dev, "up"])?;
    }
    Ok(Pair { client, server })
}

impl Pair {
    fn script(&self, name: &str, port: u16, sends: &[(u64, &str)], observe_ms: u64) -> Script {
        let sends = sends
            .iter()
            .map(|&(ms, m)| (Duration::from_millis(ms), m.to_owned()));
        Script {
            name: name.to_owned(),
            client_ns: self.client.name().to_owned(),
            server_ns: self.server.name().to_owned(),
            listen: SocketAddrV4::new(SERVER, port).into(),
            connect: SocketAddrV4::new(SERVER, port).into(),
            keepalive: None,
            sends: sends.collect(),
            observe: Duration::from_millis(observe_ms),
        }
    }
}

/// Runs `program args...` inside namespace `ns`; fails with its stderr unless it succeeds.
fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<()> {
    let cmdline = format!("ip netns exec {ns} {program} {}", args.join(" "));
    let output = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .with_context(|| format!("could not run `{cmdline}`"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "`{cmdline}` failed: {stderr}");
    Ok(())
}

/// The result of `action`, run once, from the scripts' threads, at the first moment
/// matching `side` + `what`.
type Fired = Arc<Mutex<Option<Result<()>>>>;

fn on_moment(
    side: Side,
    what: &'static str,
    action: impl Fn() -> Result<()> + Send + Sync + 'static,
) -> (Fired, impl Fn(&Moment) + Send + Sync + 'static) {
    let fired: Fired = Arc::default();
    let slot = Arc::clone(&fired);
    let hook = move |m: &Moment| {
        if m.side == side && m.what == what {
            let mut slot = slot.lock().unwrap();
            if slot.is_none() {
                *slot = Some(action());
            }
        }
    };
    (fired, hook)
}

fn fired(fired: &Fired) -> Result<()> {
    let result = fired.lock().unwrap().take();
    result.unwrap_or_else(|| Err(anyhow!("the trigger moment never happened")))
}

/// Position of the first moment of `outcome` on `side` saying `what`.
fn position(outcome: &Outcome, side: Side, what: &str) -> usize {
    outcome
        .timeline
        .iter()
        .position(|m| m.side == side && m.what == what)
        .unwrap_or_else(|| panic!("no {side} {what:?} in {:#?}", outcome.timeline))
}

fn moment<'a>(outcome: &'a Outcome, side: Side, what: &str) -> &'a Moment {
    &outcome.timeline[position(outcome, side, what)]
}

#[test]
fn parallel_scripts_deliver_everything_in_order() -> Result<()> {
    let pair = pair()?;
    let abc = [(0, "a"), (300, "b"), (600, "c")];
    let scripts = vec![
        pair.script("first", 7001, &abc, 300),
        pair.script("second", 7002, &abc, 300),
    ];
    let outcomes = scenario::run(scripts)?;
    println!("{}", scenario::render_timeline(&outcomes));
    assert_eq!(outcomes.len(), 2);
    for (outcome, name) in outcomes.iter().zip(["first", "second"]) {
        assert_eq!(outcome.name, name);
        assert_eq!(outcome.sent, ["a", "b", "c"]);
        assert_eq!(outcome.delivered, outcome.sent);
        assert_eq!(outcome.client_error, None);
        assert_eq!(outcome.server_error, None);
        assert_eq!(outcome.unacked_at_end, 0);
        let order = [
            position(outcome, Side::Client, "connected"),
            position(outcome, Side::Client, "sent \"a\""),
            position(outcome, Side::Server, "received \"a\""),
            position(outcome, Side::Client, "sent \"b\""),
            position(outcome, Side::Server, "received \"b\""),
            position(outcome, Side::Client, "sent \"c\""),
            position(outcome, Side::Server, "received \"c\""),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let b = moment(outcome, Side::Client, "sent \"b\"").at;
        let a = moment(outcome, Side::Client, "sent \"a\"").at;
        let gap = b - a;
        assert!(gap >= Duration::from_millis(300), "b sent {gap:?} after a");
        assert!(gap < Duration::from_millis(600), "b sent {gap:?} after a");
    }
    // Both ran in parallel: the second started long before the first ended.
    let second_start = moment(&outcomes[1], Side::Client, "connected").at;
    let first_end = moment(&outcomes[0], Side::Server, "received \"c\"").at;
    assert!(second_start < first_end);
    Ok(())
}

/// A path that silently drops everything towards the server: an nftables rule in the
/// server's namespace, before routing, so the client's stack sees nothing at all.
fn drop_towards_server(server_ns: &str) -> Result<()> {
    let rules = "add table ip idlegate_test; \
                 add chain ip idlegate_test pre \
                 { type filter hook prerouting priority raw; policy accept; }; \
                 add rule ip idlegate_test pre ip saddr 198.51.100.1 drop";
    run_in(server_ns, "nft", &[rules])
}

#[test]
fn silent_drop_leaves_the_write_unacknowledged() -> Result<()> {
    let pair = pair()?;
    let server_ns = pair.server.name().to_owned();
    let (fired_drop, hook) = on_moment(Side::Server, "received \"a\"", move || {
        drop_towards_server(&server_ns)
    });
    let script = pair.script("silent-drop", 7003, &[(0, "a"), (500, "c")], 700);
    let outcomes = scenario::run_with(vec![script], hook)?;
    println!("{}", scenario::render_timeline(&outcomes));
    fired(&fired_drop).context("installing the drop rule")?;
    let outcome = &outcomes[0];
    assert_eq!(outcome.sent, ["a", "c"]);
    assert_eq!(outcome.delivered, ["a"]);
    assert_eq!(outcome.client_error, None);
    assert_eq!(outcome.server_error, None);
    assert!(outcome.unacked_at_end > 0, "{outcome:#?}");
    assert!(outcome.retransmits_at_end > 0, "{outcome:#?}");
    let last = outcome.timeline.last().map(|m| m.what.as_str());
    assert!(
        last.is_some_and(|what| what.starts_with("\"c\" not acknowledged: 1 segment unacked")),
        "{last:?}"
    );
    Ok(())
}

#[test]
fn reset_while_idle_is_seen_when_it_happens() -> Result<()> {
    let pair = pair()?;
    let server_ns = pair.server.name().to_owned();
    let (fired_kill, hook) = on_moment(Side::Server, "received \"a\"", move || {
        // Destroys the server's socket (CONFIG_INET_DIAG_DESTROY): the kernel sends a RST.
        run_in(&server_ns, "ss", &["-K", "-t", "dst", "198.51.100.1"])
    });
    let script = pair.script("reset", 7004, &[(0, "a"), (1000, "b")], 200);
    let outcomes = scenario::run_with(vec![script], hook)?;
    println!("{}", scenario::render_timeline(&outcomes));
    fired(&fired_kill).context("killing the server's socket")?;
    let outcome = &outcomes[0];
    assert_eq!(outcome.sent, ["a", "b"]);
    assert_eq!(outcome.delivered, ["a"]);
    assert_eq!(outcome.client_error.as_deref(), Some("ECONNRESET"));
    assert_eq!(outcome.server_error.as_deref(), Some("ECONNABORTED"));
    // The RST was seen when it arrived, long before the next write hit the dead socket.
    let received = moment(outcome, Side::Server, "received \"a\"").at;
    let reset = moment(outcome, Side::Client, "socket error ECONNRESET").at;
    let write = moment(outcome, Side::Client, "write failed: EPIPE").at;
    let connected = moment(outcome, Side::Client, "connected").at;
    assert!(
        reset - received < Duration::from_millis(500),
        "{outcome:#?}"
    );
    assert!(
        write - connected >= Duration::from_millis(1000),
        "{outcome:#?}"
    );
    assert!(write - reset >= Duration::from_millis(500), "{outcome:#?}");
    assert_eq!(outcome.unacked_at_end, 0);
    Ok(())
}

#[test]
fn keepalive_notices_a_silent_drop_while_idle() -> Result<()> {
    let pair = pair()?;
    let server_ns = pair.server.name().to_owned();
    let (fired_drop, hook) = on_moment(Side::Server, "received \"a\"", move || {
        drop_towards_server(&server_ns)
    });
    let mut script = pair.script("keepalive", 7005, &[(0, "a")], 4500);
    script.keepalive = Some(Duration::from_secs(1));
    let outcomes = scenario::run_with(vec![script], hook)?;
    println!("{}", scenario::render_timeline(&outcomes));
    fired(&fired_drop).context("installing the drop rule")?;
    let outcome = &outcomes[0];
    assert_eq!(outcome.delivered, ["a"]);
    assert_eq!(outcome.server_error, None);
    // Idle 1 s, then 3 unanswered probes 1 s apart: the connection dies after ~4 s.
    assert_eq!(outcome.client_error.as_deref(), Some("ETIMEDOUT"));
    let sent = moment(outcome, Side::Client, "sent \"a\"").at;
    let timeout = moment(outcome, Side::Client, "socket error ETIMEDOUT").at - sent;
    assert!(timeout >= Duration::from_millis(3500), "{timeout:?}");
    assert!(timeout < Duration::from_millis(4500), "{timeout:?}");
    Ok(())
}

#[test]
fn a_refused_connection_ends_the_script_at_once() -> Result<()> {
    let pair = pair()?;
    let mut script = pair.script("refused", 7006, &[(0, "a")], 100);
    script.connect = SocketAddrV4::new(SERVER, 7007).into();
    let started = std::time::Instant::now();
    let outcomes = scenario::run(vec![script])?;
    assert!(started.elapsed() < Duration::from_secs(1));
    let outcome = &outcomes[0];
    assert_eq!(outcome.client_error.as_deref(), Some("ECONNREFUSED"));
    assert_eq!(outcome.server_error, None);
    assert!(outcome.sent.is_empty() && outcome.delivered.is_empty());
    let timeline: Vec<_> = outcome.timeline.iter().map(|m| m.what.as_str()).collect();
    assert_eq!(timeline, ["connect failed: ECONNREFUSED"]);
    Ok(())
}
