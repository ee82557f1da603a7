//! `idlegate lab demo --html FILE`: the demo's [`Report`] (what `--json` prints, with or
//! without `--config`) drawn as one sequence diagram per connection.
//!
//! Contract: three lifelines (client, box, server) and time flowing down, to scale within each
//! connection. Each message is an arrow from the side that sent it to the side that received
//! it; a message that never arrived ends at the box with an ✕, one whose write failed (the
//! socket already reset: `EPIPE`) stops just past the client with an ✕. The idle gaps between the
//! client's sends are shaded with their length; the box's expiry is marked where the flow was
//! forgotten (its last packet plus the idle timeout: inferred, the gateway's timer fires within
//! its tick) with what the box does then (forget silently, RSTs to both ends, a RST to the next
//! packet's sender, ACK and discard); a RST an end saw is an arrow from the box to it, with the
//! error. TCP keepalive probes are drawn where the kernel sends them (every `keepalive_s` of
//! idleness), not observed. The verdict heads each connection; every figure a test compares
//! with the JSON is a `data-*` attribute (module [`crate::obs::html`]). Times are the lab's
//! ("in the lab": scaled, as the demo ran); "on the real box" is the same time unscaled
//! (`lab_at_ms`, × the time scale), the one word for it throughout the page.

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
         it (past the expiry), and sends \"c\". Time flows down, to scale within each diagram. \
         Times are in the lab (scaled); \"on the real box\" is the same moment unscaled.",
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
                "{} s in the lab, {} on the real box",
                secs(report.idle_timeout_s),
                human_secs(real),
            ),
        ),
        (
            "time scale",
            format!(
                "1/{0}: the lab runs {0} × faster than the real box",
                report.time_scale
            ),
        ),
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

