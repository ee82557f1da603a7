//! `idlegate lab demo --html FILE`: the demo's [`Report`] (what `--json` prints, with or
//! without `--config`) drawn as one sequence diagram per connection.
//!
//! Contract: three lifelines (client, box, server) and time flowing down, to scale within each
//! connection. Each message is an arrow from the side that sent it to the side that received
//! it; a message that never arrived ends at the box with an ✕. The idle gaps between the
//! client's sends are shaded with their length; the box's expiry is marked where the flow was
//! forgotten (its last packet plus the idle timeout: inferred, the gateway's timer fires within
//! its tick) with what the box does then (forget silently, RSTs to both ends, a RST to the next
//! packet's sender, ACK and discard); a RST an end saw is an arrow from the box to it, with the
//! error. TCP keepalive probes are drawn where the kernel sends them (every `keepalive_s` of
//! idleness), not observed. The verdict heads each connection; every figure a test compares
//! with the JSON is a `data-*` attribute (module [`crate::obs::html`]).

use crate::lab::demo::{ConnectionReport, Event, Report, Verdict};
use crate::obs::html::{data, element, escape, Anchor, Page, Svg};
use std::fmt::Write as _;

/// The drawing's width and its lifelines' x.
const WIDTH: f64 = 1020.0;
const CLIENT_X: f64 = 330.0;
const BOX_X: f64 = 590.0;
const SERVER_X: f64 = 850.0;
/// Where the idle gaps are shaded.
const GAP_X: f64 = 62.0;
/// Where time starts, and how tall the time axis is.
const TOP: f64 = 78.0;
const HEIGHT: f64 = 430.0;

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let mut page = Page::new(&format!("idlegate lab demo: {}", report.profile));
    let idle_ms = report.idle_timeout_s * 1000.0;
    page.push(&format!(
        "<main class=\"report demo\"{}{}{}{}{}{}{}>",
        data("report", "lab-demo"),
        data("rule", report.rule.as_ref().map_or("", |r| r.name.as_str())),
        data("profile", &report.profile),
        data("expiry", &report.expiry),
        data("time-scale", report.time_scale),
        data("idle-timeout-ms", format!("{idle_ms:.0}")),
        data("connections", report.connections.len()),
    ));
    page.push(&element("h1", "", "idlegate lab demo"));
    page.push(&element(
        "p",
        " class=\"muted\"",
        "Each connection sends \"a\", idles ¼ of the idle timeout, sends \"b\", idles 1⅛ of \
         it (past the expiry), and sends \"c\". Time flows down, to scale within each diagram.",
    ));
    page.push(&facts(report));
    for connection in &report.connections {
        page.push(&section(report, connection));
    }
    page.push("</main>");
    page.render()
}

/// The settings and the gateway's counters, as a list of facts.
fn facts(report: &Report) -> String {
    let real = report.idle_timeout_s * f64::from(report.time_scale);
    let mut rows = vec![
        ("profile", report.profile.clone()),
        ("expiry", report.expiry.clone()),
        (
            "idle timeout",
            format!(
                "{} s in the lab ({} real, scaled 1/{})",
                secs(report.idle_timeout_s),
                human_secs(real),
                report.time_scale
            ),
        ),
        ("time scale", format!("1/{}", report.time_scale)),
        (
            "keepalive",
            format!("every {} s on the keepalive connection", report.keepalive_s),
        ),
    ];
    if let Some(rule) = &report.rule {
        rows.push((
            "rule",
            format!("{} {} of {}", rule.kind, rule.name, rule.config),
        ));
        rows.push(("why this timeout", rule.reason.clone()));
    }
    let g = &report.gateway;
    rows.push((
        "gateway",
        format!(
            "{} flows created, {} expired, {} RSTs sent, {} packets dropped for want of a flow",
            g.flows_created, g.flows_expired, g.resets_sent, g.dropped_no_flow
        ),
    ));
    let mut out = String::from("<dl class=\"facts\">");
    for (name, value) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(&value));
    }
    out.push_str("</dl>");
    out
}

