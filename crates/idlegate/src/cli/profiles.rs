//! `idlegate profiles`: the middlebox profiles as a table, as one JSON document (`--json`), as
//! the book's generated reference page (`--markdown`, docs/src/reference/profile-figures.md),
//! or one as a complete config (`profiles show NAME`). All of them read the same tables,
//! `idlegate_core::profile`, so the page and the binary cannot disagree.

use anyhow::Result;
use clap::{Args, Subcommand};
use idlegate::obs::report::{Report, Status};
use idlegate_core::config::human;
use idlegate_core::profile::{self, Profile};
use serde::Serialize;
use std::time::Duration;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProfilesArgs {
    #[command(subcommand)]
    pub action: Option<ProfilesAction>,
    /// Print every profile as one JSON document (durations in seconds, in fields ending in _s)
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the book's profile reference page in Markdown (docs/src/reference/profile-figures.md
    /// is this output)
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Subcommand)]
pub enum ProfilesAction {
    /// Print a complete config for the profile, every default written out, that --config accepts.
    Show {
        /// The profile's name, as `idlegate profiles` lists them: azure-lb, aws-nlb, gcp-nat, …
        name: String,
    },
}

pub const MARKDOWN_COMMAND: &str =
    "cargo run -q -p idlegate -- profiles --markdown > docs/src/reference/profile-figures.md";

fn range(r: &profile::TimeoutRange) -> String {
    if r.min == r.max {
        format!("{} (fixed)", human(r.default))
    } else {
        format!("{} ({}–{})", human(r.default), human(r.min), human(r.max))
    }
}

fn rules(p: &Profile) -> &'static str {
    match p.rules {
        profile::Rules::InboundAndOutbound => "LB, inbound NAT, outbound",
        profile::Rules::InboundOnly => "LB, inbound NAT",
        profile::Rules::OutboundOnly => "outbound",
    }
}

fn snat_ports(p: &Profile) -> String {
    let snat = &p.snat;
    match snat.allocation {
        profile::Allocation::PerMember if snat.ports_per_member_step > 1 => format!(
            "{} per member (in multiples of {}; at most {} per frontend)",
            snat.ports_per_member, snat.ports_per_member_step, snat.ports_per_frontend
        ),
        profile::Allocation::PerMember => format!(
            "{} per member (at most {} per frontend)",
            snat.ports_per_member, snat.ports_per_frontend
        ),
        profile::Allocation::Shared => "on demand from the frontend's range".to_string(),
        profile::Allocation::PreservePort => {
            "the member's own, unless the tuple clashes".to_string()
        }
    }
}

/// What `profiles` says of one profile, a line each: (what, value).
fn facts(p: &Profile) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if p.rules.inbound() {
        out.push((
            "lb_rule and inbound_nat_rule idle timeout",
            range(&p.lb_rule_idle),
        ));
    }
    if p.rules.outbound() {
        out.push(("outbound_rule idle timeout", range(&p.outbound_rule_idle)));
    }
    if let Some(f) = &p.frontend_idle {
        out.push(("frontend idle timeout (inbound)", range(f)));
    }
    if let Some(d) = p.public_ip_outbound_idle {
        out.push((
            "public IP's outbound idle timeout",
            format!("{} (locked)", human(d)),
        ));
    }
    out.push(("TCP not established (SYN, FIN, RST)", p.tcp.summary()));
    if let Some(r) = &p.time_wait_range {
        out.push(("TIME_WAIT (outbound_rule time_wait)", range(r)));
    }
    if p.pickup.default == profile::Pickup::Loose {
        let configurable = if p.pickup.knob == profile::PickupKnob::Sysctl {
            " (loose_pickup = false turns it off)"
        } else {
            ""
        };
        out.push((
            "unknown connections",
            format!("an ACK re-opens a forgotten flow{configurable}"),
        ));
    }
    if p.refresh == profile::Refresh::DataOnly {
        out.push((
            "kept alive by",
            "data only: TCP keepalive does not refresh".to_string(),
        ));
    }
    out.push((
        "UDP (unanswered / answered)",
        format!("{} / {}", human(p.udp.unreplied), human(p.udp.replied)),
    ));
    out.push(("IPv4 fragments", p.fragments.as_str().to_string()));
    out.push(("at expiry, by default", expiry(p)));
    if p.rules.outbound() {
        out.push(("SNAT ports", snat_ports(p)));
        out.push(("SNAT port held after FIN / RST / idle", holds(p)));
    }
    out
}

