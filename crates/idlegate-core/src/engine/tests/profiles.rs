//! Engine tests of the vendors' profiles: conntrack's closing states and loose pickup, masquerade, AWS ALB's data-only refresh.

use super::*;

#[test]
fn conntrack_closing_states_each_run_their_own_timer() {
    // Linux nf_conntrack_tcp_timeout_*: FIN_WAIT 120 s, CLOSE_WAIT 60 s, LAST_ACK 30 s,
    // TIME_WAIT 120 s (nf_conntrack-sysctl.rst); the transitions are conntrack's table.
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (mut client, mut server) = h.connect_inbound(40_000);
    let frontend = FRONTEND_7000;
    h.send(
        &mut client,
        frontend,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    assert_eq!(only_state(&h), FlowState::FinWait);
    h.send(&mut server, client.addr, TcpFlags::ACK, client.snd_nxt, b"");
    assert_eq!(only_state(&h), FlowState::CloseWait);
    // Half-closed: the server may still send, and each segment gives another 60 s.
    h.advance_to(59_999);
    h.send(
        &mut server,
        client.addr,
        TcpFlags::ACK,
        client.snd_nxt,
        b"more",
    );
    h.advance_to(59_999 + 59_999);
    assert_eq!(h.engine.flow_count(), 1);
    h.send(
        &mut server,
        client.addr,
        TcpFlags::FIN | TcpFlags::ACK,
        client.snd_nxt,
        b"",
    );
    assert_eq!(only_state(&h), FlowState::LastAck);
    h.send(&mut client, frontend, TcpFlags::ACK, server.snd_nxt, b"");
    assert_eq!(only_state(&h), FlowState::TimeWait);
    let t = h.now;
    h.advance_to(t + 119_999);
    assert_eq!(h.engine.flow_count(), 1);
    h.advance_to(t + 120_000);
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn a_half_closed_conntrack_flow_is_forgotten_after_close_wait() {
    // nf_conntrack_tcp_timeout_close_wait = 60 s, however long the established timeout.
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.send(&mut server, client.addr, TcpFlags::ACK, client.snd_nxt, b"");
    h.advance_to(h.now + 60_000);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(h.expired(), vec![(60_000, Expiry::Silent)]);
}

#[test]
fn loose_pickup_brings_a_forgotten_outbound_flow_back_on_the_members_next_ack() {
    // nf_conntrack_tcp_loose=1: an ACK of an unknown connection makes a new ESTABLISHED
    // entry, and masquerade keeps the member's source port, so the server sees no change.
    let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
    let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
    assert_eq!(public, ep(FRONTEND, 33_000), "masquerade keeps the port");
    h.advance_to(2_000);
    assert_eq!(h.engine.flow_count(), 0);
    let (v, p) = h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"late");
    assert_eq!(v.interface(), Some(Interface::Outside));
    assert_eq!(Headers::<SocketAddrV4>::parse(&p).unwrap().src, public);
    assert_eq!(only_state(&h), FlowState::Established);
    let (v, _) = h.send(&mut server, public, TcpFlags::ACK, vm.snd_nxt, b"reply");
    assert_eq!(v.interface(), Some(Interface::Inside));
}

#[test]
fn loose_pickup_takes_no_fin_rst_or_packet_from_the_outside_of_an_outbound_flow() {
    // conntrack: NONE + FIN or RST is invalid; a server's packet to the router is not a
    // forwarded connection.
    let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
    let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
    h.advance_to(2_000);
    let (v, _) = h.send(&mut server, public, TcpFlags::ACK, vm.snd_nxt, b"first");
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    for flags in [TcpFlags::FIN | TcpFlags::ACK, TcpFlags::RST] {
        let v = h.send_seq(&vm, server.addr, flags, vm.snd_nxt, server.snd_nxt, b"");
        assert_eq!(v, Verdict::Drop(DropReason::NoFlow), "{flags:?}");
    }
    assert_eq!(h.engine.flow_count(), 0);
    let (v, _) = h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
}

#[test]
fn without_loose_pickup_a_forgotten_flow_stays_dead() {
    // nf_conntrack_tcp_loose=0: mid-stream packets of unknown connections are invalid.
    let config = profile_config("linux-conntrack", "2s", "loose_pickup = false");
    let mut h = Harness::with(config);
    let (mut vm, server, _, _) = h.connect_outbound(33_000);
    h.advance_to(2_000);
    let (v, _) = h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"late");
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    assert_eq!(h.engine.flow_count(), 0);
}