/// One connection: its verdict, its explanation, its diagram and its moments.
fn section(report: &Report, c: &ConnectionReport) -> String {
    let moments: Vec<&Event> = report
        .timeline
        .iter()
        .filter(|e| e.connection == c.name)
        .collect();
    let diagram = Diagram::of(report, c, &moments);
    let mut out = format!(
        "<section class=\"connection\"{}{}{}{}{}{}{}{}{}{}{}>",
        data("name", &c.name),
        data("verdict", kebab(&c.verdict)),
        data("expiry", &c.expiry),
        data(
            "idle-timeout-ms",
            format!("{:.0}", report.idle_timeout_s * 1000.0)
        ),
        data("longest-gap-ms", diagram.longest_gap_ms),
        data("sent", c.sent.join(" ")),
        data("delivered", c.delivered.join(" ")),
        data("client-error", c.client_error.as_deref().unwrap_or("")),
        data("server-error", c.server_error.as_deref().unwrap_or("")),
        data("unacknowledged", c.unacknowledged_at_end),
        data(
            "expired-at-ms",
            diagram
                .expiry_ms
                .map_or(String::new(), |t| format!("{t:.0}"))
        ),
    );
    let _ = write!(
        out,
        "<h2>{}<span class=\"verdict {}\">{}</span></h2>",
        escape(&c.name),
        verdict_class(c.verdict),
        escape(&kebab(&c.verdict))
    );
    out.push_str(&element("p", "", &c.explanation));
    out.push_str(&diagram.svg);
    out.push_str("<details><summary>every moment</summary><table><tr><th>at</th><th>lab time</th><th>side</th><th>what</th></tr>");
    for m in &moments {
        let _ = write!(
            out,
            "<tr><td>{} s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            secs(m.at_ms as f64 / 1000.0),
            escape(&human_secs(m.lab_at_ms as f64 / 1000.0)),
            escape(&m.side),
            escape(&m.what)
        );
    }
    out.push_str("</table></details></section>");
    out
}

/// A connection's drawing and the figures read off it.
struct Diagram {
    svg: String,
    longest_gap_ms: u64,
    /// When the box forgot the flow, since the demo started (real ms), if it did.
    expiry_ms: Option<f64>,
}

/// Which lifeline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lane {
    Client,
    Box,
    Server,
}

impl Lane {
    fn x(self) -> f64 {
        match self {
            Lane::Client => CLIENT_X,
            Lane::Box => BOX_X,
            Lane::Server => SERVER_X,
        }
    }

    fn of_side(side: &str) -> Lane {
        match side {
            "server" => Lane::Server,
            _ => Lane::Client,
        }
    }

    fn other(self) -> Lane {
        match self {
            Lane::Client => Lane::Server,
            _ => Lane::Client,
        }
    }
}

