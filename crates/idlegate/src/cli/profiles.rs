//! `idlegate profiles`: the middlebox profiles as a table, or one as a complete config
//! (`profiles show NAME`).

use anyhow::Result;
use clap::Subcommand;
use idlegate_core::config::human;
use idlegate_core::profile;

#[derive(Subcommand)]
pub enum ProfilesAction {
    /// Print a complete config for the profile, every default written out, that --config accepts.
    Show { name: String },
}

/// `idlegate profiles`: one line per profile.
fn profiles_table() -> String {
    let range = |r: &profile::TimeoutRange| {
        if r.min == r.max {
            format!("{} (fixed)", human(r.default))
        } else {
            format!("{} ({}–{})", human(r.default), human(r.min), human(r.max))
        }
    };
    let mut out = String::new();
    for p in profile::ALL {
        out += &format!("{} ({})\n", p.name, p.title);
        let mut line = |what: &str, value: String| out += &format!("  {what:<43}{value}\n");
        if p.rules.inbound() {
            line(
                "lb_rule and inbound_nat_rule idle timeout",
                range(&p.lb_rule_idle),
            );
        }
        if p.rules.outbound() {
            line("outbound_rule idle timeout", range(&p.outbound_rule_idle));
        }
        if let Some(f) = &p.frontend_idle {
            line("frontend idle timeout (inbound)", range(f));
        }
        line("TCP not established (SYN, FIN, RST)", p.tcp.summary());
        if p.pickup.default == profile::Pickup::Loose {
            let configurable = if p.pickup.knob == profile::PickupKnob::Sysctl {
                " (loose_pickup = false turns it off)"
            } else {
                ""
            };
            line(
                "unknown connections",
                format!("an ACK re-opens a forgotten flow{configurable}"),
            );
        }
        if p.refresh == profile::Refresh::DataOnly {
            line(
                "kept alive by",
                "data only: TCP keepalive does not refresh".to_string(),
            );
        }
        line(
            "UDP (unanswered / answered)",
            format!("{} / {}", human(p.udp.unreplied), human(p.udp.replied)),
        );
        line("IPv4 fragments", p.fragments.as_str().to_string());
        let reset_next = match p.reset_on_next {
            profile::ResetTarget::Sender => "",
            profile::ResetTarget::InsideOnly => ", to the inside host only",
        };
        line(
            "at expiry, by default",
            format!("{}{reset_next}", p.default_expiry),
        );
        if p.rules.outbound() {
            let ports = match p.snat.allocation {
                profile::Allocation::PerMember => format!(
                    "{} per member (multiples of {}, ≤ {} per frontend)",
                    p.snat.ports_per_member,
                    p.snat.ports_per_member_step,
                    p.snat.ports_per_frontend
                ),
                profile::Allocation::Shared => "on demand from the frontend's range".to_string(),
                profile::Allocation::PreservePort => {
                    "the member's own, unless the tuple clashes".to_string()
                }
            };
            line("SNAT ports", ports);
            line(
                "SNAT port held after FIN / RST",
                format!(
                    "{} / {}",
                    human(p.snat.hold_after_fin),
                    human(p.snat.hold_after_rst)
                ),
            );
        }
    }
    out
}

/// `idlegate profiles` (the table) or `profiles show NAME` (one profile as a config).
pub fn run(action: Option<ProfilesAction>) -> Result<()> {
    match action {
        None => {
            print!("{}", profiles_table());
            Ok(())
        }
        Some(ProfilesAction::Show { name }) => {
            let Some(p) = profile::find(&name) else {
                let known: Vec<&str> = profile::ALL.iter().map(|p| p.name).collect();
                anyhow::bail!("no profile {name:?}; known: {}", known.join(", "));
            };
            print!("{}", profile::example_config(p));
            Ok(())
        }
    }
}