#[test]
fn loose_pickup_of_an_inbound_flow_returns_to_the_same_member() {
    let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(2_000);
    let (v, p) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"x",
    );
    assert_eq!(v.interface(), Some(Interface::Inside));
    assert_eq!(Headers::<SocketAddrV4>::parse(&p).unwrap().dst, server.addr);
}

#[test]
fn masquerade_changes_a_source_port_only_when_the_tuple_would_clash() {
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (_, _, _, first) = h.connect_outbound(33_000);
    assert_eq!(first.port(), 33_000);
    // The other member, same source port, same server: the tuple would clash.
    let server = ep(CLIENT, 8_000);
    let mut vm2 = Peer {
        addr: ep(VM2, 33_000),
        iface: Interface::Inside,
        snd_nxt: 5,
    };
    let (v, syn) = h.send(&mut vm2, server, TcpFlags::SYN, 0, b"");
    assert_eq!(v.interface(), Some(Interface::Outside));
    let second = Headers::<SocketAddrV4>::parse(&syn).unwrap().src;
    assert_eq!(*second.ip(), FRONTEND);
    assert_ne!(second.port(), 33_000);
}

#[test]
fn aws_alb_keepalive_probes_do_not_refresh_a_flow_data_does() {
    // AWS ALB: only data bytes refresh the idle timeout; TCP keepalive does not.
    let mut h = Harness::with(
        Config::from_toml(&profile::example_config(&profile::AWS_ALB), "alb").unwrap(),
    );
    let idle = 1_000; // 60 s / 60
    let (mut client, server) = h.connect_inbound(40_000);
    h.advance_to(600);
    let probe = h.send_seq(
        &client,
        FRONTEND_7000,
        TcpFlags::ACK,
        client.snd_nxt.wrapping_sub(1),
        server.snd_nxt,
        b"",
    );
    assert_eq!(
        probe.interface(),
        Some(Interface::Inside),
        "passed on, not counted"
    );
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.advance_to(idle - 1);
    assert_eq!(h.engine.flow_count(), 1);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"data",
    );
    h.advance_to(2 * idle - 2);
    assert_eq!(h.engine.flow_count(), 1, "data refreshed it");
    h.advance_to(2 * idle - 1);
    assert_eq!(h.expired(), vec![(2 * idle - 1, Expiry::Reset)]);
}

#[test]
fn a_flow_picked_up_at_any_sequence_number_knows_both_sides_and_takes_an_exact_rst() {
    // Loose pickup learns the sender's SND.NXT from the segment, whatever its value, so the
    // endpoint's own RST (RFC 5961 §3.2: SEG.SEQ = RCV.NXT) ends the flow.
    for start in [5u32, 0x9000_0000, u32::MAX - 1] {
        let mut h = Harness::with(profile_config("linux-conntrack", "2s", ""));
        let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
        h.advance_to(2_000);
        assert_eq!(h.engine.flow_count(), 0);
        vm.snd_nxt = start;
        server.snd_nxt = start.wrapping_add(1_000);
        h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"late");
        assert_eq!(only_state(&h), FlowState::Established, "start {start:#x}");
        let (v, _) = h.send(&mut server, public, TcpFlags::RST, 0, b"");
        assert_eq!(v.interface(), Some(Interface::Inside));
        assert_eq!(only_state(&h), FlowState::Closed, "start {start:#x}");
    }
}