impl Diagram {
    fn of(report: &Report, c: &ConnectionReport, moments: &[&Event]) -> Diagram {
        let idle_ms = report.idle_timeout_s * 1000.0;
        let start = moments.first().map_or(0.0, |m| m.at_ms as f64);
        let sends: Vec<(f64, Lane, String)> = moments
            .iter()
            .filter_map(|m| {
                let message = quoted(m.what.strip_prefix("sent ")?)?;
                Some((m.at_ms as f64, Lane::of_side(&m.side), message))
            })
            .collect();
        // Every attempt to send, failed writes included: the idle gaps run between them.
        let attempts: Vec<(f64, Lane)> = moments
            .iter()
            .filter(|m| m.what.starts_with("sent ") || m.what.starts_with("write failed"))
            .map(|m| (m.at_ms as f64, Lane::of_side(&m.side)))
            .collect();
        let received = |lane: Lane, message: &str, after: f64| {
            moments
                .iter()
                .find(|m| {
                    Lane::of_side(&m.side) == lane
                        && m.at_ms as f64 >= after
                        && m.what
                            .strip_prefix("received ")
                            .and_then(quoted)
                            .is_some_and(|got| got == message)
                })
                .map(|m| m.at_ms as f64)
        };
        let dead = matches!(
            c.verdict,
            Verdict::LostSilently | Verdict::LostAcknowledged | Verdict::Reset
        );
        // The flow's last packet before it was forgotten: the last message delivered before
        // the first one that was not (or before the first error).
        let last_delivered = moments
            .iter()
            .filter(|m| m.what.starts_with("received "))
            .map(|m| m.at_ms as f64)
            .fold(None, |last: Option<f64>, t| {
                Some(last.map_or(t, |l| l.max(t)))
            });
        let first_trouble = moments
            .iter()
            .find(|m| trouble(&m.what))
            .map(|m| m.at_ms as f64);
        let last_packet = moments
            .iter()
            .filter(|m| m.what.starts_with("received ") || m.what.starts_with("sent "))
            .filter(|m| first_trouble.is_none_or(|t| (m.at_ms as f64) < t))
            .filter(|m| {
                // "c", sent but lost, is no packet the box saw on a live flow.
                !m.what.starts_with("sent ")
                    || m.what
                        .strip_prefix("sent ")
                        .and_then(quoted)
                        .is_some_and(|s| c.delivered.contains(&s))
            })
            .map(|m| m.at_ms as f64)
            .fold(last_delivered, |last, t| Some(last.map_or(t, |l| l.max(t))));
        let expiry_ms = match (dead, last_packet) {
            (true, Some(t)) => Some(t + idle_ms),
            _ => None,
        };
        let end = moments
            .iter()
            .map(|m| m.at_ms as f64)
            .chain(expiry_ms)
            .fold(start + 1.0, f64::max);
        let scale = HEIGHT / (end - start);
        let y = |t: f64| TOP + (t - start) * scale;
        let mut svg = Svg::new(
            WIDTH,
            TOP + HEIGHT + 40.0,
            &format!(
                "connection {}: {}",
                c.name,
                kebab(&c.verdict).replace('-', " ")
            ),
        );

        // The lifelines and their heads.
        for (lane, name, class) in [
            (Lane::Client, "client", ""),
            (Lane::Box, "box", " box"),
            (Lane::Server, "server", ""),
        ] {
            let x = lane.x();
            svg.line(
                (x, 50.0),
                (x, TOP + HEIGHT + 20.0),
                &format!("lifeline{class}"),
            );
            svg.rect((x - 55.0, 18.0), (110.0, 32.0), &format!("head{class}"));
            svg.text((x, 39.0), Anchor::Middle, "title", name);
        }
        svg.text(
            (BOX_X, TOP + HEIGHT + 36.0),
            Anchor::Middle,
            "small muted",
            &format!(
                "idle timeout {} s (1/{} of {}) · time flows down",
                secs(report.idle_timeout_s),
                report.time_scale,
                human_secs(report.idle_timeout_s * f64::from(report.time_scale))
            ),
        );

        // The idle gaps between one side's sends.
        let mut longest_gap_ms = 0u64;
        for pair in attempts.windows(2) {
            let ((t0, _), (t1, _)) = (&pair[0], &pair[1]);
            let gap = t1 - t0;
            longest_gap_ms = longest_gap_ms.max(gap.round() as u64);
            let x = GAP_X;
            svg.rect((x, y(*t0)), (14.0, y(*t1) - y(*t0)), "gap");
            let ratio = gap / idle_ms;
            svg.text(
                (x + 20.0, (y(*t0) + y(*t1)) / 2.0),
                Anchor::Start,
                "small",
                &format!("idle {} s", secs(gap / 1000.0)),
            );
            svg.text(
                (x + 20.0, (y(*t0) + y(*t1)) / 2.0 + 14.0),
                Anchor::Start,
                "small muted",
                &format!("{ratio:.2} × the timeout"),
            );
        }

        // The connection's opening.
        let connected = moments
            .iter()
            .find(|m| m.what == "connected")
            .map(|m| m.at_ms as f64);
        let accepted = moments
            .iter()
            .find(|m| m.what == "accepted")
            .map(|m| m.at_ms as f64);
        if let Some(t) = connected {
            let to = accepted.unwrap_or(t);
            svg.arrow((CLIENT_X, y(t)), (SERVER_X - 2.0, y(to)), "muted");
            svg.text(
                ((BOX_X + SERVER_X) / 2.0, y(t) - 5.0),
                Anchor::Middle,
                "small muted",
                "connect (SYN, SYN-ACK, ACK)",
            );
        }

        // The messages.
        for (t, from, message) in &sends {
            let to = from.other();
            match received(to, message, *t) {
                Some(t_in) => {
                    svg.arrow((from.x(), y(*t)), (to.x(), y(t_in)), "message");
                    svg.text(
                        ((from.x() + BOX_X) / 2.0, y(*t) - 5.0),
                        Anchor::Middle,
                        "",
                        &format!("\"{message}\""),
                    );
                }
                None => {
                    svg.arrow((from.x(), y(*t)), (BOX_X - 8.0, y(*t)), "bad");
                    svg.cross((BOX_X, y(*t)), 7.0, "bad");
                    svg.text(
                        ((from.x() + BOX_X) / 2.0, y(*t) - 5.0),
                        Anchor::Middle,
                        "bad",
                        &format!("\"{message}\" lost"),
                    );
                    let why = match c.expiry.as_str() {
                        "ack-and-discard" => "ACKed by the box, never delivered",
                        _ if c.verdict == Verdict::Reset => "no flow: not delivered",
                        _ => "dropped: the box has no flow",
                    };
                    svg.text((BOX_X + 12.0, y(*t) + 4.0), Anchor::Start, "small bad", why);
                }
            }
        }

        // TCP keepalive, where the kernel sends it: after each keepalive_s of idleness.
        if let Some(every) = c.keepalive_s.filter(|&k| k > 0) {
            let every = every as f64 * 1000.0;
            let mut first = true;
            for pair in sends.windows(2) {
                let (t0, t1) = (pair[0].0, pair[1].0);
                let mut t = t0 + every;
                while t < t1 {
                    svg.arrow((CLIENT_X, y(t)), (SERVER_X - 2.0, y(t)), "ok dashed");
                    if first {
                        svg.text(
                            ((CLIENT_X + BOX_X) / 2.0, y(t) - 5.0),
                            Anchor::Middle,
                            "small ok",
                            &format!("TCP keepalive after {} s idle", every / 1000.0),
                        );
                        first = false;
                    }
                    t += every;
                }
            }
            if !dead {
                svg.text(
                    (BOX_X + 12.0, y(end) + 16.0),
                    Anchor::Start,
                    "small ok",
                    "each probe refreshes the flow: it never expires",
                );
            }
        }

        // The box's expiry.
        if let Some(t) = expiry_ms {
            let at = y(t);
            svg.line((CLIENT_X - 20.0, at), (SERVER_X + 20.0, at), "bad dashed");
            svg.circle((BOX_X, at), 6.0, "bad");
            svg.text(
                (BOX_X + 12.0, at - 6.0),
                Anchor::Start,
                "small bad",
                &format!(
                    "flow expires ≈ {} s after its last packet",
                    secs(report.idle_timeout_s)
                ),
            );
            let action = match c.expiry.as_str() {
                "silent" => "forgotten silently: nobody is told".to_string(),
                "reset" => "the box sends a RST to the client and to the server".to_string(),
                "reset-on-next" => {
                    "forgotten silently; the next packet is answered with a RST".to_string()
                }
                "ack-and-discard" => "later data is ACKed by the box and discarded".to_string(),
                other => format!("expiry action {other}"),
            };
            svg.text(
                (BOX_X + 12.0, at + 14.0),
                Anchor::Start,
                "small bad",
                &action,
            );
        }

        // What each end saw go wrong.
        for m in moments.iter().filter(|m| trouble(&m.what)) {
            let lane = Lane::of_side(&m.side);
            let t = m.at_ms as f64;
            let reset = m.what.contains("ECONNRESET") || m.what.contains("EPIPE");
            if reset && m.what.contains("ECONNRESET") {
                let sent_at = match (c.expiry.as_str(), expiry_ms) {
                    ("reset", Some(e)) if e <= t => e,
                    _ => t,
                };
                svg.arrow((BOX_X, y(sent_at)), (lane.x(), y(t)), "bad");
                svg.text(
                    ((BOX_X + lane.x()) / 2.0, y(t) + 30.0),
                    Anchor::Middle,
                    "small bad",
                    &format!("RST from the box to the {}", m.side),
                );
            }
            svg.cross((lane.x(), y(t)), 5.0, if reset { "bad" } else { "warn" });
            // Beside the lifeline, away from a RST's arrow: outwards for a reset, else towards
            // the middle, where there is room for a long line.
            let (x, anchor) = match (lane, reset) {
                (Lane::Server, _) | (_, false) => (lane.x() + 10.0, Anchor::Start),
                _ => (lane.x() - 10.0, Anchor::End),
            };
            svg.text(
                (x, y(t) + 4.0),
                anchor,
                if reset { "small bad" } else { "small warn" },
                &m.what,
            );
        }

        // The time axis: each send's time since the connection opened.
        for (t, _, _) in &sends {
            svg.text(
                (8.0, y(*t) + 4.0),
                Anchor::Start,
                "small muted",
                &format!("{} s", secs((t - start) / 1000.0)),
            );
        }
        Diagram {
            svg: svg.finish(),
            longest_gap_ms,
            expiry_ms,
        }
    }
}

