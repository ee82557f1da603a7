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
//! - a RST must carry exactly the sequence number its receiver expects (RFC 5961 §3.2), or,
//!   answering a SYN, acknowledge it as RFC 9293 §3.10.7.3 asks in SYN-SENT (ISS < SEG.ACK <=
//!   SND.NXT); a SYN-ACK must acknowledge the SYN the same way (with TCP Fast Open, RFC 7413, a
//!   server that does not take the SYN's data acknowledges only ISS+1); and a SYN opens a flow
//!   only where conntrack lets one (a new tuple, TIME_WAIT, CLOSE; a repeat in SYN_SENT).
//!
//! Anything else is out of window: the gateway passes it on, as conntrack passes an INVALID
//! packet that no rule drops (the receiving stack discards it or answers with a challenge ACK),
//! but it changes nothing and, like conntrack's INVALID packets, does not refresh the flow. A
//! blind FIN, RST or data segment must so guess both its numbers within a window to touch a
//! flow.
//!
//! One exception, as conntrack's `TCP_CONNTRACK_IGNORE`: a SYN from the initiator in any other
//! state (the gateway missed a close, or a host rebooted) is passed on without changing the
//! connection, but its sequence space is remembered. If the responder answers it with a
//! SYN-ACK that acknowledges it, both endpoints agree on a new connection the gateway did not
//! see open: tracking starts over from that SYN (its window unknown until the initiator's next
//! segment, as for a flow picked up; its scale the largest if the SYN-ACK announced one). A
//! RST that acknowledges it likewise ends the flow.
//!
//! A TCP segment cut into IPv4 fragments is tracked from its first fragment alone, which does
//! not tell the segment's length (only the last fragment does, and it never touches the flow
//! table). The sender's end is then open: until the sender's next segment, the other side's
//! ACK may run up to 65,535 bytes (a whole datagram) past it, and moves it there. Without that,
//! the receiver's replies would acknowledge data the gateway never counted, and each side's
//! segments would stay out of window, the flow unrefreshed, for as long as the connection
//! lasts.
//!
//! Each side's largest window is kept in units of its window scale (RFC 7323), two bytes a
//! side and one byte for both scales. Windows on SYNs are not scaled; the scales take effect
//! with the SYN-ACK, and only if both SYNs announced one. A flow picked up mid-stream never saw
//! its SYNs: its scales are taken as the largest, 14, so its check stays on but is loose
//! (conntrack turns it off for such flows: `IP_CT_TCP_FLAG_BE_LIBERAL`).

use crate::state::flow::{Flow, FlowState, Interface};
use crate::wire::family::Endpoint;
use crate::wire::packet::{TcpSegment, MAX_WINDOW_SCALE};

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

/// The most a fragmented segment can run past its first fragment: a whole IPv4 datagram.
const MAX_DATAGRAM: u32 = 65_535;

/// The sides whose tracked end came from the first fragment of a segment that runs on past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenEnds(u8);

impl OpenEnds {
    fn bit(side: Interface) -> u8 {
        match side {
            Interface::Outside => 1,
            Interface::Inside => 2,
        }
    }

    fn has(self, side: Interface) -> bool {
        self.0 & OpenEnds::bit(side) != 0
    }

    fn set(&mut self, side: Interface, open: bool) {
        self.0 = (self.0 & !OpenEnds::bit(side)) | if open { OpenEnds::bit(side) } else { 0 };
    }
}

/// The sequence space of the initiator's latest SYN, tracked or ignored: its first number
/// (the ISS) and its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SynSpan {
    seq: u32,
    end: u32,
}

impl SynSpan {
    fn of(syn: &TcpSegment) -> SynSpan {
        SynSpan {
            seq: syn.seq,
            end: syn.end(),
        }
    }

