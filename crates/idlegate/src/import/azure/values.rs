//! Reading one setting: under `properties` or flattened, resolved, typed, with its path.

use super::super::draft::*;
use super::super::ImportError;
use super::*;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

impl<'a> Azure<'a> {
    pub(super) fn ignore(&mut self, path: &str, why: impl Into<String>) {
        let path = if path.is_empty() { "(the input)" } else { path };
        self.draft.ignored.push(Ignored {
            path: path.to_string(),
            why: why.into(),
        });
    }

    pub(super) fn note(&mut self, on: &str, text: impl Into<String>, path: String) {
        self.draft.notes.push(Note {
            on: Some(on.to_string()),
            text: text.into(),
            from: Origin::Input(path),
        });
    }

    /// A setting of `obj` (at `base`): under `properties` (REST, ARM) or flattened (the CLI).
    pub(super) fn prop(
        &self,
        obj: &'a Value,
        base: &str,
        key: &str,
    ) -> Option<(&'a Value, String)> {
        if let Some(v) = obj.get("properties").and_then(|p| p.get(key)) {
            return Some((v, join(&join(base, "properties"), key)));
        }
        obj.get(key).map(|v| (v, join(base, key)))
    }

    pub(super) fn value(
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

    pub(super) fn string(
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

    pub(super) fn number(
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

    pub(super) fn boolean(
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

    pub(super) fn port(
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
    pub(super) fn minutes(
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
    pub(super) fn items(&self, obj: &'a Value, base: &str, key: &str) -> Vec<(&'a Value, String)> {
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
    pub(super) fn reference(
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

    pub(super) fn name(
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

    pub(super) fn protocol(
        &self,
        obj: &'a Value,
        base: &str,
    ) -> Result<Sourced<Protocol>, ImportError> {
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
    pub(super) fn idle(&self, obj: &'a Value, base: &str) -> Result<Idle, ImportError> {
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
    pub(super) fn public_ip(&mut self, name: &str) -> Option<(String, &'a Value)> {
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
    pub(super) fn frontend_of_ip(
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
}
