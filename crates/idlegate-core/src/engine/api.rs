//! The engine's API types: what comes out of it (verdicts, transmits, events, flow reports).

use super::*;

/// What to do with a packet the driver handed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) packet out of `interface`, to `destination`: the IP destination
    /// address of the packet as rewritten, so a driver with several devices on one side picks
    /// the one that leads there without reading the packet again.
    Forward {
        interface: Interface,
        destination: IpAddr,
    },
    /// Discard it.
    Drop(DropReason),
    /// Kept: a fragment ahead of its first one, copied; the engine sends it (translated) with
    /// [`Engine::poll_transmit`] once the first fragment has come (`crate::state::fragment`).
    Held,
}

impl Verdict {
    /// The interface a forwarded packet leaves by; `None` for a drop or a held fragment.
    pub fn interface(&self) -> Option<Interface> {
        match self {
            Verdict::Forward { interface, .. } => Some(*interface),
            Verdict::Drop(_) | Verdict::Held => None,
        }
    }
}

/// The endpoints and rule of a flow, as reported in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSummary {
    pub rule: RuleId,
    pub protocol: Protocol,
    pub remote: SocketAddr,
    pub public: SocketAddr,
    pub private: SocketAddr,
}

/// The SNAT ports of one frontend address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatUsage {
    pub frontend: IpAddr,
    /// Lent to flows.
    pub lent: usize,
    /// Waiting out their hold after a flow ended.
    pub held: usize,
    /// Ready to lend (held ports whose hold is over count as held until lent again).
    pub free: usize,
}

/// A flow as `idlegate flows` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    pub flow: FlowSummary,
    pub state: FlowState,
    /// Since the flow's last packet.
    pub idle_for: Duration,
    /// Until it expires, unless a packet comes.
    pub expires_in: Duration,
    /// The timeout of its state (scaled) that runs now: `expires_in` counts down from it.
    pub timeout: Duration,
}

/// One rule's idle settings as the engine is to run them from now ([`Engine::retime`]): the
/// change alone, so that changes sent one after another each leave the others in place.
///
/// [`Engine::retime`]: crate::Engine::retime
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retiming {
    pub rule: RuleId,
    /// Its idle timeout, scaled (as the engine runs it).
    pub idle_timeout: Duration,
    pub expiry: Expiry,
}

/// A segment the engine made ([`Event::Sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeSegment {
    Rst,
    Ack,
}

impl MadeSegment {
    pub fn as_str(self) -> &'static str {
        match self {
            MadeSegment::Rst => "rst",
            MadeSegment::Ack => "ack",
        }
    }
}

/// Why a flow expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCause {
    /// Its idle timeout ran out.
    Idle,
    /// The driver asked, whatever the flow's idle time ([`Engine::expire_now`]).
    Forced,
}

/// Something that happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Created {
        flow: FlowSummary,
        /// The timeout (scaled) of the state it was created in.
        timeout: Duration,
    },
    Expired {
        flow: FlowSummary,
        /// The state the flow expired in.
        state: FlowState,
        /// The timeout of that state (scaled): what ran out, for an idle expiry.
        timeout: Duration,
        /// How long the flow had been idle when it expired.
        idle_for: Duration,
        /// Whether its timeout ran out or the driver asked.
        cause: ExpiryCause,
        /// What was done: `Reset` only when RSTs were actually sent.
        action: Expiry,
    },
    /// A packet refreshed a flow that had been idle at least the threshold the driver set
    /// ([`Engine::report_refreshes`]; off unless set).
    Refreshed {
        flow: FlowSummary,
        /// How long the flow had been idle before this packet.
        idle_for: Duration,
        /// The timeout (scaled) that runs from this packet.
        timeout: Duration,
    },
    /// The engine made a segment (a RST at expiry or answering a packet of a forgotten flow,
    /// an ACK under `ack-and-discard`) and sends it out of `interface`. For a RST answering a
    /// packet of no flow, `flow` names the packet's own endpoints: the side the gateway cannot
    /// know (the member behind the public address, or the public address of a member) is
    /// given as the packet's address on that side.
    Sent {
        flow: FlowSummary,
        segment: MadeSegment,
        interface: Interface,
    },
    /// A member's new outbound connection found no free SNAT port; its SYN was dropped.
    PortExhausted {
        rule: RuleId,
        frontend: IpAddr,
        member: IpAddr,
    },
    /// The gateway holds `max_flows` flows (all shards together): new ones are refused until
    /// some end. Said once, and again only after the table has drained below nine tenths.
    TableFull { max_flows: usize },
}

/// A packet the engine generated, written into the driver's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Send it out of this interface.
    pub interface: Interface,
    /// To this IP destination (as [`Verdict::Forward`] names it for a forwarded packet).
    pub destination: IpAddr,
    /// Its length in the buffer.
    pub len: usize,
}
