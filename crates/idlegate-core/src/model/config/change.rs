//! A rule's idle settings changed while the gateway runs (the HTTP API's
//! `POST /api/rules/{name}`), validated exactly as the file is: the change is written into the
//! config's own TOML (the rule's table, found by name) and the whole text read again by
//! [`Config::from_toml`], so a value the file would refuse is refused with the same words.
//! Only the changed rule's [`Idle`] is taken from what is read; everything else (a lab's time
//! scale among it) stays as it is.

use super::*;

/// A change to one rule's idle settings, each as the config file writes it (`"10m"`,
/// `"reset"`), unscaled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleChange {
    pub idle_timeout: Option<String>,
    pub expiry: Option<String>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleChangeError {
    /// No rule has that name.
    #[error("no rule is named \"{name}\" ({})", names_list(known.iter()))]
    UnknownRule { name: String, known: Vec<String> },
    /// The file would refuse the value: what it would say, and what to write instead where
    /// the mistake suggests it.
    #[error("{message}")]
    Invalid {
        message: String,
        hint: Option<String>,
    },
    /// The change could not alter what the rule's flows run (a UDP rule's `idle_timeout`, an
    /// outbound rule a NAT gateway overrides): why, and what to change instead.
    #[error("{0}")]
    NoEffect(String),
}

/// The tables of the config that are rules with idle settings.
const RULE_TABLES: [&str; 4] = [
    "lb_rule",
    "inbound_nat_rule",
    "nat_gateway",
    "outbound_rule",
];

impl Config {
    /// The config with rule `name`'s idle timeout and/or expiry action changed as `change`
    /// says, each marked as changed through the API (which `--explain` says); refused as the
    /// file would refuse the same values.
    pub fn with_rule_change(
        &self,
        name: &str,
        change: &RuleChange,
    ) -> Result<Config, RuleChangeError> {
        let unknown = || RuleChangeError::UnknownRule {
            name: name.to_string(),
            known: self.rule_names().map(str::to_string).collect(),
        };
        if !self.rule_names().any(|n| n == name) {
            return Err(unknown());
        }
        if let Some(why) = self.no_effect(name, change) {
            return Err(RuleChangeError::NoEffect(why));
        }
        let mut table: toml::Table =
            self.source
                .text
                .parse()
                .map_err(|e: toml::de::Error| RuleChangeError::Invalid {
                    message: format!("the config's text cannot be read again: {e}"),
                    hint: None,
                })?;
        // The first rule of that name in the tables' (alphabetical) order: rule names are
        // unique across every kind of rule (the config refuses a name used twice, in
        // `validate.rs`), so it is the one `idle_of` finds in the engine's order.
        let rule = table
            .iter_mut()
            .filter(|(key, _)| RULE_TABLES.contains(&key.as_str()))
            .filter_map(|(_, value)| value.as_array_mut())
            .flatten()
            .filter_map(toml::Value::as_table_mut)
            .find(|t| t.get("name").and_then(toml::Value::as_str) == Some(name))
            .ok_or_else(unknown)?;
        if let Some(t) = &change.idle_timeout {
            rule.insert("idle_timeout".into(), toml::Value::String(t.clone()));
        }
        if let Some(e) = &change.expiry {
            rule.insert("expiry".into(), toml::Value::String(e.clone()));
        }
        let text = table.to_string();
        // Positions in the error would point into the re-serialised text, not the file: only
        // its words and its hint are kept.
        let read =
            Config::from_toml(&text, &self.source.file).map_err(|e| RuleChangeError::Invalid {
                message: e.message,
                hint: e.hint,
            })?;
        let mut next = self.clone();
        let (Some(new), Some(idle)) = (read.idle_of(name), next.idle_of_mut(name)) else {
            return Err(unknown());
        };
        *idle = Idle {
            timeout_from: match change.idle_timeout {
                Some(_) => TimeoutFrom::Api,
                None => idle.timeout_from,
            },
            expiry_from: match change.expiry {
                Some(_) => ExpiryFrom::Api,
                None => idle.expiry_from,
            },
            ..*new
        };
        next.source = Source {
            text: text.into(),
            file: self.source.file.clone(),
        };
        Ok(next)
    }

    /// Why `change` to rule `name` could not alter what its flows run, if it could not: a
    /// UDP rule's flows run the profile's UDP timeouts and end silently; an outbound rule whose
    /// pool a NAT gateway serves runs the gateway's settings (Azure: the NAT gateway takes
    /// precedence), which are changed on the gateway.
    fn no_effect(&self, name: &str, change: &RuleChange) -> Option<String> {
        let lb = self.lb_rules.iter().map(|r| (&r.name, r.protocol));
        let nat = self.inbound_nat_rules.iter().map(|r| (&r.name, r.protocol));
        let out = self.outbound_rules.iter().map(|r| (&r.name, r.protocol));
        let udp = lb
            .chain(nat)
            .chain(out)
            .any(|(n, p)| n == name && p == Protocols::Udp);
        if udp && change.idle_timeout.is_some() {
            return Some(format!(
                "rule {name} is udp: its flows run the profile's UDP timeouts, not idle_timeout"
            ));
        }
        if udp {
            return Some(format!(
                "rule {name} is udp: its flows end silently, whatever its expiry"
            ));
        }
        let rule = self.outbound_rules.iter().find(|r| r.name == name)?;
        let gateway = self
            .nat_gateways
            .iter()
            .find(|g| g.backend_pools.contains(&rule.backend_pool))?;
        Some(format!(
            "outbound rule {name}'s pool {} leaves through NAT gateway {}, whose idle settings its flows run (Azure: a NAT gateway takes precedence over outbound rules): change {} instead (POST /api/rules/{})",
            self.backend_pools[rule.backend_pool].name, gateway.name, gateway.name, gateway.name
        ))
    }

    /// Every rule's name, in the engine's order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        let lb = self.lb_rules.iter().map(|r| r.name.as_str());
        let nat = self.inbound_nat_rules.iter().map(|r| r.name.as_str());
        let gw = self.nat_gateways.iter().map(|g| g.name.as_str());
        let out = self.outbound_rules.iter().map(|r| r.name.as_str());
        lb.chain(nat).chain(gw).chain(out)
    }

    /// Rule `name`'s idle settings.
    pub fn idle_of(&self, name: &str) -> Option<&Idle> {
        let lb = self.lb_rules.iter().map(|r| (&r.name, &r.idle));
        let nat = self.inbound_nat_rules.iter().map(|r| (&r.name, &r.idle));
        let gw = self.nat_gateways.iter().map(|g| (&g.name, &g.idle));
        let out = self.outbound_rules.iter().map(|r| (&r.name, &r.idle));
        lb.chain(nat)
            .chain(gw)
            .chain(out)
            .find(|(n, _)| *n == name)
            .map(|(_, idle)| idle)
    }

    fn idle_of_mut(&mut self, name: &str) -> Option<&mut Idle> {
        let lb = self.lb_rules.iter_mut().map(|r| (&r.name, &mut r.idle));
        let nat = self
            .inbound_nat_rules
            .iter_mut()
            .map(|r| (&r.name, &mut r.idle));
        let gw = self.nat_gateways.iter_mut().map(|g| (&g.name, &mut g.idle));
        let out = self
            .outbound_rules
            .iter_mut()
            .map(|r| (&r.name, &mut r.idle));
        lb.chain(nat)
            .chain(gw)
            .chain(out)
            .find(|(n, _)| *n == name)
            .map(|(_, idle)| idle)
    }
}
