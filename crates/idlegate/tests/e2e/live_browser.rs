//! The live page in headless Chromium ([`crate::common::browser`]) against a real lab: `lab up
//! --api PORT --api-token-file FILE` of `examples/azure-lb.toml` (Azure's 4 min run as 4 s),
//! servers and clients in the lab's hosts through `lab exec`. One lab and one browser, step by
//! step: the page opened through `/?token=…` loads with no console error while the API refuses
//! a request without the token (401); a connection shows as a row with its rule and endpoints;
//! its time left decreases; it leaves at expiry and the timeline says so; the per-rule expire
//! button resets a connection under the `reset` rule (ECONNRESET at the client, the RSTs on the
//! timeline); a rule changed through the API, and another through the page's own form, is
//! what the next idle gap of an existing connection lasts (the client reset at the new
//! timeout) and what the rules table shows; a bad value in the form shows the config's message.
//! Screenshots of the page with a flow draining, after its expiry, after the reset and after
//! the changes are kept as artifacts and checked to be non-blank.
//!
//! Needs root (namespaces, TUN devices), `python3` and Chromium; fails saying which is missing.

use crate::api_example::{api_lab, python_in, ApiLab, Group, Lines, READY};
use crate::common::browser::{non_blank, Browser, Page};
use crate::common::require_root;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TOKEN: &str = "a-token-for-the-live-page-browser-test";
/// The frontend of both rules of `examples/azure-lb.toml`.
const FRONTEND: &str = "203.0.113.10";
/// What the page may take to show what the lab did: its poll runs every second and events
/// come as they happen; a loaded 2-core machine is slow.
const SHOWN: Duration = Duration::from_secs(15);
/// A 4 s idle timeout (scaled), with the margin of a loaded machine.
const EXPIRY: Duration = Duration::from_secs(20);

/// Server: on port argv[1], accepts connections, reads each until it ends.
const SERVER: &str = r#"
import signal, socket, sys, threading
signal.alarm(150)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("listening")
def drain(c):
    try:
        while c.recv(100):
            pass
    except OSError:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"#;

/// Client: connects to argv[1]:argv[2], sends a byte, prints `connected IP:PORT` (its own
/// address). With argv[3] `busy` it sends a byte every 0.5 s for ever; with a path, every 0.5 s
/// until that file exists, then one byte (printing `sent`) and nothing more; with `-`, nothing.
/// When the connection fails it prints `end NAME errno N after S` (S: seconds since its last
/// byte sent; a RST is ConnectionResetError, errno 104).
const CLIENT: &str = r#"
import os, select, signal, socket, sys, time
signal.alarm(150)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"a")
last = time.monotonic()
print("connected %s:%d" % c.getsockname())
mode = sys.argv[3]
try:
    while True:
        if select.select([c], [], [], 0.5)[0]:
            print("end eof" if not c.recv(100) else "end data")
            break
        if mode == "busy" or (mode != "-" and not os.path.exists(mode)):
            c.sendall(b"k")
            last = time.monotonic()
        elif mode != "-":
            c.sendall(b"b")
            last = time.monotonic()
            print("sent")
            mode = "-"
except OSError as e:
    print("end %s errno %d after %.2f" % (type(e).__name__, e.errno, time.monotonic() - last))
"#;

