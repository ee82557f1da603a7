//! What a reader found in a box's own configuration, before it is written as an idlegate config.
//!
//! A [`Draft`] mirrors the sections of idlegate's config (frontends, backend pools, LB rules,
//! inbound NAT rules, outbound rules, NAT gateways) with every value [`Sourced`]: it carries the
//! path in the input it was read from (`loadBalancingRules[0].properties.idleTimeoutInMinutes`),
//! or says why idlegate chose it when the input had none. Readers fill a draft; they do not
//! check ranges (the config's own validation does that on the written text, and an error is
//! said at the input path of the value it is about) and they do not choose lab addresses
//! ([`Address`] keeps what the input said; the writer maps it into the documentation ranges).
//!
//! Names are the input's own (a rule named `app` in Azure is `app` here); the writer makes them
//! unique and valid where the input's are not.

use std::net::IpAddr;
use std::time::Duration;

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub from: Origin,
}

impl<T> Sourced<T> {
    /// A value read at `path` in the input.
    pub fn at(value: T, path: impl Into<String>) -> Sourced<T> {
        Sourced {
            value,
            from: Origin::Input(path.into()),
        }
    }

    /// A value the input does not give, with why idlegate uses it (`the platform's default`).
    pub fn chosen(value: T, why: impl Into<String>) -> Sourced<T> {
        Sourced {
            value,
            from: Origin::Chosen(why.into()),
        }
    }
}

/// Where a value of the draft came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The path of the value in the input, in the input's own notation: a JSON path such as
    /// `resources[2].properties.loadBalancingRules[0].properties.idleTimeoutInMinutes`, or a
    /// Kubernetes one such as `Service/web.metadata.annotations["service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout"]`.
    Input(String),
    /// Not in the input: why idlegate uses this value.
    Chosen(String),
}

/// The platform a box belongs to; it picks the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Azure,
    Aws,
    Gcp,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Azure => "azure",
            Platform::Aws => "aws",
            Platform::Gcp => "gcp",
        }
    }

    /// The platform's name in a sentence (`Azure`); [`Platform::as_str`] is `--platform`'s.
    pub fn title(self) -> &'static str {
        match self {
            Platform::Azure => "Azure",
            Platform::Aws => "AWS",
            Platform::Gcp => "Google Cloud",
        }
    }

    /// [`Platform::title`] with its article: `an Azure`, `a Google Cloud`.
    pub fn a_title(self) -> &'static str {
        match self {
            Platform::Azure => "an Azure",
            Platform::Aws => "an AWS",
            Platform::Gcp => "a Google Cloud",
        }
    }
}

/// An address as the input gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A literal address (a public IP, a backend's private IP).
    Ip(IpAddr),
    /// No address, only what names the thing (a resource id, a NIC's IP configuration, a
    /// Kubernetes Service with no ingress yet). The writer gives it a lab address of
    /// `family`.
    Named { name: String, family: Family },
}

/// An IP family, for an address the input does not give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Transport protocols of a rule, as the config names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    All,
}

/// What happens at an idle expiry, as the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Silent,
    Reset,
    ResetOnNext,
}

/// Everything a reader found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Draft {
    /// The idlegate profile (`azure-lb`, `aws-nlb`, `gcp-nat`, …) and why.
    pub profile: Option<Sourced<&'static str>>,
    pub frontends: Vec<Frontend>,
    pub backend_pools: Vec<Pool>,
    pub lb_rules: Vec<LbRule>,
    pub inbound_nat_rules: Vec<InboundNatRule>,
    pub outbound_rules: Vec<OutboundRule>,
    pub nat_gateways: Vec<NatGateway>,
    /// Settings the input has that idlegate keeps only as a comment (a rule's floating IP,
    /// a health probe): each is written above the rule or section it belongs to.
    pub notes: Vec<Note>,
    /// What the reader skipped, and why; the writer lists them at the end of the config and
    /// the command prints them.
    pub ignored: Vec<Ignored>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    pub name: Sourced<String>,
    pub address: Sourced<Address>,
    /// The public IP's own idle timeout for inbound flows (Azure `idleTimeoutInMinutes`).
    pub idle_timeout: Option<Sourced<Duration>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: Sourced<String>,
    /// Empty when the input names no member: the writer adds one stand-in and says so.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: Sourced<String>,
    pub address: Sourced<Address>,
}

