//! A running gateway seen from outside: `flows` and `flows expire`, the `--metrics` listener
//! (its paths and methods, through curl), the `--pcap` file as tshark reads it, a gateway of
//! several `--workers`, and what `--workers` and `--user` refuse before anything starts.

use super::*;

/// Connects to argv[1]:argv[2], sends "a", then waits up to 10 s for anything; says how it ended
/// and how long after connecting.
const HOLD_CLIENT: &str = r#"
import signal, socket, sys, time
signal.alarm(20)
start = time.monotonic()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.sendall(b"a")
print("sent a", flush=True)
c.settimeout(10)
try:
    data = c.recv(100)
    print("got " + repr(data))
except OSError as e:
    print("%s after %.1fs" % (type(e).__name__, time.monotonic() - start))
"#;

/// A server on `port` in both members and a client in `internet` that has sent "a" through
/// the frontend and holds the connection open; returns once a server got the "a".
fn hold_connection(programs: &mut Programs, port: &str) {
    let servers =
        [("vm1", "vm1"), ("vm2", "vm2")].map(|(tag, host)| (format!("{tag}:{port}"), host));
    for (tag, host) in &servers {
        programs.python(tag, host, CHUNK_SERVER, &[port]);
    }
    let tags = [servers[0].0.as_str(), servers[1].0.as_str()];
    programs.wait_each(&tags, "listening", LISTEN_TIMEOUT);
    programs.python("client", "internet", HOLD_CLIENT, &[FRONTEND, port]);
    programs.wait_line(&tags, |l| l == "got a", Duration::from_secs(10));
}

#[test]
fn flows_lists_the_live_flow_and_flows_expire_resets_it_at_once_as_the_pcap_shows() {
    let pcap = tempfile::NamedTempFile::new().expect("a capture file");
    let pcap_path = pcap.path().to_str().expect("a UTF-8 path").to_string();
    let mut lab = Lab::up_with_args(&lab_name(), &example_config(), &["--pcap", &pcap_path]);
    let mut programs = Programs::new(&lab);
    hold_connection(&mut programs, "7001");

    let listed = idlegate(&["flows", "--lab", &lab.name, "--json"], COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", listed.stderr);
    let flows: serde_json::Value =
        serde_json::from_str(&listed.stdout).expect("flows --json prints JSON");
    let flows = flows.as_array().expect("an array of flows");
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["rule"], "app-with-reset");
    assert_eq!(flows[0]["state"], "ESTABLISHED");
    assert_eq!(flows[0]["public"], format!("{FRONTEND}:7001"));

    // The rule resets on expiry: expiring its flows now resets both ends now, long before the
    // 4 s idle timeout.
    let expired = idlegate(
        &[
            "flows",
            "expire",
            "--lab",
            &lab.name,
            "--rule",
            "app-with-reset",
        ],
        COMMAND_TIMEOUT,
    );
    assert!(expired.status.success(), "{}", expired.stderr);
    assert_eq!(expired.stdout.trim(), "expired 1 flow(s)");
    let (_, client) = programs.finish("client", Duration::from_secs(15));
    let report = programs.report();
    let seconds: f64 = client
        .last()
        .and_then(|l| l.strip_prefix("ConnectionResetError after "))
        .and_then(|l| l.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("the client must be reset\n{report}"));
    assert!(
        seconds < 3.0,
        "reset by the expiry, not by the idle timeout\n{report}"
    );

    let refused = idlegate(&["flows", "expire", "--lab", &lab.name], COMMAND_TIMEOUT);
    assert!(!refused.status.success(), "expire needs --rule or --all");
    // A rule the gateway does not have is an argument's mistake (exit 2), checked before
    // anything is expired, with the rules it has.
    let no_rule = idlegate(
        &["flows", "expire", "--lab", &lab.name, "--rule", "nosuch"],
        COMMAND_TIMEOUT,
    );
    assert_eq!(no_rule.status.code(), Some(2), "{}", no_rule.stderr);
    assert_eq!(
        no_rule.stderr,
        "idlegate: flows expire --rule nosuch: the gateway has no such rule\n\
         hint: its rules: app, app-with-reset, egress (`idlegate flows` shows their flows)\n"
    );

    // The capture holds both sides of the translation and the two RSTs the gateway made.
    assert!(lab.terminate().success());
    let file = std::fs::File::open(pcap.path()).expect("the capture file");
    let mut reader = pcap_file::pcapng::PcapNgReader::new(file).expect("a pcapng file");
    let mut headers = Vec::new();
    while let Some(block) = reader.next_block() {
        let block = block.expect("a readable block");
        if let pcap_file::pcapng::Block::EnhancedPacket(packet) = block {
            if let Ok(h) = idlegate_core::packet::Headers::parse(&packet.data) {
                headers.push(h);
            }
        }
    }
    let frontend: std::net::SocketAddrV4 = format!("{FRONTEND}:7001").parse().unwrap();
    let syn = |h: &idlegate_core::packet::Headers| h.tcp.is_some_and(|t| t.flags.is_connect());
    assert!(
        headers.iter().any(|h| syn(h) && h.dst == frontend),
        "the SYN as it came in"
    );
    assert!(
        headers
            .iter()
            .any(|h| syn(h) && h.dst.port() == 7001 && h.dst != frontend),
        "the SYN as it left, translated"
    );
    let resets: Vec<_> = headers
        .iter()
        .filter(|h| h.tcp.is_some_and(|t| t.flags.rst()))
        .collect();
    assert!(
        resets.iter().any(|h| h.src == frontend),
        "the RST to the client: {resets:?}"
    );
    assert!(
        resets
            .iter()
            .any(|h| h.dst.port() == 7001 && h.dst != frontend),
        "the RST to the member: {resets:?}"
    );
}

