//! The terraform reader: the JSON of `terraform show -json`, of a plan or of a state.
//!
//! A plan's resources are read from `planned_values.root_module` and its `child_modules`
//! (recursively), completed from `resource_changes[].change.after` where the planned value
//! lacks one; a state's from `values.root_module`. Data sources are skipped. Each value's path
//! is the resource's address and the attribute (`module.net.azurerm_lb_rule.app.idle_timeout_in_minutes`),
//! which names the value both in `terraform show` and in the `.tf` that sets it.
//!
//! The resources idlegate models belong to one platform each: `azurerm_*` (`azurerm.rs`),
//! `aws_*` (`aws.rs`), `google_*` (`google.rs`). An input with several platforms is refused
//! unless `--platform` picks one; the others are listed as ignored. A value Terraform knows
//! only after apply (`after_unknown`) is the platform's default, chosen with that reason.

mod aws;
mod azurerm;
mod google;

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::draft::{Draft, Ignored, Platform, Protocol};
use super::ImportError;

/// Reads the parsed `terraform show -json` output into a draft.
pub fn read(input: &Value, platform: Option<Platform>) -> Result<Draft, ImportError> {
    let mut ignored = Vec::new();
    let resources = resources(input, &mut ignored)?;
    let mut found: Vec<Platform> = Vec::new();
    for r in resources.iter().filter(|r| !names_only(&r.kind)) {
        if let Some(p) = modelled(&r.kind) {
            if !found.contains(&p) {
                found.push(p);
            }
        }
    }
    let chosen = match (platform, found.as_slice()) {
        (_, []) => {
            return Err(ImportError::at(
                "",
                "no resource idlegate imports (azurerm_lb*, azurerm_nat_gateway, azurerm_public_ip, aws_lb*, google_compute_router_nat)",
            )
            .with_hint("give the output of `terraform show -json PLANFILE` (a plan) or `terraform show -json` (a state) of the configuration that declares the load balancer or NAT"))
        }
        (Some(p), _) if found.contains(&p) => p,
        (Some(p), _) => {
            return Err(ImportError::at(
                "",
                format!("--platform {}: the input has no {} resource idlegate imports (found: {})", p.as_str(), p.title(), names(&found)),
            )
            .with_hint(format!("use --platform {}", found[0].as_str())))
        }
        (None, [one]) => *one,
        (None, several) => {
            return Err(ImportError::at(
                "",
                format!("the input has resources of several platforms ({}); idlegate emulates one box at a time", names(several)),
            )
            .with_hint(format!("pick one with --platform {}", several.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("|"))))
        }
    };
    let mut mine = Vec::new();
    for r in resources {
        match modelled(&r.kind) {
            Some(p) if p == chosen => mine.push(r),
            Some(p) => ignored.push(Ignored {
                path: r.address.clone(),
                why: format!(
                    "{} resource; --platform {} keeps only {}'s",
                    p.a_title(),
                    chosen.as_str(),
                    chosen.title()
                ),
            }),
            None => ignored.push(Ignored {
                path: r.address.clone(),
                why: format!(
                    "{}: not a load balancer, NAT or public IP resource idlegate models",
                    r.kind
                ),
            }),
        }
    }
    let mut draft = match chosen {
        Platform::Azure => azurerm::read(&mine)?,
        Platform::Aws => aws::read(&mine)?,
        Platform::Gcp => google::read(&mine)?,
    };
    ignored.append(&mut draft.ignored);
    draft.ignored = ignored;
    Ok(draft)
}

