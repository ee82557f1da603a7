//! Differential tests: the `linux-conntrack` profile against the kernel it models.
//!
//! The same scripted connections run twice: once through a real Linux router (a namespace
//! with nftables masquerade and conntrack's sysctls set to the same short timeout), once
//! through an idlegate lab with the `linux-conntrack` profile. For each connection both runs
//! must give the same outcome: what the server received, the errno each side saw, and
//! whether the client was left with data nobody acknowledged.
//!
//! The reference router is a typical one: the forward chain drops what conntrack calls
//! invalid, the input chain takes only what belongs to the router's own connections. Root only.
//!
//! A second router forwards a port to the member and masquerades nothing: the connection comes
//! from `internet`, and after the established timeout the member speaks first. What no NAT
//! rule claims is routed on untranslated by both, and both must agree on what the client
//! received, each side's errno, and whether the member was left with unacknowledged data.

use crate::common;

use common::kernel_router::KernelRouter;
use common::{require_root, unique};
use idlegate::lab::scenario::{self, Outcome, Script};
use idlegate::lab::{Lab, INTERNET, INTERNET_ADDRESS};
use idlegate::sys::errno::errno_name;
use idlegate::sys::netns;
use idlegate::sys::tcp_info::TcpInfo;
use idlegate_core::profile::Pickup;
use idlegate_core::Config;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The established timeout both sides run: short, and in whole seconds as the sysctl takes it.
const ESTABLISHED_S: u64 = 2;
const ESTABLISHED: Duration = Duration::from_secs(ESTABLISHED_S);
const MEMBER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

/// The connections both runs play, from the member to the server on the outside.
fn scripts(client_ns: &str, server_ns: &str) -> Vec<Script> {
    let script = |name: &str, port: u16, keepalive: Option<Duration>, late: Duration| Script {
        name: name.to_string(),
        client_ns: client_ns.to_string(),
        server_ns: server_ns.to_string(),
        listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
        connect: SocketAddrV4::new(INTERNET_ADDRESS, port).into(),
        keepalive,
        sends: vec![(Duration::ZERO, "a".into()), (late, "b".into())],
        observe: Duration::from_secs(2),
    };
    vec![
        script("within-timeout", 8100, None, ESTABLISHED / 2),
        script("after-expiry", 8101, None, ESTABLISHED * 2),
        script(
            "keepalive",
            8102,
            Some(Duration::from_secs(1)),
            ESTABLISHED * 2,
        ),
    ]
}

/// What must agree: delivered messages, each side's errno, data left unacknowledged.
fn fate(o: &Outcome) -> (Vec<String>, Option<String>, Option<String>, bool) {
    (
        o.delivered.clone(),
        o.client_error.clone(),
        o.server_error.clone(),
        o.unacked_at_end > 0,
    )
}

fn through_the_kernel(pickup: Pickup) -> Vec<Outcome> {
    let router = KernelRouter::new(ESTABLISHED_S, pickup);
    scenario::run(scripts(&router.client, &router.server)).expect("kernel run")
}

fn through_idlegate(pickup: Pickup) -> Vec<Outcome> {
    let loose = pickup == Pickup::Loose;
    let text = format!(
        r#"profile = "linux-conntrack"
loose_pickup = {loose}
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "{MEMBER}" }}]
[[outbound_rule]]
name = "masquerade"
frontend = "public"
backend_pool = "vms"
idle_timeout = "{ESTABLISHED_S}s"
"#
    );
    let config = Config::from_toml(&text, "conntrack test config").unwrap();
    let (outcomes, _) = Lab::with_gateway(&unique("ct"), &config, |lab| {
        scenario::run(scripts(
            &lab.namespace_of("vm1")?,
            &lab.namespace_of(INTERNET)?,
        ))
    })
    .expect("lab run");
    outcomes
}

/// Runs both and checks that each connection met the same fate; returns the kernel's.
fn compare(pickup: Pickup) -> Vec<Outcome> {
    require_root();
    let kernel = through_the_kernel(pickup);
    let emulated = through_idlegate(pickup);
    for k in &kernel {
        let e = emulated.iter().find(|e| e.name == k.name).unwrap();
        assert_eq!(
            fate(e),
            fate(k),
            "{} ({pickup:?} pickup): idlegate (left) and the kernel (right) disagree\nkernel:\n{}\nidlegate:\n{}",
            k.name,
            scenario::render_timeline(std::slice::from_ref(k)),
            scenario::render_timeline(std::slice::from_ref(e)),
        );
    }
    kernel
}