fn expiry(p: &Profile) -> String {
    let reset_next = match (p.default_expiry, p.reset_on_next) {
        (idlegate_core::Expiry::ResetOnNext, profile::ResetTarget::InsideOnly) => {
            ", to the inside host only"
        }
        _ => "",
    };
    let fixed = match p.expiry_knob {
        profile::ExpiryKnob::Fixed => " (fixed)",
        profile::ExpiryKnob::Rule => "",
    };
    format!("{}{reset_next}{fixed}", p.default_expiry)
}

/// What a line of figures cannot say of `p`: where the vendor's pages disagree, or a default
/// depends on when the box was made.
fn notes(p: &Profile) -> Vec<String> {
    let mut out = Vec::new();
    if p.name == profile::AZURE_LB.name {
        out.push(format!(
            "outbound_rule idle timeout: {}",
            profile::AZURE_OUTBOUND_MAXIMUM
        ));
    }
    if p.name == profile::GCP_NAT.name {
        out.push(
            "TIME_WAIT: 30 s for a gateway created on or after 30 September 2026, 120 s for one \
             created before (set time_wait = \"120s\" for it)"
                .to_string(),
        );
    }
    out
}

/// Under a lab's `time_scale`, the timers racing TCP's own run at least this long.
fn racing_tcp_floor() -> String {
    format!(
        "under a lab's time_scale, the timers that race TCP's own retransmissions (TCP not \
         established, SNAT holds) run at least {}",
        human(idlegate_core::config::TCP_RETRANSMISSION_FLOOR)
    )
}

fn holds(p: &Profile) -> String {
    format!(
        "{} / {} / {}",
        human(p.snat.hold_after_fin),
        human(p.snat.hold_after_rst),
        human(p.snat.hold_after_idle)
    )
}

/// `idlegate profiles`: each profile's facts, aligned.
fn profiles_table() -> String {
    let mut out = String::new();
    for p in profile::ALL {
        out += &format!("{} ({})\n", p.name, p.title);
        for (what, value) in facts(p) {
            out += &format!("  {what:<43}{value}\n");
        }
        for note in notes(p) {
            out += &format!("  note: {note}\n");
        }
    }
    out += &format!("\nEvery profile: {}.\n", racing_tcp_floor());
    out
}

/// `idlegate profiles --markdown`: the book's page of every profile's figures and sources.
pub fn profiles_markdown() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    out += "# Profile figures\n\n";
    out += &format!(
        "<!-- Generated from the profile tables (crates/idlegate-core/src/model/profile.rs) by \
         `idlegate profiles --markdown`; do not edit. Regenerate with:\n     {MARKDOWN_COMMAND} -->\n\n"
    );
    out += &format!(
        "Every figure on this page is printed from the tables the gateway runs with, so the \
            page and the binary agree (a test compares this page with the command's output). \
            Ranges are what a config may set, checked before `time_scale` divides them; \
            \"fixed\" accepts no other value. {}. What each box does, the lab demo's outcome and \
            the tests that check it: [Profiles](profiles.md). The same data as JSON: \
            `idlegate profiles --json`.\n\n",
        capitalized(&racing_tcp_floor())
    );
    out += "| profile | box | rules | TCP idle timeout (default) | at expiry (default) | UDP unanswered / answered |\n";
    out += "|---|---|---|---|---|---|\n";
    for p in profile::ALL {
        let idle = if p.rules.inbound() {
            human(p.lb_rule_idle.default)
        } else {
            human(p.outbound_rule_idle.default)
        };
        out += &format!(
            "| [`{name}`](#{name}) | {title} | {rules} | {idle} | {expiry} | {udp} |\n",
            name = p.name,
            title = cell(p.title),
            rules = rules(p),
            expiry = cell(&expiry(p)),
            udp = format_args!("{} / {}", human(p.udp.unreplied), human(p.udp.replied)),
        );
    }
    for p in profile::ALL {
        out += &format!("\n## {}\n\n", p.name);
        out += &format!("{} (`profile = \"{}\"`).\n\n", p.title, p.name);
        out += "| | |\n|---|---|\n";
        out += &format!("| rules | {} |\n", rules(p));
        for (what, value) in facts(p) {
            out += &format!("| {} | {} |\n", cell(what), cell(&value));
        }
        for note in notes(p) {
            out += &format!("\nNote: {}.\n", cell(&note));
        }
        out += "\nSources:\n\n";
        for s in p.sources {
            out += &format!("- [{}]({})\n", s.title, s.url);
        }
    }
    out
}

/// `s` with its first letter in capitals, to open a sentence.
fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[derive(Serialize)]
struct RangeJson {
    default: f64,
    min: f64,
    max: f64,
}

impl RangeJson {
    fn of(r: &profile::TimeoutRange) -> RangeJson {
        RangeJson {
            default: secs(r.default),
            min: secs(r.min),
            max: secs(r.max),
        }
    }
}