fn names(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The platform of a resource type idlegate reads (or uses to resolve references).
fn modelled(kind: &str) -> Option<Platform> {
    match kind {
        "azurerm_lb"
        | "azurerm_lb_backend_address_pool"
        | "azurerm_lb_backend_address_pool_address"
        | "azurerm_lb_rule"
        | "azurerm_lb_nat_rule"
        | "azurerm_lb_outbound_rule"
        | "azurerm_lb_probe"
        | "azurerm_nat_gateway"
        | "azurerm_nat_gateway_public_ip_association"
        | "azurerm_subnet_nat_gateway_association"
        | "azurerm_subnet"
        | "azurerm_public_ip" => Some(Platform::Azure),
        "aws_lb" | "aws_lb_listener" | "aws_lb_target_group" | "aws_lb_target_group_attachment" => {
            Some(Platform::Aws)
        }
        "google_compute_router_nat" | "google_compute_address" => Some(Platform::Gcp),
        _ => None,
    }
}

/// A type read only to place or name what another resource makes (a NAT gateway's subnets):
/// alone it does not make its platform one the input has.
fn names_only(kind: &str) -> bool {
    matches!(
        kind,
        "azurerm_subnet_nat_gateway_association" | "azurerm_subnet"
    )
}

/// One managed resource: its address, type, values (planned, completed from the change's
/// `after`), and which of them Terraform knows only after apply.
#[derive(Debug, Clone)]
pub(super) struct Res {
    pub address: String,
    pub kind: String,
    pub values: Map<String, Value>,
    pub unknown: Value,
}

impl Res {
    /// The path of an attribute: `module.net.azurerm_lb_rule.app.idle_timeout_in_minutes`.
    pub fn path(&self, attr: &str) -> String {
        format!("{}.{attr}", self.address)
    }

    /// The attribute's value, None when absent or null.
    pub fn get(&self, attr: &str) -> Option<&Value> {
        self.values.get(attr).filter(|v| !v.is_null())
    }

    /// Whether Terraform knows the attribute only after apply.
    pub fn is_unknown(&self, attr: &str) -> bool {
        self.unknown.get(attr) == Some(&Value::Bool(true))
    }

    pub fn str(&self, attr: &str) -> Option<&str> {
        self.get(attr).and_then(Value::as_str)
    }

    /// The resource's `name` argument, or the address's last label when it has none.
    pub fn name(&self) -> String {
        match self.str("name") {
            Some(n) => n.to_string(),
            None => self
                .address
                .rsplit('.')
                .next()
                .unwrap_or(&self.address)
                .to_string(),
        }
    }

    /// A whole number, refused when the input has something else there.
    pub fn number(&self, attr: &str) -> Result<Option<u64>, ImportError> {
        number_at(self.get(attr), &self.path(attr))
    }

    pub fn bool(&self, attr: &str) -> Result<Option<bool>, ImportError> {
        match self.get(attr) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ImportError::at(
                self.path(attr),
                format!("expected true or false, found {other}"),
            )),
        }
    }

    /// The first of several spellings the provider has used for an attribute (azurerm 4
    /// renamed `enable_tcp_reset` to `tcp_reset_enabled`), with the one found.
    pub fn bool_any<'a>(&self, attrs: &[&'a str]) -> Result<Option<(bool, &'a str)>, ImportError> {
        for a in attrs {
            if let Some(b) = self.bool(a)? {
                return Ok(Some((b, a)));
            }
        }
        Ok(None)
    }

    /// Whether the resource is this id, ARN or self link (a plan's references between
    /// resources are ids known only after apply; a state's are known).
    pub fn is(&self, id: &str) -> bool {
        ["id", "arn", "self_link"]
            .iter()
            .any(|k| self.str(k) == Some(id))
    }
}

/// A whole number at `path` (Terraform writes numbers as JSON numbers; a string of digits is
/// taken too, as some providers' attribute maps hold strings).
pub(super) fn number_at(v: Option<&Value>, path: &str) -> Result<Option<u64>, ImportError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(ImportError::at(
                path,
                format!("expected a whole number of 0 or more, found {n}"),
            )),
        },
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(ImportError::at(
                path,
                format!("expected a whole number, found \"{s}\""),
            )),
        },
        Some(other) => Err(ImportError::at(
            path,
            format!("expected a whole number, found {other}"),
        )),
    }
}

/// A port number at `path`.
pub(super) fn port_at(n: u64, path: &str) -> Result<u16, ImportError> {
    u16::try_from(n).map_err(|_| ImportError::at(path, format!("{n} is not a port (0-65535)")))
}

