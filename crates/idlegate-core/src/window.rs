//! TCP window tracking: which segments of a flow its endpoints would accept.
//!
//! A segment may change a flow (its state, its tracked sequence numbers) only if it falls in
//! the windows its endpoints have shown, as Linux conntrack's `tcp_in_window`
//! (net/netfilter/nf_conntrack_proto_tcp.c) checks it, in the spirit of RFC 5961:
//!
//! - its sequence space must touch what the receiver may still accept: it ends no more than
//!   the receiver's largest window behind the sender's highest end, and starts no more than
//!   that window past it;
//! - its acknowledgement, if it has one, covers no more than the other side has sent, and no
//!   less than that minus the sender's largest window (conntrack's `MAXACKWINDOW`, at least
//!   66,000 bytes);
//! - a RST must carry exactly the sequence number its receiver expects (RFC 5961 §3.2), a
//!   SYN-ACK must acknowledge exactly the SYN (RFC 9293 §3.10.7.3), and a SYN opens a flow
//!   only where conntrack lets one (a new tuple, TIME_WAIT, CLOSE; a repeat in SYN_SENT).
//!
//! Anything else is out of window: the gateway passes it on, as conntrack passes an INVALID
//! packet that no rule drops (the receiving stack discards it or answers with a challenge ACK),
//! but it changes nothing and, like conntrack's INVALID packets, does not refresh the flow. A
//! blind FIN, RST or data segment must so guess both its numbers within a window to touch a
//! flow.
//!
//! Each side's largest window is kept in units of its window scale (RFC 7323), two bytes a
//! side and one byte for both scales. Windows on SYNs are not scaled; the scales take effect
//! with the SYN-ACK, and only if both SYNs announced one. A flow picked up mid-stream never saw
//! its SYNs: its scales are taken as the largest, 14, so its check stays on but is loose
//! (conntrack turns it off for such flows: `IP_CT_TCP_FLAG_BE_LIBERAL`).

use crate::family::Endpoint;
use crate::flow::{Flow, FlowState, Interface};
use crate::packet::{TcpSegment, MAX_WINDOW_SCALE};

/// conntrack's `MAXACKWINDOW` for a sender whose window is not known (bytes).
const MIN_ACK_WINDOW: u32 = 66_000;
/// The scale nibble of a SYN that announced none.
const NO_SCALE: u8 = 0x0f;

/// The largest window each side of a flow has advertised, with the sides' window scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Windows {
    /// The remote's largest window, in units of its scale; 0 while it has not been seen.
    remote: u16,
    /// The member's, likewise.
    private: u16,
    /// The remote's scale in the low nibble, the member's in the high one. In SYN_SENT each is
    /// what its SYN announced ([`NO_SCALE`]: nothing) and windows are in bytes; from the
    /// SYN-ACK on, the scale in effect.
    scales: u8,
}

impl Windows {
    fn units(&self, side: Interface) -> u16 {
        match side {
            Interface::Outside => self.remote,
            Interface::Inside => self.private,
        }
    }

    fn units_mut(&mut self, side: Interface) -> &mut u16 {
        match side {
            Interface::Outside => &mut self.remote,
            Interface::Inside => &mut self.private,
        }
    }

    fn scale(&self, side: Interface) -> u8 {
        match side {
            Interface::Outside => self.scales & 0x0f,
            Interface::Inside => self.scales >> 4,
        }
    }

    fn set_scale(&mut self, side: Interface, scale: u8) {
        self.scales = match side {
            Interface::Outside => (self.scales & 0xf0) | (scale & 0x0f),
            Interface::Inside => (self.scales & 0x0f) | (scale << 4),
        };
    }

    /// The side's largest window in bytes (0: not seen), its scale in effect unless the
    /// handshake is still under way.
    fn bytes(&self, side: Interface, state: FlowState) -> u32 {
        let scale = match self.scale(side) {
            _ if state == FlowState::SynSent => 0,
            NO_SCALE => 0,
            s => s.min(MAX_WINDOW_SCALE),
        };
        u32::from(self.units(side)) << scale
    }
}

/// `a` at or before `b` in sequence-number order (RFC 9293 §3.4).
fn at_or_before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// `bytes` in units of `2^scale`, rounded up, at least one.
fn in_units(bytes: u16, scale: u8) -> u16 {
    let unit = 1u32 << scale;
    (u32::from(bytes).div_ceil(unit).max(1)) as u16
}

impl<E: Endpoint> Flow<E> {
    /// Starts the tracking of a connection from its SYN, sent from `from`: the sender's
    /// sequence space and window from the SYN, the other side unknown until it answers.
    pub fn start(&mut self, from: Interface, syn: &TcpSegment) {
        let (sender, other) = match from {
            Interface::Outside => (&mut self.remote_next_seq, &mut self.private_next_seq),
            Interface::Inside => (&mut self.private_next_seq, &mut self.remote_next_seq),
        };
        (*sender, *other) = (syn.end(), 0);
        self.windows = Windows::default();
        *self.windows.units_mut(from) = syn.window.max(1);
        self.windows
            .set_scale(from, syn.window_scale.unwrap_or(NO_SCALE));
        self.windows.set_scale(from.opposite(), NO_SCALE);
        self.state = FlowState::SynSent;
    }