#[test]
fn masquerade_finds_another_port_whatever_the_member_ports_and_counts_its_flows() {
    // Linux masquerade: only the whole tuple must be unique. vm1 holds F:1024 to the server;
    // vm2 from its own port 1024 to the same server gets another port, and so does the next.
    let mut h = Harness::with(profile_config("linux-conntrack", "1h", ""));
    let (_, _, _, first) = h.connect_outbound(1024);
    assert_eq!(first.port(), 1024);
    let server = ep(CLIENT, 8_000);
    let mut ports = vec![first.port()];
    // Each of vm2's own ports is already another flow's tuple by the time it connects.
    for port in [1024, 1025, 1026] {
        let mut vm2 = Peer {
            addr: ep(VM2, port),
            iface: Interface::Inside,
            snd_nxt: u32::from(port),
        };
        let (v, syn) = h.send(&mut vm2, server, TcpFlags::SYN, 0, b"");
        assert_eq!(v.interface(), Some(Interface::Outside), "from port {port}");
        ports.push(Headers::<SocketAddrV4>::parse(&syn).unwrap().src.port());
    }
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "every tuple unique: {ports:?}");
    let usage: Vec<SnatUsage> = h.engine.snat_usage().collect();
    assert_eq!(usage[0].lent, 4, "four flows use the frontend's ports");
}

#[test]
fn a_syn_in_a_closing_state_other_than_time_wait_changes_nothing() {
    // conntrack: FIN_WAIT, CLOSE_WAIT, LAST_ACK + SYN → ignored; TIME_WAIT, CLOSE + SYN →
    // SYN_SENT (nf_conntrack_proto_tcp.c).
    let mut h = Harness::with(profile_config("kube-proxy", "1h", ""));
    let (mut client, mut server) = h.connect_inbound(40_000);
    h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.send(&mut server, client.addr, TcpFlags::ACK, client.snd_nxt, b"");
    assert_eq!(only_state(&h), FlowState::CloseWait);
    h.send(&mut client, FRONTEND_7000, TcpFlags::SYN, 0, b"");
    assert_eq!(only_state(&h), FlowState::CloseWait);
}

/// The RSTs the gateway sent, by the interface each left on.
fn rsts_sent(h: &Harness) -> Vec<Interface> {
    h.sent
        .iter()
        .filter(|(_, p)| {
            Headers::<SocketAddrV4>::parse(p)
                .ok()
                .and_then(|hd| hd.tcp)
                .is_some_and(|seg| seg.flags.rst())
        })
        .map(|(iface, _)| *iface)
        .collect()
}

#[test]
fn azure_firewall_north_south_resets_both_ends_of_an_idle_flow_at_4_min() {
    // Azure "Understanding Azure Firewall TCP session management": north-south 4 min by
    // default, a RST to both ends at expiry.
    let mut h = Harness::with(profile_config("azure-firewall", "4m", ""));
    h.connect_inbound(40_000);
    h.connect_outbound(33_000);
    h.advance_to(239_999);
    assert_eq!(h.engine.flow_count(), 2);
    h.advance_to(240_000);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(
        h.expired(),
        vec![(240_000, Expiry::Reset), (240_000, Expiry::Reset)]
    );
    let mut rsts = rsts_sent(&h);
    rsts.sort_by_key(|i| *i == Interface::Inside);
    assert_eq!(
        rsts,
        vec![
            Interface::Outside,
            Interface::Outside,
            Interface::Inside,
            Interface::Inside
        ]
    );
}