/// `tshark -r FILE -T fields` of every TCP packet with `fields`, one row of fields each;
/// fails the test, naming it, if tshark is not installed.
fn tshark_rows(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let path = file.to_str().expect("a UTF-8 path");
    let mut args = vec!["-r", path, "-Y", "tcp", "-T", "fields", "-E", "separator=|"];
    for field in fields {
        args.extend(["-e", field]);
    }
    let which = Command::new("tshark").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "tshark is not installed (Debian package tshark; scripts/setup installs it)"
    );
    let out = run_bounded("tshark", &args, COMMAND_TIMEOUT);
    assert!(out.status.success(), "tshark failed: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

#[test]
fn the_pcap_file_is_pcapng_whose_interfaces_and_direction_flags_tshark_shows() {
    let dir = tempfile::tempdir().expect("a directory for the capture");
    // A name ending in .pcap still holds pcapng: tshark reads it by its magic.
    let pcap = dir.path().join("exchange.pcap");
    let pcap_path = pcap.to_str().expect("a UTF-8 path").to_string();
    let mut lab = Lab::up_with_args(&lab_name(), &example_config(), &["--pcap", &pcap_path]);
    let mut programs = Programs::new(&lab);
    // vm1 (inside) connects out to the internet host (outside) through the outbound rule.
    programs.python("server", "internet", ECHO_SERVER, &[INTERNET, "8000"]);
    programs.wait_each(&["server"], "listening", LISTEN_TIMEOUT);
    programs.python("client", "vm1", LINE_CLIENT, &[INTERNET, "8000", "ping"]);
    let (status, client) = programs.finish("client", Duration::from_secs(10));
    let report = programs.report();
    assert!(status.success(), "client failed: {status}\n{report}");
    assert_eq!(client, ["ping"], "\n{report}");
    assert!(lab.terminate().success());

    let rows = tshark_rows(
        &pcap,
        &[
            "frame.interface_description",
            "frame.packet_flags_direction",
            "ip.src",
            "ip.dst",
            "tcp.flags.syn",
            "tcp.flags.ack",
        ],
    );
    let table = rows
        .iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    // tshark shows the direction in hex (0x00000001), some versions in decimal.
    let number = |field: &str| match field.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => field.parse().ok(),
    };
    let has = |side: &str, direction: u32, src: &str, dst: &str, syn: bool, ack: bool| {
        let flag = |set: bool| if set { "1" } else { "0" };
        rows.iter().any(|r| {
            r.len() == 6
                && r[0].starts_with(side)
                && number(&r[1]) == Some(direction)
                && r[2] == src
                && r[3] == dst
                && (r[4] == flag(syn) || r[4] == if syn { "True" } else { "False" })
                && (r[5] == flag(ack) || r[5] == if ack { "True" } else { "False" })
        })
    };
    // epb_flags direction: 1 inbound, 2 outbound (draft-ietf-opsawg-pcapng, epb_flags).
    assert!(
        has("inside", 1, VM1, INTERNET, true, false),
        "the SYN read from vm1's device, inbound on the inside:\n{table}"
    );
    assert!(
        has("outside", 2, FRONTEND, INTERNET, true, false),
        "the SYN written translated, outbound on the outside:\n{table}"
    );
    assert!(
        has("outside", 1, INTERNET, FRONTEND, true, true),
        "the SYN-ACK read, inbound on the outside:\n{table}"
    );
    assert!(
        has("inside", 2, INTERNET, VM1, true, true),
        "the SYN-ACK written back to vm1, outbound on the inside:\n{table}"
    );
    let names = tshark_rows(&pcap, &["frame.interface_name"]);
    assert!(
        names.iter().all(|r| !r[0].is_empty()),
        "every packet on a named interface: {names:?}"
    );
}

