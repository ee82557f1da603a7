//! `idlegate probe --html FILE`: the probe's [`Report`] (what `--json` prints) drawn as one
//! page.
//!
//! Contract: one row of marks per direction on an axis of idle time (and one for the
//! keepalive test): each test a mark at the idle time it tried, a green ● where the connection
//! still worked and a red ✕ where it did not; the bracket found is a shaded band with its
//! bounds; above it, the result in words, whether it is to be trusted, each doubt, and why a
//! direction survived an idle time the bracket says is past the timeout ([`directions_differ`]). Each
//! mark is a group carrying the test's figures as `data-*` attributes (direction, idle time,
//! part of the search, alive, what it saw), the page's root the result's, so a test compares
//! the page with the JSON (module [`crate::obs::html`]).

use super::tried::directions_differ;
use super::{Behaviour, Part, Report, Tried, Way};
use crate::obs::html::{data, element, escape, Anchor, Page, Svg};
use std::fmt::Write as _;

const WIDTH: f64 = 860.0;
/// Where the axis starts and ends.
const LEFT: f64 = 190.0;
const RIGHT: f64 = 830.0;
const ROW: f64 = 46.0;
const TOP: f64 = 40.0;

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let mut page = Page::new(&format!("idlegate probe: {}", report.target));
    let bracket = &report.idle_timeout_s;
    let doubts: Vec<String> = report.doubts.iter().map(|d| kebab(&d.code)).collect();
    page.push(&format!(
        "<main class=\"report probe\"{}{}{}{}{}{}{}{}{}{}>",
        data("report", "probe"),
        data("target", &report.target),
        data("low-s", bracket.low),
        data(
            "high-s",
            bracket.high.map_or(String::new(), |h| h.to_string())
        ),
        data("trusted", report.trusted),
        data("doubts", doubts.join(" ")),
        data("client-to-server", kebab(&report.client_to_server)),
        data(
            "server-to-client",
            report.server_to_client.map_or(String::new(), |b| kebab(&b))
        ),
        data("keepalive-refreshes", opt(report.keepalive_refreshes)),
        data("tried", report.tried.len()),
    ));
    page.push(&element(
        "h1",
        "",
        &format!("idlegate probe: {}", report.target),
    ));
    let result = match bracket.high {
        Some(high) => format!("idle timeout between {:.1} s and {high:.1} s", bracket.low),
        None => format!("no idle timeout up to {:.0} s", bracket.low),
    };
    let (class, trust) = match report.trusted {
        true => ("ok", "trusted"),
        false => ("bad", "not to be trusted"),
    };
    page.push(&format!(
        "<h2 class=\"result\">{}<span class=\"verdict {class}\">{}</span></h2>",
        escape(&result),
        escape(trust)
    ));
    if !report.doubts.is_empty() {
        let mut list = String::from("<ul class=\"doubts\">");
        for (d, code) in report.doubts.iter().zip(&doubts) {
            let _ = write!(
                list,
                "<li class=\"bad\"{}><strong>{}</strong>: {}</li>",
                data("code", code),
                escape(code),
                escape(&d.message)
            );
        }
        list.push_str("</ul>");
        page.push(&list);
    }
    for line in directions_differ(&report.tried, bracket.high, report.consistent) {
        page.push(&element(
            "p",
            " class=\"note warn\" data-note=\"directions-differ\"",
            &line,
        ));
    }
    page.push(&marks(report));
    page.push(&facts(report));
    page.push("</main>");
    page.render()
}

