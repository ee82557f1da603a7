//! The Azure reader: ARM templates (and compiled Bicep) and the JSON of `az network lb show`,
//! `az network nat gateway show`, `az network public-ip show` (one object, or an array of
//! several resources, as `jq -s` makes of several outputs).
//!
//! Both shapes are read: the REST/ARM one, whose settings are under `properties`, and the
//! Azure CLI's, which flattens them; every path said is the one in the input. In a template,
//! `[parameters('x')]` and `[variables('x')]` are resolved where they lead to a plain value;
//! any other expression is refused at its path with a hint to give the deployed resource's
//! JSON instead. References (`resourceId(...)`, ids) are matched by their last name segment.
//!
//! Read: frontend IP configurations (with their public IP's address and idle timeout when the
//! input has the public IP), backend pools (addresses, or NIC IP configurations as members),
//! load-balancing rules, inbound NAT rules (single and port range), outbound rules, NAT
//! gateways (their subnets become stand-in pools), public IPs alone. Everything else is listed
//! as ignored, with why. Ranges are not checked here: the written config is.

use super::draft::*;
use super::ImportError;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

const HINT_DEPLOYED: &str = "give the deployed resource's JSON instead: az network lb show -g RG -n LB -o json (or the template compiled with its parameters: az deployment group export)";

/// Reads the parsed input into a draft.
pub fn read(input: &Value, platform: Option<Platform>) -> Result<Draft, ImportError> {
    if let Some(p @ (Platform::Aws | Platform::Gcp)) = platform {
        return Err(ImportError::at(
            "",
            format!(
                "--platform {}: this input holds Azure resources only",
                p.as_str()
            ),
        )
        .with_hint("leave out --platform, or give --platform azure"));
    }
    let arm = Arm::of(input);
    let mut resources = Vec::new();
    match input {
        Value::Object(o) if o.get("resources").is_some_and(Value::is_array) => {
            for (i, r) in input["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                resources.push((format!("resources[{i}]"), r));
            }
        }
        Value::Array(items) => {
            for (i, r) in items.iter().enumerate() {
                resources.push((format!("[{i}]"), r));
            }
        }
        _ => resources.push((String::new(), input)),
    }
    let mut reader = Azure {
        arm,
        draft: Draft::default(),
        public_ips: Vec::new(),
        used_ips: Vec::new(),
    };
    let mut lbs = Vec::new();
    let mut natgws = Vec::new();
    for (path, r) in &resources {
        match kind(r) {
            Kind::LoadBalancer => lbs.push((path.clone(), *r)),
            Kind::NatGateway => natgws.push((path.clone(), *r)),
            Kind::PublicIp => reader.public_ips.push((path.clone(), *r)),
            Kind::Other(t) => reader.ignore(
                path,
                format!("{t}: not a load balancer, NAT gateway or public IP"),
            ),
        }
    }
    if lbs.is_empty() && natgws.is_empty() && reader.public_ips.is_empty() {
        return Err(ImportError::at(
            "",
            "no load balancer, NAT gateway or public IP in the input",
        )
        .with_hint("give az network lb show / nat gateway show / public-ip show -o json, or an ARM template with such resources"));
    }
    for (path, lb) in &lbs {
        reader.load_balancer(path, lb)?;
    }
    for (path, g) in &natgws {
        reader.nat_gateway(path, g)?;
    }
    let alone: Vec<(String, &Value)> = reader
        .public_ips
        .iter()
        .filter(|(p, _)| !reader.used_ips.contains(p))
        .cloned()
        .collect();
    for (path, ip) in &alone {
        reader.public_ip_alone(path, ip)?;
    }
    if lbs.is_empty() && !natgws.is_empty() {
        // Profile azure-natgw models a NAT gateway as the outbound rule of each pool it serves.
        for g in std::mem::take(&mut reader.draft.nat_gateways) {
            let several = g.backend_pools.len() > 1;
            for pool in &g.backend_pools {
                let name = match several {
                    true => Sourced {
                        value: format!("{}-{pool}", g.name.value),
                        from: g.name.from.clone(),
                    },
                    false => g.name.clone(),
                };
                reader.draft.notes.push(Note {
                    on: Some(name.value.clone()),
                    text: format!("NAT gateway {}: with profile azure-natgw a NAT gateway is the outbound rule of each subnet it serves", g.name.value),
                    from: g.name.from.clone(),
                });
                reader.draft.outbound_rules.push(OutboundRule {
                    name,
                    frontend: g.frontend.clone(),
                    backend_pool: pool.clone(),
                    protocol: Sourced::chosen(
                        Protocol::All,
                        "a NAT gateway translates TCP and UDP",
                    ),
                    ports_per_member: None,
                    idle: g.idle.clone(),
                });
            }
        }
    }
    let profile = if lbs.is_empty() && !natgws.is_empty() {
        Sourced::chosen(
            "azure-natgw",
            "the input has NAT gateways and no load balancer",
        )
    } else if lbs.is_empty() {
        Sourced::chosen(
            "azure-lb",
            "public IPs alone: their idle timeout is the one Azure LB's frontends have",
        )
    } else {
        Sourced::chosen("azure-lb", "the input has an Azure load balancer")
    };
    reader.draft.profile = Some(profile);
    Ok(reader.draft)
}