/// `GET path` from the metrics listener at `addr`: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::Write;
    let mut stream =
        std::net::TcpStream::connect(addr).expect("connecting to the metrics listener");
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[test]
fn metrics_show_flows_by_rule_and_state_snat_ports_and_traffic() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let lab = Lab::up_with_args(&lab_name(), &example_config(), &["--metrics", &addr]);
    let mut programs = Programs::new(&lab);
    hold_connection(&mut programs, "7000");

    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert_eq!(
        value("idlegate_flows{rule=\"app\",state=\"ESTABLISHED\"}"),
        1
    );
    assert_eq!(value("idlegate_flows_created_total"), 1);
    // Two members with Azure's default 1,024 SNAT ports each, none lent.
    assert_eq!(
        value("idlegate_snat_ports{frontend=\"203.0.113.10\",state=\"free\"}"),
        2048
    );
    assert_eq!(
        value("idlegate_snat_ports{frontend=\"203.0.113.10\",state=\"in_use\"}"),
        0
    );
    assert_eq!(
        value("idlegate_snat_ports{frontend=\"203.0.113.10\",state=\"held\"}"),
        0
    );
    assert!(
        value("idlegate_packets_total{interface=\"outside\",direction=\"in\"}") >= 3,
        "SYN, ACK, data"
    );
    assert!(value("idlegate_bytes_total{interface=\"inside\",direction=\"out\"}") >= 120);
    assert_eq!(value("idlegate_expiries_total{action=\"silent\"}"), 0);
    assert!(
        body.contains("# TYPE idlegate_drops_total counter"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/nothing").0, "HTTP/1.1 404 Not Found");
    assert_eq!(http_get(&addr, "/").0, "HTTP/1.1 404 Not Found");
}

/// `curl -s -i ARGS… URL` against the metrics listener: (status line, the whole answer).
fn curl(url: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["-s", "-i", "--max-time", "5"];
    all.extend_from_slice(args);
    all.push(url);
    let out = run_bounded("curl", &all, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "curl {all:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    let status = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    (status, out.stdout)
}

#[test]
fn the_metrics_listener_serves_slash_metrics_alone_404_elsewhere_and_405_to_other_methods() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _lab = Lab::up_with_args(&lab_name(), &example_config(), &["--metrics", &addr]);
    let url = |path: &str| format!("http://{addr}{path}");

    let (status, answer) = curl(&url("/metrics"), &[]);
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    assert!(
        answer.contains("\nidlegate_flows_created_total 0"),
        "{answer}"
    );
    // Prometheus may add parameters to the scrape URL.
    let (status, answer) = curl(&url("/metrics?name%5B%5D=up"), &[]);
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    assert!(answer.contains("idlegate_flows_created_total"), "{answer}");
    // HEAD: the head of the GET answer, no body.
    let (status, answer) = curl(&url("/metrics"), &["--head"]);
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    assert!(!answer.contains("idlegate_flows_created_total"), "{answer}");

    for path in ["/", "/?x=1", "/metrics/", "/index.html"] {
        let (status, answer) = curl(&url(path), &[]);
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{path}: {answer}");
        assert!(
            answer.ends_with("\r\n\r\nidlegate serves GET /metrics\n"),
            "{answer}"
        );
    }
    for method in ["POST", "PUT", "DELETE"] {
        let (status, answer) = curl(&url("/metrics"), &["-X", method]);
        assert_eq!(
            status, "HTTP/1.1 405 Method Not Allowed",
            "{method}: {answer}"
        );
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"), "{answer}");
    }
}

/// Server: on port argv[1], echoes every byte on every connection it accepts, one thread each,
/// and closes when the client has.
const MANY_ECHO_SERVER: &str = r#"
import signal, socket, sys, threading
signal.alarm(30)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(256)
print("listening")
def echo(c):
    while True:
        data = c.recv(1 << 16)
        if not data:
            break
        c.sendall(data)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

/// Client: opens argv[3] connections to argv[1]:argv[2], sends a line of its own on each,
/// prints how many came back whole, then holds them open (until killed, at most 20 s).
const MANY_CLIENT: &str = r#"
import signal, socket, sys, time
signal.alarm(30)
conns = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
         for _ in range(int(sys.argv[3]))]
