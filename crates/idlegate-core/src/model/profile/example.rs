//! `example_config`: a profile as a complete config, every default written out and every
//! range in a comment, the comments of a section starting in one column. What `idlegate
//! profiles show NAME` prints; `--config` accepts it as it is.

use super::{max_time_scale, Allocation, ExpiryKnob, Pickup, PickupKnob, Profile, TimeoutRange};
use crate::model::expiry::Expiry;
use crate::model::units::human;
use std::time::Duration;

/// Lines of TOML, each with an optional comment; the comments are aligned when written.
#[derive(Default)]
struct Toml {
    lines: Vec<(String, Option<String>)>,
}

impl Toml {
    fn line(&mut self, code: impl Into<String>) {
        self.lines.push((code.into(), None));
    }

    fn commented(&mut self, code: impl Into<String>, comment: impl Into<String>) {
        self.lines.push((code.into(), Some(comment.into())));
    }

    /// The text, every comment starting two columns after the longest commented line.
    fn render(&self) -> String {
        let column = self
            .lines
            .iter()
            .filter(|(_, comment)| comment.is_some())
            .map(|(code, _)| code.chars().count())
            .max()
            .unwrap_or(0)
            + 2;
        let mut out = String::new();
        for (code, comment) in &self.lines {
            match comment {
                Some(comment) => {
                    let pad = column - code.chars().count();
                    out += &format!("{code}{:pad$}# {comment}\n", "");
                }
                None => out += &format!("{code}\n"),
            }
        }
        out
    }
}

/// A duration as a config writes it: "4m", "2h", "5d", "30s".
fn config_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) && s >= 3 * 3600 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// "4 min–100 min", or "fixed" where the vendor lets no one change it.
fn range(r: &TimeoutRange) -> String {
    if r.min == r.max {
        return "fixed".to_string();
    }
    format!("{}–{}", human(r.min), human(r.max))
}

/// The choices a rule's `expiry` has, or, where the vendor offers none, what the box does.
fn expiries(profile: &Profile) -> String {
    match profile.expiry_knob {
        ExpiryKnob::Rule => {
            let all: Vec<&str> = Expiry::ALL.iter().map(|e| e.as_str()).collect();
            all.join(" | ")
        }
        ExpiryKnob::Fixed => format!("fixed: at expiry the box {}", profile.at_expiry()),
    }
}