#[derive(Serialize)]
struct TcpJson {
    syn_sent: f64,
    syn_recv: f64,
    fin_wait: f64,
    close_wait: f64,
    last_ack: f64,
    time_wait: f64,
    close: f64,
}

#[derive(Serialize)]
struct SnatJson {
    allocation: &'static str,
    ports_per_member: Option<u16>,
    ports_per_member_step: Option<u16>,
    ports_per_frontend: u32,
    hold_after_fin_s: f64,
    hold_after_rst_s: f64,
    hold_after_idle_s: f64,
}

#[derive(Serialize)]
struct SourceJson {
    title: &'static str,
    url: &'static str,
}

#[derive(Serialize)]
struct ProfileJson {
    name: &'static str,
    title: &'static str,
    rules: &'static str,
    lb_rule_idle_s: Option<RangeJson>,
    outbound_rule_idle_s: Option<RangeJson>,
    frontend_idle_s: Option<RangeJson>,
    /// TIME_WAIT where an outbound rule's `time_wait` may set it.
    time_wait_s: Option<RangeJson>,
    public_ip_outbound_idle_s: Option<f64>,
    tcp_not_established_s: TcpJson,
    udp_unreplied_s: f64,
    udp_replied_s: f64,
    default_expiry: &'static str,
    /// Whether a rule's `expiry` may only repeat `default_expiry` (the vendor offers no choice).
    expiry_fixed: bool,
    /// What the box's pages do not say in one figure (disagreeing pages, defaults by age).
    notes: Vec<String>,
    reset_on_next_to: &'static str,
    refresh: &'static str,
    pickup: &'static str,
    loose_pickup_configurable: bool,
    fragments: &'static str,
    snat: Option<SnatJson>,
    sources: Vec<SourceJson>,
}

#[derive(Serialize)]
struct ProfilesJson {
    profiles: Vec<ProfileJson>,
    /// Under a lab's `time_scale`, the timers racing TCP's own retransmissions (TCP not
    /// established, SNAT holds) run at least this long (`Config::scaled_racing_tcp`).
    racing_tcp_floor_s: f64,
}

fn profile_json(p: &Profile) -> ProfileJson {
    let t = &p.tcp;
    let per_member = p.snat.allocation == profile::Allocation::PerMember;
    ProfileJson {
        name: p.name,
        title: p.title,
        rules: match p.rules {
            profile::Rules::InboundAndOutbound => "inbound-and-outbound",
            profile::Rules::InboundOnly => "inbound-only",
            profile::Rules::OutboundOnly => "outbound-only",
        },
        lb_rule_idle_s: p.rules.inbound().then(|| RangeJson::of(&p.lb_rule_idle)),
        outbound_rule_idle_s: p
            .rules
            .outbound()
            .then(|| RangeJson::of(&p.outbound_rule_idle)),
        frontend_idle_s: p.frontend_idle.as_ref().map(RangeJson::of),
        time_wait_s: p.time_wait_range.as_ref().map(RangeJson::of),
        public_ip_outbound_idle_s: p.public_ip_outbound_idle.map(secs),
        tcp_not_established_s: TcpJson {
            syn_sent: secs(t.syn_sent),
            syn_recv: secs(t.syn_received),
            fin_wait: secs(t.fin_wait),
            close_wait: secs(t.close_wait),
            last_ack: secs(t.last_ack),
            time_wait: secs(t.time_wait),
            close: secs(t.close),
        },
        udp_unreplied_s: secs(p.udp.unreplied),
        udp_replied_s: secs(p.udp.replied),
        default_expiry: p.default_expiry.as_str(),
        expiry_fixed: p.expiry_knob == profile::ExpiryKnob::Fixed,
        notes: notes(p),
        reset_on_next_to: match p.reset_on_next {
            profile::ResetTarget::Sender => "sender",
            profile::ResetTarget::InsideOnly => "inside-host-only",
        },
        refresh: match p.refresh {
            profile::Refresh::AnyPacket => "any-packet",
            profile::Refresh::DataOnly => "data-only",
        },
        pickup: match p.pickup.default {
            profile::Pickup::SynOnly => "syn-only",
            profile::Pickup::Loose => "loose",
        },
        loose_pickup_configurable: p.pickup.knob == profile::PickupKnob::Sysctl,
        fragments: match p.fragments {
            profile::Fragments::Drop => "drop",
            profile::Fragments::ForwardUdp => "forward-udp",
            profile::Fragments::Forward => "forward",
        },
        snat: p.rules.outbound().then(|| SnatJson {
            allocation: match p.snat.allocation {
                profile::Allocation::PerMember => "per-member",
                profile::Allocation::Shared => "shared",
                profile::Allocation::PreservePort => "preserve-port",
            },
            ports_per_member: per_member.then_some(p.snat.ports_per_member),
            ports_per_member_step: per_member.then_some(p.snat.ports_per_member_step),
            ports_per_frontend: p.snat.ports_per_frontend,
            hold_after_fin_s: secs(p.snat.hold_after_fin),
            hold_after_rst_s: secs(p.snat.hold_after_rst),
            hold_after_idle_s: secs(p.snat.hold_after_idle),
        }),
        sources: p
            .sources
            .iter()
            .map(|s| SourceJson {
                title: s.title,
                url: s.url,
            })
            .collect(),
    }
}