/// One HTTP/1.1 request to the API, with the token or without; the status and the body.
fn call(api: SocketAddr, method: &str, path: &str, token: bool, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(api)
        .unwrap_or_else(|e| panic!("connecting to the API at {api}: {e} (is it served?)"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\n{auth}Connection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sending the request");
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer from the API at {api}: {e}"));
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_string())
}

/// A client in the lab's `internet` host (see [`CLIENT`]) to the frontend's `port`; returns it
/// and its address as the flow's remote end.
fn client(lab: &str, tag: &str, port: u16, mode: &str, lines: &Lines) -> (Group, String) {
    let group = python_in(
        lab,
        "internet",
        tag,
        CLIENT,
        &[FRONTEND, &port.to_string(), mode],
        lines,
    );
    let line = lines.wait(tag, |l| l.starts_with("connected "), READY);
    let remote = line["connected ".len()..].to_string();
    (group, remote)
}

/// JavaScript: the row of the flow from `remote` to the frontend's `port`, or null.
fn row_js(remote: &str, port: u16) -> String {
    format!(
        "[...document.querySelectorAll('#flows .flow')].find(r => {{ const k = \
         r.dataset.key.split(' '); return k[0] === 'tcp' && k[1] === '{remote}' && \
         k[2] === '{FRONTEND}:{port}'; }})"
    )
}

/// JavaScript: whether the timeline has an item of `kind` whose text has every one of `words`.
fn on_timeline_js(kind: &str, words: &[&str]) -> String {
    let words = serde_json::to_string(words).expect("JSON");
    format!(
        "[...document.querySelectorAll('#timeline .event-{kind}')].some(e => \
         {words}.every(w => e.innerText.includes(w)))"
    )
}

/// Keeps a screenshot of `page` as `name` and checks that it is not blank.
fn shot(page: &Page, name: &str) {
    let path = page.screenshot(name).expect("a screenshot");
    let share = non_blank(&path).expect("a screenshot that is not blank");
    eprintln!(
        "screenshot {} ({:.1} % not background)",
        path.display(),
        share * 100.0
    );
}

/// What the page shows, for a failure's message: where it is, the stream's status, the
/// banner, how many rules, tiles and flows, and its console errors.
fn state(page: &Page) -> String {
    let shown = page
        .eval(
            "({url: location.href, cookie: document.cookie, \
             stream: document.getElementById('stream-status').textContent, \
             banner: document.getElementById('banner').textContent, \
             rules: document.querySelectorAll('#rules tbody tr').length, \
             tiles: document.querySelectorAll('#counters .tile').length, \
             flows: [...document.querySelectorAll('#flows .flow')].map(r => r.dataset.key)})",
        )
        .unwrap_or_else(|e| Value::String(format!("{e:#}")));
    format!("{shown}; console errors: {:?}", page.console_errors())
}

/// The seconds after its last byte at which a client printed that a RST ended it.
fn reset_after(line: &str) -> f64 {
    let rest = line
        .strip_prefix("end ConnectionResetError errno 104 after ")
        .unwrap_or_else(|| panic!("not ECONNRESET: {line}"));
    rest.parse().expect("seconds")
}

#[test]
fn the_live_page_in_chromium_shows_flows_drain_expire_reset_and_rules_change() {
    require_root();
    let lines = Lines::new();
    let ApiLab {
        name,
        api,
        token_file: _,
        dir,
        lab,
        servers: programs,
    } = api_lab("lp", TOKEN, SERVER, &lines);

    // 7. The API refuses a request without the token; the page opened once with it works.
    let (status, body) = call(api, "GET", "/api/flows", false, "");
    assert_eq!(status, 401, "GET /api/flows without the token: {body}");
    let (status, body) = call(api, "GET", "/api/flows", true, "");
    assert_eq!(status, 200, "GET /api/flows with the token: {body}");
    let browser = Browser::start().expect("starting chromium");
    let page = browser
        .open(&format!("http://{api}/?token={TOKEN}"))
        .expect("opening the live page");
    page.wait_until(
        "location.pathname === '/' && \
         document.getElementById('stream-status').textContent === 'connected' && \
         document.querySelector('#rules tr[data-rule=\"app\"]') && \
         document.querySelector('#rules tr[data-rule=\"app-with-reset\"]') && \
         document.querySelectorAll('#counters .tile').length > 0",
        SHOWN,
    )
    .unwrap_or_else(|e| panic!("{e:#}\nthe page: {}", state(&page)));
    // 1. No console error on load (the 303 to / and the cookie included).
    assert_eq!(
        page.console_errors(),
        Vec::<String>::new(),
        "console errors"
    );

    // 2. A connection under `app` shows as a row with its rule and endpoints.
    let (_quiet, quiet) = client(&name, "quiet", 7000, "-", &lines);
    let row = row_js(&quiet, 7000);
    page.wait_until(&row, SHOWN)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lines.everything()));
    let shown = page
        .eval(&format!(
            "(r => ({{key: r.dataset.key, text: r.innerText, \
             rule: r.querySelector('.rule').textContent}}))({row})"
        ))
        .expect("the row");
    assert_eq!(shown["rule"], "app", "{shown}");
    let key = shown["key"].as_str().unwrap_or("");
    let private = key.rsplit(' ').next().unwrap_or("");
    assert!(
        ["192.0.2.11:7000", "192.0.2.12:7000"].contains(&private),
        "the private end is a member: {shown}"
    );
    for end in [quiet.as_str(), &format!("{FRONTEND}:7000"), private] {
        assert!(
            shown["text"].as_str().unwrap_or("").contains(end),
            "the row shows {end}: {shown}"
        );
    }

    // 3. Its time left decreases, as drawn.
    let left = |page: &Page| {
        page.eval(&format!(
            "(r => r ? Number(r.dataset.expiresIn) : null)({row})"
        ))
        .expect("data-expires-in")
        .as_f64()
    };
    let first = left(&page).expect("the row's data-expires-in");
    assert!(
        first > 0.0 && first <= 4.0,
        "a 4 s timeout has {first} s left"
    );
    page.wait_until(
        &format!(
            "(r => r && Number(r.dataset.expiresIn) > 0 && \
             Number(r.dataset.expiresIn) <= {first} - 0.5)({row})"
        ),
        Duration::from_secs(4),
    )
    .expect("the time left decreases");
    shot(&page, "live-page-draining.png");

    // 4. It leaves at expiry, and the timeline shows the expiry with its rule and action.
    page.wait_until(
        &format!(
            "!{row} && {}",
            on_timeline_js("expired", &["app", &quiet, "dropped silently"])
        ),
        EXPIRY,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lines.everything()));
    shot(&page, "live-page-expired.png");

    // 5. The expire button of the reset rule resets a busy connection: ECONNRESET at the
    // client, the forced expiry and the RSTs on the timeline.
    let (_busy, busy) = client(&name, "busy", 7001, "busy", &lines);
    page.wait_until(&row_js(&busy, 7001), SHOWN)
        .expect("the busy flow shows");
    page.click("[data-expire-rule=\"app-with-reset\"]")
        .expect("clicking expire of app-with-reset");
    let end = lines.wait("busy", |l| l.starts_with("end "), EXPIRY);
    reset_after(&end);
    page.wait_until(
        &format!(
            "{} && {}",
            on_timeline_js(
                "expired",
                &["app-with-reset", &busy, "forced", "RST to both ends"]
            ),
            on_timeline_js("sent", &["RST", &busy])
        ),
        SHOWN,
    )
    .expect("the timeline shows the forced expiry and the RSTs");
    page.wait_until(
        "document.getElementById('action-status').textContent === \
         'expire app-with-reset: 1 flow expired'",
        SHOWN,
    )
    .expect("the page says what the button did");
    shot(&page, "live-page-reset.png");

    // 6. Two connections kept busy until told, one per rule; then app-with-reset changed
    // through the API (4 min -> 8 min, run as 8 s) and app through the page's form (4 min
    // silent -> 6 min reset). Each client's next byte starts its next idle gap, which lasts
    // the new timeout: a RST (the reset action) after 8 s and 6 s, not 4 s.
    let long_go = dir.path().join("long-go");
    let form_go = dir.path().join("form-go");
    let (_long, long_remote) = client(
        &name,
        "long",
        7001,
        long_go.to_str().expect("a UTF-8 path"),
        &lines,
    );
    let (_formed, _) = client(
        &name,
        "formed",
        7000,
        form_go.to_str().expect("a UTF-8 path"),
        &lines,
    );
    // The page's poll of /api/flows held (its fetch never answers until released): what
    // follows is drawn from the event stream alone.
    page.eval(
        "(() => { const fetch = window.fetch; window.__fetch = fetch; \
         window.fetch = (path, init) => String(path).startsWith('/api/flows') \
           ? new Promise(done => { window.__held = () => done(fetch(path, init)); }) \
           : fetch(path, init); return true; })()",
    )
    .expect("holding the page's poll");
    page.wait_until("window.__held", SHOWN)
        .expect("the page polls again");
    let long_row = row_js(&long_remote, 7001);
    page.wait_until(&long_row, SHOWN)
        .expect("the long flow shows");
    let (status, body) = call(
        api,
        "POST",
        "/api/rules/app-with-reset",
        true,
        r#"{"idle_timeout": "8m"}"#,
    );
    assert_eq!(status, 200, "POST /api/rules/app-with-reset: {body}");
    let changed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(changed["idle_timeout_s"].as_f64(), Some(8.0), "{changed}");
    // The long client's next byte (every 0.5 s) runs the flow under 8 s: its `refreshed`
    // event draws more than the old 4 s left, and the row's "of" says the new timeout.
    page.wait_until(
        &format!("(r => r && Number(r.dataset.expiresIn) > 4.5)({long_row})"),
        SHOWN,
    )
    .expect("the long flow's refresh under the new timeout is drawn");
    let of = page
        .eval(&format!("{long_row}.querySelector('.of').textContent"))
        .expect("the row's timeout");
    assert_eq!(of, "of 8.0 s", "the row says the timeout that runs");
    page.eval("(window.fetch = window.__fetch, window.__held(), true)")
        .expect("releasing the page's poll");
    page.eval(
        "(f => { f.elements.idle_timeout.value = '6m'; f.elements.expiry.value = 'reset'; \
         return true; })(document.querySelector('[data-rule-form=\"app\"]'))",
    )
    .expect("filling the form of app");
    page.click("[data-rule-form=\"app\"] button[type=submit]")
        .expect("submitting the form of app");
    page.wait_until(
        "document.getElementById('action-status').textContent\
         .startsWith('app: idle timeout runs 6.0 s, expiry reset')",
        SHOWN,
    )
    .expect("the page says the change of app applied");
    // The rules table shows the new values (the configured one and what it runs as).
    let timer = |rule: &str| {
        format!(
            "(r => r ? r.querySelector('.timer').innerText + ' | ' + \
             r.querySelector('.expiry').innerText : '')\
             (document.querySelector('#rules tr[data-rule=\"{rule}\"]'))"
        )
    };
    page.wait_until(
        &format!(
            "{} === '6 min runs 6.0 s | reset' && {} === '8 min runs 8.0 s | reset'",
            timer("app"),
            timer("app-with-reset")
        ),
        SHOWN,
    )
    .expect("the rules table shows the new timers");
    page.wait_until(
        "document.querySelectorAll('#timeline .event-rule-changed').length >= 2",
        SHOWN,
    )
    .expect("the timeline shows both changes");
    shot(&page, "live-page-rules-changed.png");
    std::fs::write(&long_go, "").expect("telling the long client to go idle");
    std::fs::write(&form_go, "").expect("telling the formed client to go idle");
    let long = reset_after(&lines.wait("long", |l| l.starts_with("end "), EXPIRY));
    let formed = reset_after(&lines.wait("formed", |l| l.starts_with("end "), EXPIRY));
    assert!(
        (7.5..18.0).contains(&long),
        "app-with-reset, changed to 8 min (8 s) through the API: the idle gap ended after \
         {long} s"
    );
    assert!(
        (5.5..16.0).contains(&formed),
        "app, changed to 6 min (6 s) and reset through the form: the idle gap ended after \
         {formed} s"
    );
    assert_eq!(
        page.console_errors(),
        Vec::<String>::new(),
        "console errors"
    );

    // Last, as Chromium logs the refused request as an error: a value outside Azure's range
    // in the form shows the config's message, and nothing changes.
    page.eval(
        "(f => { f.elements.idle_timeout.value = '120m'; return true; })\
         (document.querySelector('[data-rule-form=\"app\"]'))",
    )
    .expect("filling the form of app");
    page.click("[data-rule-form=\"app\"] button[type=submit]")
        .expect("submitting the form of app");
    page.wait_until(
        "document.querySelector('[data-rule-form=\"app\"] .form-error').textContent === \
         'idle_timeout = 120m is outside Azure LB\\'s range: 4 min to 100 min'",
        SHOWN,
    )
    .expect("the form shows the config's message");
    let errors = page.console_errors();
    assert!(
        !errors.is_empty()
            && errors
                .iter()
                .all(|e| e.contains("400") && e.contains("/api/rules/app")),
        "the only console error is the refused POST: {errors:?}"
    );
    assert_eq!(
        page.eval(&timer("app")).expect("the rules table"),
        "6 min runs 6.0 s | reset"
    );

    drop(page);
    drop(browser);
    drop(programs);
    drop(lab);
}
