//! A rule's idle settings changed while the engine runs ([`Engine::retime`]), as Linux
//! conntrack applies a changed timeout sysctl: a new expiry action at every flow's expiry from
//! now, a new idle timeout for new flows and for each existing flow from its next packet (its
//! current deadline stands). And the events a live view needs: refreshes after an idle gap,
//! every segment the engine makes.

use super::*;
use crate::model::config::{RuleChange, RuleChangeError, TimeoutFrom};

fn change(idle: Option<&str>, expiry: Option<&str>) -> RuleChange {
    RuleChange {
        idle_timeout: idle.map(str::to_string),
        expiry: expiry.map(str::to_string),
    }
}

#[test]
fn a_new_idle_timeout_leaves_an_existing_flows_deadline_and_runs_from_its_next_packet() {
    let config = config("silent", ONE_VM);
    let mut h = Harness::with(config.clone());
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(1_000);
    // 10 min scaled by 60: 10 s.
    let changed = config
        .with_rule_change("app", &change(Some("10m"), None))
        .unwrap();
    h.engine.retime(&Retiming::between(&config, &changed));
    let info = h.engine.flows(h.at(1_000)).next().unwrap();
    assert_eq!(info.expires_in, Duration::from_millis(IDLE_MS - 1_000));
    assert_eq!(
        info.timeout,
        Duration::from_millis(IDLE_MS),
        "the old one still runs"
    );
    assert_eq!(info.idle_for, Duration::from_millis(1_000));
    // The next packet sets a deadline from the new timeout.
    h.advance_to(2_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"a",
    );
    let info = h.engine.flows(h.at(2_000)).next().unwrap();
    assert_eq!(info.timeout, Duration::from_millis(10_000));
    assert_eq!(info.expires_in, Duration::from_millis(10_000));
    h.advance_to(2_000 + IDLE_MS);
    assert_eq!(
        h.engine.flow_count(),
        1,
        "the old timeout no longer applies"
    );
    h.advance_to(12_000);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(h.expired(), vec![(12_000, Expiry::Silent)]);
}

#[test]
fn an_existing_flow_not_refreshed_expires_at_its_old_deadline_reporting_the_old_timeout() {
    let config = config("silent", ONE_VM);
    let mut h = Harness::with(config.clone());
    h.connect_inbound(40_000);
    let changed = config
        .with_rule_change("app", &change(Some("10m"), None))
        .unwrap();
    h.engine.retime(&Retiming::between(&config, &changed));
    h.advance_to(IDLE_MS);
    assert_eq!(h.engine.flow_count(), 0);
    let expired = h.events.iter().find_map(|(_, e)| match e {
        Event::Expired {
            timeout, idle_for, ..
        } => Some((*timeout, *idle_for)),
        _ => None,
    });
    let four_s = Duration::from_millis(IDLE_MS);
    assert_eq!(expired, Some((four_s, four_s)));
}

#[test]
fn a_new_flow_gets_the_new_idle_timeout() {
    let config = config("silent", ONE_VM);
    let mut h = Harness::with(config.clone());
    let changed = config
        .with_rule_change("app", &change(Some("5m"), None))
        .unwrap();
    h.engine.retime(&Retiming::between(&config, &changed));
    h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    assert_eq!(h.engine.flow_count(), 1);
    h.advance_to(5_000);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_new_expiry_action_applies_to_existing_flows_at_their_expiry() {
    let config = config("silent", ONE_VM);
    let mut h = Harness::with(config.clone());
    h.connect_inbound(40_000);
    let changed = config
        .with_rule_change("app", &change(None, Some("reset")))
        .unwrap();
    h.engine.retime(&Retiming::between(&config, &changed));
    h.advance_to(IDLE_MS);
    assert_eq!(h.expired(), vec![(IDLE_MS, Expiry::Reset)]);
    assert_eq!(h.sent.len(), 2, "a RST to each end");
}

#[test]
fn a_change_sent_alone_leaves_an_earlier_change_to_another_rule_in_place() {
    let config = config("silent", ONE_VM);
    let mut h = Harness::with(config.clone());
    let app = config
        .with_rule_change("app", &change(Some("10m"), None))
        .unwrap();
    h.engine.retime(&Retiming::between(&config, &app));
    // A change to another rule, worked out from a config that never saw the first: it names
    // that rule alone, so the first change holds.
    let egress = config
        .with_rule_change("egress", &change(None, Some("reset")))
        .unwrap();
    let sent = Retiming::between(&config, &egress);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].rule, sent[0].expiry), (1, Expiry::Reset));
    h.engine.retime(&sent);
    h.connect_inbound(40_000);
    h.advance_to(IDLE_MS + 1_000);
    assert_eq!(h.engine.flow_count(), 1, "app runs 10 s, not its old 4 s");
    h.advance_to(10_000);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_change_that_cannot_alter_what_the_flows_run_is_refused_naming_the_cause() {
    let text = "[[frontend]]\nname = \"public\"\naddress = \"203.0.113.10\"\n\
                [[frontend]]\nname = \"natgw-ip\"\naddress = \"203.0.113.20\"\n\
                [[backend_pool]]\nname = \"vms\"\nmembers = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                [[lb_rule]]\nname = \"dns\"\nprotocol = \"udp\"\nfrontend = \"public\"\nfrontend_port = 53\nbackend_pool = \"vms\"\nbackend_port = 53\n\
                [[outbound_rule]]\nname = \"egress\"\nfrontend = \"public\"\nbackend_pool = \"vms\"\n\
                [[nat_gateway]]\nname = \"natgw\"\nfrontend = \"natgw-ip\"\nbackend_pools = [\"vms\"]\n";
    let c = Config::from_toml(text, "test").unwrap();
    let refused = |name: &str, change: RuleChange| match c.with_rule_change(name, &change) {
        Err(RuleChangeError::NoEffect(why)) => why,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        refused("dns", change(Some("10m"), None)),
        "rule dns is udp: its flows run the profile's UDP timeouts, not idle_timeout"
    );
    assert_eq!(
        refused("dns", change(None, Some("reset"))),
        "rule dns is udp: its flows end silently, whatever its expiry"
    );
    let why = refused("egress", change(Some("10m"), None));
    assert!(
        why.starts_with("outbound rule egress's pool vms leaves through NAT gateway natgw")
            && why.ends_with("change natgw instead (POST /api/rules/natgw)"),
        "{why}"
    );
    // The gateway itself can be changed, and with it what the pool's flows run.
    let changed = c
        .with_rule_change("natgw", &change(Some("10m"), None))
        .unwrap();
    let sent = Retiming::between(&c, &changed);
    let names: Vec<RuleId> = sent.iter().map(|r| r.rule).collect();
    assert_eq!(
        names,
        [1, 2],
        "the gateway and the outbound rule it overrides"
    );
}