#[test]
fn azure_firewall_east_west_forgets_an_idle_flow_at_5_min_without_a_rst() {
    // Same page: east-west fixed at 5 min, and no RST: both ends keep the connection.
    let mut h = Harness::with(profile_config("azure-firewall-east-west", "5m", ""));
    let (mut client, server) = h.connect_inbound(40_000);
    h.connect_outbound(33_000);
    h.advance_to(299_999);
    assert_eq!(h.engine.flow_count(), 2);
    h.advance_to(300_000);
    assert_eq!(h.engine.flow_count(), 0);
    assert_eq!(
        h.expired(),
        vec![(300_000, Expiry::Silent), (300_000, Expiry::Silent)]
    );
    assert!(h.sent.is_empty(), "nothing sent: {:?}", h.sent);
    // The client's next segment meets no flow and is dropped, unanswered.
    let (v, _) = h.send(
        &mut client,
        FRONTEND_7000,
        TcpFlags::ACK,
        server.snd_nxt,
        b"late",
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
    assert!(h.sent.is_empty());
}

#[test]
fn azure_firewall_east_west_refuses_any_idle_timeout_but_5_min() {
    let text = format!(
        r#"profile = "azure-firewall-east-west"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ONE_VM}]
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
idle_timeout = "15m"
"#
    );
    let err = Config::from_toml(&text, "ew.toml").unwrap_err().to_string();
    assert!(
        err.contains("Azure Firewall (east-west)'s idle timeout is fixed at 5 min"),
        "{err}"
    );
}

/// A gcp-nat config: one member, one outbound rule with `setting` (e.g. `time_wait = "120s"`).
fn gcp_nat_config(setting: &str) -> Config {
    let text = format!(
        r#"profile = "gcp-nat"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ONE_VM}]
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
{setting}
"#
    );
    Config::from_toml(&text, "gcp.toml").unwrap()
}

/// Closes an outbound connection with FINs both ways; returns how long its flow then lives in
/// TIME_WAIT.
fn time_wait_of(h: &mut Harness) -> u64 {
    let (mut vm, mut server, _, public) = h.connect_outbound(33_000);
    h.send(
        &mut vm,
        server.addr,
        TcpFlags::FIN | TcpFlags::ACK,
        server.snd_nxt,
        b"",
    );
    h.send(&mut server, public, TcpFlags::ACK, vm.snd_nxt, b"");
    h.send(
        &mut server,
        public,
        TcpFlags::FIN | TcpFlags::ACK,
        vm.snd_nxt,
        b"",
    );
    h.send(&mut vm, server.addr, TcpFlags::ACK, server.snd_nxt, b"");
    assert_eq!(only_state(h), FlowState::TimeWait);
    let start = h.now;
    while h.engine.flow_count() > 0 {
        h.advance_to(h.now + 1_000);
    }
    h.now - start
}

#[test]
fn gcp_nat_time_wait_is_30_s_by_default_and_a_rules_time_wait_sets_it() {
    // Cloud NAT release notes, 31 March 2026: gateways created from 30 September 2026 get a
    // 30 s TIME_WAIT; those created before keep 120 s; `tcpTimeWaitTimeoutSec` sets it.
    let mut h = Harness::with(gcp_nat_config(""));
    assert_eq!(time_wait_of(&mut h), 30_000);
    let mut h = Harness::with(gcp_nat_config(r#"time_wait = "120s""#));
    assert_eq!(time_wait_of(&mut h), 120_000);
}

#[test]
fn time_wait_is_refused_where_the_profile_cannot_set_it_and_outside_gcps_range() {
    let text = format!(
        r#"profile = "azure-lb"
[[frontend]]
name = "public"
address = "203.0.113.10"
[[backend_pool]]
name = "vms"
members = [{ONE_VM}]
[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
time_wait = "60s"
"#
    );
    let err = Config::from_toml(&text, "lb.toml").unwrap_err().to_string();
    assert!(
        err.contains("time_wait = \"60s\": Azure LB's TIME_WAIT is not configurable (it is 30 s); only gcp-nat lets a rule set it"),
        "{err}"
    );
    let text = text
        .replace("azure-lb", "gcp-nat")
        .replace("\"60s\"", "\"2d\"");
    let err = Config::from_toml(&text, "gcp.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("time_wait = 2d is outside GCP Cloud NAT's TIME_WAIT range of 1 s–24 h"),
        "{err}"
    );
}