    /// Checks a segment sent from `from` (by the connection's initiator or not) against the
    /// flow's windows and, if it fits, records it: the sender's highest end and largest
    /// window, and the state it leads to. Returns whether it fit; a segment that did not
    /// changed nothing.
    pub fn track(&mut self, from: Interface, segment: &TcpSegment, from_initiator: bool) -> bool {
        let flags = segment.flags;
        if flags.rst() {
            let accepted = self.accepts_reset(from, segment);
            if accepted {
                self.state = FlowState::Closed;
            }
            return accepted;
        }
        if flags.is_connect() {
            // conntrack: a SYN from the initiator starts over on a new, TIME_WAIT or CLOSE
            // tuple (and repeats itself in SYN_SENT); anywhere else it is ignored.
            let starts = from_initiator
                && matches!(
                    self.state,
                    FlowState::SynSent | FlowState::TimeWait | FlowState::Closed
                );
            if starts {
                self.start(from, segment);
            }
            return starts;
        }
        if flags.syn() {
            return self.answer_syn(from, segment, from_initiator);
        }
        if !self.fits(from, segment) {
            return false;
        }
        let window = segment.window.max(1);
        let units = self.windows.units_mut(from);
        *units = (*units).max(window);
        let next = match from {
            Interface::Outside => &mut self.remote_next_seq,
            Interface::Inside => &mut self.private_next_seq,
        };
        if !at_or_before(segment.end(), *next) {
            *next = segment.end();
        }
        self.state = self.state.after(flags, from_initiator);
        true
    }

    /// A SYN-ACK: taken from the responder in SYN_SENT or SYN_RECV (a repeat) if it
    /// acknowledges exactly the initiator's SYN. It starts the responder's side and settles
    /// the window scales: both sides' announced ones if both announced one, else none.
    fn answer_syn(&mut self, from: Interface, syn_ack: &TcpSegment, from_initiator: bool) -> bool {
        let (_, initiator_next) = self.next_seqs(from);
        let handshake = matches!(self.state, FlowState::SynSent | FlowState::SynReceived);
        if from_initiator || !handshake || syn_ack.ack != initiator_next {
            return false;
        }
        let initiator = from.opposite();
        if self.state == FlowState::SynReceived {
            // A repeat: the scales are settled and the windows in their units.
            let window = in_units(syn_ack.window, self.windows.scale(from));
            let units = self.windows.units_mut(from);
            *units = (*units).max(window);
            return true;
        }
        let (ours, theirs) = (
            self.windows.scale(initiator),
            syn_ack.window_scale.unwrap_or(NO_SCALE),
        );
        let (initiator_scale, responder_scale) = if ours != NO_SCALE && theirs != NO_SCALE {
            (ours, theirs)
        } else {
            (0, 0)
        };
        let initiator_bytes = self.windows.units(initiator);
        *self.windows.units_mut(initiator) = in_units(initiator_bytes, initiator_scale);
        *self.windows.units_mut(from) = in_units(syn_ack.window, responder_scale);
        self.windows.set_scale(initiator, initiator_scale);
        self.windows.set_scale(from, responder_scale);
        match from {
            Interface::Outside => self.remote_next_seq = syn_ack.end(),
            Interface::Inside => self.private_next_seq = syn_ack.end(),
        }
        self.state = self.state.after(syn_ack.flags, from_initiator);
        true
    }

    /// Whether a segment other than a SYN or RST, sent from `from`, falls in the windows (see
    /// the module documentation). A side not seen yet (the other side of a flow picked up
    /// mid-stream) starts from the segment's window, at the largest scale.
    fn fits(&mut self, from: Interface, segment: &TcpSegment) -> bool {
        if self.windows.units(from) == 0 {
            *self.windows.units_mut(from) = segment.window.max(1);
            self.windows.set_scale(from, MAX_WINDOW_SCALE);
        }
        let (sender_next, receiver_next) = self.next_seqs(from);
        let receiver_window = self.windows.bytes(from.opposite(), self.state);
        let sender_window = self.windows.bytes(from, self.state);
        let end = segment.end();
        let sequence_fits = receiver_window == 0
            || (at_or_before(segment.seq, sender_next.wrapping_add(receiver_window))
                && at_or_before(sender_next.wrapping_sub(receiver_window), end));
        let ack_window = sender_window.max(MIN_ACK_WINDOW);
        let ack_fits = !segment.flags.ack()
            || (at_or_before(segment.ack, receiver_next)
                && at_or_before(receiver_next.wrapping_sub(ack_window), segment.ack));
        sequence_fits && ack_fits
    }