#[test]
fn a_change_is_refused_with_the_words_the_config_file_gets() {
    let config = config("silent", ONE_VM);
    let err = config
        .with_rule_change("app", &change(Some("120m"), None))
        .unwrap_err();
    let in_file = Config::from_toml(
        &config
            .source
            .text
            .replace("idle_timeout = \"4m\"", "idle_timeout = \"120m\""),
        "test.toml",
    )
    .unwrap_err();
    assert_eq!(
        err,
        RuleChangeError::Invalid {
            message: in_file.message.clone(),
            hint: None
        }
    );
    assert_eq!(
        in_file.message,
        "idle_timeout = 120m is outside Azure LB's range: 4 min to 100 min"
    );
    let err = config
        .with_rule_change("app", &change(None, Some("explode")))
        .unwrap_err();
    assert!(
        matches!(&err, RuleChangeError::Invalid { message: m, .. } if m.starts_with("expiry = \"explode\"")),
        "{err}"
    );
    let err = config
        .with_rule_change("nope", &change(Some("5m"), None))
        .unwrap_err();
    assert_eq!(
        err,
        RuleChangeError::UnknownRule {
            name: "nope".into(),
            known: vec!["app".into(), "egress".into()]
        }
    );
}

#[test]
fn the_explanation_says_a_rule_was_changed_through_the_api() {
    let config = config("silent", ONE_VM);
    let changed = config
        .with_rule_change("app", &change(Some("10m"), Some("reset")))
        .unwrap();
    assert_eq!(changed.lb_rules[0].idle.timeout_from, TimeoutFrom::Api);
    let e = precedence::explanation(&changed);
    let tcp = e.rules[0].tcp.as_ref().unwrap();
    assert_eq!(tcp.idle_timeout, Duration::from_secs(600));
    assert_eq!(tcp.expiry, Expiry::Reset);
    assert_eq!(tcp.winner, precedence::Winner::Api);
    assert!(
        tcp.reason.contains("changed through the API"),
        "{}",
        tcp.reason
    );
    assert!(tcp.reason.contains("expiry reset"), "{}", tcp.reason);
    // A second change keeps the first.
    let again = changed
        .with_rule_change("egress", &change(Some("30m"), None))
        .unwrap();
    assert_eq!(again.lb_rules[0].idle.timeout, Duration::from_secs(600));
    assert_eq!(
        again.outbound_rules[0].idle.timeout,
        Duration::from_secs(1800)
    );
}

#[test]
fn refreshes_are_said_only_when_asked_and_only_after_the_threshold() {
    let mut h = Harness::new("silent");
    let (mut client, server) = h.connect_inbound(40_000);
    let refreshed = |h: &Harness| {
        h.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Refreshed {
                    idle_for, timeout, ..
                } => Some((*idle_for, *timeout)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    h.advance_to(1_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"a",
    );
    assert!(refreshed(&h).is_empty(), "off by default");
    h.engine.report_refreshes(Some(Duration::from_millis(250)));
    h.advance_to(1_100);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"b",
    );
    assert!(refreshed(&h).is_empty(), "100 ms idle: under the threshold");
    h.advance_to(1_500);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    assert_eq!(
        refreshed(&h),
        vec![(Duration::from_millis(400), Duration::from_millis(IDLE_MS))]
    );
}

#[test]
fn every_segment_the_engine_makes_is_said_with_its_flow_and_side() {
    let mut h = Harness::new("reset");
    let (client, _server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    let sent: Vec<(MadeSegment, Interface, SocketAddr)> = h
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Sent {
                flow,
                segment,
                interface,
            } => Some((*segment, *interface, flow.remote)),
            _ => None,
        })
        .collect();
    let remote = SocketAddr::V4(client.addr);
    assert_eq!(
        sent,
        vec![
            (MadeSegment::Rst, Interface::Outside, remote),
            (MadeSegment::Rst, Interface::Inside, remote)
        ]
    );
}

