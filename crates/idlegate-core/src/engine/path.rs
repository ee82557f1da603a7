//! The packet path: one packet in, a verdict out. Finds the packet's flow or makes one (rule
//! matching, member choice, SNAT ports), tracks TCP, refreshes the flow's timer, rewrites the
//! packet in place; ICMP errors about live flows are translated back (RFC 5508). Nothing here
//! allocates for a packet of a live flow.

use super::*;

/// Ports masquerade tries, after the member's own, before it gives up on a new connection.
const MASQUERADE_TRIES: usize = 64;

impl<E: Endpoint> Core<E> {
    /// Processes one packet that arrived on `from` at `now`, rewriting it in place. `hash`
    /// is its key's [`FlowTable::hash`] if the caller took it already (a batch), else `None`.
    #[inline]
    pub(super) fn handle_packet(
        &mut self,
        now: Instant,
        from: Interface,
        packet: &mut [u8],
        parsed: Result<Headers<E>, ParseError>,
        checksum: TransportChecksum,
        hash: Option<u64>,
    ) -> Verdict {
        let headers = match parsed {
            Ok(mut h) => {
                h.checksum = checksum;
                h
            }
            Err(ParseError::UnsupportedProtocol) if icmp::is_icmp(packet) => {
                return self.icmp_error(now, from, packet)
            }
            Err(ParseError::Fragment) => return self.fragment(now, from, packet),
            Err(e) => return self.drop(e.into()),
        };
        self.handle_headers(now, from, &headers, packet, hash)
    }

    /// A packet whose headers are read: the flow it belongs to, or a new one, or a drop.
    #[inline]
    pub(super) fn handle_headers(
        &mut self,
        now: Instant,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        hash: Option<u64>,
    ) -> Verdict {
        if headers.tcp.is_some_and(|s| !s.flags.is_valid()) {
            return self.drop(DropReason::InvalidFlags);
        }
        // Expired means deadline <= now (rounded down); timeouts run from now rounded up, so
        // neither ever cuts a flow short.
        let (now, since) = self.ticks(now);
        let (src, dst, protocol) = (headers.src, headers.dst, headers.protocol);
        let hash = hash.unwrap_or_else(|| self.flows.hash(from, src, dst, protocol));
        match self.flows.find_hashed(hash, from, src, dst, protocol) {
            Some(id) if self.flows.get(id).deadline > now => {
                self.forward(id, from, headers, packet, since)
            }
            Some(id) => {
                // Past its deadline but not yet reaped: it is dead, whatever comes now (or,
                // under ack-and-discard, it is discarding).
                if self.expire(id, now, ExpiryCause::Idle) {
                    self.no_flow(from, headers, packet, since)
                } else {
                    self.forward(id, from, headers, packet, since)
                }
            }
            None => self.no_flow(from, headers, packet, since),
        }
    }