enum Kind {
    LoadBalancer,
    NatGateway,
    PublicIp,
    Other(String),
}

fn kind(r: &Value) -> Kind {
    let has = |k: &str| r.get(k).is_some() || r.get("properties").and_then(|p| p.get(k)).is_some();
    match r
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
    {
        Some(t) if t == "microsoft.network/loadbalancers" => Kind::LoadBalancer,
        Some(t) if t == "microsoft.network/natgateways" => Kind::NatGateway,
        Some(t) if t == "microsoft.network/publicipaddresses" => Kind::PublicIp,
        Some(_) => Kind::Other(r["type"].as_str().unwrap_or_default().to_string()),
        None if has("frontendIPConfigurations") || has("loadBalancingRules") => Kind::LoadBalancer,
        None if has("publicIpAddresses") || has("subnets") => Kind::NatGateway,
        None if has("ipAddress") || has("publicIPAllocationMethod") => Kind::PublicIp,
        None => Kind::Other("a resource without a type".into()),
    }
}

/// A template's parameters and variables, for `[parameters('x')]` and `[variables('x')]`.
struct Arm<'a> {
    parameters: Option<&'a Value>,
    variables: Option<&'a Value>,
}

impl<'a> Arm<'a> {
    fn of(input: &'a Value) -> Arm<'a> {
        Arm {
            parameters: input.get("parameters"),
            variables: input.get("variables"),
        }
    }

    /// `v` with template expressions resolved, at `path`.
    fn resolve(&self, v: &'a Value, path: &str) -> Result<Value, ImportError> {
        match v.as_str() {
            Some(s) if is_expression(s) => self.expression(&s[1..s.len() - 1], path, 0),
            _ => Ok(v.clone()),
        }
    }

    fn expression(&self, e: &str, path: &str, depth: u32) -> Result<Value, ImportError> {
        let e = e.trim();
        let cannot = || {
            ImportError::at(
                path,
                format!("the template expression [{e}] cannot be resolved here (idlegate resolves parameters('…') with a defaultValue and variables('…') with a plain value)"),
            )
            .with_hint(HINT_DEPLOYED)
        };
        if depth > 8 {
            return Err(cannot());
        }
        let table = if let Some(n) = call_arg(e, "parameters") {
            self.parameters
                .and_then(|p| p.get(n))
                .and_then(|p| p.get("defaultValue"))
        } else if let Some(n) = call_arg(e, "variables") {
            self.variables.and_then(|p| p.get(n))
        } else {
            return Err(cannot());
        };
        match table {
            Some(Value::String(s)) if is_expression(s) => {
                self.expression(&s[1..s.len() - 1], path, depth + 1)
            }
            Some(v) => Ok(v.clone()),
            None => Err(cannot()),
        }
    }

    /// The name a reference names: the last segment of an id, or of a `resourceId(...)` /
    /// `concat(...)` expression's last argument.
    fn reference(&self, v: &Value, path: &str) -> Result<String, ImportError> {
        let s = v
            .as_str()
            .ok_or_else(|| ImportError::at(path, "expected a resource id (a string)"))?;
        if !is_expression(s) {
            return Ok(last_segment(s));
        }
        let inner = &s[1..s.len() - 1];
        let last = last_argument(inner).unwrap_or(inner).trim();
        if let Some(lit) = last.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
            return Ok(last_segment(lit));
        }
        match self.expression(last, path, 0)? {
            Value::String(s) => Ok(last_segment(&s)),
            _ => Err(
                ImportError::at(path, format!("[{inner}] does not name a resource"))
                    .with_hint(HINT_DEPLOYED),
            ),
        }
    }
}

