//! The writer: a [`Draft`] rendered as the config's TOML, then validated.
//!
//! Every value is on its own line with a trailing comment naming its source: the path in the
//! input (and the input's own value there, when the path leads to one), or `not in the input:
//! <why>` for a value idlegate chose. A header says what was imported, from which file, the
//! profile and why, and the address mapping (input address or name → lab address: frontends
//! into 203.0.113.0/24 from .10, members into 192.0.2.0/24 from .11, IPv6 into fd00::/8; a lab
//! never uses a real public address). Notes are written above their section, what was ignored
//! at the end.
//!
//! The text is then read back with [`Config::from_toml`]; a refused value is said at its path
//! in the input (the writer keeps which origin each line's value came from), with the
//! config's own message, which states the allowed bound.

use super::draft::*;
use super::{Format, ImportError, Imported, Options};
use idlegate_core::Config;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The rendered lines, each with the origin of the value it carries (if any).
#[derive(Default)]
struct Out {
    lines: Vec<(String, Option<Origin>)>,
}

impl Out {
    fn line(&mut self, text: impl Into<String>) {
        self.lines.push((text.into(), None));
    }

    fn comment(&mut self, text: &str) {
        for l in text.lines() {
            self.lines
                .push((format!("# {l}").trim_end().to_string(), None));
        }
    }

    /// `key = value  # source`.
    fn value(&mut self, key: &str, rendered: String, from: &Origin, input: &Value) {
        let text = format!("{key} = {rendered}  # {}", source(from, input));
        self.lines.push((text, Some(from.clone())));
    }

    /// `key = name  # as <section> refers to it`: a reference to another section (a rule's
    /// frontend, pool, member), said at the section of the input that makes it.
    fn reference(&mut self, key: &str, rendered: String, owner: &Origin, _input: &Value) {
        let text = match owner {
            Origin::Input(path) => {
                let section = path.strip_suffix(".name").unwrap_or(path);
                format!("{key} = {rendered}  # as {section} refers to it")
            }
            Origin::Chosen(why) => format!("{key} = {rendered}  # not in the input: {why}"),
        };
        self.lines.push((text, Some(owner.clone())));
    }

    /// A reference whose input paths the reader knows (`from`, one per name referred to):
    /// `key = name  # path = value; …`. None known: as [`Out::reference`].
    fn reference_from(
        &mut self,
        key: &str,
        rendered: String,
        from: &[Origin],
        owner: &Origin,
        input: &Value,
    ) {
        let Some(first) = from.first() else {
            return self.reference(key, rendered, owner, input);
        };
        let sources: Vec<String> = from.iter().map(|o| source(o, input)).collect();
        let text = format!("{key} = {rendered}  # {}", sources.join("; "));
        self.lines.push((text, Some(first.clone())));
    }

    fn text(&self) -> String {
        let mut s = String::new();
        for (l, _) in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// The comment naming where a value came from.
fn source(from: &Origin, input: &Value) -> String {
    match from {
        Origin::Input(path) => match value_at(input, path) {
            Some(v) => format!("{path} = {}", short(v)),
            None => path.clone(),
        },
        Origin::Chosen(why) => format!("not in the input: {why}"),
    }
}

/// A JSON value as one short line. A long string keeps its end, from a `/` where it has one:
/// an id's last segments name the resource (`"…/publicIPAddresses/web-lb-ip"`), its
/// subscription prefix does not.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 60 {
        return s;
    }
    match v.as_str() {
        Some(text) => {
            let count = text.chars().count();
            let tail: String = text.chars().skip(count.saturating_sub(55)).collect();
            let tail = match tail.find('/') {
                Some(i) if i > 0 => &tail[i..],
                _ => &tail[..],
            };
            let quoted = serde_json::to_string(tail).unwrap_or_default();
            format!("\"…{}", quoted.strip_prefix('"').unwrap_or(&quoted))
        }
        None => {
            let cut: String = s.chars().take(57).collect();
            format!("{cut}...")
        }
    }
}