fn outcome<'a>(outcomes: &'a [Outcome], name: &str) -> &'a Outcome {
    outcomes.iter().find(|o| o.name == name).unwrap()
}

#[test]
fn with_loose_pickup_the_kernel_and_idlegate_both_let_the_member_carry_on_after_expiry() {
    // nf_conntrack_tcp_loose=1 (the default): the member's next segment after the
    // established timeout makes a new entry, and masquerade keeps its source port.
    let kernel = compare(Pickup::Loose);
    for name in ["within-timeout", "after-expiry", "keepalive"] {
        assert_eq!(
            fate(outcome(&kernel, name)),
            (vec!["a".into(), "b".into()], None, None, false),
            "{name}"
        );
    }
}

#[test]
fn without_loose_pickup_the_kernel_and_idlegate_both_drop_the_late_segment_silently() {
    // nf_conntrack_tcp_loose=0: the late segment is invalid and the forward chain drops it.
    let kernel = compare(Pickup::SynOnly);
    assert_eq!(
        fate(outcome(&kernel, "after-expiry")),
        (vec!["a".into()], None, None, true)
    );
    for name in ["within-timeout", "keepalive"] {
        assert_eq!(
            fate(outcome(&kernel, name)),
            (vec!["a".into(), "b".into()], None, None, false),
            "{name}"
        );
    }
}

// ---- a member behind a port forward, without masquerade, speaks first after expiry ----------

/// The port the frontend forwards to the member's same port.
const FORWARDED_PORT: u16 = 8110;
/// How long the connection stays idle before the member speaks: past the established timeout.
const IDLE: Duration = Duration::from_secs(ESTABLISHED_S * 2);
/// How long both sides watch after the member spoke.
const WATCH: Duration = Duration::from_secs(2);

/// What must agree when the member (the server of a connection from `internet`) speaks first
/// after the idle: what the client received, each side's errno, and whether the member was left
/// with data nobody acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerFirst {
    client_received: String,
    client_error: Option<String>,
    member_error: Option<String>,
    member_unacked: bool,
}

/// Reads from `stream` until `deadline`, appending what comes to `into`; the first error's
/// name, or `EOF`, ends it.
fn watch(stream: &mut TcpStream, deadline: Instant, into: &mut String) -> Option<String> {
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some("EOF".into()),
            Ok(n) => into.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Some(errno_name(&e)),
        }
    }
}

/// `internet` (in `client_ns`) connects to the frontend's forwarded port and sends "a"; the
/// member (in `member_ns`) reads it, stays idle for [`IDLE`], then sends "b"; both watch for
/// [`WATCH`].
fn server_speaks_first(member_ns: &str, client_ns: &str) -> ServerFirst {
    let (ready_tx, ready_rx) = mpsc::channel();
    let member = netns::spawn_in(member_ns, move || {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, FORWARDED_PORT))
            .expect("the member binds the forwarded port");
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().expect("the member accepts");
        let start = Instant::now();
        let mut first = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .read_exact(&mut first)
            .expect("the member receives \"a\"");
        assert_eq!(&first, b"a");
        // The script's idle, not a wait for an event: nothing is to happen meanwhile.
        thread::sleep(IDLE.saturating_sub(start.elapsed()));
        stream
            .write_all(b"b")
            .expect("the member writes after the idle");
        let error = watch(&mut stream, Instant::now() + WATCH, &mut String::new());
        let unacked = TcpInfo::read(stream.as_raw_fd()).map_or(0, |i| i.unacked);
        (error, unacked > 0)
    })
    .expect("the member's thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the member listens");
    let client = netns::spawn_in(client_ns, move || {
        let frontend = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), FORWARDED_PORT);
        let mut stream = TcpStream::connect_timeout(&frontend.into(), Duration::from_secs(5))
            .expect("internet connects to the frontend");
        stream.write_all(b"a").unwrap();
        let mut got = String::new();
        let error = watch(&mut stream, Instant::now() + IDLE + WATCH, &mut got);
        (got, error)
    })
    .expect("the client's thread");
    // The client first: if it failed, the member may wait in accept for ever.
    let (client_received, client_error) = client.join().expect("the client's thread ends");
    let (member_error, member_unacked) = member.join().expect("the member's thread ends");
    ServerFirst {
        client_received,
        client_error,
        member_error,
        member_unacked,
    }
}

fn server_first_through_the_kernel(pickup: Pickup) -> ServerFirst {
    let router = KernelRouter::dnat_only(ESTABLISHED_S, pickup, FORWARDED_PORT);
    // The router's "client" side is the member; its "server" side the internet.
    server_speaks_first(&router.client, &router.server)
}