/// `y1`, or `y0` when they are less than 2 px apart: a line sloping by a fraction of a pixel
/// renders thicker on part of its length, so a message that took under 2 px is drawn flat.
fn flat(y0: f64, y1: f64) -> f64 {
    if (y1 - y0).abs() < 2.0 {
        y0
    } else {
        y1
    }
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
        "<section class=\"connection\"{}{}{}{}{}{}{}{}{}{}{}{}>",
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
        data("never-sent", diagram.never_sent.join(" ")),
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
    out.push_str("<details><summary>every moment</summary><table><tr><th>in the lab</th><th>on the real box</th><th>side</th><th>what</th></tr>");
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
    /// The messages in `sent` that never left the client: their write failed (`EPIPE`).
    never_sent: Vec<String>,
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
                "idle timeout {} s in the lab ({} on the real box) · time flows down",
                secs(report.idle_timeout_s),
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
            // The share of the timeout from the gap as shown (to 10 ms), rounded half up: two
            // gaps that read the same length read the same share (4502 and 4499 ms: 4.50 s,
            // 1.13 ×).
            let shown = (gap / 10.0).round() * 10.0;
            let ratio = (shown / idle_ms * 100.0).round() / 100.0;
            svg.text(
                (x + 20.0, (y(*t0) + y(*t1)) / 2.0),
                Anchor::Start,
                "small",
                &format!("idle {} s", secs(shown / 1000.0)),
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
            svg.arrow(
                (CLIENT_X, y(t)),
                (SERVER_X - 2.0, flat(y(t), y(to))),
                "muted",
            );
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
                    svg.arrow((from.x(), y(*t)), (to.x(), flat(y(*t), y(t_in))), "message");
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

        // The messages whose write failed (the socket already reset): each stops just past
        // the client, at its failed write, with the error.
        let failed_writes = moments.iter().filter(|m| {
            Lane::of_side(&m.side) == Lane::Client && m.what.starts_with("write failed")
        });
        let unsent: Vec<(&String, &&Event)> = c
            .sent
            .iter()
            .filter(|message| {
                !sends
                    .iter()
                    .any(|(_, lane, m)| *lane == Lane::Client && m == *message)
            })
            .zip(failed_writes)
            .collect();
        let never_sent: Vec<String> = unsent
            .iter()
            .map(|(message, _)| (*message).clone())
            .collect();
        for (message, m) in unsent {
            let at = y(m.at_ms as f64);
            let error = m.what.strip_prefix("write failed: ").unwrap_or(&m.what);
            svg.arrow((CLIENT_X, at), (CLIENT_X + 50.0, at), "bad");
            svg.cross((CLIENT_X + 58.0, at), 7.0, "bad");
            svg.text(
                (CLIENT_X + 72.0, at + 4.0),
                Anchor::Start,
                "bad",
                &format!("\"{message}\" never sent: {error}"),
            );
        }

        // TCP keepalive, where the kernel sends it: after each keepalive_s of idleness.
        if let Some(every) = c.keepalive_s.filter(|&k| k > 0) {
            let every = every as f64 * 1000.0;
            let mut first: Option<f64> = None;
            for pair in sends.windows(2) {
                let (t0, t1) = (pair[0].0, pair[1].0);
                let mut t = t0 + every;
                while t < t1 {
                    svg.arrow((CLIENT_X, y(t)), (SERVER_X - 2.0, y(t)), "ok dashed");
                    if first.is_none() {
                        svg.text(
                            ((CLIENT_X + BOX_X) / 2.0, y(t) - 5.0),
                            Anchor::Middle,
                            "small ok",
                            &format!("TCP keepalive after {} s idle", every / 1000.0),
                        );
                        first = Some(t);
                    }
                    t += every;
                }
            }
            if !dead {
                // Under the first probe, where there is room (not against the caption), short
                // enough to stay between the client's and the box's lifelines.
                if let Some(t) = first {
                    svg.text(
                        ((CLIENT_X + BOX_X) / 2.0, y(t) + 16.0),
                        Anchor::Middle,
                        "small ok",
                        "each probe refreshes the flow",
                    );
                }
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
                    "expiry ≈ {} s after the last packet",
                    secs(report.idle_timeout_s)
                ),
            );
            // Each short enough to end before the server's lifeline.
            let action = match c.expiry.as_str() {
                "silent" => "forgotten silently: nobody is told".to_string(),
                "reset" => "it sends a RST to both ends".to_string(),
                "reset-on-next" => "forgotten; the next packet gets a RST".to_string(),
                "ack-and-discard" => "later data: ACKed by the box, discarded".to_string(),
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
                // The client's above its arrow (below, a write that failed next may be drawn);
                // the server's below the expiry's two lines.
                let below = match lane {
                    Lane::Client => -6.0,
                    _ => 30.0,
                };
                svg.text(
                    ((BOX_X + lane.x()) / 2.0, y(t) + below),
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

        // The time axis: each send's and each trouble's time since the connection opened, a
        // label at least a line below the one before.
        let mut marked: Vec<f64> = sends
            .iter()
            .map(|s| s.0)
            .chain(
                moments
                    .iter()
                    .filter(|m| trouble(&m.what))
                    .map(|m| m.at_ms as f64),
            )
            .collect();
        marked.sort_by(f64::total_cmp);
        let mut last_label: Option<f64> = None;
        for t in marked {
            if last_label.is_some_and(|l| y(t) - l < 12.0) {
                continue;
            }
            last_label = Some(y(t));
            svg.text(
                (8.0, y(t) + 4.0),
                Anchor::Start,
                "small muted",
                &format!("{} s", secs((t - start) / 1000.0)),
            );
        }
        Diagram {
            svg: svg.finish(),
            longest_gap_ms,
            expiry_ms,
            never_sent,
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
        timeline.push(event(5501, "reset", "client", "write failed: EPIPE"));
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
             data-server-error=\"\" data-unacknowledged=\"1\" data-expired-at-ms=\"5003\" \
             data-never-sent=\"\">"
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
        assert!(html.contains("it sends a RST to both ends"));
        assert!(html.contains("RST from the box to the client"));
        assert!(html.contains("RST from the box to the server"));
        assert!(html.contains("TCP keepalive after 2 s idle"));
        assert!(html.contains(">idle 4.50 s</text>"));
        assert!(html.contains(">1.13 × the timeout</text>"));
    }

    #[test]
    fn a_message_whose_write_failed_stops_at_the_client_with_the_error() {
        let html = render(&report());
        assert!(
            html.contains("data-name=\"reset\" data-verdict=\"reset\""),
            "{html}"
        );
        let reset = &html[html.find("data-name=\"reset\"").expect("the reset section")..];
        assert!(reset.contains("data-never-sent=\"c\">"), "{reset}");
        assert!(
            reset.contains(">&quot;c&quot; never sent: EPIPE</text>"),
            "{reset}"
        );
        // The other connections sent every message.
        assert_eq!(html.matches("never sent:").count(), 1, "{html}");
    }

    #[test]
    fn the_same_gap_reads_the_same_share_of_the_timeout() {
        // 4499 and 4502 ms both read 4.50 s, and so both 1.13 × a 4 s timeout.
        let mut r = report();
        for e in &mut r.timeline {
            if e.connection == "quiet" && e.what == "sent \"c\"" {
                e.at_ms = 1002 + 4502;
            }
            if e.connection == "kept" && e.what.contains("\"c\"") {
                e.at_ms = 1002 + 4499;
            }
        }
        let html = render(&r);
        assert_eq!(html.matches(">idle 4.50 s</text>").count(), 3, "{html}");
        assert_eq!(
            html.matches(">1.13 × the timeout</text>").count(),
            3,
            "{html}"
        );
        assert!(!html.contains("1.12 ×"), "{html}");
    }

    #[test]
    fn scaled_and_unscaled_times_have_one_name_each() {
        let html = render(&report());
        assert!(
            html.contains("<th>in the lab</th><th>on the real box</th>"),
            "{html}"
        );
        assert!(
            html.contains("4.00 s in the lab, 4 min on the real box"),
            "{html}"
        );
        assert!(html.contains("idle timeout 4.00 s in the lab (4 min on the real box)"));
        assert!(!html.contains("lab time"), "{html}");
        assert!(!html.contains(" real,"), "{html}");
        // A moment at 5.50 s in the lab is 330 s on the real box.
        assert!(html.contains("<td>5.50 s</td><td>330.1 s</td>"), "{html}");
    }

    #[test]
    fn arrows_are_flat_when_the_message_took_under_two_pixels_and_troubles_have_a_time() {
        // "a", sent at 2 ms and received at 23 ms (about 1.3 px lower): one horizontal line.
        let mut r = report();
        for e in &mut r.timeline {
            if e.connection == "quiet" && e.what == "received \"a\"" {
                e.at_ms = 23;
            }
        }
        let html = render(&r);
        let svg = &html[html.find("data-name=\"quiet\"").expect("quiet")..];
        let svg = &svg[..svg.find("</svg>").expect("its svg")];
        for line in svg.split("<line").skip(1) {
            if line.contains("class=\"message\"") {
                let y1 = line.split("y1=\"").nth(1).and_then(|r| r.split('"').next());
                let y2 = line.split("y2=\"").nth(1).and_then(|r| r.split('"').next());
                assert_eq!(y1, y2, "a sloping message line: {line}");
            }
        }
        // The "c" not acknowledged mark at 7.00 s has its time on the axis.
        assert!(svg.contains(">7.00 s</text>"), "{svg}");
        // The keepalive caption sits under the first probe (3.00 s), not against the bottom caption.
        let kept = &html[html.find("data-name=\"kept\"").expect("kept")..];
        let caption = kept
            .split("<text")
            .find(|t| t.contains(">each probe refreshes the flow<"))
            .expect("the keepalive caption");
        let y: f64 = caption
            .split("y=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|y| y.parse().ok())
            .expect("its y");
        assert!(y < TOP + HEIGHT - 100.0, "the caption at y {y}: {caption}");
        // The RST's label on the client's side is above its arrow, clear of a failed write.
        let reset = &html[html.find("data-name=\"reset\"").expect("reset")..];
        let label = reset
            .split("<text")
            .find(|t| t.contains(">RST from the box to the client<"))
            .expect("the client's RST label");
        let arrow_y = TOP + 5002.0 * HEIGHT / 5501.0;
        assert!(
            label.contains(&format!("y=\"{:.1}\"", arrow_y - 6.0)),
            "{label} (arrow at {arrow_y})"
        );
    }

    #[test]
    fn human_secs_says_minutes_when_whole() {
        assert_eq!(human_secs(240.0), "4 min");
        assert_eq!(human_secs(270.0), "4 min 30 s");
        assert_eq!(human_secs(7.3), "7.3 s");
    }
}