/// Whether a moment is something going wrong at an end (an error, a failed write, an end of
/// stream, data never acknowledged).
fn trouble(what: &str) -> bool {
    what.starts_with("socket error")
        || what.starts_with("write failed")
        || what.starts_with("connect failed")
        || what.starts_with("accept failed")
        || what.contains("not acknowledged")
        || what.starts_with("connection closed")
}

/// `"a"` → `a`: a message as the timeline quotes it.
fn quoted(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.to_owned())
}

/// A serialized enum's kebab-case name, as the JSON has it.
fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Survived => "ok",
        Verdict::Failed => "warn",
        Verdict::LostSilently | Verdict::LostAcknowledged | Verdict::Reset => "bad",
    }
}

/// Seconds with two decimals, trailing zeros kept: "4.50".
fn secs(s: f64) -> String {
    format!("{s:.2}")
}

/// Seconds as a person says them: "4 min", "4 min 30 s", "7.3 s".
fn human_secs(s: f64) -> String {
    let whole = s.round() as u64;
    if s >= 60.0 && (s - whole as f64).abs() < 0.05 {
        match (whole / 60, whole % 60) {
            (m, 0) => format!("{m} min"),
            (m, r) => format!("{m} min {r} s"),
        }
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::demo::GatewayReport;

    fn event(at_ms: u64, connection: &str, side: &str, what: &str) -> Event {
        Event {
            at_ms,
            lab_at_ms: at_ms * 60,
            connection: connection.to_owned(),
            side: side.to_owned(),
            what: what.to_owned(),
        }
    }

    fn report() -> Report {
        let c = |name: &str, verdict, expiry: &str, keepalive_s| ConnectionReport {
            name: name.to_owned(),
            sent: vec!["a".into(), "b".into(), "c".into()],
            delivered: match verdict {
                Verdict::Survived => vec!["a".into(), "b".into(), "c".into()],
                _ => vec!["a".into(), "b".into()],
            },
            client_error: (verdict == Verdict::Reset).then(|| "ECONNRESET".into()),
            server_error: (verdict == Verdict::Reset).then(|| "ECONNRESET".into()),
            unacknowledged_at_end: u32::from(verdict == Verdict::LostSilently),
            verdict,
            explanation: "it <happened> & so".into(),
            expiry: expiry.to_owned(),
            keepalive_s,
        };
        let mut timeline = Vec::new();
        for name in ["quiet", "kept", "reset"] {
            timeline.push(event(0, name, "client", "connected"));
            timeline.push(event(1, name, "server", "accepted"));
            timeline.push(event(2, name, "client", "sent \"a\""));
            timeline.push(event(3, name, "server", "received \"a\""));
            timeline.push(event(1002, name, "client", "sent \"b\""));
            timeline.push(event(1003, name, "server", "received \"b\""));
        }
        timeline.push(event(5002, "reset", "client", "socket error ECONNRESET"));
        timeline.push(event(5002, "reset", "server", "socket error ECONNRESET"));
        for name in ["quiet", "kept"] {
            timeline.push(event(5502, name, "client", "sent \"c\""));
        }
        timeline.push(event(5503, "kept", "server", "received \"c\""));
        timeline.push(event(
            7000,
            "quiet",
            "client",
            "\"c\" not acknowledged: 1 unacked, 5 retransmissions",
        ));
        Report {
            profile: "azure-lb".into(),
            expiry: "silent".into(),
            time_scale: 60,
            idle_timeout_s: 4.0,
            keepalive_s: 2,
            connections: vec![
                c("quiet", Verdict::LostSilently, "silent", None),
                c("kept", Verdict::Survived, "silent", Some(2)),
                c("reset", Verdict::Reset, "reset", None),
            ],
            timeline,
            gateway: GatewayReport {
                flows_created: 3,
                flows_expired: 2,
                resets_sent: 2,
                dropped_no_flow: 6,
            },
            rule: None,
        }
    }

    #[test]
    fn each_connection_is_a_section_with_its_verdict_and_figures_as_data_attributes() {
        let html = render(&report());
        assert!(
            html.contains(
                "<section class=\"connection\" data-name=\"quiet\" data-verdict=\"lost-silently\" \
             data-expiry=\"silent\" data-idle-timeout-ms=\"4000\" data-longest-gap-ms=\"4500\" \
             data-sent=\"a b c\" data-delivered=\"a b\" data-client-error=\"\" \
             data-server-error=\"\" data-unacknowledged=\"1\" data-expired-at-ms=\"5003\">"
            ),
            "{html}"
        );
        assert!(html.contains("data-name=\"kept\" data-verdict=\"survived\""));
        assert!(html.contains("data-name=\"reset\" data-verdict=\"reset\""));
        assert!(html.contains("it &lt;happened&gt; &amp; so"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn the_diagram_shows_the_lost_message_the_expiry_the_rsts_and_keepalive() {
        let html = render(&report());
        assert!(html.contains(">&quot;c&quot; lost</text>"), "{html}");
        assert!(html.contains("dropped: the box has no flow"));
        assert!(html.contains("forgotten silently: nobody is told"));
        assert!(html.contains("the box sends a RST to the client and to the server"));
        assert!(html.contains("RST from the box to the client"));
        assert!(html.contains("RST from the box to the server"));
        assert!(html.contains("TCP keepalive after 2 s idle"));
        assert!(html.contains(">idle 4.50 s</text>"));
        assert!(html.contains(">1.12 × the timeout</text>"));
    }

    #[test]
    fn human_secs_says_minutes_when_whole() {
        assert_eq!(human_secs(240.0), "4 min");
        assert_eq!(human_secs(270.0), "4 min 30 s");
        assert_eq!(human_secs(7.3), "7.3 s");
    }
}