/// The lab's counterpart of [`KernelRouter::dnat_only`]: an LB rule from the frontend's
/// [`FORWARDED_PORT`] to the member's, and no outbound rule (no masquerade).
fn port_forward_config(pickup: Pickup) -> Config {
    let loose = pickup == Pickup::Loose;
    let text = format!(
        r#"profile = "linux-conntrack"
loose_pickup = {loose}
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "{MEMBER}" }}]
[[lb_rule]]
name = "forward"
frontend = "public"
frontend_port = {FORWARDED_PORT}
backend_pool = "vms"
backend_port = {FORWARDED_PORT}
idle_timeout = "{ESTABLISHED_S}s"
"#
    );
    Config::from_toml(&text, "conntrack port-forward config").unwrap()
}

fn server_first_through_idlegate(pickup: Pickup) -> ServerFirst {
    let config = port_forward_config(pickup);
    let (fate, _) = Lab::with_gateway(&unique("ctf"), &config, |lab| {
        Ok(server_speaks_first(
            &lab.namespace_of("vm1")?,
            &lab.namespace_of(INTERNET)?,
        ))
    })
    .expect("lab run");
    fate
}

fn compare_server_first(pickup: Pickup) -> ServerFirst {
    require_root();
    let kernel = server_first_through_the_kernel(pickup);
    let emulated = server_first_through_idlegate(pickup);
    assert_eq!(
        emulated, kernel,
        "{pickup:?} pickup: idlegate (left) and the kernel (right) disagree"
    );
    kernel
}

#[test]
fn with_loose_pickup_a_member_without_masquerade_speaking_first_after_expiry_leaves_untranslated_in_both(
) {
    // nf_conntrack_tcp_loose=1, a DNAT rule and no masquerade: the member's late segment
    // makes an entry no NAT rule binds and leaves with the member's own address, which no
    // socket of the client has; the client's stack answers it with a RST, which matches the
    // entry and resets the member. The client hears nothing.
    let kernel = compare_server_first(Pickup::Loose);
    assert_eq!(
        kernel,
        ServerFirst {
            client_received: String::new(),
            client_error: None,
            member_error: Some("ECONNRESET".into()),
            member_unacked: false,
        }
    );
}

#[test]
fn without_loose_pickup_a_member_without_masquerade_speaking_first_after_expiry_is_dropped_in_both()
{
    // nf_conntrack_tcp_loose=0: the late segment is invalid and the forward chain drops it.
    let kernel = compare_server_first(Pickup::SynOnly);
    assert_eq!(
        kernel,
        ServerFirst {
            client_received: String::new(),
            client_error: None,
            member_error: None,
            member_unacked: true,
        }
    );
}

/// A connection the member opens to `internet`, with a second message within the timeout.
fn member_connects_out(member_ns: &str, internet_ns: &str) -> Outcome {
    let script = Script {
        name: "member-out".to_string(),
        client_ns: member_ns.to_string(),
        server_ns: internet_ns.to_string(),
        listen: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8120).into(),
        connect: SocketAddrV4::new(INTERNET_ADDRESS, 8120).into(),
        keepalive: None,
        sends: vec![(Duration::ZERO, "a".into()), (ESTABLISHED / 2, "b".into())],
        observe: Duration::from_secs(1),
    };
    let mut outcomes = scenario::run(vec![script]).expect("scenario run");
    outcomes.remove(0)
}

#[test]
fn a_member_without_masquerade_connects_out_untranslated_in_both() {
    // A SYN makes a conntrack entry whatever the NAT rules; none binds it, so the connection
    // goes out with the member's own address and its replies come back by the entry.
    require_root();
    let kernel = {
        let router = KernelRouter::dnat_only(ESTABLISHED_S, Pickup::Loose, FORWARDED_PORT);
        member_connects_out(&router.client, &router.server)
    };
    let config = port_forward_config(Pickup::Loose);
    let (emulated, _) = Lab::with_gateway(&unique("cto"), &config, |lab| {
        Ok(member_connects_out(
            &lab.namespace_of("vm1")?,
            &lab.namespace_of(INTERNET)?,
        ))
    })
    .expect("lab run");
    assert_eq!(
        fate(&emulated),
        fate(&kernel),
        "idlegate (left) and the kernel (right) disagree\nkernel:\n{}\nidlegate:\n{}",
        scenario::render_timeline(std::slice::from_ref(&kernel)),
        scenario::render_timeline(std::slice::from_ref(&emulated)),
    );
    assert_eq!(
        fate(&kernel),
        (vec!["a".into(), "b".into()], None, None, false)
    );
}