/// The input's value at a path in any reader's notation: a JSON path (Azure), a Terraform
/// resource address and attribute, a Kubernetes `Kind/namespace/name.` path.
fn value_at<'a>(input: &'a Value, path: &str) -> Option<&'a Value> {
    lookup(input, path)
        .or_else(|| super::terraform::value_at(input, path))
        .or_else(|| super::kubernetes::value_at(input, path))
}

/// The value at a JSON path such as `resources[2].properties.x[0]["a.b"]`, if the path is
/// in that notation and leads somewhere.
pub(super) fn lookup<'a>(input: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = input;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find("\"]")?;
            v = v.get(&r[..end])?;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            v = v.get(r[..end].parse::<usize>().ok()?)?;
            rest = &r[end + 1..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            v = v.get(&r[..end])?;
            rest = &r[end..];
        }
    }
    Some(v)
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(60) && d.subsec_nanos() == 0 {
        format!("\"{}m\"", s / 60)
    } else if d.subsec_nanos() == 0 {
        format!("\"{s}s\"")
    } else {
        format!("\"{}ms\"", d.as_millis())
    }
}

fn protocol(p: Protocol) -> String {
    match p {
        Protocol::Tcp => "\"tcp\"",
        Protocol::Udp => "\"udp\"",
        Protocol::All => "\"all\"",
    }
    .to_string()
}