/// The rows of marks on the idle-time axis, with the bracket.
fn marks(report: &Report) -> String {
    let rows: Vec<Row> = [Row::ClientToServer, Row::ServerToClient, Row::Keepalive]
        .into_iter()
        .filter(|row| report.tried.iter().any(|t| row.holds(t)))
        .collect();
    let bracket = &report.idle_timeout_s;
    let longest = report
        .tried
        .iter()
        .map(|t| t.idle_s)
        .chain(bracket.high)
        .fold(bracket.low, f64::max)
        .max(1.0)
        * 1.05;
    let x = |s: f64| LEFT + s / longest * (RIGHT - LEFT);
    let height = TOP + ROW * rows.len().max(1) as f64 + 50.0;
    let mut svg = Svg::new(
        WIDTH,
        height,
        &format!("idle times tried against {}, alive or dead", report.target),
    );
    let bottom = TOP + ROW * rows.len().max(1) as f64;
    if let Some(high) = bracket.high {
        svg.rect(
            (x(bracket.low), TOP - 18.0),
            (x(high) - x(bracket.low), bottom - TOP + 18.0),
            "bracket",
        );
        svg.text(
            ((x(bracket.low) + x(high)) / 2.0, TOP - 22.0),
            Anchor::Middle,
            "small",
            &format!("timeout in ({:.1} s, {high:.1} s]", bracket.low),
        );
    }
    // The axis, with a tick every "nice" step.
    svg.line((LEFT, bottom), (RIGHT, bottom), "axis");
    let step = nice_step(longest / 8.0);
    let mut tick = 0.0;
    while tick <= longest {
        svg.line((x(tick), bottom), (x(tick), bottom + 5.0), "axis");
        svg.text(
            (x(tick), bottom + 18.0),
            Anchor::Middle,
            "small muted",
            &format!("{tick:.0} s"),
        );
        tick += step;
    }
    svg.text(
        ((LEFT + RIGHT) / 2.0, bottom + 38.0),
        Anchor::Middle,
        "small muted",
        "idle time before the test (● still worked, ✕ did not; small marks: the fine and behaviour tests)",
    );
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64 + ROW / 2.0;
        svg.line((LEFT, y), (RIGHT, y), "guide");
        svg.text((LEFT - 12.0, y + 4.0), Anchor::End, "", row.name());
        for t in report.tried.iter().filter(|t| row.holds(t)) {
            svg.open_group(&format!(
                " class=\"mark\"{}{}{}{}{}{}",
                data("direction", kebab(&t.direction)),
                data("idle-s", t.idle_s),
                data("part", kebab(&t.part)),
                data("alive", t.alive),
                data("seen", t.seen),
                data(
                    "keepalive-s",
                    t.keepalive_s.map_or(String::new(), |k| k.to_string())
                ),
            ));
            let size = match t.part {
                Part::Coarse => 7.0,
                _ => 5.0,
            };
            match t.alive {
                true => svg.circle((x(t.idle_s), y), size, "ok"),
                false => svg.cross((x(t.idle_s), y), size, "bad"),
            }
            svg.close_group();
        }
    }
    svg.finish()
}

/// A row of marks.
#[derive(Clone, Copy)]
enum Row {
    /// The client-to-server tests without keepalive.
    ClientToServer,
    ServerToClient,
    /// The keepalive test.
    Keepalive,
}

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::ClientToServer => "client → server",
            Row::ServerToClient => "server → client",
            Row::Keepalive => "with TCP keepalive",
        }
    }

    /// Whether test `t` is drawn on this row.
    fn holds(self, t: &Tried) -> bool {
        match self {
            Row::ClientToServer => t.direction == Way::ClientToServer && t.part != Part::Keepalive,
            Row::ServerToClient => t.direction == Way::ServerToClient,
            Row::Keepalive => t.part == Part::Keepalive,
        }
    }
}

/// What else the report says, as a list of facts.
fn facts(report: &Report) -> String {
    let behaviour = |b: Behaviour| kebab(&b);
    let mut rows = vec![
        (
            "far end",
            match report.echo {
                true => "idlegate echo: both directions checked".to_string(),
                false => "a plain TCP server: client to server only".to_string(),
            },
        ),
        ("client to server", behaviour(report.client_to_server)),
        (
            "server to client",
            report
                .server_to_client
                .map_or("not checked".to_string(), behaviour),
        ),
        (
            "TCP keepalive",
            match report.keepalive_refreshes {
                Some(true) => "at half the timeout, keeps a connection alive past it".to_string(),
                Some(false) => "does NOT refresh this path".to_string(),
                None => "not tested (no timeout to outlive)".to_string(),
            },
        ),
        (
            "consistent",
            match report.consistent {
                true => {
                    "yes: no idle time survived both ways is longer than one that failed either way"
                        .to_string()
                }
                false => "no: outcomes contradicted each other".to_string(),
            },
        ),
        (
            "cost",
            format!(
                "{} connections, {:.1} s",
                report.connections_used, report.duration_s
            ),
        ),
    ];
    for d in &report.details {
        rows.push(("seen", d.clone()));
    }
    for n in &report.not_checked {
        rows.push(("not checked", n.clone()));
    }
    for c in &report.cannot_tell_apart {
        rows.push(("cannot tell apart", c.clone()));
    }
    for w in &report.warnings {
        rows.push(("warning", w.clone()));
    }
    let mut out = String::from("<dl class=\"facts\">");
    for (name, value) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(&value));
    }
    out.push_str("</dl>");
    out
}

/// A step of 1, 2 or 5 × 10ⁿ at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let rough = rough.max(0.1);
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= rough)
        .unwrap_or(10.0 * magnitude)
}

/// `true`, `false`, or empty for none.
fn opt(value: Option<bool>) -> String {
    value.map_or(String::new(), |v| v.to_string())
}