/// A complete config for `profile` with every default written out and every range in a
/// comment: what `idlegate profiles show NAME` prints, and `--config` accepts as it is.
pub fn example_config(profile: &Profile) -> String {
    let expiries = expiries(profile);
    let expiry = profile.default_expiry;
    let udp = if profile.udp.unreplied == profile.udp.replied {
        human(profile.udp.replied)
    } else {
        format!(
            "{} unanswered, {} answered",
            human(profile.udp.unreplied),
            human(profile.udp.replied)
        )
    };
    let scale = max_time_scale(profile).min(60);

    let mut t = Toml::default();
    t.line(format!(
        "# {} (profile {}). Timers not set below take these defaults.",
        profile.title, profile.name
    ));
    t.line(format!(
        "# TCP flows not established (handshake, FIN, RST): {}",
        profile.tcp.summary()
    ));
    t.line(format!("# UDP flows: {udp}"));
    t.line(format!("profile = \"{}\"", profile.name));
    t.commented(
        format!("time_scale = {scale}"),
        format!("every timer runs 1/{scale} as long"),
    );
    if profile.pickup.knob == PickupKnob::Sysctl {
        t.commented(
            format!("loose_pickup = {}", profile.pickup.default == Pickup::Loose),
            "an ACK of an unknown connection opens a flow (nf_conntrack_tcp_loose)",
        );
    }
    t.line("");
    t.line("[[frontend]]");
    t.line("name = \"public\"");
    t.line("address = \"203.0.113.10\"");
    if let Some(r) = &profile.frontend_idle {
        t.commented(
            format!("# idle_timeout = \"{}\"", config_duration(r.default)),
            format!(
                "{}; beats the LB and inbound NAT rules' for inbound flows",
                range(r)
            ),
        );
    }
    t.line("");
    t.line("[[backend_pool]]");
    t.line("name = \"vms\"");
    t.line(
        "members = [{ name = \"vm1\", address = \"192.0.2.11\" }, { name = \"vm2\", address = \"192.0.2.12\" }]",
    );
    if profile.rules.inbound() {
        t.line("");
        t.line("[[lb_rule]]");
        for line in [
            "name = \"app\"",
            "frontend = \"public\"",
            "protocol = \"tcp\"",
            "frontend_port = 7000",
            "backend_pool = \"vms\"",
            "backend_port = 7000",
        ] {
            t.line(line);
        }
        t.commented(
            format!(
                "idle_timeout = \"{}\"",
                config_duration(profile.lb_rule_idle.default)
            ),
            range(&profile.lb_rule_idle),
        );
        t.commented(format!("expiry = \"{expiry}\""), expiries.as_str());
    }
    if profile.rules.outbound() {
        t.line("");
        t.line("[[outbound_rule]]");
        t.line("name = \"egress\"");
        t.line("frontend = \"public\"");
        t.line("backend_pool = \"vms\"");
        let snat = &profile.snat;
        match snat.allocation {
            Allocation::PerMember => {
                let step = if snat.ports_per_member_step > 1 {
                    format!("multiples of {}, ", snat.ports_per_member_step)
                } else {
                    String::new()
                };
                t.commented(
                    format!("ports_per_member = {}", snat.ports_per_member),
                    format!(
                        "{step}at most {} per frontend address",
                        snat.ports_per_frontend
                    ),
                );
            }
            Allocation::Shared => t.line("# ports are lent on demand from the frontend's range"),
            Allocation::PreservePort => {
                t.line("# members keep their source ports where the tuple stays unique")
            }
        }
        t.commented(
            format!(
                "idle_timeout = \"{}\"",
                config_duration(profile.outbound_rule_idle.default)
            ),
            range(&profile.outbound_rule_idle),
        );
        t.commented(format!("expiry = \"{expiry}\""), expiries.as_str());
        if let Some(tw) = &profile.time_wait_range {
            t.commented(
                format!("time_wait = \"{}\"", config_duration(tw.default)),
                format!("{}; also the port's hold after a FIN", range(tw)),
            );
        }
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::ALL;

    /// `profiles show` lined its comments up by hand, and some drifted (issue 20, item 13).
    #[test]
    fn every_comment_of_an_example_config_starts_in_one_column() {
        for profile in ALL {
            let text = example_config(profile);
            let columns: Vec<usize> = text
                .lines()
                .filter_map(|line| {
                    let body = line.strip_prefix("# ").unwrap_or(line);
                    let at = body.find("  # ")?;
                    let offset = line.len() - body.len();
                    Some(line[..offset + at].chars().count() + 2)
                })
                .collect();
            assert!(!columns.is_empty(), "{}: no comment", profile.name);
            assert!(
                columns.iter().all(|&c| c == columns[0]),
                "{}: comments start in columns {columns:?}:\n{text}",
                profile.name
            );
        }
    }

    /// `profiles show azure-firewall-east-west` offered `reset` and the other actions, which
    /// the box cannot do, and called its fixed 5 min "5 min–5 min" (issue 21).
    #[test]
    fn a_fixed_expiry_and_a_fixed_timeout_are_shown_as_fixed() {
        let text = example_config(&crate::model::profile::AZURE_FIREWALL_EAST_WEST);
        // Each line's comment, by the line's code.
        let comment = |code: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(code))
                .filter_map(|l| l.split_once("# ").map(|(_, c)| c.to_string()))
                .collect()
        };
        assert_eq!(
            comment("expiry = \"silent\""),
            ["fixed: at expiry the box drops the flow silently, with no RST to either end"; 2],
            "{text}"
        );
        assert_eq!(comment("idle_timeout = \"5m\""), ["fixed"; 2], "{text}");
        assert!(!text.contains("reset-on-next"), "{text}");
        let azure = example_config(&crate::model::profile::AZURE_LB);
        assert!(
            azure.contains("# silent | reset | reset-on-next | ack-and-discard"),
            "{azure}"
        );
    }

    /// A step of 1 is no constraint: "multiples of 1" is not said.
    #[test]
    fn a_port_count_without_a_step_is_not_called_a_multiple_of_1() {
        let text = example_config(&crate::model::profile::GCP_NAT);
        assert!(
            text.contains("ports_per_member = 64  # at most 64512 per frontend address"),
            "{text}"
        );
        assert!(!text.contains("multiples of 1,"), "{text}");
        let azure = example_config(&crate::model::profile::AZURE_LB);
        assert!(azure.contains("multiples of 8, at most 64000"), "{azure}");
    }
}