#[test]
fn a_reset_answering_a_forgotten_flow_is_said_too() {
    let mut h = Harness::new("reset-on-next");
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(IDLE_MS);
    h.events.clear();
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"c",
    );
    let sent: Vec<_> = h
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Sent {
                flow,
                segment,
                interface,
            } => Some((*segment, *interface, flow.remote, flow.public)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        vec![(
            MadeSegment::Rst,
            Interface::Outside,
            SocketAddr::V4(client.addr),
            SocketAddr::V4(FRONTEND_7000)
        )]
    );
}

/// One step of a random schedule: a packet from the client after `gap` ms, or the rule's idle
/// timeout changed to `minutes` (running as many seconds at time scale 60).
#[derive(Debug, Clone, Copy)]
enum Step {
    Packet { gap: u64 },
    Retime { minutes: u64 },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (1..6_000u64).prop_map(|gap| Step::Packet { gap }),
        (4..=100u64).prop_map(|minutes| Step::Retime { minutes }),
    ]
}

proptest::proptest! {
    /// Whatever the changes and the gaps: a flow's deadline is its last packet plus the idle
    /// timeout in force at that packet, never another; `flows` says that timeout and that
    /// deadline, and the expiry happens at it to the millisecond.
    #[test]
    fn a_flows_deadline_is_its_last_packet_plus_the_timeout_in_force_then(
        steps in proptest::collection::vec(step(), 1..24),
    ) {
        let config = config("silent", ONE_VM);
        let mut h = Harness::with(config.clone());
        let (mut client, server) = h.connect_inbound(40_000);
        h.send(&mut client, FRONTEND_7000, TcpFlags::ACK, server.snd_nxt, b"a");
        let (mut last, mut running, mut in_force) = (0u64, IDLE_MS, IDLE_MS);
        let mut current = config;
        for step in steps {
            match step {
                Step::Retime { minutes } => {
                    let idle = RuleChange { idle_timeout: Some(format!("{minutes}m")), expiry: None };
                    let next = current.with_rule_change("app", &idle).unwrap();
                    h.engine.retime(&Retiming::between(&current, &next));
                    current = next;
                    in_force = minutes * 1_000;
                }
                Step::Packet { gap } => {
                    let t = h.now + gap;
                    if t >= last + running {
                        break;
                    }
                    h.advance_to(t);
                    h.send(&mut client, FRONTEND_7000, TcpFlags::ACK, server.snd_nxt, b"x");
                    (last, running) = (t, in_force);
                }
            }
            let info = h.engine.flows(h.at(h.now)).next().unwrap();
            proptest::prop_assert_eq!(info.timeout, Duration::from_millis(running));
            proptest::prop_assert_eq!(info.expires_in, Duration::from_millis(last + running - h.now));
        }
        h.advance_to(last + running - 1);
        proptest::prop_assert_eq!(h.engine.flow_count(), 1);
        h.advance_to(last + running);
        proptest::prop_assert_eq!(h.engine.flow_count(), 0);
        let timeout = h.events.iter().find_map(|(_, e)| match e {
            Event::Expired { timeout, .. } => Some(*timeout),
            _ => None,
        });
        proptest::prop_assert_eq!(timeout, Some(Duration::from_millis(running)));
    }
}

#[test]
fn the_explanation_says_what_the_api_changed_once_however_many_changes() {
    let config = config("silent", ONE_VM);
    let reason = |c: &Config| {
        let e = precedence::explanation(c);
        e.rules[0].tcp.as_ref().unwrap().reason.clone()
    };
    let expiry_only = config
        .with_rule_change("app", &change(None, Some("reset")))
        .unwrap();
    let r = reason(&expiry_only);
    assert!(
        r.ends_with("; expiry reset changed through the API while the gateway runs"),
        "{r}"
    );
    let both = expiry_only
        .with_rule_change("app", &change(Some("10m"), None))
        .unwrap()
        .with_rule_change("app", &change(None, Some("silent")))
        .unwrap()
        .with_rule_change("app", &change(Some("12m"), None))
        .unwrap();
    assert_eq!(
        reason(&both),
        "idle timeout and expiry silent changed through the API while the gateway runs"
    );
    let timeout_only = config
        .with_rule_change("app", &change(Some("10m"), None))
        .unwrap();
    assert_eq!(
        reason(&timeout_only),
        "idle timeout changed through the API while the gateway runs"
    );
}
