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
    /// Idle timeouts of UDP flows, which have no connection state.
    pub udp: UdpTimeouts,
}

/// How long a UDP flow lives without a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpTimeouts {
    /// While only the initiator has sent.
    pub unreplied: Duration,
    /// Once the responder has answered.
    pub replied: Duration,
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
/// - UDP: the configurable idle timeout does not apply to UDP rules (seed 002, "Limitations").
///   Azure LB documents no UDP figure; idlegate uses 4 min, the fixed UDP idle timeout Azure
///   documents for NAT Gateway. At expiry UDP flows are always silent.
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
    udp: UdpTimeouts {
        unreplied: minutes(4),
        replied: minutes(4),
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

/// A complete config for `profile` with every default written out and every range in a
/// comment: what `idlegate profiles show NAME` prints, and `--config` accepts as it is.
pub fn example_config(profile: &Profile) -> String {
    use crate::config::human;
    let range = |r: &TimeoutRange| format!("{}–{}", human(r.min), human(r.max));
    let minutes = |d: Duration| {
        if d.as_secs().is_multiple_of(60) {
            format!("{}m", d.as_secs() / 60)
        } else {
            format!("{}s", d.as_secs())
        }
    };
    let frontend_idle = match &profile.frontend_idle {
        Some(r) => format!(
            "# idle_timeout = \"{}\"          # {}; beats the LB and inbound NAT rules' for inbound flows\n",
            minutes(r.default),
            range(r)
        ),
        None => String::new(),
    };
    let expiries: Vec<&str> = Expiry::ALL.iter().map(|e| e.as_str()).collect();
    format!(
        r#"# {title} (profile {name}). Timers not set below take these defaults; transitory
# (handshake, FIN, RST) flows live {transitory}.
profile = "{name}"
time_scale = 60                  # every timer runs 1/60 as long: 4 min become 4 s

[[frontend]]
name = "public"
address = "203.0.113.10"
{frontend_idle}
[[backend_pool]]
name = "vms"
members = [{{ name = "vm1", address = "192.0.2.11" }}, {{ name = "vm2", address = "192.0.2.12" }}]

[[lb_rule]]
name = "app"
frontend = "public"
protocol = "tcp"
frontend_port = 7000
backend_pool = "vms"
backend_port = 7000
idle_timeout = "{lb_idle}"              # {lb_range}
expiry = "{expiry}"              # {expiries}

[[outbound_rule]]
name = "egress"
frontend = "public"
backend_pool = "vms"
ports_per_member = {ports}          # multiples of {step}, at most {per_frontend} per frontend address
idle_timeout = "{out_idle}"              # {out_range}
expiry = "{expiry}"
"#,
        title = profile.title,
        name = profile.name,
        transitory = human(profile.transitory),
        lb_idle = minutes(profile.lb_rule_idle.default),
        lb_range = range(&profile.lb_rule_idle),
        out_idle = minutes(profile.outbound_rule_idle.default),
        out_range = range(&profile.outbound_rule_idle),
        expiry = profile.default_expiry,
        expiries = expiries.join(" | "),
        ports = profile.snat.ports_per_member,
        step = profile.snat.ports_per_member_step,
        per_frontend = profile.snat.ports_per_frontend,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_profiles_example_config_is_accepted_and_holds_its_defaults() {
        for profile in ALL {
            let text = example_config(profile);
            let config =
                Config::from_toml(&text, profile.name).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.profile, profile);
            assert_eq!(
                config.lb_rules[0].idle.timeout,
                profile.lb_rule_idle.default
            );
            assert_eq!(
                config.outbound_rules[0].idle.timeout,
                profile.outbound_rule_idle.default
            );
            assert_eq!(
                config.outbound_rules[0].ports_per_member,
                profile.snat.ports_per_member
            );
        }
    }
}
