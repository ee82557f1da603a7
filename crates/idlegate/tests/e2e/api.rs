//! The HTTP API (`--api`) on a real lab: a connection through the lab's gateway shows in
//! `GET /api/flows`; `POST /api/rules/app` changes the idle timeout and the next idle gap
//! ends at the new one (the client reset there, not at the old one); `POST /api/expire`
//! under a `reset` rule resets the connection (ECONNRESET at the client); `GET /api/events`
//! streams `created` and `expired`.

use crate::common::{free_port, one_rule_lab, require_root, unique};
use idlegate::gateway::ApiOptions;
use idlegate::lab::{Extras, Lab, INTERNET};
use idlegate::sys::netns;
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7000);

/// One HTTP/1.1 request to the API; the status and the JSON body.
fn call(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(api)
        .unwrap_or_else(|e| panic!("connecting to the API at {api}: {e} (is it served?)"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer from the API at {api}: {e}"));
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

/// The events of `GET /api/events`, (name, data), as they come, on a channel. Returns once
/// the stream's head has been read: the server fixes where a stream starts in its ring when it
/// answers, so an event that happens after this returns is on the channel (one that happened
/// before the answer would not be, and a test that connected first would wait for nothing).
fn events(api: SocketAddr) -> mpsc::Receiver<(String, Value)> {
    let mut s = TcpStream::connect(api).expect("connecting to the API's event stream");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .expect("the event stream's status line within 10 s");
    assert!(status.starts_with("HTTP/1.1 200 "), "{status:?}");
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("the event stream's head within 10 s");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    reader.get_ref().set_read_timeout(None).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(d).expect("one line of JSON");
                if tx.send((std::mem::take(&mut name), data)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next event called `name`, within `within`.
fn next_event(rx: &mpsc::Receiver<(String, Value)>, name: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((n, data)) if n == name => return data,
            Ok(_) => {}
            Err(e) => panic!("no {name} event within {within:?}: {e}"),
        }
    }
}

/// A connection from the internet host to the frontend, and the member's end of it.
fn connect(lab: &Lab, listener: &TcpListener) -> (TcpStream, TcpStream) {
    let ns = lab.namespace_of(INTERNET).unwrap();
    let client = netns::spawn_in(&ns, || {
        TcpStream::connect_timeout(&FRONTEND.into(), Duration::from_secs(5))
    })
    .unwrap()
    .join()
    .unwrap()
    .expect("connecting through the gateway");
    let (server, _) = listener.accept().expect("the member accepts");
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (client, server)
}

/// Sends `what` from the client and reads it at the member.
fn deliver(client: &mut TcpStream, server: &mut TcpStream, what: &[u8]) {
    client.write_all(what).unwrap();
    let mut got = vec![0; what.len()];
    server.read_exact(&mut got).expect("delivered");
    assert_eq!(got, what);
}

/// How long until the client's read fails, and how.
fn reset_after(client: &mut TcpStream) -> (Duration, ErrorKind) {
    let start = Instant::now();
    let mut buf = [0; 16];
    let kind = match client.read(&mut buf) {
        Ok(n) => panic!("the client read {n} bytes instead of a reset"),
        Err(e) => e.kind(),
    };
    (start.elapsed(), kind)
}

#[test]
fn the_api_shows_flows_changes_a_rules_timeout_expires_with_resets_and_streams_events() {
    require_root();
    // Azure LB at time_scale 80: 4 min run 3 s; a reset rule, so an expiry is seen as ECONNRESET.
    let config = one_rule_lab("reset");
    let api = free_port();
    let extras = Extras {
        api: Some(ApiOptions {
            addr: api,
            token: None,
        }),
        ..Extras::default()
    };
    Lab::with_gateway_and(&unique("api"), &config, extras, |lab| {
        let vm = lab.namespace_of("vm1")?;
        let listener = netns::spawn_in(&vm, || TcpListener::bind("0.0.0.0:7000"))?
            .join()
            .map_err(|_| anyhow::anyhow!("the listener thread panicked"))??;
        let stream = events(api);

        // A connection shows in /api/flows, and as a `created` event.
        let (mut client, mut server) = connect(lab, &listener);
        deliver(&mut client, &mut server, b"a");
        let created = next_event(&stream, "created", Duration::from_secs(10));
        assert_eq!(created["rule"], "app");
        let (status, flows) = call(api, "GET", "/api/flows", None);
        assert_eq!(status, 200);
        let remote = client.local_addr()?.to_string();
        let flow = flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["remote"] == remote.as_str())
            .unwrap_or_else(|| panic!("no flow from {remote} in {flows}"));
        assert_eq!(flow["rule"], "app");
        assert_eq!(flow["state"], "established");
        assert_eq!(flow["timeout_s"], 3.0);

        // 8 min run 6 s: from the next packet on, a 4.5 s gap (past the old 3 s) passes.
        let (status, changed) = call(
            api,
            "POST",
            "/api/rules/app",
            Some(r#"{"idle_timeout": "8m"}"#),
        );
        assert_eq!(status, 200, "{changed}");
        assert_eq!(changed["idle_timeout_s"], 6.0);
        deliver(&mut client, &mut server, b"b");
        std::thread::sleep(Duration::from_millis(4_500));
        deliver(&mut client, &mut server, b"c");
        // The next idle gap ends at the new timeout: reset no earlier than 6 s after "c".
        let (after, kind) = reset_after(&mut client);
        assert_eq!(kind, ErrorKind::ConnectionReset);
        assert!(
            after >= Duration::from_millis(5_900),
            "reset after {after:?}, before the new 6 s"
        );
        let expired = next_event(&stream, "expired", Duration::from_secs(10));
        assert_eq!(
            (&expired["cause"], &expired["action"]),
            (&"idle".into(), &"reset".into())
        );
        assert_eq!(expired["timeout_s"], 6.0);

        // POST /api/expire under a reset rule: the client is reset at once.
        let (mut client, mut server) = connect(lab, &listener);
        deliver(&mut client, &mut server, b"d");
        let (status, answer) = call(api, "POST", "/api/expire", Some(r#"{"rule": "app"}"#));
        assert_eq!((status, &answer["expired"]), (200, &1.into()));
        let (after, kind) = reset_after(&mut client);
        assert_eq!(kind, ErrorKind::ConnectionReset);
        assert!(after < Duration::from_secs(5), "reset after {after:?}");
        let expired = next_event(&stream, "expired", Duration::from_secs(10));
        assert_eq!(expired["cause"], "forced");
        Ok(())
    })
    .expect("lab run");
}