/// Idle timeout and expiry action, each optional (the profile's default when absent).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Idle {
    pub timeout: Option<Sourced<Duration>>,
    pub expiry: Option<Sourced<Expiry>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LbRule {
    pub name: Sourced<String>,
    /// The frontend's name, as in [`Frontend::name`].
    pub frontend: String,
    pub protocol: Sourced<Protocol>,
    pub frontend_port: Sourced<u16>,
    /// The pool's name, as in [`Pool::name`].
    pub backend_pool: String,
    pub backend_port: Sourced<u16>,
    pub idle: Idle,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InboundNatRule {
    pub name: Sourced<String>,
    pub frontend: String,
    pub protocol: Sourced<Protocol>,
    pub target: NatTarget,
    pub backend_port: Sourced<u16>,
    pub idle: Idle,
}

/// The two forms of an inbound NAT rule.
#[derive(Debug, Clone, PartialEq)]
pub enum NatTarget {
    /// One frontend port to one member (by the member's name, as in [`Member::name`]).
    Single {
        frontend_port: Sourced<u16>,
        member: String,
    },
    /// A frontend port range over a pool's members in order.
    Range {
        first_port: Sourced<u16>,
        last_port: Sourced<u16>,
        backend_pool: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRule {
    pub name: Sourced<String>,
    pub frontend: String,
    pub backend_pool: String,
    pub protocol: Sourced<Protocol>,
    /// Azure `allocatedOutboundPorts` (0 there means "the default allocation": leave None).
    pub ports_per_member: Option<Sourced<u32>>,
    /// The rule's own TIME_WAIT, where the profile lets a rule set it (GCP Cloud NAT's
    /// `tcp_time_wait_timeout_sec`); None: the profile's default.
    pub time_wait: Option<Sourced<Duration>>,
    pub idle: Idle,
    /// Where `frontend` and `backend_pool` come from, when not from the rule itself.
    pub refs_from: RefsFrom,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NatGateway {
    pub name: Sourced<String>,
    pub frontend: String,
    pub backend_pools: Vec<String>,
    /// Where the pools come from: the input section naming the subnets, or why chosen.
    pub pools_from: Origin,
    pub idle: Idle,
    /// Where `frontend` and `backend_pools` come from (`publicIpAddresses[0].id`,
    /// `subnets[0].id`), when the reader knows.
    pub refs_from: RefsFrom,
}

/// The input paths a section's references to other sections are read at. Empty (the
/// default): the section itself makes them, and its comment says `as <section> refers to it`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RefsFrom {
    pub frontend: Option<Origin>,
    /// One per pool referred to, in order.
    pub backend_pools: Vec<Origin>,
}

/// A setting kept as a comment, attached to the section it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The section's name (a rule's, a frontend's); None: the file as a whole.
    pub on: Option<String>,
    pub text: String,
    pub from: Origin,
}

/// Something in the input idlegate did not import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Its path in the input.
    pub path: String,
    /// Why: "health probes do not change what an idle flow meets", "not a TCP/UDP rule", …
    pub why: String,
}

impl Idle {
    /// The idle settings of a UDP-only rule, taken out: its flows live the profile's UDP
    /// timeout and end silently, so the config takes neither. What the input said is listed
    /// as ignored (a value idlegate chose goes without a word).
    fn udp_takes_none(&mut self, rule: &str, vendor: &str, ignored: &mut Vec<Ignored>) {
        if let Some(Origin::Input(path)) = self.timeout.take().map(|t| t.from) {
            ignored.push(Ignored {
                path,
                why: format!("rule {rule} is UDP: a UDP rule's flows live the profile's UDP timeout; {vendor} idle timeout applies to TCP"),
            });
        }
        if let Some(Origin::Input(path)) = self.expiry.take().map(|e| e.from) {
            ignored.push(Ignored {
                path,
                why: format!(
                    "rule {rule} is UDP: a UDP rule's flows end silently; {vendor} TCP reset applies to TCP"
                ),
            });
        }
    }
}

impl Draft {
    /// Takes the idle settings off every UDP-only rule (see [`Idle`]): Azure gives every rule
    /// an `idleTimeoutInMinutes` (4 unless set) and azurerm an `idle_timeout_in_minutes`, UDP
    /// rules too, and AKS's `tcp-idle-timeout` annotation is on the Service, whose UDP ports
    /// it does not concern. A protocol `All` rule keeps them: they apply to its TCP flows.
    pub fn udp_rules_take_no_idle_settings(&mut self) {
        let vendor = match self.profile.as_ref().map(|p| p.value) {
            Some(p) if p.starts_with("azure") => "Azure's",
            Some(p) if p.starts_with("aws") => "AWS's",
            Some(p) if p.starts_with("gcp") => "Google Cloud's",
            _ => "the input's",
        };
        let mut ignored = Vec::new();
        for r in &mut self.lb_rules {
            if r.protocol.value == Protocol::Udp {
                r.idle.udp_takes_none(&r.name.value, vendor, &mut ignored);
            }
        }
        for r in &mut self.inbound_nat_rules {
            if r.protocol.value == Protocol::Udp {
                r.idle.udp_takes_none(&r.name.value, vendor, &mut ignored);
            }
        }
        for r in &mut self.outbound_rules {
            if r.protocol.value == Protocol::Udp {
                r.idle.udp_takes_none(&r.name.value, vendor, &mut ignored);
            }
        }
        self.ignored.extend(ignored);
    }
}