fn expiry(e: Expiry) -> String {
    match e {
        Expiry::Silent => "\"silent\"",
        Expiry::Reset => "\"reset\"",
        Expiry::ResetOnNext => "\"reset-on-next\"",
    }
    .to_string()
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// What identifies an input address: the address, or the name of what has none.
fn address_key(address: &Address) -> String {
    match address {
        Address::Ip(ip) => ip.to_string(),
        Address::Named { name, .. } => name.clone(),
    }
}

/// The last host number a lab address takes in its documentation range.
const LAST_HOST: u32 = 254;

/// Which lab range an address goes to.
#[derive(Clone, Copy)]
enum Side {
    Frontend,
    Member,
}

/// Input addresses and names → lab addresses, each input address given one lab address.
#[derive(Default)]
struct Mapper {
    given: HashMap<String, IpAddr>,
    order: Vec<(String, String)>,
    next_front: u32,
    next_member: u32,
}

impl Mapper {
    fn map(&mut self, address: &Address, side: Side, what: &str) -> Result<IpAddr, ImportError> {
        let key = address_key(address);
        let family = match address {
            Address::Ip(IpAddr::V4(_)) => Family::V4,
            Address::Ip(IpAddr::V6(_)) => Family::V6,
            Address::Named { family, .. } => *family,
        };
        if let Some(ip) = self.given.get(&key) {
            return Ok(*ip);
        }
        // Frontends take .10 to .254 (245), members .11 to .254 (244).
        let (counter, base, kind) = match side {
            Side::Frontend => (&mut self.next_front, 10, "frontends"),
            Side::Member => (&mut self.next_member, 11, "members"),
        };
        let n = base + *counter;
        if n > LAST_HOST {
            return Err(ImportError::at(
                "",
                format!(
                    "more {kind} than the lab's documentation range holds ({})",
                    LAST_HOST - base + 1
                ),
            ));
        }
        *counter += 1;
        let ip: IpAddr = match (side, family) {
            (Side::Frontend, Family::V4) => Ipv4Addr::new(203, 0, 113, n as u8).into(),
            (Side::Member, Family::V4) => Ipv4Addr::new(192, 0, 2, n as u8).into(),
            (Side::Frontend, Family::V6) => {
                Ipv6Addr::new(0xfd00, 0, 0x113, 0, 0, 0, 0, n as u16).into()
            }
            (Side::Member, Family::V6) => Ipv6Addr::new(0xfd00, 0, 2, 0, 0, 0, 0, n as u16).into(),
        };
        self.given.insert(key.clone(), ip);
        self.order.push((format!("{key} ({what})"), ip.to_string()));
        Ok(ip)
    }
}

/// Names made valid (letters, digits, `-`, `_`, `.`) and unique within their kind; the
/// references of rules follow the renames.
#[derive(Default)]
struct Names {
    used: HashSet<String>,
    renamed: HashMap<String, String>,
}

impl Names {
    fn give(&mut self, input: &str, fallback: &str) -> String {
        let mut base: String = input
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if base.is_empty() {
            base = fallback.to_string();
        }
        let mut name = base.clone();
        let mut n = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.renamed
            .entry(input.to_string())
            .or_insert(name.clone());
        name
    }

    fn of(&self, input: &str) -> String {
        self.renamed
            .get(input)
            .cloned()
            .unwrap_or_else(|| input.to_string())
    }
}

/// Renders `draft`, read from `input` (the parsed file `file_name`), and validates it.
pub(super) fn write(
    draft: &Draft,
    input: &Value,
    format: Format,
    file_name: &str,
    options: &Options,
) -> Result<Imported, ImportError> {
    let mut mapper = Mapper::default();
    let mut frontends = Names::default();
    let mut pools = Names::default();
    let mut members = Names::default();
    let mut rules = Names::default();
    let mut body = Out::default();
    let mut placed: HashSet<String> = HashSet::new();
    // A section: a blank line, the notes on it, `[[table]]`, and its name made unique among
    // `names` (`fallback` for a name that is not valid), which it returns.
    let mut open =
        |out: &mut Out, table: &str, name: &Sourced<String>, names: &mut Names, fallback: &str| {
            out.line("");
            for n in draft
                .notes
                .iter()
                .filter(|n| n.on.as_deref() == Some(name.value.as_str()))
            {
                out.comment(&format!("note: {} ({})", n.text, source(&n.from, input)));
            }
            placed.insert(name.value.clone());
            out.line(format!("[[{table}]]"));
            let given = names.give(&name.value, fallback);
            out.value("name", quoted(&given), &name.from, input);
            given
        };

    for f in &draft.frontends {
        let name = open(&mut body, "frontend", &f.name, &mut frontends, "frontend");
        let ip = mapper.map(
            &f.address.value,
            Side::Frontend,
            &format!("frontend {name}"),
        )?;
        body.value("address", quoted(&ip.to_string()), &f.address.from, input);
        if let Some(t) = &f.idle_timeout {
            body.value("idle_timeout", duration(t.value), &t.from, input);
        }
    }

    let mut stand_ins = 0;
    let mut member_of: HashMap<String, String> = HashMap::new();
    for p in &draft.backend_pools {
        let name = open(&mut body, "backend_pool", &p.name, &mut pools, "pool");
        body.line("members = [  # one line per member, with its sources");
        let stand_in;
        let list: &[Member] = if p.members.is_empty() {
            stand_ins += 1;
            let vm = format!("vm{stand_ins}");
            body.comment(&format!(
                "  the input names no member of pool {name}: {vm} stands in for one"
            ));
            stand_in = [Member {
                name: Sourced::chosen(vm.clone(), "a stand-in member, the input names none"),
                address: Sourced::chosen(
                    Address::Named {
                        name: format!("{vm} of pool {name}"),
                        family: Family::V4,
                    },
                    "a stand-in member's lab address",
                ),
            }];
            &stand_in
        } else {
            &p.members
        };
        for m in list {
            let member = members.give(&m.name.value, "vm");
            // A lab host is in one pool: a host the input puts in two pools (a VM in an
            // inbound and an outbound pool) is two lab hosts.
            let key = address_key(&m.address.value);
            let address = match member_of.get(&key) {
                Some(first) => {
                    body.comment(&format!(
                        "  {key} is also member {first}: a lab host is in one pool, so this pool has its own"
                    ));
                    Address::Named {
                        name: format!("{key} again"),
                        family: match m.address.value {
                            Address::Ip(IpAddr::V6(_)) => Family::V6,
                            _ => Family::V4,
                        },
                    }
                }
                None => m.address.value.clone(),
            };
            member_of.entry(key).or_insert(member.clone());
            let ip = mapper.map(&address, Side::Member, &format!("member {member}"))?;
            // One line per member: the address's source names it (the name's is the rest).
            let text = format!(
                "  {{ name = {}, address = {} }},  # name: {}; address: {}",
                quoted(&member),
                quoted(&ip.to_string()),
                source(&m.name.from, input),
                source(&m.address.from, input)
            );
            body.lines.push((text, Some(m.address.from.clone())));
        }
        body.line("]");
    }

    let idle = |out: &mut Out, i: &Idle| {
        if let Some(t) = &i.timeout {
            out.value("idle_timeout", duration(t.value), &t.from, input);
        }
        if let Some(e) = &i.expiry {
            out.value("expiry", expiry(e.value), &e.from, input);
        }
    };

    for r in &draft.lb_rules {
        open(&mut body, "lb_rule", &r.name, &mut rules, "rule");
        body.reference(
            "frontend",
            quoted(&frontends.of(&r.frontend)),
            &r.name.from,
            input,
        );
        body.value(
            "protocol",
            protocol(r.protocol.value),
            &r.protocol.from,
            input,
        );
        body.value(
            "frontend_port",
            r.frontend_port.value.to_string(),
            &r.frontend_port.from,
            input,
        );
        body.reference(
            "backend_pool",
            quoted(&pools.of(&r.backend_pool)),
            &r.name.from,
            input,
        );
        body.value(
            "backend_port",
            r.backend_port.value.to_string(),
            &r.backend_port.from,
            input,
        );
        idle(&mut body, &r.idle);
    }

    for r in &draft.inbound_nat_rules {
        open(
            &mut body,
            "inbound_nat_rule",
            &r.name,
            &mut rules,
            "nat-rule",
        );
        body.reference(
            "frontend",
            quoted(&frontends.of(&r.frontend)),
            &r.name.from,
            input,
        );
        body.value(
            "protocol",
            protocol(r.protocol.value),
            &r.protocol.from,
            input,
        );
        match &r.target {
            NatTarget::Single {
                frontend_port,
                member,
            } => {
                body.value(
                    "frontend_port",
                    frontend_port.value.to_string(),
                    &frontend_port.from,
                    input,
                );
                body.reference("member", quoted(&members.of(member)), &r.name.from, input);
            }
            NatTarget::Range {
                first_port,
                last_port,
                backend_pool,
            } => {
                let text = format!(
                    "frontend_port_range = [{}, {}]  # {}; {}",
                    first_port.value,
                    last_port.value,
                    source(&first_port.from, input),
                    source(&last_port.from, input)
                );
                body.lines.push((text, Some(first_port.from.clone())));
                body.reference(
                    "backend_pool",
                    quoted(&pools.of(backend_pool)),
                    &r.name.from,
                    input,
                );
            }
        }
        body.value(
            "backend_port",
            r.backend_port.value.to_string(),
            &r.backend_port.from,
            input,
        );
        idle(&mut body, &r.idle);
    }

    for r in &draft.outbound_rules {
        open(&mut body, "outbound_rule", &r.name, &mut rules, "outbound");
        body.reference_from(
            "frontend",
            quoted(&frontends.of(&r.frontend)),
            r.refs_from.frontend.as_slice(),
            &r.name.from,
            input,
        );
        body.reference_from(
            "backend_pool",
            quoted(&pools.of(&r.backend_pool)),
            &r.refs_from.backend_pools,
            &r.name.from,
            input,
        );
        body.value(
            "protocol",
            protocol(r.protocol.value),
            &r.protocol.from,
            input,
        );
        if let Some(p) = &r.ports_per_member {
            body.value("ports_per_member", p.value.to_string(), &p.from, input);
        }
        if let Some(t) = &r.time_wait {
            body.value("time_wait", duration(t.value), &t.from, input);
        }
        idle(&mut body, &r.idle);
    }

    for g in &draft.nat_gateways {
        open(&mut body, "nat_gateway", &g.name, &mut rules, "nat-gateway");
        body.reference_from(
            "frontend",
            quoted(&frontends.of(&g.frontend)),
            g.refs_from.frontend.as_slice(),
            &g.name.from,
            input,
        );
        let list: Vec<String> = g
            .backend_pools
            .iter()
            .map(|p| quoted(&pools.of(p)))
            .collect();
        body.reference_from(
            "backend_pools",
            format!("[{}]", list.join(", ")),
            &g.refs_from.backend_pools,
            &g.pools_from,
            input,
        );
        idle(&mut body, &g.idle);
    }

    if !draft.ignored.is_empty() {
        body.line("");
        body.comment("Not imported:");
        for i in &draft.ignored {
            body.comment(&format!("ignored: {}: {}", i.path, i.why));
        }
    }

    // The header, now that the mapping is known.
    let profile = draft.profile.clone().unwrap_or_else(|| {
        Sourced::chosen(
            "azure-lb",
            "the input says nothing that picks another profile",
        )
    });
    let mut out = Out::default();
    out.comment(&format!(
        "Imported by `idlegate import` from {file_name} ({} input).",
        format.as_str()
    ));
    out.comment(&format!(
        "Profile {}: {}.",
        profile.value,
        match &profile.from {
            Origin::Input(path) => format!("from {path}"),
            Origin::Chosen(why) => why.clone(),
        }
    ));
    out.comment(
        "Every value names its source in the input; `not in the input` says why idlegate chose it.",
    );
    let general: Vec<&Note> = draft
        .notes
        .iter()
        .filter(|n| n.on.as_ref().is_none_or(|on| !placed.contains(on)))
        .collect();
    for n in general {
        let on = n.on.as_ref().map(|o| format!("{o}: ")).unwrap_or_default();
        out.comment(&format!(
            "note: {on}{} ({})",
            n.text,
            source(&n.from, input)
        ));
    }
    if !mapper.order.is_empty() {
        out.line("#");
        out.comment("Address mapping (input → lab; a lab uses documentation addresses only):");
        for (from, to) in &mapper.order {
            out.comment(&format!("  {from} → {to}"));
        }
    }
    out.line("#");
    out.comment("  idlegate lab up --config THIS_FILE");
    out.value("profile", quoted(profile.value), &profile.from, input);
    if let Some(scale) = options.time_scale {
        let why = format!("--time-scale {scale}: the lab divides every timer by {scale}");
        out.value("time_scale", scale.to_string(), &Origin::Chosen(why), input);
    }
    out.lines.extend(body.lines);

    let toml = out.text();
    if let Err(e) = Config::from_toml(&toml, file_name) {
        let origin = e
            .line
            .checked_sub(1)
            .and_then(|i| out.lines.get(i))
            .and_then(|(_, o)| o.clone());
        let error = match origin {
            Some(Origin::Input(path)) => {
                let path = match value_at(input, &path) {
                    Some(v) => format!("{path} = {}", short(v)),
                    None => path,
                };
                ImportError::at(path, e.message.clone())
            }
            Some(Origin::Chosen(why)) if why.starts_with("--time-scale") => {
                ImportError::at("", format!("--time-scale: {}", e.message))
            }
            _ if e.line == 0 => ImportError::at(
                "",
                format!("the config written from it is refused: {}", e.message),
            ),
            _ => ImportError::at(
                "",
                format!(
                    "the config written from it is refused: line {}: {}",
                    e.line, e.message
                ),
            ),
        };
        return Err(match e.hint {
            Some(h) => error.with_hint(h),
            None => error,
        });
    }
    Ok(Imported {
        toml,
        format,
        profile: profile.value,
        mapping: mapper.order,
        ignored: draft.ignored.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps `n` distinct addresses to `side`; the error of the first one that does not fit.
    fn fill(side: Side, n: u32) -> Result<(), ImportError> {
        let mut m = Mapper::default();
        for i in 0..n {
            let a = Address::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, i as u8)));
            m.map(&a, side, "x")?;
        }
        Ok(())
    }

    #[test]
    fn the_lab_holds_245_frontends_and_244_members_and_says_so_past_them() {
        assert!(fill(Side::Frontend, 245).is_ok());
        assert_eq!(
            fill(Side::Frontend, 246).unwrap_err().message,
            "more frontends than the lab's documentation range holds (245)"
        );
        assert!(fill(Side::Member, 244).is_ok());
        assert_eq!(
            fill(Side::Member, 245).unwrap_err().message,
            "more members than the lab's documentation range holds (244)"
        );
    }
}