/// `idlegate profiles --json`: one document, `{"profiles": [...]}`.
fn profiles_json() -> Result<String> {
    let doc = ProfilesJson {
        profiles: profile::ALL.iter().map(|p| profile_json(p)).collect(),
        racing_tcp_floor_s: secs(idlegate_core::config::TCP_RETRANSMISSION_FLOOR),
    };
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

/// `idlegate profiles` (the table, `--json`, `--markdown`) or `profiles show NAME`.
pub fn run(args: ProfilesArgs) -> Result<()> {
    match args.action {
        None if args.json => print!("{}", profiles_json()?),
        None if args.markdown => print!("{}", profiles_markdown()),
        None => print!("{}", profiles_table()),
        Some(ProfilesAction::Show { name }) => {
            let p = match idlegate_core::config::find_profile(&name) {
                Ok(p) => p,
                Err(unknown) => {
                    return Err(anyhow::anyhow!("profiles show {name}: {unknown}"))
                        .hint(unknown.hint())
                        .status(Status::Usage)
                }
            };
            print!("{}", profile::example_config(p));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GCP Cloud NAT takes any number of ports per VM: "multiples of 1" said nothing (issue 20,
    /// item 13).
    #[test]
    fn a_port_count_without_a_step_is_not_called_a_multiple_of_1() {
        let table = profiles_table();
        assert!(!table.contains("multiples of 1,"), "{table}");
        assert!(
            table.contains("64 per member (at most 64512 per frontend)"),
            "{table}"
        );
        assert!(
            table.contains("1024 per member (in multiples of 8; at most 64000 per frontend)"),
            "{table}"
        );
    }

    /// `profiles` said neither Azure's other page (4–100 min), nor Cloud NAT's 120 s for older
    /// gateways, nor the 3 s floor under a time_scale (issue 21); the text, the JSON and the
    /// book's page now do.
    #[test]
    fn profiles_say_the_disputed_range_the_older_time_wait_and_the_floor() {
        let table = profiles_table();
        let page = profiles_markdown();
        let json: serde_json::Value = serde_json::from_str(&profiles_json().unwrap()).unwrap();
        let profiles = json["profiles"].as_array().unwrap();
        let find = |name: &str| profiles.iter().find(|p| p["name"] == name).unwrap();
        for text in [&table, &page] {
            assert!(
                text.contains("page says 4–100 min; idlegate enforces 120 min"),
                "{text}"
            );
            assert!(
                text.contains("120 s for one created before (set time_wait = \"120s\" for it)"),
                "{text}"
            );
            assert!(
                text.contains("racing TCP's own") || text.contains("race TCP's own"),
                "{text}"
            );
            assert!(text.contains("run at least 3 s"), "{text}");
        }
        assert_eq!(json["racing_tcp_floor_s"], 3.0);
        let azure_notes = find("azure-lb")["notes"].as_array().unwrap();
        assert!(
            azure_notes[0].as_str().unwrap().contains("4–100 min"),
            "{json}"
        );
        let gcp_notes = find("gcp-nat")["notes"].as_array().unwrap();
        assert!(gcp_notes[0].as_str().unwrap().contains("120 s"), "{json}");
        assert_eq!(find("aws-nlb")["notes"], serde_json::json!([]));
        assert_eq!(find("azure-firewall-east-west")["expiry_fixed"], true);
        assert_eq!(find("azure-lb")["expiry_fixed"], false);
        assert!(table.contains("silent (fixed)"), "{table}");
    }

    #[test]
    fn the_markdown_page_names_every_profile_with_its_sources() {
        let page = profiles_markdown();
        for p in profile::ALL {
            assert!(page.contains(&format!("\n## {}\n", p.name)), "{}", p.name);
            assert!(!p.sources.is_empty(), "{} cites no source", p.name);
            for s in p.sources {
                assert!(s.url.starts_with("https://"), "{}: {}", p.name, s.url);
                assert!(page.contains(s.url), "{}: {}", p.name, s.url);
            }
        }
    }
}