/// A protocol as the providers spell it (`Tcp`, `Udp`, `All`; `TCP`, `UDP`, `TCP_UDP`, `TLS`).
pub(super) fn protocol(s: &str, path: &str) -> Result<Protocol, ImportError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" | "tls" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "all" | "tcp_udp" => Ok(Protocol::All),
        _ => Err(ImportError::at(path, format!("protocol \"{s}\": idlegate models TCP and UDP flows only (Tcp, Udp, All, TCP_UDP, TLS)"))),
    }
}

/// All managed resources of the input, plan or state.
fn resources(input: &Value, ignored: &mut Vec<Ignored>) -> Result<Vec<Res>, ImportError> {
    let (root, changes) = if let Some(root) = input.pointer("/planned_values/root_module") {
        let mut changes: HashMap<&str, &Value> = HashMap::new();
        for c in input
            .get("resource_changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(a), Some(ch)) = (c.get("address").and_then(Value::as_str), c.get("change"))
            {
                changes.insert(a, ch);
            }
        }
        (root, changes)
    } else if let Some(root) = input.pointer("/values/root_module") {
        (root, HashMap::new())
    } else {
        return Err(ImportError::at(
            "",
            "neither planned_values.root_module (a plan) nor values.root_module (a state): not the JSON of `terraform show -json`",
        )
        .with_hint("run `terraform show -json PLANFILE > plan.json` (or `terraform show -json > state.json`) and import that file"));
    };
    let mut out = Vec::new();
    walk(root, &changes, ignored, &mut out);
    Ok(out)
}

fn walk(
    module: &Value,
    changes: &HashMap<&str, &Value>,
    ignored: &mut Vec<Ignored>,
    out: &mut Vec<Res>,
) {
    for r in module
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let address = r
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = r
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if r.get("mode").and_then(Value::as_str) == Some("data") {
            ignored.push(Ignored {
                path: address,
                why: "a data source: it reads an existing object, it does not declare one"
                    .to_string(),
            });
            continue;
        }
        let mut values = r
            .get("values")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut unknown = Value::Null;
        if let Some(change) = changes.get(address.as_str()) {
            if let Some(after) = change.get("after").and_then(Value::as_object) {
                for (k, v) in after {
                    if values.get(k).is_none_or(Value::is_null) {
                        values.insert(k.clone(), v.clone());
                    }
                }
            }
            unknown = change.get("after_unknown").cloned().unwrap_or(Value::Null);
        }
        out.push(Res {
            address,
            kind,
            values,
            unknown,
        });
    }
    for child in module
        .get("child_modules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(child, changes, ignored, out);
    }
}

/// The value at `path` (a resource's address and an attribute path, as the readers say it:
/// `module.net.azurerm_lb_rule.app.idle_timeout_in_minutes`) in a plan's planned values or
/// planned change, or in a state; None when the input has no such resource or attribute.
pub(super) fn value_at<'a>(input: &'a Value, path: &str) -> Option<&'a Value> {
    let mut found: Option<(&str, &'a Value)> = None;
    let mut consider = |address: &'a str, values: &'a Value| {
        let longer = found.is_none_or(|(a, _)| address.len() > a.len());
        if longer
            && path
                .strip_prefix(address)
                .is_some_and(|r| r.starts_with('.'))
        {
            found = Some((address, values));
        }
    };
    let mut modules: Vec<&'a Value> = ["/planned_values/root_module", "/values/root_module"]
        .iter()
        .filter_map(|p| input.pointer(p))
        .collect();
    let mut changes = Vec::new();
    while let Some(m) = modules.pop() {
        for r in m
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(a), Some(v)) = (r.get("address").and_then(Value::as_str), r.get("values"))
            {
                consider(a, v);
            }
        }
        modules.extend(
            m.get("child_modules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    }
    for c in input
        .get("resource_changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(a), Some(after)) = (
            c.get("address").and_then(Value::as_str),
            c.pointer("/change/after"),
        ) {
            changes.push((a, after));
        }
    }
    let (address, values) = found?;
    let attr = &path[address.len() + 1..];
    super::emit::lookup(values, attr)
        .filter(|v| !v.is_null())
        .or_else(|| {
            let (_, after) = changes.iter().find(|(a, _)| *a == address)?;
            super::emit::lookup(after, attr)
        })
}

#[cfg(test)]
mod tests;
