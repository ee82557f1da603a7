//! The workers' events as the API streams them: `event: NAME` and one line of JSON, every one
//! with the flow's fields (`rule`, `protocol`, `remote`, `public`, `private`) where it has a
//! flow, durations in seconds (`*_s`, scaled: as the lab runs them), and `at_ms`, the
//! milliseconds since the gateway started.

use crate::gateway::feed::Fed;
use crate::obs::http::StreamEvent;
use idlegate_core::{Event, ExpiryCause, FlowSummary, Interface, RuleId, UNTRANSLATED};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// The name of rule `id` (the engine's numbering), as the config writes it.
fn rule_name(rules: &[String], id: RuleId) -> &str {
    match rules.get(usize::from(id)) {
        Some(name) => name,
        None if usize::from(id) == rules.len() => UNTRANSLATED,
        None => "?",
    }
}

/// The flow's fields, and `at_ms`.
fn flow_fields(rules: &[String], flow: &FlowSummary, at_ms: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("rule".into(), rule_name(rules, flow.rule).into());
    m.insert(
        "protocol".into(),
        format!("{:?}", flow.protocol).to_lowercase().into(),
    );
    m.insert("remote".into(), flow.remote.to_string().into());
    m.insert("public".into(), flow.public.to_string().into());
    m.insert("private".into(), flow.private.to_string().into());
    m.insert("at_ms".into(), at_ms.into());
    m
}

fn side(interface: Interface) -> &'static str {
    match interface {
        Interface::Inside => "inside",
        Interface::Outside => "outside",
    }
}

/// `fed` as the stream says it; rules named from `rules` (the config's, in the engine's
/// order), times from `started`.
pub(super) fn stream_event(rules: &[String], started: Instant, fed: &Fed) -> Option<StreamEvent> {
    let at_ms = fed.at.saturating_duration_since(started).as_millis() as u64;
    let (name, data) = match fed.event {
        Event::Created { flow, timeout } => {
            let mut m = flow_fields(rules, &flow, at_ms);
            m.insert("timeout_s".into(), timeout.as_secs_f64().into());
            ("created", Value::Object(m))
        }
        Event::Refreshed {
            flow,
            idle_for,
            timeout,
        } => {
            let mut m = flow_fields(rules, &flow, at_ms);
            m.insert("idle_for_s".into(), idle_for.as_secs_f64().into());
            m.insert("timeout_s".into(), timeout.as_secs_f64().into());
            ("refreshed", Value::Object(m))
        }
        Event::Expired {
            flow,
            state,
            timeout,
            idle_for,
            cause,
            action,
        } => {
            let mut m = flow_fields(rules, &flow, at_ms);
            m.insert("state".into(), super::state_name(state.as_str()).into());
            m.insert("timeout_s".into(), timeout.as_secs_f64().into());
            m.insert("idle_for_s".into(), idle_for.as_secs_f64().into());
            let cause = match cause {
                ExpiryCause::Idle => "idle",
                ExpiryCause::Forced => "forced",
            };
            m.insert("cause".into(), cause.into());
            m.insert("action".into(), action.as_str().into());
            ("expired", Value::Object(m))
        }
        Event::Sent {
            flow,
            segment,
            interface,
        } => {
            let mut m = flow_fields(rules, &flow, at_ms);
            m.insert("segment".into(), segment.as_str().into());
            m.insert("to".into(), side(interface).into());
            ("sent", Value::Object(m))
        }
        Event::PortExhausted {
            rule,
            frontend,
            member,
        } => (
            "port-exhausted",
            json!({
                "rule": rule_name(rules, rule),
                "frontend": frontend.to_string(),
                "member": member.to_string(),
                "at_ms": at_ms,
            }),
        ),
        Event::TableFull { max_flows } => (
            "table-full",
            json!({ "max_flows": max_flows, "at_ms": at_ms }),
        ),
    };
    Some(StreamEvent {
        name,
        data: data.to_string(),
    })
}
