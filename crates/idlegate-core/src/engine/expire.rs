//! Expiry: flows whose timer ran out (or that the driver forgets now) are forgotten with their
//! rule's expiry action ([`Expiry`]), their SNAT ports given back or held.

use super::*;

impl<E: Endpoint> Core<E> {
    /// Expires every flow whose deadline is at or before `now`.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        while let Some(id) = self.wheel.poll_expired(&mut self.flows, now) {
            self.expire(id, now, ExpiryCause::Idle);
        }
    }

    /// Expires now, with their rules' expiry actions, the flows whose rule `matches` (as a
    /// platform event would: a load balancer redeployed, a NAT gateway swapped). Returns how
    /// many. Not for the per-packet path: it collects the matching flows first.
    pub(super) fn expire_now(&mut self, now: Instant, matches: impl Fn(RuleId) -> bool) -> usize {
        let now = self.tick(now);
        let ids: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| matches(self.rules[usize::from(f.rule)].id))
            .map(|(id, _)| id)
            .collect();
        for &id in &ids {
            self.expire(id, now, ExpiryCause::Forced);
        }
        ids.len()
    }

    /// Gives an expired outbound flow's port back. A connection closed with FIN or RST holds it
    /// from its last packet; one forgotten while open (established, or a UDP flow) holds it
    /// for the profile's `hold_after_idle` from the moment of expiry (Azure: released at
    /// once); a handshake forgotten half-open holds it like a RST.
    pub(super) fn release_port(&mut self, flow: &Flow<E>, now: Tick, cause: Forgotten) {
        let Some(snat) = self.snat_of(flow.rule) else {
            return;
        };
        if self.snat_allocation == Allocation::PreservePort {
            self.snat_pools()[snat].tuple_closed();
            return;
        }
        let last_packet = flow
            .deadline
            .saturating_sub(self.rules[usize::from(flow.rule)].timeout(flow.state));
        let (ending, ended) = match flow.state {
            state if state.is_closing() => (Ending::Fin, last_packet),
            FlowState::Closed => (Ending::Rst, last_packet),
            FlowState::SynSent | FlowState::SynReceived => (Ending::Rst, now),
            _ if cause == Forgotten::IdleTimeout => (Ending::Idle, now),
            _ => (Ending::Rst, now),
        };
        self.snat_pools()[snat].release(flow.private.addr(), flow.public.port(), ending, ended);
    }

    /// Forgets a flow whose deadline has passed, carrying out its rule's expiry action.
    /// Returns whether the flow is gone (under `ack-and-discard` it stays, discarding).
    pub(super) fn expire(&mut self, id: FlowId, now: Tick, cause: ExpiryCause) -> bool {
        self.wheel.remove(&mut self.flows, id);
        let flow = *self.flows.get(id);
        let running = self.running_timeout(id, &flow);
        let rule = &self.rules[usize::from(flow.rule)];
        let (idle, timeout) = (rule.idle, Duration::from_millis(running));
        // The deadline is the last packet plus the state's timeout (as `flows` shows it).
        let last_packet = flow.deadline.saturating_sub(running);
        let idle_for = Duration::from_millis(now.saturating_sub(last_packet));
        // Azure: "TCP reset only sent during TCP connection in ESTABLISHED state" ("Load
        // Balancer TCP Reset and Idle Timeout", "Limitations");
        // idlegate holds ack-and-discard to the same.
        let action = match (rule.expiry, flow.state) {
            (_, FlowState::Discarding) => {
                // A discarding flow quiet for an idle timeout: now it is forgotten for good.
                self.forget_as(id, now, forgotten(cause));
                return true;
            }
            // UDP flows end silently: there is no connection to reset or to acknowledge.
            (_, FlowState::Unreplied | FlowState::Replied) => Expiry::Silent,
            (Expiry::Reset | Expiry::AckAndDiscard, state) if !state.is_established() => {
                Expiry::Silent
            }
            (action, _) => action,
        };
        self.counters.flows_expired += 1;
        self.counters.expiries[action as usize] += 1;
        let summary = self.summary(&flow);
        self.events.push_back(Event::Expired {
            flow: summary,
            state: flow.state,
            timeout,
            idle_for,
            cause,
            action,
        });
        match action {
            Expiry::AckAndDiscard => {
                let deadline = now + idle;
                let ghost = self.flows.get_mut(id);
                (ghost.state, ghost.deadline) = (FlowState::Discarding, deadline);
                self.wheel.insert(&mut self.flows, id, deadline);
                false
            }
            Expiry::Reset => {
                self.reset_both(&flow);
                self.forget_as(id, now, forgotten(cause));
                true
            }
            Expiry::Silent | Expiry::ResetOnNext => {
                self.forget_as(id, now, forgotten(cause));
                true
            }
        }
    }

    /// Removes a flow for good and gives its SNAT port back, as after a RST or its close.
    pub(super) fn forget(&mut self, id: FlowId, now: Tick) {
        self.forget_as(id, now, Forgotten::Ended);
    }

    /// Removes a flow for good and gives its SNAT port back, held as `cause` says.
    fn forget_as(&mut self, id: FlowId, now: Tick, cause: Forgotten) {
        let flow = self.flows.remove(id);
        if !self.retimed.is_empty() {
            self.retimed.remove(&id);
        }
        self.limit.release();
        self.release_port(&flow, now, cause);
    }

    /// RSTs to both endpoints, each with the exact sequence number its stack expects next
    /// (RFC 5961 §3.2 accepts a RST only if SEG.SEQ = RCV.NXT).
    pub(super) fn reset_both(&mut self, flow: &Flow<E>) {
        let to_remote = ControlSegment {
            kind: ControlKind::Reset,
            src: flow.public,
            dst: flow.remote,
            seq: flow.private_next_seq,
            ack: Some(flow.remote_next_seq),
        };
        let to_private = ControlSegment {
            kind: ControlKind::Reset,
            src: flow.remote,
            dst: flow.private,
            seq: flow.remote_next_seq,
            ack: Some(flow.private_next_seq),
        };
        let summary = self.summary(flow);
        self.queue(Interface::Outside, to_remote, summary);
        self.queue(Interface::Inside, to_private, summary);
    }
}

/// Why a flow is forgotten, for how long its SNAT port is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forgotten {
    /// It ended (FIN, RST, a new SYN on its tuple) or the platform dropped it.
    Ended,
    /// Its idle timer ran out.
    IdleTimeout,
}

fn forgotten(cause: ExpiryCause) -> Forgotten {
    match cause {
        ExpiryCause::Idle => Forgotten::IdleTimeout,
        ExpiryCause::Forced => Forgotten::Ended,
    }
}