    pub(super) fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.drops[reason as usize] += 1;
        Verdict::Drop(reason)
    }

    /// A packet of a live flow: track it, refresh the flow, translate, forward.
    pub(super) fn forward(
        &mut self,
        id: FlowId,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        if self.flows.get(id).state == FlowState::Discarding {
            return self.discard(id, from, headers, packet, since);
        }
        let rule = &self.rules[usize::from(self.flows.get(id).rule)];
        let from_initiator = from == rule.origin();
        let flow = self.flows.get_mut(id);
        let before = flow.state;
        // Only a box that counts data alone (AWS ALB) asks whether a segment is new data.
        let data_only = self.refresh == Refresh::DataOnly;
        let mut new_data = true;
        if headers.tcp.is_none() {
            flow.state = flow.state.after_datagram(from_initiator);
        }
        let mut in_window = true;
        if let Some(segment) = headers.tcp {
            if data_only {
                let (expected, _) = flow.next_seqs(from);
                // A RST counts only if accepted, which changes the state below.
                new_data =
                    !segment.flags.rst() && (segment.end().wrapping_sub(expected) as i32) > 0;
            }
            // A segment out of the windows (a blind FIN, RST or data segment; see
            // [`crate::state::flow::window`]) is passed on but changes nothing here and, as conntrack's
            // INVALID packets, does not refresh the flow.
            in_window = flow.track(from, &segment, from_initiator);
        }
        // A box that counts only data (AWS ALB) lets ACKs and keepalive probes through
        // without refreshing the flow; a change of state always restarts its timer.
        if in_window && (new_data || flow.state != before) {
            let deadline = since + rule.timeout(flow.state);
            if let Some(after) = self.refreshed_after {
                self.note_refresh(id, before, since, after, deadline);
            }
            self.set_deadline(id, deadline);
        }
        if !in_window {
            self.counters.out_of_window += 1;
        }
        self.translate(id, from, headers, packet)
    }

    /// [`Event::Refreshed`] for a packet at `since` on flow `id` (in state `before` until
    /// now), about to get `deadline`, if the flow had been idle at least `after`.
    fn note_refresh(
        &mut self,
        id: FlowId,
        before: FlowState,
        since: Tick,
        after: Tick,
        deadline: Tick,
    ) {
        let f = self.flows.get(id);
        let timeout = match self.retimed.get(&id) {
            Some(&(d, t)) if d == f.deadline => t,
            _ => self.rules[usize::from(f.rule)].timeout(before),
        };
        let idle = since.saturating_sub(f.deadline.saturating_sub(timeout));
        if idle >= after {
            self.events.push_back(Event::Refreshed {
                flow: self.summary(f),
                idle_for: Duration::from_millis(idle),
                timeout: Duration::from_millis(deadline - since),
            });
        }
    }

    /// Rewrites a packet of flow `id` for the other side: DNAT inbound, SNAT outbound.
    pub(super) fn translate(
        &mut self,
        id: FlowId,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
    ) -> Verdict {
        let flow = self.flows.get(id);
        let rewrites = !matches!(
            self.rules[usize::from(flow.rule)].translation,
            Translation::Untranslated
        );
        let destination = match from {
            Interface::Outside => {
                if rewrites {
                    packet::rewrite_dst(packet, headers, flow.private);
                }
                flow.private.addr()
            }
            Interface::Inside => {
                if rewrites {
                    packet::rewrite_src(packet, headers, flow.public);
                }
                headers.dst.addr()
            }
        };
        self.counters.forwarded += 1;
        Verdict::Forward {
            interface: from.opposite(),
            destination: destination.into(),
        }
    }

    /// A segment of a flow expired under `ack-and-discard`: what it carries is acknowledged as a
    /// receiver would (data, FIN, a keepalive probe), and dropped. Pure ACKs and RSTs get no
    /// answer. A segment in the flow's windows ([`crate::state::flow::window`]) keeps the discarding flow for
    /// another idle timeout; one outside them (a blind segment) is answered with the flow's
    /// numbers as they were, as a receiver answers an unacceptable segment (RFC 9293
    /// §3.10.7.4), and changes nothing.
    pub(super) fn discard(
        &mut self,
        id: FlowId,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        let from_initiator = from == self.rules[usize::from(self.flows.get(id).rule)].origin();
        match headers.tcp {
            // A RST its receiver would accept ends it; a new connection on the tuple replaces it.
            Some(segment) if segment.flags.rst() => {
                if !self
                    .flows
                    .get(id)
                    .accepts_reset(from, &segment, from_initiator)
                {
                    self.counters.out_of_window += 1;
                    return self.drop(DropReason::Discarded);
                }
                self.wheel.remove(&mut self.flows, id);
                self.forget(id, since);
                return self.drop(DropReason::Discarded);
            }
            Some(segment) if segment.flags.is_connect() && from_initiator => {
                self.wheel.remove(&mut self.flows, id);
                self.forget(id, since);
                return self.no_flow(from, headers, packet, since);
            }
            _ => {}
        }
        if let Some(segment) = headers.tcp {
            let flow = self.flows.get_mut(id);
            let (expected, _) = flow.next_seqs(from);
            // The state stays DISCARDING: no other SYN is taken, and nothing else moves it.
            let in_window = !segment.flags.syn() && flow.track(from, &segment, from_initiator);
            if segment.len > 0 || segment.seq != expected || !in_window {
                let (sender_next, own_next) = flow.next_seqs(from);
                let ack = ControlSegment {
                    ack: Some(sender_next),
                    ..ControlSegment::ack_of(headers, &segment, own_next)
                };
                let copy = *flow;
                let summary = self.summary(&copy);
                self.queue(from, ack, summary);
            }
            if !in_window {
                self.counters.out_of_window += 1;
                return self.drop(DropReason::Discarded);
            }
        }
        let rule = &self.rules[usize::from(self.flows.get(id).rule)];
        self.set_deadline(id, since + rule.idle);
        self.drop(DropReason::Discarded)
    }

    /// An ICMP error arriving on `from` about a packet of a live flow: the quoted packet is put
    /// back as the flow's endpoint on that side sent it and the error goes on to that endpoint
    /// (RFC 5508 REQ-4, REQ-5). It neither refreshes nor ends the flow. Errors about no live
    /// flow are dropped (RFC 5508: "SHOULD silently drop").
    pub(super) fn icmp_error(
        &mut self,
        now: Instant,
        from: Interface,
        packet: &mut [u8],
    ) -> Verdict {
        let error = match IcmpError::<E>::parse(packet) {
            Ok(e) => e,
            Err(e) => return self.drop(e.into()),
        };
        // The quoted packet went the other way: from the outside, it is one the gateway sent
        // out (public → remote); from the inside, one it delivered in (remote → private).
        let (src, dst) = (error.quoted_dst, error.quoted_src);
        let now = self.tick(now);
        let Some(id) = self.flows.find(from, src, dst, error.protocol) else {
            return self.drop(DropReason::NoFlow);
        };
        let flow = self.flows.get(id);
        if flow.deadline <= now || flow.state == FlowState::Discarding {
            return self.drop(DropReason::NoFlow);
        }
        let destination = match from {
            Interface::Outside => {
                error.translate(packet, QuotedSide::Source, flow.private);
                flow.private.addr()
            }
            Interface::Inside => {
                error.translate(packet, QuotedSide::Destination, flow.public);
                error.outer_dst()
            }
        };
        self.counters.icmp_errors_translated += 1;
        self.counters.forwarded += 1;
        Verdict::Forward {
            interface: from.opposite(),
            destination: destination.into(),
        }
    }

    /// Moves a flow's deadline. Later: just stored, the wheel re-files lazily. Earlier: re-filed.
    pub(super) fn set_deadline(&mut self, id: FlowId, deadline: Tick) {
        let flow = self.flows.get_mut(id);
        let earlier = deadline < flow.deadline;
        flow.deadline = deadline;
        if earlier {
            self.wheel.remove(&mut self.flows, id);
            self.wheel.insert(&mut self.flows, id, deadline);
        }
    }

    /// A packet that belongs to no flow: a new connection, or the silent drop.
    pub(super) fn no_flow(
        &mut self,
        from: Interface,
        headers: &Headers<E>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        let Some(segment) = headers.tcp else {
            // UDP has no handshake: any datagram a rule accepts opens a flow.
            return self.connect(from, headers, None, packet, since);
        };
        if segment.flags.is_connect() || self.picks_up(from, headers, &segment) {
            return self.connect(from, headers, Some(&segment), packet, since);
        }
        if !segment.flags.rst() {
            if let Some(rule) = self.resets_unknown(from, headers) {
                let (remote, public, private) = match from {
                    Interface::Outside => (headers.src, headers.dst, headers.dst),
                    Interface::Inside => (headers.dst, headers.src, headers.src),
                };
                let summary = FlowSummary {
                    rule: self.rules[usize::from(rule)].id,
                    protocol: headers.protocol,
                    remote: remote.into(),
                    public: public.into(),
                    private: private.into(),
                };
                let reset = ControlSegment::reset_answering(headers, &segment);
                self.queue(from, reset, summary);
            }
        }
        self.drop(DropReason::NoFlow)
    }

    /// Whether loose pickup makes `segment`, of a connection the gateway does not know, open a
    /// flow: a plain ACK (conntrack's NONE + ACK → ESTABLISHED) that a rule would accept as a
    /// new connection from `from` (on a Linux router, from the inside, the untranslated rule
    /// accepts what no other does: the kernel routes it on as it is).
    pub(super) fn picks_up(
        &self,
        from: Interface,
        headers: &Headers<E>,
        segment: &TcpSegment,
    ) -> bool {
        let flags = segment.flags;
        self.pickup == Pickup::Loose
            && flags.ack()
            && !(flags.syn() || flags.fin() || flags.rst())
            && self.owner(from, headers, true).is_some()
    }

    /// Gives back the SNAT port just lent for a flow that was not made after all.
    pub(super) fn give_back_unused(&mut self, rule: RuleId, private: E, public: E) {
        if let Some(snat) = self.snat_of(rule) {
            self.snat_pools()[snat].release_unused(private.addr(), public.port());
        }
    }

    /// A SYN (or a UDP datagram, or a segment loose pickup takes up): find the rule that
    /// accepts it and create the flow.
    pub(super) fn connect(
        &mut self,
        from: Interface,
        headers: &Headers<E>,
        segment: Option<&TcpSegment>,
        packet: &mut [u8],
        since: Tick,
    ) -> Verdict {
        let Some((rule_id, public, private)) = self.match_rule(from, headers) else {
            return self.drop(DropReason::NoRule);
        };
        if self.limit.reached() || self.flows.is_full() {
            return self.table_full();
        }
        let remote = match from {
            Interface::Outside => headers.src,
            Interface::Inside => headers.dst,
        };
        let public = public.or_else(|| self.lend_port(rule_id, headers, since));
        let Some(public) = public else {
            return self.port_exhausted(rule_id, private.addr());
        };
        let mut flow = Flow::new(headers.protocol, remote, public, private, rule_id);
        if self.flows.either_key_taken(&flow) {
            self.give_back_unused(rule_id, private, public);
            return self.drop(DropReason::TupleInUse);
        }
        if !self.limit.reserve() {
            // Another shard took the last place since the look above.
            self.give_back_unused(rule_id, private, public);
            return self.table_full();
        }
        if let Some(segment) = segment {
            if segment.flags.syn() {
                flow.start(from, segment);
            } else {
                flow.pick_up(from, segment);
            }
        }
        flow.deadline = since + self.rules[usize::from(rule_id)].timeout(flow.state);
        let id = self.flows.insert(flow);
        self.wheel.insert(&mut self.flows, id, flow.deadline);
        self.counters.flows_created += 1;
        if let Some(snat) = self.snat_of(rule_id) {
            if self.snat_allocation == Allocation::PreservePort {
                self.snat_pools()[snat].tuple_opened();
            }
        }
        self.events.push_back(Event::Created {
            flow: self.summary(&flow),
            timeout: Duration::from_millis(flow.deadline - since),
        });
        self.translate(id, from, headers, packet)
    }

    /// The rule a packet belongs to. Inbound rules come first (they are first in `rules`): on
    /// the outside a packet belongs to the rule of its destination (an LB or inbound NAT
    /// frontend port, else an outbound rule's frontend address), on the inside to the rule of
    /// its source (a member at an inbound rule's backend port, else a member of a pool with an
    /// outbound rule, else, on a Linux router, the untranslated rule). A new connection
    /// (`connect`) from the outside is only ever inbound, from the inside only outbound.
    pub(super) fn owner(
        &self,
        from: Interface,
        headers: &Headers<E>,
        connect: bool,
    ) -> Option<RuleId> {
        let (src, dst) = (headers.src, headers.dst);
        let position = self.rules.iter().position(|rule| {
            rule.protocols.matches(headers.protocol)
                && match (&rule.translation, from) {
                    (Translation::LoadBalance { frontend, .. }, Interface::Outside) => {
                        *frontend == dst
                    }
                    (
                        Translation::LoadBalance {
                            members,
                            backend_port,
                            ..
                        },
                        Interface::Inside,
                    ) => !connect && src.port() == *backend_port && members.contains(&src.addr()),
                    (
                        Translation::InboundNat {
                            frontend,
                            first_port,
                            members,
                            ..
                        },
                        Interface::Outside,
                    ) => {
                        *frontend == dst.addr()
                            && dst
                                .port()
                                .checked_sub(*first_port)
                                .is_some_and(|i| usize::from(i) < members.len())
                    }
                    (
                        Translation::InboundNat {
                            members,
                            backend_port,
                            ..
                        },
                        Interface::Inside,
                    ) => !connect && src.port() == *backend_port && members.contains(&src.addr()),
                    (Translation::Outbound { frontend, .. }, Interface::Outside) => {
                        !connect && *frontend == dst.addr()
                    }
                    (Translation::Outbound { members, .. }, Interface::Inside) => {
                        members.contains(&src.addr())
                    }
                    (Translation::Untranslated, Interface::Inside) => true,
                    (Translation::Untranslated, Interface::Outside) => false,
                }
        });
        position.map(|i| i as RuleId)
    }

    /// The rule for a new connection and its endpoints: `(rule, public, private)`, with
    /// `public` left `None` when a SNAT port must still be lent.
    pub(super) fn match_rule(
        &self,
        from: Interface,
        headers: &Headers<E>,
    ) -> Option<(RuleId, Option<E>, E)> {
        let id = self.owner(from, headers, true)?;
        match &self.rules[usize::from(id)].translation {
            Translation::LoadBalance {
                frontend,
                members,
                backend_port,
            } => {
                let member = members[self.pick_member(headers, members.len())];
                Some((id, Some(*frontend), E::at(member, *backend_port)))
            }
            Translation::InboundNat {
                first_port,
                members,
                backend_port,
                ..
            } => {
                let member = members[usize::from(headers.dst.port() - first_port)];
                Some((id, Some(headers.dst), E::at(member, *backend_port)))
            }
            Translation::Outbound { .. } => Some((id, None, headers.src)),
            Translation::Untranslated => Some((id, Some(headers.src), headers.src)),
        }
    }

    /// Azure-style distribution: a hash of the 5-tuple picks the member.
    pub(super) fn pick_member(&self, headers: &Headers<E>, members: usize) -> usize {
        let tuple = (headers.src, headers.dst, headers.protocol as u8);
        (self.member_hash.hash_one(tuple) % members as u64) as usize
    }

    /// The SNAT port pool of an outbound rule.
    pub(super) fn snat_of(&self, rule: RuleId) -> Option<usize> {
        match self.rules[usize::from(rule)].translation {
            Translation::Outbound { snat, .. } => Some(snat),
            Translation::LoadBalance { .. }
            | Translation::InboundNat { .. }
            | Translation::Untranslated => None,
        }
    }

    /// A public address for a member's new outbound connection (`headers` is its first
    /// packet): a port lent from the rule's pool, or under masquerade a port whose tuple is
    /// free.
    pub(super) fn lend_port(&mut self, rule: RuleId, headers: &Headers<E>, now: Tick) -> Option<E> {
        let Translation::Outbound { frontend, snat, .. } =
            self.rules[usize::from(rule)].translation
        else {
            return None;
        };
        if self.snat_allocation == Allocation::PreservePort {
            return self.masquerade_port(frontend, snat, headers);
        }
        self.snat_pools()[snat]
            .allocate(headers.src.addr(), now)
            .map(|port| E::at(frontend, port))
    }

    /// Linux masquerade: the member's own source port if no flow to the same remote holds it
    /// on the frontend, else the next port of the frontend's range whose tuple is free, at most
    /// [`MASQUERADE_TRIES`] tried. Ports are not lent: as in Linux, one port may serve many
    /// remotes at once, and only the whole tuple must be unique.
    pub(super) fn masquerade_port(
        &mut self,
        frontend: E::Ip,
        snat: usize,
        headers: &Headers<E>,
    ) -> Option<E> {
        let free = |flows: &FlowTable<E>, port: u16| {
            let public = E::at(frontend, port);
            (flows.find(Interface::Outside, headers.dst, public, headers.protocol)).is_none()
        };
        if free(&self.flows, headers.src.port()) {
            return Some(E::at(frontend, headers.src.port()));
        }
        let mut pools = self.snat.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..MASQUERADE_TRIES {
            let port = pools[snat].next_candidate()?;
            if free(&self.flows, port) {
                return Some(E::at(frontend, port));
            }
        }
        None
    }

    /// The gateway holds `max_flows`: the new flow is refused and counted; flows it holds are
    /// unaffected. Said once per episode, as port exhaustion is.
    pub(super) fn table_full(&mut self) -> Verdict {
        if self.limit.first_refusal() {
            self.events.push_back(Event::TableFull {
                max_flows: self.limit.max,
            });
        }
        self.drop(DropReason::TableFull)
    }

    /// Azure: the new connection's SYN is dropped; existing flows are unaffected.
    /// Every refused connection is counted; the event (and so the log line) comes once per
    /// exhaustion, not on every packet.
    pub(super) fn port_exhausted(&mut self, rule: RuleId, member: E::Ip) -> Verdict {
        if let Translation::Outbound { frontend, snat, .. } =
            self.rules[usize::from(rule)].translation
        {
            if self.snat_pools()[snat].newly_exhausted(member) {
                self.events.push_back(Event::PortExhausted {
                    rule: self.rules[usize::from(rule)].id,
                    frontend: frontend.into(),
                    member: member.into(),
                });
            }
        }
        self.drop(DropReason::PortExhausted)
    }

    /// The `reset-on-next` rule (its index) an unknown segment arriving on `from` falls
    /// under, if any.
    pub(super) fn resets_unknown(&self, from: Interface, headers: &Headers<E>) -> Option<RuleId> {
        if self.reset_target == ResetTarget::InsideOnly && from == Interface::Outside {
            return None;
        }
        self.owner(from, headers, false)
            .filter(|&id| self.rules[usize::from(id)].expiry == Expiry::ResetOnNext)
    }

    /// Sends `control`, made for `flow`, out of `interface`: counted and said
    /// ([`Event::Sent`]).
    pub(super) fn queue(
        &mut self,
        interface: Interface,
        control: ControlSegment<E>,
        flow: FlowSummary,
    ) {
        let segment = match control.kind {
            ControlKind::Reset => {
                self.counters.resets_sent += 1;
                MadeSegment::Rst
            }
            ControlKind::Ack => {
                self.counters.acks_sent += 1;
                MadeSegment::Ack
            }
        };
        self.events.push_back(Event::Sent {
            flow,
            segment,
            interface,
        });
        self.transmits
            .push_back((interface, Outgoing::ControlSegment(control)));
    }

    // ---- expiry ----------------------------------------------------------------------------
}
