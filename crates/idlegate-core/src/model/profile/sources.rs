//! The public documents each profile's figures come from: the vendor's pages, the kernel's
//! documentation, the RFCs. `idlegate profiles` (`--json`, `--markdown`) prints them with the
//! figures, and the doc comments of the profiles in `super` say which figure comes from which.

use super::Source;

const fn src(title: &'static str, url: &'static str) -> Source {
    Source { title, url }
}

const AZURE_TCP_RESET: Source = src(
    "Azure: Load Balancer TCP Reset and Idle Timeout (with \"Order of precedence\" and \"Limitations\")",
    "https://learn.microsoft.com/en-us/azure/load-balancer/load-balancer-tcp-reset",
);
const AZURE_CONFIGURE_IDLE: Source = src(
    "Azure: Configure load balancer TCP reset and idle timeout",
    "https://learn.microsoft.com/en-us/azure/load-balancer/load-balancer-tcp-idle-timeout",
);
const AZURE_OUTBOUND_RULES: Source = src(
    "Azure: Outbound rules",
    "https://learn.microsoft.com/en-us/azure/load-balancer/outbound-rules",
);
const AZURE_SNAT: Source = src(
    "Azure: Source Network Address Translation (SNAT) for outbound connections",
    "https://learn.microsoft.com/en-us/azure/load-balancer/load-balancer-outbound-connections",
);
const AZURE_LB_COMPONENTS: Source = src(
    "Azure: Load Balancer components (Limitations)",
    "https://learn.microsoft.com/en-us/azure/load-balancer/components",
);
const AZURE_NATGW_RESOURCE: Source = src(
    "Azure: Design virtual networks with NAT gateway (timers)",
    "https://learn.microsoft.com/en-us/azure/nat-gateway/nat-gateway-resource",
);
const AZURE_NATGW_SNAT: Source = src(
    "Azure: Source Network Address Translation (SNAT) with Azure NAT Gateway",
    "https://learn.microsoft.com/en-us/azure/nat-gateway/nat-gateway-snat",
);
const AZURE_DEFAULT_OUTBOUND: Source = src(
    "Azure: Default outbound access",
    "https://learn.microsoft.com/en-us/azure/virtual-network/ip-services/default-outbound-access",
);
const AZURE_VM_TCP_SETTINGS: Source = src(
    "Azure: TCP settings for Azure VMs (Microsoft's azure-docs repository)",
    "https://github.com/MicrosoftDocs/azure-docs/blob/86e7f67bc4419d5f5a5178e834dde3f0adaf7648/includes/guidance-tcp-session-timeout-include.md",
);
const AZURE_FIREWALL_TCP: Source = src(
    "Azure: Understanding Azure Firewall TCP session management and idle timeout behavior (north-south, east-west)",
    "https://learn.microsoft.com/en-us/azure/firewall/tcp-session-behavior",
);
const AZURE_APPSERVICE_OUTBOUND: Source = src(
    "Azure: Troubleshooting intermittent outbound connection errors in Azure App Service (SNAT ports)",
    "https://learn.microsoft.com/en-us/azure/app-service/troubleshoot-intermittent-outbound-connection-errors",
);
const AWS_NLB: Source = src(
    "AWS: Update the TCP idle timeout for your Network Load Balancer listener",
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/network/update-idle-timeout.html",
);
const AWS_NATGW: Source = src(
    "AWS: Troubleshoot NAT gateways (Internet connection drops after 350 seconds)",
    "https://docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-troubleshooting.html",
);
const AWS_ALB: Source = src(
    "AWS: Edit attributes for your Application Load Balancer (Connection idle timeout)",
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/edit-load-balancer-attributes.html#connection-idle-timeout",
);
const GCP_NAT: Source = src(
    "Google Cloud: Tune NAT configuration (NAT timeouts)",
    "https://cloud.google.com/nat/docs/tune-nat-configuration#nat-timeouts",
);
const GCP_FIREWALL: Source = src(
    "Google Cloud: VPC firewall rules (connection tracking)",
    "https://cloud.google.com/firewall/docs/firewalls",
);
const KERNEL_CONNTRACK: Source = src(
    "Linux kernel: Netfilter Conntrack Sysfs variables (nf_conntrack-sysctl)",
    "https://docs.kernel.org/networking/nf_conntrack-sysctl.html",
);
const KUBE_PROXY: Source = src(
    "Kubernetes: kube-proxy command-line reference (--conntrack-tcp-timeout-*)",
    "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/",
);
const IPVSADM: Source = src(
    "ipvsadm(8) (--set tcp tcpfin udp)",
    "https://man7.org/linux/man-pages/man8/ipvsadm.8.html",
);
const RFC5382: Source = src(
    "RFC 5382: NAT Behavioral Requirements for TCP (REQ-5)",
    "https://www.rfc-editor.org/rfc/rfc5382",
);
const RFC4787: Source = src(
    "RFC 4787: NAT Behavioral Requirements for Unicast UDP (REQ-5, REQ-14)",
    "https://www.rfc-editor.org/rfc/rfc4787",
);

pub(super) const AZURE_LB_SOURCES: &[Source] = &[
    AZURE_TCP_RESET,
    AZURE_CONFIGURE_IDLE,
    AZURE_OUTBOUND_RULES,
    AZURE_SNAT,
    AZURE_LB_COMPONENTS,
    AZURE_NATGW_RESOURCE,
];
pub(super) const AZURE_SNAT_SOURCES: &[Source] = &[
    AZURE_SNAT,
    AZURE_DEFAULT_OUTBOUND,
    AZURE_VM_TCP_SETTINGS,
    AZURE_TCP_RESET,
];
pub(super) const AZURE_NATGW_SOURCES: &[Source] = &[AZURE_NATGW_RESOURCE, AZURE_NATGW_SNAT];
pub(super) const AZURE_FIREWALL_SOURCES: &[Source] = &[AZURE_FIREWALL_TCP];
pub(super) const AZURE_APPSERVICE_SOURCES: &[Source] =
    &[AZURE_APPSERVICE_OUTBOUND, AZURE_SNAT, AZURE_VM_TCP_SETTINGS];
pub(super) const AWS_NLB_SOURCES: &[Source] = &[AWS_NLB];
pub(super) const AWS_NATGW_SOURCES: &[Source] = &[AWS_NATGW];
pub(super) const AWS_ALB_SOURCES: &[Source] = &[AWS_ALB];
pub(super) const GCP_NAT_SOURCES: &[Source] = &[GCP_NAT];
pub(super) const GCP_FIREWALL_SOURCES: &[Source] = &[GCP_FIREWALL];
pub(super) const LINUX_CONNTRACK_SOURCES: &[Source] = &[KERNEL_CONNTRACK];
pub(super) const KUBE_PROXY_SOURCES: &[Source] = &[KUBE_PROXY, KERNEL_CONNTRACK];
pub(super) const IPVS_SOURCES: &[Source] = &[IPVSADM];
pub(super) const RFC5382_SOURCES: &[Source] = &[RFC5382, RFC4787];
