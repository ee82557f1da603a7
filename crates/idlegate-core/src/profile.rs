//! Profiles: the timers and allowed ranges of a real middlebox, with their sources.
//!
//! A profile supplies the defaults a config leaves out and the ranges a config must stay
//! within, checked before `time_scale` divides them. Every figure cites the vendor document it
//! comes from (collected in `shared/reference/middleboxes.md`); where a vendor documents no
//! value, the doc comment says so and which figure idlegate uses instead.

use crate::expiry::Expiry;
use std::time::Duration;

/// A configurable timeout: its default and the range the vendor accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutRange {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// The behaviour of one kind of middlebox.
#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    /// The name used in configs and on the command line, e.g. `azure-lb`.
    pub name: &'static str,
    /// The product's name as its vendor writes it, for messages.
    pub title: &'static str,
    /// Idle timeout of load-balancing rules.
    pub lb_rule_idle: TimeoutRange,
    /// Idle timeout of outbound (SNAT) rules.
    pub outbound_rule_idle: TimeoutRange,
    /// Idle timeout a frontend address may carry for its inbound flows, if the box has one.
    pub frontend_idle: Option<TimeoutRange>,
    /// Timeout of flows that are not established: handshake, closing (FIN) and closed (RST).
    pub transitory: Duration,
    /// The expiry action of a rule that names none.
    pub default_expiry: Expiry,
    /// Outbound SNAT ports.
    pub snat: SnatPolicy,
}

/// How a middlebox lends SNAT ports to the members behind an outbound rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPolicy {
    /// Ports each member gets when the rule names no `ports_per_member`.
    pub ports_per_member: u16,
    /// `ports_per_member` must be a multiple of this.
    pub ports_per_member_step: u16,
    /// All outbound rules on one frontend address may lend at most this many ports.
    pub ports_per_frontend: u32,
    /// How long a port is held before reuse after its flow ended with a FIN...
    pub hold_after_fin: Duration,
    /// ... and after a RST (or an idle expiry, which Azure does not document separately).
    pub hold_after_rst: Duration,
}

const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Azure Standard Load Balancer.
///
/// - LB rules and inbound NAT rules: idle timeout 4 min by default, configurable 4–100 min
///   ("Configure load balancer TCP reset and idle timeout"; older API docs say 4–30 min, the
///   newest page is taken, seed 002).
/// - Outbound rules: 4 min default, 4–120 min ("Outbound rules" docs; some pages say 100).
/// - Frontend (public IP address) idle timeout: 4 min default, 4–30 min (the public IP
///   address resource's `idleTimeoutInMinutes`); it beats the LB rule's for inbound flows
///   (seed 002, "Order of precedence"). Its outbound idle timeout is locked at 4 min.
/// - At expiry: silent drop by default; "TCP reset" per rule (seed 002).
/// - Transitory: Azure LB documents no timer for half-open or closing flows. idlegate uses
///   30 s, the half-open (SYN only) timer Azure documents for NAT Gateway ("NAT gateway timers").
/// - SNAT ("Outbound rules", "SNAT for outbound connections"): 64,000 ports per frontend IP,
///   allocated per member in multiples of 8; 1,024 per member by default (pools of up to 50);
///   a port is held 240 s after a FIN and 15 s after a RST before reuse. A flow forgotten at
///   its idle timeout holds its port like a RST, counted from the expiry: Azure documents no
///   separate figure.
pub static AZURE_LB: Profile = Profile {
    name: "azure-lb",
    title: "Azure LB",
    lb_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(100),
    },
    outbound_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(120),
    },
    frontend_idle: Some(TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(30),
    }),
    transitory: Duration::from_secs(30),
    default_expiry: Expiry::Silent,
    snat: SnatPolicy {
        ports_per_member: 1024,
        ports_per_member_step: 8,
        ports_per_frontend: 64_000,
        hold_after_fin: Duration::from_secs(240),
        hold_after_rst: Duration::from_secs(15),
    },
};

/// Every profile idlegate knows.
pub static ALL: [&Profile; 1] = [&AZURE_LB];

/// The profile called `name`.
pub fn find(name: &str) -> Option<&'static Profile> {
    ALL.iter().copied().find(|p| p.name == name)
}

/// The profile used when a config names none.
pub fn default_profile() -> &'static Profile {
    &AZURE_LB
}