fn is_expression(s: &str) -> bool {
    s.starts_with('[') && !s.starts_with("[[") && s.ends_with(']')
}

/// `x` of `f('x')`, when `e` is exactly that call.
fn call_arg<'e>(e: &'e str, f: &str) -> Option<&'e str> {
    let rest = e
        .strip_prefix(f)?
        .trim_start()
        .strip_prefix("(")?
        .strip_suffix(")")?
        .trim();
    rest.strip_prefix('\'')?.strip_suffix('\'')
}

/// The last top-level argument of a call `f(a, b, c)`.
fn last_argument(e: &str) -> Option<&str> {
    let open = e.find('(')?;
    let body = e.get(open + 1..e.len().checked_sub(1)?)?;
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in body.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => start = i + 1,
            _ => {}
        }
    }
    Some(&body[start..])
}

fn last_segment(s: &str) -> String {
    s.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(s)
        .to_string()
}

/// `base.key`, or `key` at the top.
fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

struct Azure<'a> {
    arm: Arm<'a>,
    draft: Draft,
    public_ips: Vec<(String, &'a Value)>,
    /// Paths of the public IPs a frontend or NAT gateway took.
    used_ips: Vec<String>,
}

impl<'a> Azure<'a> {
    fn ignore(&mut self, path: &str, why: impl Into<String>) {
        let path = if path.is_empty() { "(the input)" } else { path };
        self.draft.ignored.push(Ignored {
            path: path.to_string(),
            why: why.into(),
        });
    }

    fn note(&mut self, on: &str, text: impl Into<String>, path: String) {
        self.draft.notes.push(Note {
            on: Some(on.to_string()),
            text: text.into(),
            from: Origin::Input(path),
        });
    }

    /// A setting of `obj` (at `base`): under `properties` (REST, ARM) or flattened (the CLI).
    fn prop(&self, obj: &'a Value, base: &str, key: &str) -> Option<(&'a Value, String)> {
        if let Some(v) = obj.get("properties").and_then(|p| p.get(key)) {
            return Some((v, join(&join(base, "properties"), key)));
        }
        obj.get(key).map(|v| (v, join(base, key)))
    }

