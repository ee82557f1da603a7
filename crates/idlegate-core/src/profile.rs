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
    /// Timeout of flows that are not established: handshake, closing (FIN) and closed (RST).
    pub transitory: Duration,
    /// The expiry action of a rule that names none.
    pub default_expiry: Expiry,
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
/// - At expiry: silent drop by default; "TCP reset" per rule (seed 002).
/// - Transitory: Azure LB documents no timer for half-open or closing flows. idlegate uses
///   30 s, the half-open (SYN only) timer Azure documents for NAT Gateway ("NAT gateway timers").
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
    transitory: Duration::from_secs(30),
    default_expiry: Expiry::Silent,
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
