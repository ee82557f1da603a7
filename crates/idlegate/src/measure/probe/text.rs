//! A probe's [`Report`] as text a person reads: one line at a glance (the idle timeout found,
//! or that none was up to the longest idle time tried, and whether to trust it), then the
//! details (doubts, what each direction saw, keepalive, what was not checked). `html.rs` renders
//! the same report as a page.

use super::{tried, Behaviour, Report};

/// One line a person reads at a glance, then the details.
pub fn summary(r: &Report) -> String {
    let timeout = match r.idle_timeout_s.high {
        Some(high) => format!(
            "idle timeout between {:.1} s and {:.1} s",
            r.idle_timeout_s.low, high
        ),
        None => format!("no idle timeout up to {:.0} s", r.idle_timeout_s.low),
    };
    let mut out = format!(
        "{}: {timeout}{}\n",
        r.target,
        if r.trusted {
            ""
        } else {
            " (NOT TO BE TRUSTED: see below)"
        }
    );
    for d in &r.doubts {
        let code = serde_json::to_value(d.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out += &format!("  not to be trusted ({code}): {}\n", d.message);
    }
    for line in tried::directions_differ(&r.tried, r.idle_timeout_s.high, r.consistent) {
        out += &format!("  {line}\n");
    }
    let name = |b: Behaviour| {
        serde_json::to_value(b)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    out += &format!("  client to server: {}\n", name(r.client_to_server));
    match r.server_to_client {
        Some(b) => out += &format!("  server to client: {}\n", name(b)),
        None => out += "  server to client: not checked\n",
    }
    for d in &r.details {
        out += &format!("    {d}\n");
    }
    match r.keepalive_refreshes {
        Some(true) => {
            out += "  TCP keepalive at half the timeout keeps a connection alive past it\n"
        }
        Some(false) => {
            out += "  TCP keepalive does NOT refresh this path: a connection with it still died\n"
        }
        None => {}
    }
    for n in &r.not_checked {
        out += &format!("  not checked: {n}\n");
    }
    for c in &r.cannot_tell_apart {
        out += &format!("  cannot tell apart on this system: {c}\n");
    }
    for w in &r.warnings {
        out += &format!("  warning: {w}\n");
    }
    out += &format!(
        "  {} connections, {:.1} s\n",
        r.connections_used, r.duration_s
    );
    out
}