for i, c in enumerate(conns):
    c.sendall(b"line %d\n" % i)
ok = sum(c.makefile("rb").readline() == b"line %d\n" % i for i, c in enumerate(conns))
print("echoed %d" % ok)
time.sleep(20)
"#;

/// Client: sends 16 MiB of random bytes to argv[1]:argv[2] while reading what comes back, and
/// prints `bulk ok` if exactly those bytes came back (SHA-256), else `bulk mismatch N`.
const BULK_CLIENT: &str = r#"
import hashlib, os, signal, socket, sys, threading
signal.alarm(30)
data = os.urandom(16 << 20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
def send():
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
threading.Thread(target=send, daemon=True).start()
h, n = hashlib.sha256(), 0
while True:
    chunk = c.recv(1 << 16)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
same = n == len(data) and h.digest() == hashlib.sha256(data).digest()
print("bulk ok" if same else "bulk mismatch %d" % n)
"#;

#[test]
fn a_gateway_of_four_workers_carries_every_flow_and_answers_for_all_its_shards() {
    // Flows are spread over the workers by their remote endpoint. Without the steering
    // program the kernel's queue choice does not follow it, so packets read by another worker
    // are handed over: this test runs the handover path on purpose (steering off), and the
    // control socket must see every shard.
    let lab = Lab::up_in(
        &lab_name(),
        &example_config(),
        &["--workers", "4"],
        Command::new(IDLEGATE).env("IDLEGATE_TUN_STEERING", "off"),
    );
    let mut programs = Programs::new(&lab);
    for (tag, host) in [("vm1", "vm1"), ("vm2", "vm2"), ("internet", "internet")] {
        let port = if host == "internet" { "8000" } else { "7000" };
        programs.python(tag, host, MANY_ECHO_SERVER, &[port]);
    }
    programs.wait_each(&["vm1", "vm2", "internet"], "listening", LISTEN_TIMEOUT);
    programs.python(
        "inbound",
        "internet",
        MANY_CLIENT,
        &[FRONTEND, "7000", "40"],
    );
    programs.python("outbound", "vm1", MANY_CLIENT, &[INTERNET, "8000", "20"]);
    programs.wait_line(&["inbound"], |l| l == "echoed 40", Duration::from_secs(15));
    programs.wait_line(&["outbound"], |l| l == "echoed 20", Duration::from_secs(15));

    let listed = idlegate(&["flows", "--lab", &lab.name, "--json"], COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", listed.stderr);
    let flows: serde_json::Value =
        serde_json::from_str(&listed.stdout).expect("flows --json prints JSON");
    let flows = flows.as_array().expect("an array of flows");
    let of_rule = |rule: &str| flows.iter().filter(|f| f["rule"] == rule).count();
    assert_eq!((of_rule("app"), of_rule("egress")), (40, 20), "{flows:?}");

    let expired = idlegate(
        &["flows", "expire", "--lab", &lab.name, "--all"],
        COMMAND_TIMEOUT,
    );
    assert!(expired.status.success(), "{}", expired.stderr);
    assert_eq!(expired.stdout.trim(), "expired 60 flow(s)");
    let listed = idlegate(&["flows", "--lab", &lab.name, "--json"], COMMAND_TIMEOUT);
    assert_eq!(listed.stdout.trim(), "[]", "{}", listed.stderr);

    // Bulk both ways at once, in super-segments with offloads: every byte, in order.
    programs.python("bulk-in", "internet", BULK_CLIENT, &[FRONTEND, "7000"]);
    programs.python("bulk-out", "vm1", BULK_CLIENT, &[INTERNET, "8000"]);
    for tag in ["bulk-in", "bulk-out"] {
        let (_, lines) = programs.finish(tag, Duration::from_secs(30));
        assert_eq!(lines, ["bulk ok"], "{tag}\n{}", programs.report());
    }

    // The gateway's closing line counts the packets one worker read for another.
    drop(programs);
    let mut lab = lab;
    assert!(lab.terminate().success());
    lab.stderr_reader.take().map(JoinHandle::join);
    let stderr = lab.stderr();
    let handed_over: u64 = stderr
        .split_once("handed_over=")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no handed_over count in the log:\n{stderr}"));
    assert!(handed_over > 0, "{stderr}");
    assert!(stderr.contains("workers=4"), "{stderr}");
}

#[test]
fn workers_out_of_range_are_refused_before_anything_starts() {
    let refused = idlegate(
        &[
            "lab",
            "up",
            "--config",
            "examples/azure-lb.toml",
            "--workers",
            "0",
        ],
        COMMAND_TIMEOUT,
    );
    assert!(!refused.status.success());
    assert!(
        refused
            .stderr
            .contains("expected a number of workers from 1 to 64"),
        "{}",
        refused.stderr
    );
}

#[test]
fn an_unknown_user_or_root_is_refused_before_the_gateway_makes_any_device() {
    common::require_root();
    let config = example_config();
    for (user, why) in [
        (
            "no-such-user-here",
            "--user no-such-user-here: no such user",
        ),
        ("root", "--user root: has uid 0, which gives nothing up"),
    ] {
        // In a namespace of its own: had it made its devices, they would be there alone.
        let ns = idlegate::sys::netns::Namespace::create(&common::unique("igu")).unwrap();
        let refused = run_bounded(
            "ip",
            &[
                "netns",
                "exec",
                ns.name(),
                IDLEGATE,
                "gateway",
                "--config",
                config.to_str().expect("a UTF-8 path"),
                "--user",
                user,
            ],
            COMMAND_TIMEOUT,
        );
        assert!(!refused.status.success());
        assert!(refused.stderr.contains(why), "{}", refused.stderr);
        let links = Command::new("ip")
            .args(["-n", ns.name(), "-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert_eq!(links.lines().count(), 1, "only lo: {links}");
    }
}