    fn value(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<(Value, String)>, ImportError> {
        match self.prop(obj, base, key) {
            Some((v, path)) if !v.is_null() => Ok(Some((self.arm.resolve(v, &path)?, path))),
            _ => Ok(None),
        }
    }

    fn string(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<Sourced<String>>, ImportError> {
        match self.value(obj, base, key)? {
            Some((Value::String(s), path)) => Ok(Some(Sourced::at(s, path))),
            Some((_, path)) => Err(ImportError::at(path, "expected a string")),
            None => Ok(None),
        }
    }

    fn number(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<Sourced<u64>>, ImportError> {
        match self.value(obj, base, key)? {
            Some((v, path)) => match v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            {
                Some(n) => Ok(Some(Sourced::at(n, path))),
                None => Err(ImportError::at(
                    path,
                    format!("expected a whole number, found {v}"),
                )),
            },
            None => Ok(None),
        }
    }

    fn boolean(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<Sourced<bool>>, ImportError> {
        match self.value(obj, base, key)? {
            Some((Value::Bool(b), path)) => Ok(Some(Sourced::at(b, path))),
            Some((v, path)) => match v.as_str() {
                Some("true" | "True") => Ok(Some(Sourced::at(true, path))),
                Some("false" | "False") => Ok(Some(Sourced::at(false, path))),
                _ => Err(ImportError::at(
                    path,
                    format!("expected true or false, found {v}"),
                )),
            },
            None => Ok(None),
        }
    }

    fn port(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<Sourced<u16>>, ImportError> {
        match self.number(obj, base, key)? {
            Some(n) => match u16::try_from(n.value) {
                Ok(p) => Ok(Some(Sourced {
                    value: p,
                    from: n.from,
                })),
                Err(_) => Err(ImportError::at(
                    path_of(&n.from),
                    format!("{}: not a port (0 to 65535)", n.value),
                )),
            },
            None => Ok(None),
        }
    }

    /// `idleTimeoutInMinutes` (minutes) as a duration.
    fn minutes(
        &self,
        obj: &'a Value,
        base: &str,
    ) -> Result<Option<Sourced<Duration>>, ImportError> {
        Ok(self
            .number(obj, base, "idleTimeoutInMinutes")?
            .map(|n| Sourced {
                value: Duration::from_secs(n.value.saturating_mul(60)),
                from: n.from,
            }))
    }

    /// The entries of an array setting, each with its path.
    fn items(&self, obj: &'a Value, base: &str, key: &str) -> Vec<(&'a Value, String)> {
        match self.prop(obj, base, key) {
            Some((Value::Array(a), path)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (v, format!("{path}[{i}]")))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The name a sub-resource reference (`{ "id": ... }`) at `obj.key` points to.
    fn reference(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, ImportError> {
        match self.prop(obj, base, key) {
            Some((r, path)) if r.get("id").is_some() => {
                let id_path = join(&path, "id");
                Ok(Some((self.arm.reference(&r["id"], &id_path)?, id_path)))
            }
            _ => Ok(None),
        }
    }

    fn name(
        &self,
        obj: &'a Value,
        base: &str,
        fallback: String,
    ) -> Result<Sourced<String>, ImportError> {
        Ok(match obj.get("name") {
            Some(v) if !v.is_null() => {
                let path = join(base, "name");
                match self.arm.resolve(v, &path)? {
                    Value::String(s) => Sourced::at(last_segment(&s), path),
                    other => Sourced::at(other.to_string(), path),
                }
            }
            _ => Sourced::chosen(fallback, "the input gives no name"),
        })
    }

    fn protocol(&self, obj: &'a Value, base: &str) -> Result<Sourced<Protocol>, ImportError> {
        match self.string(obj, base, "protocol")? {
            Some(p) => {
                let value = match p.value.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "all" => Protocol::All,
                    other => {
                        return Err(ImportError::at(
                            path_of(&p.from),
                            format!("protocol {other:?}: Azure's are Tcp, Udp and All"),
                        ))
                    }
                };
                Ok(Sourced {
                    value,
                    from: p.from,
                })
            }
            None => Ok(Sourced::chosen(Protocol::Tcp, "Azure's default protocol")),
        }
    }

    /// `idleTimeoutInMinutes` and `enableTcpReset` of a rule.
    fn idle(&self, obj: &'a Value, base: &str) -> Result<Idle, ImportError> {
        Ok(Idle {
            timeout: self.minutes(obj, base)?,
            expiry: self.boolean(obj, base, "enableTcpReset")?.map(|b| Sourced {
                value: if b.value {
                    Expiry::Reset
                } else {
                    Expiry::Silent
                },
                from: b.from,
            }),
        })
    }

    /// The public IP named `name` in the input, if it is there.
    fn public_ip(&mut self, name: &str) -> Option<(String, &'a Value)> {
        let found = self.public_ips.iter().find(|(path, ip)| {
            self.name(ip, path, String::new())
                .map(|n| n.value == name)
                .unwrap_or(false)
        })?;
        let found = (found.0.clone(), found.1);
        self.used_ips.push(found.0.clone());
        Some(found)
    }

    /// A frontend from a public IP resource (its address and idle timeout).
    fn frontend_of_ip(
        &mut self,
        name: Sourced<String>,
        ip_name: &str,
        reference: &str,
    ) -> Result<Frontend, ImportError> {
        match self.public_ip(ip_name) {
            Some((path, ip)) => {
                let family = match self.string(ip, &path, "publicIPAddressVersion")? {
                    Some(v) if v.value.eq_ignore_ascii_case("IPv6") => Family::V6,
                    _ => Family::V4,
                };
                let address = match self.string(ip, &path, "ipAddress")? {
                    Some(a) => match a.value.parse::<IpAddr>() {
                        Ok(addr) => Sourced {
                            value: Address::Ip(addr),
                            from: a.from,
                        },
                        Err(_) => {
                            return Err(ImportError::at(
                                path_of(&a.from),
                                format!("{:?} is not an IP address", a.value),
                            ))
                        }
                    },
                    None => Sourced::at(
                        Address::Named {
                            name: ip_name.to_string(),
                            family,
                        },
                        reference,
                    ),
                };
                Ok(Frontend {
                    name,
                    address,
                    idle_timeout: self.minutes(ip, &path)?,
                })
            }
            None => Ok(Frontend {
                name,
                address: Sourced::at(
                    Address::Named {
                        name: ip_name.to_string(),
                        family: Family::V4,
                    },
                    reference,
                ),
                idle_timeout: None,
            }),
        }
    }

    fn load_balancer(&mut self, base: &str, lb: &'a Value) -> Result<(), ImportError> {
        for key in ["sku", "zones", "tags"] {
            if let Some(path) = (lb.get(key).is_some()).then(|| join(base, key)) {
                let why = match key {
                    "sku" => {
                        "idlegate's azure-lb profile is the Standard load balancer's behaviour"
                    }
                    "zones" => "zones do not change what an idle flow meets",
                    _ => "tags do not change what an idle flow meets",
                };
                self.ignore(&path, why);
            }
        }
        for (fe, path) in self.items(lb, base, "frontendIPConfigurations") {
            let name = self.name(
                fe,
                &path,
                format!("frontend{}", self.draft.frontends.len() + 1),
            )?;
            if let Some((_, p)) = self.prop(fe, &path, "gatewayLoadBalancer") {
                self.ignore(&p, "gateway load balancer chaining is not emulated");
            }
            let frontend =
                if let Some((ip, id_path)) = self.reference(fe, &path, "publicIPAddress")? {
                    self.frontend_of_ip(name, &ip, &id_path)?
                } else if let Some(a) = self.string(fe, &path, "privateIPAddress")? {
                    let addr = a.value.parse::<IpAddr>().map_err(|_| {
                        ImportError::at(
                            path_of(&a.from),
                            format!("{:?} is not an IP address", a.value),
                        )
                    })?;
                    Frontend {
                        address: Sourced {
                            value: Address::Ip(addr),
                            from: a.from,
                        },
                        name,
                        idle_timeout: None,
                    }
                } else {
                    let label = name.value.clone();
                    Frontend {
                        address: Sourced::chosen(
                            Address::Named {
                                name: label,
                                family: Family::V4,
                            },
                            "the input gives no address",
                        ),
                        name,
                        idle_timeout: None,
                    }
                };
            self.draft.frontends.push(frontend);
        }
        for (pool, path) in self.items(lb, base, "backendAddressPools") {
            let name = self.name(
                pool,
                &path,
                format!("pool{}", self.draft.backend_pools.len() + 1),
            )?;
            let mut members = Vec::new();
            for (addr, a_path) in self.items(pool, &path, "loadBalancerBackendAddresses") {
                let fallback = format!("{}-{}", name.value, members.len() + 1);
                let m_name = self.name(addr, &a_path, fallback)?;
                let address = match self.string(addr, &a_path, "ipAddress")? {
                    Some(a) => match a.value.parse::<IpAddr>() {
                        Ok(ip) => Sourced {
                            value: Address::Ip(ip),
                            from: a.from,
                        },
                        Err(_) => {
                            return Err(ImportError::at(
                                path_of(&a.from),
                                format!("{:?} is not an IP address", a.value),
                            ))
                        }
                    },
                    None => Sourced::at(
                        Address::Named {
                            name: m_name.value.clone(),
                            family: Family::V4,
                        },
                        a_path.clone(),
                    ),
                };
                members.push(Member {
                    name: m_name,
                    address,
                });
            }
            for (ipc, i_path) in self.items(pool, &path, "backendIPConfigurations") {
                let id_path = join(&i_path, "id");
                let Some(id) = ipc.get("id") else { continue };
                let id_text = id.as_str().unwrap_or_default();
                let nic = nic_name(id_text).unwrap_or_else(|| last_segment(id_text));
                let nic = if is_expression(id_text) {
                    self.arm.reference(id, &id_path)?
                } else {
                    nic
                };
                members.push(Member {
                    name: Sourced::at(nic.clone(), id_path.clone()),
                    address: Sourced::at(
                        Address::Named {
                            name: nic,
                            family: Family::V4,
                        },
                        id_path,
                    ),
                });
            }
            self.draft.backend_pools.push(Pool { name, members });
        }
        for (rule, path) in self.items(lb, base, "loadBalancingRules") {
            self.lb_rule(rule, &path)?;
        }
        for (rule, path) in self.items(lb, base, "inboundNatRules") {
            self.inbound_nat_rule(rule, &path)?;
        }
        for (rule, path) in self.items(lb, base, "outboundRules") {
            self.outbound_rule(rule, &path)?;
        }
        for (_, path) in self.items(lb, base, "probes") {
            self.ignore(&path, "health probes do not change what an idle flow meets (the lab's members are always up)");
        }
        for (_, path) in self.items(lb, base, "inboundNatPools") {
            self.ignore(&path, "inbound NAT pools (classic scale sets) are not imported; give inbound NAT rules with a port range instead");
        }
        Ok(())
    }

    fn lb_rule(&mut self, rule: &'a Value, path: &str) -> Result<(), ImportError> {
        let name = self.name(rule, path, format!("rule{}", self.draft.lb_rules.len() + 1))?;
        let Some(frontend_port) = self.port(rule, path, "frontendPort")? else {
            return Err(ImportError::at(
                path,
                "a load-balancing rule without frontendPort",
            ));
        };
        if frontend_port.value == 0 {
            self.ignore(path_of(&frontend_port.from), "an HA-ports rule (frontendPort 0: every port of an internal load balancer) is not emulated");
            return Ok(());
        }
        let backend_port = self.port(rule, path, "backendPort")?.unwrap_or_else(|| {
            Sourced::chosen(frontend_port.value, "Azure uses the frontend port")
        });
        let frontend = self.required_ref(rule, path, "frontendIPConfiguration")?;
        let backend_pool = match self.reference(rule, path, "backendAddressPool")? {
            Some((p, _)) => p,
            None => match self.items(rule, path, "backendAddressPools").first() {
                Some((r, p)) => self.arm.reference(&r["id"], &join(p, "id"))?,
                None => {
                    return Err(ImportError::at(
                        path,
                        "a load-balancing rule without backendAddressPool",
                    ))
                }
            },
        };
        for (key, text) in [
            ("enableFloatingIP", "floating IP (direct server return) is on: the member sees the frontend's address as the destination; idlegate's lab translates it"),
            ("disableOutboundSnat", "disableOutboundSnat: this rule's frontend gives the members no outbound SNAT (an outbound rule or NAT gateway does)"),
        ] {
            if let Some(b) = self.boolean(rule, path, key)? {
                if b.value {
                    self.note(&name.value, text, path_of(&b.from).to_string());
                }
            }
        }
        if let Some((_, p)) = self.prop(rule, path, "probe") {
            self.ignore(&p, "health probes do not change what an idle flow meets");
        }
        if let Some((_, p)) = self.prop(rule, path, "loadDistribution") {
            self.ignore(&p, "the lab spreads new flows over the members by its own hash; idle expiry does not depend on it");
        }
        self.draft.lb_rules.push(LbRule {
            protocol: self.protocol(rule, path)?,
            idle: self.idle(rule, path)?,
            name,
            frontend,
            frontend_port,
            backend_pool,
            backend_port,
        });
        Ok(())
    }

    fn required_ref(&self, obj: &'a Value, path: &str, key: &str) -> Result<String, ImportError> {
        match self.reference(obj, path, key)? {
            Some((name, _)) => Ok(name),
            None => Err(ImportError::at(path, format!("no {key}"))),
        }
    }

    fn inbound_nat_rule(&mut self, rule: &'a Value, path: &str) -> Result<(), ImportError> {
        let name = self.name(
            rule,
            path,
            format!("nat{}", self.draft.inbound_nat_rules.len() + 1),
        )?;
        let frontend = self.required_ref(rule, path, "frontendIPConfiguration")?;
        let Some(backend_port) = self.port(rule, path, "backendPort")? else {
            return Err(ImportError::at(
                path,
                "an inbound NAT rule without backendPort",
            ));
        };
        let first = self.port(rule, path, "frontendPortRangeStart")?;
        let last = self.port(rule, path, "frontendPortRangeEnd")?;
        let target = match (first, last, self.port(rule, path, "frontendPort")?) {
            (Some(first_port), Some(last_port), _) => {
                let Some((pool, _)) = self.reference(rule, path, "backendAddressPool")? else {
                    return Err(ImportError::at(
                        path,
                        "a port-range inbound NAT rule without backendAddressPool",
                    ));
                };
                NatTarget::Range {
                    first_port,
                    last_port,
                    backend_pool: pool,
                }
            }
            (_, _, Some(frontend_port)) => {
                let member = match self.prop(rule, path, "backendIPConfiguration") {
                    Some((r, p)) if r.get("id").is_some() => {
                        let id = r["id"].as_str().unwrap_or_default();
                        match nic_name(id) {
                            Some(nic) if !is_expression(id) => nic,
                            _ => self.arm.reference(&r["id"], &join(&p, "id"))?,
                        }
                    }
                    _ => {
                        self.ignore(
                            path,
                            "an inbound NAT rule with no backend IP configuration sends nowhere",
                        );
                        return Ok(());
                    }
                };
                NatTarget::Single {
                    frontend_port,
                    member,
                }
            }
            _ => {
                return Err(ImportError::at(
                    path,
                    "an inbound NAT rule without frontendPort or frontendPortRangeStart/End",
                ))
            }
        };
        if let Some(b) = self.boolean(rule, path, "enableFloatingIP")? {
            if b.value {
                self.note(&name.value, "floating IP (direct server return) is on: the member sees the frontend's address as the destination; idlegate's lab translates it", path_of(&b.from).to_string());
            }
        }
        self.draft.inbound_nat_rules.push(InboundNatRule {
            protocol: self.protocol(rule, path)?,
            idle: self.idle(rule, path)?,
            name,
            frontend,
            target,
            backend_port,
        });
        Ok(())
    }

    fn outbound_rule(&mut self, rule: &'a Value, path: &str) -> Result<(), ImportError> {
        let name = self.name(
            rule,
            path,
            format!("outbound{}", self.draft.outbound_rules.len() + 1),
        )?;
        let fronts = self.items(rule, path, "frontendIPConfigurations");
        let Some((first, first_path)) = fronts.first() else {
            return Err(ImportError::at(
                path,
                "an outbound rule without frontendIPConfigurations",
            ));
        };
        let frontend = self.arm.reference(&first["id"], &join(first_path, "id"))?;
        if fronts.len() > 1 {
            let rest: Vec<String> = fronts[1..].iter().map(|(_, p)| p.clone()).collect();
            self.note(&name.value, format!("the rule has {} frontends; the lab gives it the first (more frontends multiply Azure's SNAT ports; not emulated): {}", fronts.len(), rest.join(", ")), first_path.clone());
        }
        let backend_pool = self.required_ref(rule, path, "backendAddressPool")?;
        let ports_per_member = self
            .number(rule, path, "allocatedOutboundPorts")?
            .and_then(|n| {
                (n.value != 0).then(|| Sourced {
                    value: u32::try_from(n.value).unwrap_or(u32::MAX),
                    from: n.from,
                })
            });
        self.draft.outbound_rules.push(OutboundRule {
            protocol: self.protocol(rule, path)?,
            idle: self.idle(rule, path)?,
            name,
            frontend,
            backend_pool,
            ports_per_member,
        });
        Ok(())
    }

    fn nat_gateway(&mut self, base: &str, g: &'a Value) -> Result<(), ImportError> {
        let name = self.name(
            g,
            base,
            format!("natgw{}", self.draft.nat_gateways.len() + 1),
        )?;
        for key in ["sku", "zones", "tags"] {
            if g.get(key).is_some() {
                self.ignore(&join(base, key), "does not change what an idle flow meets");
            }
        }
        let ips = self.items(g, base, "publicIpAddresses");
        let frontend = match ips.first() {
            Some((r, p)) => {
                let id_path = join(p, "id");
                let ip = self.arm.reference(&r["id"], &id_path)?;
                if !self.draft.frontends.iter().any(|f| f.name.value == ip) {
                    let fe = self.frontend_of_ip(
                        Sourced::at(ip.clone(), id_path.clone()),
                        &ip,
                        &id_path,
                    )?;
                    // A NAT gateway's idle timeout is its own; the public IP's is for inbound.
                    self.draft.frontends.push(Frontend {
                        idle_timeout: None,
                        ..fe
                    });
                }
                ip
            }
            None => {
                let fe = format!("{}-ip", name.value);
                self.draft.frontends.push(Frontend {
                    name: Sourced::chosen(
                        fe.clone(),
                        "the input names no public IP of the NAT gateway",
                    ),
                    address: Sourced::chosen(
                        Address::Named {
                            name: fe.clone(),
                            family: Family::V4,
                        },
                        "a stand-in public IP",
                    ),
                    idle_timeout: None,
                });
                fe
            }
        };
        for (_, p) in ips.iter().skip(1) {
            self.ignore(p, "the lab gives a NAT gateway its first public IP");
        }
        for (_, p) in self.items(g, base, "publicIpPrefixes") {
            self.ignore(
                &p,
                "public IP prefixes are not emulated; the lab gives the NAT gateway one address",
            );
        }
        let mut pools = Vec::new();
        for (s, p) in self.items(g, base, "subnets") {
            let id_path = join(&p, "id");
            let subnet = self.arm.reference(&s["id"], &id_path)?;
            self.note(&name.value, format!("NAT gateways attach to subnets, not pools: pool {subnet} stands in for subnet {subnet}"), id_path.clone());
            self.draft.backend_pools.push(Pool {
                name: Sourced::at(subnet.clone(), id_path),
                members: Vec::new(),
            });
            pools.push(subnet);
        }
        if pools.is_empty() {
            let pool = format!("{}-subnet", name.value);
            self.draft.backend_pools.push(Pool {
                name: Sourced::chosen(
                    pool.clone(),
                    "the input attaches the NAT gateway to no subnet: a stand-in",
                ),
                members: Vec::new(),
            });
            pools.push(pool);
        }
        let idle = Idle {
            timeout: self.minutes(g, base)?,
            expiry: None,
        };
        self.draft.nat_gateways.push(NatGateway {
            name,
            frontend,
            backend_pools: pools,
            idle,
        });
        Ok(())
    }

    /// A public IP no frontend took: a frontend of its own, with a stand-in pool and rule so
    /// that the lab carries connections through it.
    fn public_ip_alone(&mut self, base: &str, ip: &'a Value) -> Result<(), ImportError> {
        let name = self.name(ip, base, format!("ip{}", self.draft.frontends.len() + 1))?;
        for key in ["sku", "zones", "tags"] {
            if ip.get(key).is_some() {
                self.ignore(&join(base, key), "does not change what an idle flow meets");
            }
        }
        let label = name.value.clone();
        let fe = self.frontend_of_ip(name, &label, base)?;
        self.draft.frontends.push(fe);
        let pool = format!("{label}-members");
        self.draft.backend_pools.push(Pool {
            name: Sourced::chosen(
                pool.clone(),
                "a stand-in pool: a public IP alone names no backend",
            ),
            members: Vec::new(),
        });
        let why = "a stand-in rule, so that the lab carries connections through this public IP";
        self.draft.lb_rules.push(LbRule {
            name: Sourced::chosen(format!("{label}-tcp"), why),
            frontend: label,
            protocol: Sourced::chosen(Protocol::Tcp, why),
            frontend_port: Sourced::chosen(7000, why),
            backend_pool: pool,
            backend_port: Sourced::chosen(7000, why),
            idle: Idle::default(),
        });
        Ok(())
    }
}

fn path_of(o: &Origin) -> &str {
    match o {
        Origin::Input(p) => p,
        Origin::Chosen(_) => "",
    }
}

/// The NIC's name in a NIC IP configuration's id (`…/networkInterfaces/NIC/ipConfigurations/…`).
fn nic_name(id: &str) -> Option<String> {
    let mut parts = id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("networkInterfaces") {
            return parts.next().map(str::to_string);
        }
    }
    None
}