/// A serialized enum's kebab-case name, as the JSON has it.
fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::{Bracket, Doubt, DoubtCode};
    use super::*;

    fn tried(direction: Way, idle_s: f64, part: Part, alive: bool) -> Tried {
        Tried {
            direction,
            idle_s,
            keepalive_s: (part == Part::Keepalive).then_some(3.0),
            part,
            alive,
            seen: if alive { "alive" } else { "silent" },
        }
    }

    fn report() -> Report {
        Report {
            target: "203.0.113.10:9300".into(),
            echo: true,
            idle_timeout_s: Bracket {
                low: 7.0,
                high: Some(8.0),
            },
            consistent: true,
            trusted: false,
            doubts: vec![Doubt {
                code: DoubtCode::LongerIdleSurvived,
                message: "a <longer> idle survived".into(),
            }],
            client_to_server: Behaviour::Silent,
            server_to_client: Some(Behaviour::Silent),
            details: vec!["client to server: nobody was told".into()],
            keepalive_refreshes: Some(true),
            connections_used: 12,
            duration_s: 30.5,
            not_checked: vec![],
            warnings: vec![],
            cannot_tell_apart: vec![],
            tried: vec![
                tried(Way::ClientToServer, 2.0, Part::Coarse, true),
                tried(Way::ServerToClient, 2.0, Part::Coarse, true),
                tried(Way::ClientToServer, 8.5, Part::Coarse, false),
                tried(Way::ClientToServer, 7.0, Part::Fine, true),
                tried(Way::ClientToServer, 9.0, Part::Keepalive, true),
            ],
        }
    }

    #[test]
    fn the_page_carries_the_result_and_each_test_as_data_attributes() {
        let html = render(&report());
        assert!(html.contains(
            "<main class=\"report probe\" data-report=\"probe\" data-target=\"203.0.113.10:9300\" \
             data-low-s=\"7\" data-high-s=\"8\" data-trusted=\"false\" \
             data-doubts=\"longer-idle-survived\" data-client-to-server=\"silent\" \
             data-server-to-client=\"silent\" data-keepalive-refreshes=\"true\" data-tried=\"5\">"
        ), "{html}");
        assert_eq!(html.matches("<g class=\"mark\"").count(), 5, "{html}");
        assert!(
            html.contains(
                "<g class=\"mark\" data-direction=\"client-to-server\" data-idle-s=\"8.5\" \
             data-part=\"coarse\" data-alive=\"false\" data-seen=\"silent\" data-keepalive-s=\"\">"
            ),
            "{html}"
        );
        assert!(html.contains("data-part=\"keepalive\" data-alive=\"true\" data-seen=\"alive\" data-keepalive-s=\"3\""));
        assert!(html.contains("timeout in (7.0 s, 8.0 s]"));
        assert!(html.contains("not to be trusted"));
        assert!(html.contains("a &lt;longer&gt; idle survived"));
    }

    #[test]
    fn a_direction_that_survived_the_brackets_edge_is_explained_on_the_page() {
        // A box with a 4 s timer: client to server (3, 4], server to client (4, 5]; the
        // report's bracket (3, 4], consistent, trusted.
        let mut r = report();
        r.idle_timeout_s = Bracket {
            low: 3.0,
            high: Some(4.0),
        };
        r.trusted = true;
        r.doubts.clear();
        r.tried = vec![
            tried(Way::ClientToServer, 3.0, Part::Coarse, true),
            tried(Way::ServerToClient, 3.0, Part::Coarse, true),
            tried(Way::ClientToServer, 4.0, Part::Coarse, false),
            tried(Way::ServerToClient, 4.0, Part::Coarse, true),
            tried(Way::ServerToClient, 5.0, Part::Coarse, false),
        ];
        let html = render(&r);
        assert!(
            html.contains(
                "<p class=\"note warn\" data-note=\"directions-differ\">server to client survived \
                 4.0 s (its own bracket (4.0 s, 5.0 s]), at the bracket&#39;s upper edge: the tests \
                 at that idle time raced the box&#39;s timer; the bracket counts an idle time as \
                 survived only when client to server survived it too</p>"
            ),
            "{html}"
        );
        assert_eq!(html.matches("data-note=\"directions-differ\"").count(), 1);
        // The text report says it too.
        assert!(
            super::super::summary(&r).contains(
                "\n  server to client survived 4.0 s (its own bracket (4.0 s, 5.0 s]), at the bracket's upper edge"
            ),
            "{}",
            super::super::summary(&r)
        );
        // Directions that agree: no note.
        assert!(!render(&report()).contains("directions-differ"));
    }

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.04), 0.1);
    }
}
