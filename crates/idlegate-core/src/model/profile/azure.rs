//! The Azure profiles that are not the load balancer's own: Azure Firewall, whose idle timeout
//! differs by direction (two profiles, north-south and east-west), and App Service's outbound
//! connections. Each doc comment names the page its figures were read from.

use super::{
    fixed, minutes, sources, Allocation, ExpiryKnob, Fragments, Profile, Refresh, ResetTarget,
    Rules, SnatPolicy, TcpTimers, TimeoutRange, UdpTimeouts, SYN_ONLY,
};
use crate::model::expiry::Expiry;
use std::time::Duration;

/// Azure Firewall, north-south: traffic between the firewall and the internet, inbound (DNAT)
/// or outbound (SNAT) (Azure "Understanding Azure Firewall TCP session management and idle
/// timeout behavior", <https://learn.microsoft.com/en-us/azure/firewall/tcp-session-behavior>).
///
/// - TCP idle timeout 4 min by default; Azure raises it up to 15 min through a support request
///   (not the portal), which a rule's `idle_timeout` here stands for: 4–15 min.
/// - At expiry: a RST to both endpoints.
/// - East-west traffic (between virtual networks or spokes, and to on-premises networks over
///   VPN, ExpressRoute or peering) meets another timer: profile `azure-firewall-east-west`.
/// - Transitory and UDP: not documented; idlegate uses 30 s and 4 min. SNAT port limits are
///   not modelled: ports are lent on demand from the frontend's range, released without a hold.
/// - IPv4 fragments: Azure documents nothing found; idlegate forwards them.
pub static AZURE_FIREWALL: Profile = FIREWALL_NORTH_SOUTH;

/// North-south as a `const`, so that east-west can start from it.
const FIREWALL_NORTH_SOUTH: Profile = Profile {
    name: "azure-firewall",
    title: "Azure Firewall (north-south)",
    sources: sources::AZURE_FIREWALL_SOURCES,
    rules: Rules::InboundAndOutbound,
    lb_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(15),
    },
    outbound_rule_idle: TimeoutRange {
        default: minutes(4),
        min: minutes(4),
        max: minutes(15),
    },
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Forward,
    default_expiry: Expiry::Reset,
    expiry_knob: ExpiryKnob::Fixed,
    snat: FIREWALL_SNAT,
    udp: UdpTimeouts {
        unreplied: minutes(4),
        replied: minutes(4),
    },
};

/// Azure Firewall, east-west: traffic between Azure resources through the firewall (spoke to
/// spoke, virtual network to virtual network, within or across regions) and to on-premises
/// networks over VPN, ExpressRoute or peering (Azure "Understanding Azure Firewall TCP session
/// management and idle timeout behavior",
/// <https://learn.microsoft.com/en-us/azure/firewall/tcp-session-behavior>).
///
/// - TCP idle timeout 5 min, fixed (no support request changes it).
/// - At expiry: silent. The firewall sends no RST, so both ends keep a connection the firewall
///   has forgotten until their next packet is dropped.
/// - An inbound rule stands for traffic into a spoke, an outbound rule for traffic out of one:
///   the firewall translates for them as idlegate's rules do, which changes nothing of what an
///   idle flow meets.
/// - Transitory, UDP and fragments as in `azure-firewall`.
pub static AZURE_FIREWALL_EAST_WEST: Profile = Profile {
    name: "azure-firewall-east-west",
    title: "Azure Firewall (east-west)",
    lb_rule_idle: fixed(minutes(5)),
    outbound_rule_idle: fixed(minutes(5)),
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Fixed,
    ..FIREWALL_NORTH_SOUTH
};

const FIREWALL_SNAT: SnatPolicy = SnatPolicy {
    allocation: Allocation::Shared,
    ports_per_member: 0,
    ports_per_member_step: 1,
    ports_per_frontend: 64_512,
    hold_after_fin: Duration::ZERO,
    hold_after_rst: Duration::ZERO,
    hold_after_idle: Duration::ZERO,
};

/// Azure App Service and Azure Functions on App Service plans, outbound to public addresses
/// (Azure "Troubleshooting intermittent outbound connection errors in Azure App Service",
/// <https://learn.microsoft.com/en-us/azure/app-service/troubleshoot-intermittent-outbound-connection-errors>).
/// Each member is one instance of the plan.
///
/// - Outbound only: App Service reaches public addresses through SNAT on load balancers that
///   are not exposed to the customer.
/// - SNAT ports: each instance "is initially given a preallocated number of 128 SNAT ports".
///   idlegate lends one port of the instance's block per concurrent flow, whatever its
///   destination; when the 128 are lent, the instance's next connection fails (its SYN goes
///   nowhere: the client sees a connect timeout, the page's "intermittent 5xx", "timeout error
///   messages", "couldn't connect to external endpoints"). That is faithful for connections to
///   one destination address and port, the page's case of a connection opened per request.
///   Not modelled: Azure lets flows to different destinations share a port ("SNAT for outbound
///   connections", "Port reuse"), so in idlegate 128 concurrent connections to 128 destinations
///   exhaust an instance that Azure would serve. Nor are the further ports App Service may lend
///   beyond the preallocated ones, which it does not promise; a rule's `ports_per_member` may
///   raise the block in multiples of 8 to stand for them.
/// - The load balancer "reclaims SNAT port from closed connections only after waiting for 4
///   minutes": a port is held 240 s after a FIN. After a RST, 15 s, and after an idle expiry
///   none, as Azure's SNAT page says of the load balancer App Service uses ("Source Network
///   Address Translation (SNAT) for outbound connections").
/// - Idle timeout 4 min, fixed: App Service's outbound SNAT is Azure's default outbound SNAT,
///   whose timeout "is set to 4 minutes, and cannot be adjusted" (Azure "TCP settings for Azure
///   VMs"). Silent at expiry.
/// - Transitory, UDP and fragments as in `azure-snat` (30 s, 4 min, dropped): not documented.
pub static AZURE_APPSERVICE: Profile = Profile {
    name: "azure-appservice",
    title: "Azure App Service outbound",
    sources: sources::AZURE_APPSERVICE_SOURCES,
    rules: Rules::OutboundOnly,
    lb_rule_idle: fixed(minutes(4)),
    outbound_rule_idle: fixed(minutes(4)),
    frontend_idle: None,
    public_ip_outbound_idle: None,
    reset_on_next: ResetTarget::Sender,
    tcp: TcpTimers::transitory(Duration::from_secs(30)),
    time_wait_range: None,
    pickup: SYN_ONLY,
    refresh: Refresh::AnyPacket,
    fragments: Fragments::Drop,
    default_expiry: Expiry::Silent,
    expiry_knob: ExpiryKnob::Fixed,
    snat: SnatPolicy {
        allocation: Allocation::PerMember,
        ports_per_member: 128,
        ports_per_member_step: 8,
        ports_per_frontend: 64_000,
        hold_after_fin: minutes(4),
        hold_after_rst: Duration::from_secs(15),
        hold_after_idle: Duration::ZERO,
    },
    udp: UdpTimeouts {
        unreplied: minutes(4),
        replied: minutes(4),
    },
};