    /// Starts a flow picked up mid-stream (loose pickup) from its first segment, sent from
    /// `from`: ESTABLISHED, the sender's sequence space and window from the segment, the other
    /// side's sequence from its acknowledgement number; both scales taken as the largest.
    pub fn pick_up(&mut self, from: Interface, segment: &TcpSegment) {
        self.state = FlowState::Established;
        let (sender, other) = match from {
            Interface::Outside => (&mut self.remote_next_seq, &mut self.private_next_seq),
            Interface::Inside => (&mut self.private_next_seq, &mut self.remote_next_seq),
        };
        (*sender, *other) = (segment.end(), segment.ack);
        self.windows = Windows::default();
        *self.windows.units_mut(from) = segment.window.max(1);
        self.windows.set_scale(from, MAX_WINDOW_SCALE);
        self.windows.set_scale(from.opposite(), MAX_WINDOW_SCALE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Protocol, TcpFlags};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn ep(a: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, a), port)
    }

    fn seg(flags: TcpFlags, seq: u32, ack: u32, len: u32, window: u16) -> TcpSegment {
        TcpSegment {
            flags,
            seq,
            ack,
            len,
            window,
            window_scale: None,
        }
    }

    /// A flow through its handshake: the remote (initiator) at 1001, the member at 5001,
    /// windows of 65,535 bytes without scaling.
    fn established() -> Flow {
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        flow.start(Interface::Outside, &seg(TcpFlags::SYN, 1000, 0, 1, 65535));
        let syn_ack = seg(TcpFlags::SYN | TcpFlags::ACK, 5000, 1001, 1, 65535);
        assert!(flow.track(Interface::Inside, &syn_ack, false));
        let ack = seg(TcpFlags::ACK, 1001, 5001, 0, 65535);
        assert!(flow.track(Interface::Outside, &ack, true));
        assert_eq!(flow.state, FlowState::Established);
        flow
    }

    #[test]
    fn a_segment_in_both_windows_is_taken_one_outside_either_changes_nothing() {
        let mut flow = established();
        let before = flow;
        // Sequence far ahead of anything the member's window allows.
        let far = seg(TcpFlags::ACK, 1001 + 70_000, 5001, 10, 65535);
        assert!(!flow.track(Interface::Outside, &far, true));
        // Acknowledging data the member never sent.
        let future_ack = seg(TcpFlags::ACK, 1001, 5001 + 10, 0, 65535);
        assert!(!flow.track(Interface::Outside, &future_ack, true));
        // Acknowledging data more than a window (and 66,000 bytes) old.
        let old_ack = seg(TcpFlags::ACK, 1001, 5001u32.wrapping_sub(70_000), 0, 65535);
        assert!(!flow.track(Interface::Outside, &old_ack, true));
        assert_eq!(flow, before);
        let data = seg(TcpFlags::ACK, 1001, 5001, 100, 65535);
        assert!(flow.track(Interface::Outside, &data, true));
        assert_eq!(flow.remote_next_seq, 1101);
    }

    #[test]
    fn window_scales_apply_only_when_both_syns_announce_one() {
        // RFC 7323 §2.2: scaling is in effect only if both SYNs carried the option.
        for (initiator, responder, scaled) in [(Some(7), Some(7), true), (Some(7), None, false)] {
            let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
            let syn = TcpSegment {
                window_scale: initiator,
                ..seg(TcpFlags::SYN, 1000, 0, 1, 64240)
            };
            flow.start(Interface::Outside, &syn);
            let syn_ack = TcpSegment {
                window_scale: responder,
                ..seg(TcpFlags::SYN | TcpFlags::ACK, 5000, 1001, 1, 65160)
            };
            assert!(flow.track(Interface::Inside, &syn_ack, false));
            // The member advertises 2,000 units: 256,000 bytes if scaled by 2^7.
            let ack = seg(TcpFlags::ACK, 5001, 1001, 0, 2000);
            assert!(flow.track(Interface::Inside, &ack, false));
            let ahead = seg(TcpFlags::ACK, 1001 + 200_000, 5001, 10, 2000);
            assert_eq!(flow.track(Interface::Outside, &ahead, true), scaled);
        }
    }

    #[test]
    fn a_syn_ack_must_acknowledge_exactly_the_syn() {
        // RFC 9293 §3.10.7.3: in SYN-SENT an ACK is acceptable only if it acknowledges the SYN.
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        flow.start(Interface::Outside, &seg(TcpFlags::SYN, 1000, 0, 1, 65535));
        let wrong = seg(TcpFlags::SYN | TcpFlags::ACK, 5000, 77, 1, 65535);
        assert!(!flow.track(Interface::Inside, &wrong, false));
        assert_eq!(flow.state, FlowState::SynSent);
    }

    #[test]
    fn keepalive_probes_and_retransmissions_fit_the_window() {
        // RFC 9293 §3.8.4: a keepalive probe carries SEG.SEQ = SND.NXT − 1.
        let mut flow = established();
        let data = seg(TcpFlags::ACK, 1001, 5001, 500, 65535);
        assert!(flow.track(Interface::Outside, &data, true));
        let probe = seg(TcpFlags::ACK, 1500, 5001, 0, 65535);
        assert!(flow.track(Interface::Outside, &probe, true));
        let retransmission = seg(TcpFlags::ACK, 1001, 5001, 500, 65535);
        assert!(flow.track(Interface::Outside, &retransmission, true));
        assert_eq!(flow.remote_next_seq, 1501);
    }
}
