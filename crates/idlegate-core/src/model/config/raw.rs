//! The config file as written: what serde reads, with the spans that errors point at.

use super::*;

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) profile: Option<S<String>>,
    pub(super) time_scale: Option<S<u32>>,
    pub(super) loose_pickup: Option<S<bool>>,
    pub(super) max_flows: Option<S<u64>>,
    #[serde(default)]
    pub(super) frontend: Vec<S<RawFrontend>>,
    #[serde(default)]
    pub(super) backend_pool: Vec<S<RawPool>>,
    #[serde(default)]
    pub(super) lb_rule: Vec<S<RawLbRule>>,
    #[serde(default)]
    pub(super) inbound_nat_rule: Vec<S<RawInboundNatRule>>,
    #[serde(default)]
    pub(super) outbound_rule: Vec<S<RawOutboundRule>>,
    #[serde(default)]
    pub(super) nat_gateway: Vec<S<RawNatGateway>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNatGateway {
    pub(super) name: S<String>,
    pub(super) frontend: S<String>,
    pub(super) backend_pools: S<Vec<String>>,
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) expiry: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    pub(super) name: S<String>,
    pub(super) address: S<String>,
    pub(super) idle_timeout: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: S<String>,
    pub(super) members: Vec<S<RawMember>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub(super) name: S<String>,
    pub(super) address: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLbRule {
    pub(super) name: S<String>,
    pub(super) frontend: S<String>,
    pub(super) protocol: Option<S<String>>,
    pub(super) frontend_port: S<u16>,
    pub(super) backend_pool: S<String>,
    pub(super) backend_port: S<u16>,
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) expiry: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInboundNatRule {
    pub(super) name: S<String>,
    pub(super) frontend: S<String>,
    pub(super) protocol: Option<S<String>>,
    pub(super) frontend_port: Option<S<u16>>,
    pub(super) member: Option<S<String>>,
    pub(super) frontend_port_range: Option<S<[u16; 2]>>,
    pub(super) backend_pool: Option<S<String>>,
    pub(super) backend_port: S<u16>,
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) expiry: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutboundRule {
    pub(super) name: S<String>,
    pub(super) frontend: S<String>,
    pub(super) backend_pool: S<String>,
    pub(super) protocol: Option<S<String>>,
    pub(super) ports_per_member: Option<S<u32>>,
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) expiry: Option<S<String>>,
    pub(super) time_wait: Option<S<String>>,
}
