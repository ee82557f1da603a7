//! Engine tests of what a Linux router does with an inside packet no rule claims: conntrack
//! makes an entry, no NAT rule binds it, and the packet and the replies matching the entry are
//! routed on untranslated (profiles linux-conntrack and kube-proxy); other boxes drop it.

use super::*;

/// `profile` with one member behind an LB rule on port 7000 and no outbound rule (no
/// masquerade), `idle` on the rule, and `extra` top-level settings.
fn inbound_only(profile: &str, idle: &str, extra: &str) -> Config {
    let text = format!(
        r#"profile = "{profile}"
{extra}
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ONE_VM}]
[[lb_rule]]
name = "app"
frontend = "public"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "{idle}"
"#
    );
    Config::from_toml(&text, "inbound-only.toml").unwrap()
}

fn the_rule_of_the_only_flow(h: &Harness) -> String {
    let flows: Vec<_> = h.engine.flows(h.at(h.now)).collect();
    assert_eq!(flows.len(), 1, "one flow");
    h.engine.rule_name(flows[0].flow.rule).to_string()
}

#[test]
fn under_loose_pickup_a_members_late_segment_no_rule_claims_leaves_untranslated_and_its_reply_comes_back(
) {
    // nf_conntrack_tcp_loose=1, a DNAT rule and no masquerade: after the established timeout
    // the member's next segment makes a new entry that no NAT rule binds, so it leaves with the
    // member's own address; the remote's answer (a RST: no socket of its own has that tuple)
    // matches the entry and reaches the member.
    for profile in ["linux-conntrack", "kube-proxy"] {
        let mut h = Harness::with(inbound_only(profile, "2s", ""));
        let (client, mut server) = h.connect_inbound(40_000);
        h.advance_to(2_000);
        assert_eq!(
            h.engine.flow_count(),
            0,
            "{profile}: the DNAT entry expired"
        );
        let (v, p) = h.send(
            &mut server,
            client.addr,
            TcpFlags::ACK,
            client.snd_nxt,
            b"b",
        );
        assert_eq!(
            v,
            Verdict::Forward {
                interface: Interface::Outside,
                destination: CLIENT.into()
            },
            "{profile}"
        );
        let left = Headers::<SocketAddrV4>::parse(&p).unwrap();
        assert_eq!(
            (left.src, left.dst),
            (server.addr, client.addr),
            "{profile}"
        );
        assert!(
            checksums_valid(&p),
            "{profile}: the packet is as the member sent it"
        );
        assert_eq!(the_rule_of_the_only_flow(&h), crate::UNTRANSLATED);
        assert_eq!(only_state(&h), FlowState::Established, "{profile}");
        let reset = Peer {
            addr: client.addr,
            iface: Interface::Outside,
            snd_nxt: client.snd_nxt,
        };
        let v = h.send_seq(&reset, server.addr, TcpFlags::RST, client.snd_nxt, 0, b"");
        assert_eq!(
            v,
            Verdict::Forward {
                interface: Interface::Inside,
                destination: VM1.into()
            },
            "{profile}: the reply matches the entry"
        );
    }
}

#[test]
fn without_loose_pickup_a_members_late_segment_no_rule_claims_is_dropped() {
    // nf_conntrack_tcp_loose=0: the segment is invalid, whatever the NAT rules.
    let mut h = Harness::with(inbound_only(
        "linux-conntrack",
        "2s",
        "loose_pickup = false",
    ));
    let (client, mut server) = h.connect_inbound(40_000);
    h.advance_to(2_000);
    let (v, _) = h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"b",
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_linux_router_routes_a_members_new_connection_without_masquerade_untranslated() {
    // A SYN makes a conntrack entry whatever nf_conntrack_tcp_loose says; with no masquerade
    // for the member it leaves as it is, and the SYN-ACK comes back by the entry.
    for extra in ["", "loose_pickup = false"] {
        let mut h = Harness::with(inbound_only("linux-conntrack", "1h", extra));
        let (_, _, v, public) = h.connect_outbound(33_000);
        assert_eq!(v.interface(), Some(Interface::Outside), "{extra:?}");
        assert_eq!(public, ep(VM1, 33_000), "{extra:?}: untranslated");
        assert_eq!(only_state(&h), FlowState::Established, "{extra:?}");
        assert_eq!(the_rule_of_the_only_flow(&h), crate::UNTRANSLATED);
    }
}

#[test]
fn a_linux_router_drops_what_no_rule_claims_from_the_outside() {
    // The reference router's input chain drops what is not its own, and idlegate does not
    // route new connections from the outside to inside addresses.
    let mut h = Harness::with(inbound_only("linux-conntrack", "1h", ""));
    let mut stranger = Peer {
        addr: ep(CLIENT, 40_000),
        iface: Interface::Outside,
        snd_nxt: 1,
    };
    let (v, _) = h.send(&mut stranger, ep(VM1, 22), TcpFlags::SYN, 0, b"");
    assert_eq!(v, Verdict::Drop(DropReason::NoRule));
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_cloud_load_balancer_still_drops_what_no_rule_claims_from_the_inside() {
    // Azure LB forwards only what its rules translate: no outbound rule, no way out.
    let mut h = Harness::with(inbound_only("azure-lb", "4m", ""));
    let (_, _, v, _) = h.connect_outbound(33_000);
    assert_eq!(v, Verdict::Drop(DropReason::NoRule));
    assert_eq!(h.engine.flow_count(), 0);
}