    /// Whether `ack` acknowledges the SYN: ISS < SEG.ACK <= SND.NXT (RFC 9293 §3.10.7.3).
    pub fn acknowledged_by(&self, ack: u32) -> bool {
        at_or_before(ack, self.end) && !at_or_before(ack, self.seq)
    }
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
        self.syn = SynSpan::of(syn);
        self.ignored_syn = None;
        self.open_ends = OpenEnds::default();
    }

    /// Starts tracking over from the SYN the flow ignored, sent from `from`, which the
    /// responder's SYN-ACK acknowledged: its window is not known (taken from the initiator's
    /// next segment, as for a flow picked up), its scale the largest if `scaled` (the SYN-ACK
    /// announced one, so the SYN did too), else none.
    fn restart(&mut self, from: Interface, scaled: bool) {
        let (sender, other) = match from {
            Interface::Outside => (&mut self.remote_next_seq, &mut self.private_next_seq),
            Interface::Inside => (&mut self.private_next_seq, &mut self.remote_next_seq),
        };
        (*sender, *other) = (self.syn.end, 0);
        self.windows = Windows::default();
        let scale = if scaled { MAX_WINDOW_SCALE } else { NO_SCALE };
        self.windows.set_scale(from, scale);
        self.windows.set_scale(from.opposite(), NO_SCALE);
        self.state = FlowState::SynSent;
        self.ignored_syn = None;
        self.open_ends = OpenEnds::default();
    }

    /// Checks a segment sent from `from` (by the connection's initiator or not) against the
    /// flow's windows and, if it fits, records it: the sender's highest end and largest
    /// window, and the state it leads to. Returns whether it fit; a segment that did not
    /// changed nothing, but for an ignored SYN, remembered (see the module documentation).
    pub fn track(&mut self, from: Interface, segment: &TcpSegment, from_initiator: bool) -> bool {
        let flags = segment.flags;
        if flags.rst() {
            let accepted = self.accepts_reset(from, segment, from_initiator);
            if accepted {
                self.state = FlowState::Closed;
            }
            return accepted;
        }
        if flags.is_connect() {
            // conntrack: a SYN from the initiator starts over on a new, TIME_WAIT or CLOSE
            // tuple (and repeats itself in SYN_SENT); anywhere else it is ignored, but
            // remembered (`TCP_CONNTRACK_IGNORE`) for the SYN-ACK that may answer it.
            let starts = from_initiator
                && matches!(
                    self.state,
                    FlowState::SynSent | FlowState::TimeWait | FlowState::Closed
                );
            // A repeat of the SYN being answered (its SYN-ACK was lost) is not a new one.
            let repeat = self.state == FlowState::SynReceived && SynSpan::of(segment) == self.syn;
            if starts {
                self.start(from, segment);
            } else if from_initiator && !repeat {
                self.syn = SynSpan::of(segment);
                self.ignored_syn = Some(from);
            }
            return starts;
        }
        if flags.syn() {
            return self.answer_syn(from, segment, from_initiator);
        }
        let Some(windows) = self.fits(from, segment) else {
            return false;
        };
        self.windows = windows;
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
        self.open_ends.set(from, segment.first_fragment);
        // An ACK past a fragmented segment's first fragment shows how far the segment ran.
        let receiver = from.opposite();
        if flags.ack() && self.open_ends.has(receiver) {
            let next = match receiver {
                Interface::Outside => &mut self.remote_next_seq,
                Interface::Inside => &mut self.private_next_seq,
            };
            if !at_or_before(segment.ack, *next) {
                *next = segment.ack;
            }
        }
        self.state = self.state.after(flags, from_initiator);
        true
    }

    /// A SYN-ACK: taken from the responder in SYN_SENT or SYN_RECV (a repeat) if it
    /// acknowledges the initiator's SYN (ISS < SEG.ACK <= SND.NXT, RFC 9293 §3.10.7.3), or in
    /// any state if it acknowledges a SYN the flow ignored, which starts tracking over. It
    /// starts the responder's side and settles the window scales: both sides' announced ones
    /// if both announced one, else none.
    fn answer_syn(&mut self, from: Interface, syn_ack: &TcpSegment, from_initiator: bool) -> bool {
        let initiator = from.opposite();
        if from_initiator || !self.syn.acknowledged_by(syn_ack.ack) {
            return false;
        }
        if self.ignored_syn == Some(initiator) {
            self.restart(initiator, syn_ack.window_scale.is_some());
        } else if !matches!(self.state, FlowState::SynSent | FlowState::SynReceived) {
            return false;
        }
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
        // A window not known (a restart) stays so until the initiator's next segment.
        let initiator_bytes = self.windows.units(initiator);
        if initiator_bytes != 0 {
            *self.windows.units_mut(initiator) = in_units(initiator_bytes, initiator_scale);
        }
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
    /// the module documentation): the windows to keep if it does. A side not seen yet (the
    /// other side of a flow picked up mid-stream) starts from the segment's window, at the
    /// largest scale, only if the segment fits.
    fn fits(&self, from: Interface, segment: &TcpSegment) -> Option<Windows> {
        let mut windows = self.windows;
        if windows.units(from) == 0 {
            *windows.units_mut(from) = segment.window.max(1);
            windows.set_scale(from, MAX_WINDOW_SCALE);
        }
        let (sender_next, receiver_next) = self.next_seqs(from);
        let receiver_window = windows.bytes(from.opposite(), self.state);
        let sender_window = windows.bytes(from, self.state);
        let end = segment.end();
        let sequence_fits = receiver_window == 0
            || (at_or_before(segment.seq, sender_next.wrapping_add(receiver_window))
                && at_or_before(sender_next.wrapping_sub(receiver_window), end));
        let ack_window = sender_window.max(MIN_ACK_WINDOW);
        let open = if self.open_ends.has(from.opposite()) {
            MAX_DATAGRAM
        } else {
            0
        };
        let ack_fits = !segment.flags.ack()
            || (at_or_before(segment.ack, receiver_next.wrapping_add(open))
                && at_or_before(receiver_next.wrapping_sub(ack_window), segment.ack));
        (sequence_fits && ack_fits).then_some(windows)
    }

    /// Whether the receiver of a RST sent from `from` would accept it: its sequence number is
    /// the sender's SND.NXT, which the receiver expects next (RFC 5961 §3.2); or it comes from
    /// the responder and acknowledges the initiator's SYN in SYN_SENT, or a SYN the flow
    /// ignored (ISS < SEG.ACK <= SND.NXT, RFC 9293 §3.10.7.3). In SYN_SENT, the responder's
    /// RST is taken only so: its sequence number is not known yet.
    pub fn accepts_reset(
        &self,
        from: Interface,
        segment: &TcpSegment,
        from_initiator: bool,
    ) -> bool {
        let (sent, _) = self.next_seqs(from);
        let handshake = self.state == FlowState::SynSent;
        let answers_syn = !from_initiator
            && segment.flags.ack()
            && (handshake || self.ignored_syn == Some(from.opposite()))
            && self.syn.acknowledged_by(segment.ack);
        // In SYN_SENT the responder's sequence number is not known yet: only its ACK counts.
        let sequence_known = from_initiator || !handshake;
        answers_syn || (sequence_known && segment.seq == sent)
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
        self.ignored_syn = None;
        self.open_ends = OpenEnds::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{Protocol, TcpFlags};
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
            first_fragment: false,
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
    fn a_syn_ack_must_acknowledge_the_syn() {
        // RFC 9293 §3.10.7.3: in SYN-SENT an ACK is acceptable only if ISS < SEG.ACK <= SND.NXT.
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        flow.start(Interface::Outside, &seg(TcpFlags::SYN, 1000, 0, 1, 65535));
        for wrong in [77, 1000, 1002] {
            let syn_ack = seg(TcpFlags::SYN | TcpFlags::ACK, 5000, wrong, 1, 65535);
            assert!(!flow.track(Interface::Inside, &syn_ack, false), "{wrong}");
        }
        assert_eq!(flow.state, FlowState::SynSent);
    }

    #[test]
    fn a_syn_ack_or_rst_acknowledging_only_the_iss_plus_one_of_a_syn_with_data_is_taken() {
        // RFC 9293 §3.10.7.3 (ISS < SEG.ACK <= SND.NXT); TCP Fast Open (RFC 7413 §4.2): a
        // server that does not take the SYN's data acknowledges only ISS+1, and the client
        // sends the data again.
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        let syn_with_data = seg(TcpFlags::SYN, 1000, 0, 1 + 100, 65535);
        flow.start(Interface::Outside, &syn_with_data);
        let mut refused = flow;
        let rst = seg(TcpFlags::RST | TcpFlags::ACK, 0, 1001, 0, 0);
        assert!(refused.track(Interface::Inside, &rst, false));
        assert_eq!(refused.state, FlowState::Closed);
        let syn_ack = seg(TcpFlags::SYN | TcpFlags::ACK, 5000, 1001, 1, 65535);
        assert!(flow.track(Interface::Inside, &syn_ack, false));
        assert_eq!(flow.state, FlowState::SynReceived);
        let again = seg(TcpFlags::ACK, 1001, 5001, 100, 65535);
        assert!(flow.track(Interface::Outside, &again, true));
        assert_eq!(flow.state, FlowState::Established);
        assert_eq!(flow.remote_next_seq, 1101);
    }

    #[test]
    fn a_rst_answering_a_syn_is_taken_by_its_acknowledgement_not_its_sequence_number() {
        // RFC 9293 §3.10.7.3: in SYN-SENT a RST is acceptable if its ACK acknowledges the SYN;
        // the responder's sequence number is not known yet.
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        flow.start(Interface::Outside, &seg(TcpFlags::SYN, 1000, 0, 1, 65535));
        let before = flow;
        assert!(!flow.track(Interface::Inside, &seg(TcpFlags::RST, 0, 0, 0, 0), false));
        let wrong_ack = seg(TcpFlags::RST | TcpFlags::ACK, 0, 5, 0, 0);
        assert!(!flow.track(Interface::Inside, &wrong_ack, false));
        assert_eq!(flow, before);
    }

    #[test]
    fn a_rejected_segment_does_not_record_the_window_of_a_side_not_seen_yet() {
        // A flow picked up from the remote's segment; the member's side is not seen yet. A
        // blind segment from the member's address, out of window, must leave it so.
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        flow.pick_up(Interface::Outside, &seg(TcpFlags::ACK, 1000, 5000, 10, 512));
        let before = flow;
        let blind = seg(TcpFlags::ACK, 5000, 1010 + 100_000, 0, 65535);
        assert!(!flow.track(Interface::Inside, &blind, false));
        assert_eq!(flow, before);
        let real = seg(TcpFlags::ACK, 5000, 1010, 0, 300);
        assert!(flow.track(Interface::Inside, &real, false));
        assert_ne!(flow.windows, before.windows);
    }

    #[test]
    fn a_repeated_syn_and_syn_ack_in_syn_recv_keep_the_initiators_window() {
        // The SYN-ACK was lost on its way to the initiator: both are sent again.
        let mut flow = Flow::new(Protocol::Tcp, ep(100, 1), ep(10, 2), ep(11, 3), 0);
        flow.start(Interface::Outside, &seg(TcpFlags::SYN, 1000, 0, 1, 8192));
        let syn_ack = seg(TcpFlags::SYN | TcpFlags::ACK, 5000, 1001, 1, 65535);
        assert!(flow.track(Interface::Inside, &syn_ack, false));
        let before = flow;
        flow.track(
            Interface::Outside,
            &seg(TcpFlags::SYN, 1000, 0, 1, 8192),
            true,
        );
        assert!(flow.track(Interface::Inside, &syn_ack, false));
        assert_eq!(flow, before);
    }

    #[test]
    fn a_syn_ack_answering_an_ignored_syn_starts_tracking_over() {
        // conntrack's TCP_CONNTRACK_IGNORE: a SYN from the initiator in ESTABLISHED is passed
        // on and remembered; the responder's SYN-ACK acknowledging it restarts the flow.
        let mut flow = established();
        let syn = TcpSegment {
            window_scale: Some(7),
            ..seg(TcpFlags::SYN, 900_000, 0, 1, 64240)
        };
        assert!(!flow.track(Interface::Outside, &syn, true));
        assert_eq!(flow.state, FlowState::Established);
        assert_eq!(flow.remote_next_seq, 1001, "the connection unchanged");
        // A SYN-ACK of something else, or from the initiator's side, changes nothing.
        let other = seg(TcpFlags::SYN | TcpFlags::ACK, 70_000, 1001, 1, 65535);
        assert!(!flow.track(Interface::Inside, &other, false));
        let syn_ack = TcpSegment {
            window_scale: Some(7),
            ..seg(TcpFlags::SYN | TcpFlags::ACK, 70_000, 900_001, 1, 65160)
        };
        assert!(!flow.track(Interface::Outside, &syn_ack, true));
        assert_eq!(flow.state, FlowState::Established);
        assert!(flow.track(Interface::Inside, &syn_ack, false));
        assert_eq!(flow.state, FlowState::SynReceived);
        let ack = seg(TcpFlags::ACK, 900_001, 70_001, 0, 502);
        assert!(flow.track(Interface::Outside, &ack, true));
        assert_eq!(flow.state, FlowState::Established);
        // The member's window, 65,160 bytes on its SYN-ACK, is checked at its scale of 7.
        let beyond = seg(TcpFlags::ACK, 900_001 + 70_000, 70_001, 10, 502);
        assert!(!flow.track(Interface::Outside, &beyond, true));
        let data = seg(TcpFlags::ACK, 900_001, 70_001, 60_000, 502);
        assert!(flow.track(Interface::Outside, &data, true));
        assert_eq!(flow.remote_next_seq, 960_001);
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
