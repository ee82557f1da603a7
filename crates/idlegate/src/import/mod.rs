//! `idlegate import`: a box's own configuration in, an idlegate config out.
//!
//! The input is what the user already has: an ARM template (or a compiled Bicep file) or the
//! JSON of `az network lb show` / `az network nat gateway show` / `az network public-ip show`;
//! the JSON of `terraform show -json` (a plan or a state); Kubernetes Service manifests (YAML
//! or JSON). [`import`] recognises the format, a reader ([`azure`], [`terraform`],
//! [`kubernetes`]) turns it into a [`draft::Draft`] whose every value carries its path in the
//! input, and the writer renders the draft as the config's TOML:
//!
//! - every value with a comment naming its source (`# loadBalancingRules[0].properties.idleTimeoutInMinutes`);
//! - addresses mapped into the lab's documentation ranges (frontends into 203.0.113.0/24,
//!   members into 192.0.2.0/24, IPv6 into fd00::/8), the mapping written out at the top;
//! - what the reader ignored, and why, listed at the end.
//!
//! The rendered text is then validated as any config file is ([`idlegate_core::Config::from_toml`]),
//! so a value outside the platform's documented range is refused with the range, and the
//! error names the value's path in the input, not a line of a file the user never saw.
//!
//! Pure: text in, text out. The command (`cli/import.rs`) reads and writes the files.

pub mod azure;
pub mod draft;
mod emit;
pub mod kubernetes;
pub mod terraform;
#[cfg(test)]
mod tests;

use draft::{Draft, Platform};

/// The formats `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An ARM template (`resources[]` with `type`s such as `Microsoft.Network/loadBalancers`),
    /// or the JSON of `az … show` (one resource, or a list of them).
    Azure,
    /// `terraform show -json` of a plan (`planned_values`, `resource_changes`) or a state
    /// (`values.root_module`).
    Terraform,
    /// Kubernetes manifests: one or more documents, Services of `type: LoadBalancer` read.
    Kubernetes,
}

/// What the user may say about the input and the config to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The format, when the user names it (`--format`); otherwise [`detect`]ed.
    pub format: Option<Format>,
    /// Which platform's boxes to import from an input that has several (`--platform`).
    pub platform: Option<Platform>,
    /// Written as the config's `time_scale` (`--time-scale`), for a lab run in seconds.
    pub time_scale: Option<u32>,
}

/// A mistake in the input, said at its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ImportError {
    /// The path in the input (the reader's notation), or "" for the input as a whole.
    pub path: String,
    pub message: String,
    /// What to do instead, where there is something.
    pub hint: Option<String>,
}

impl ImportError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> ImportError {
        ImportError {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(self, hint: impl Into<String>) -> ImportError {
        ImportError {
            hint: Some(hint.into()),
            ..self
        }
    }
}

/// A reader: the parsed input (JSON, or YAML read into the same value model) to a draft.
/// `platform` is the user's `--platform`, for inputs with boxes of several platforms (a reader
/// that finds several without it refuses, with a hint naming `--platform`).
pub type Reader = fn(&serde_json::Value, Option<Platform>) -> Result<Draft, ImportError>;

/// What an import gives: the config's text and what the command prints beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The config, as TOML with a comment on every value (already validated).
    pub toml: String,
    /// The format read.
    pub format: Format,
    /// The profile written.
    pub profile: &'static str,
    /// Input address or name → lab address, in the order written.
    pub mapping: Vec<(String, String)>,
    /// What was not imported, and why (also listed at the end of `toml`).
    pub ignored: Vec<draft::Ignored>,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Azure => "azure",
            Format::Terraform => "terraform",
            Format::Kubernetes => "kubernetes",
        }
    }
}

/// Reads `text` (the contents of `file_name`, named in the config's header), and writes it as
/// a validated idlegate config.
pub fn import(text: &str, file_name: &str, options: &Options) -> Result<Imported, ImportError> {
    let json = serde_json::from_str::<serde_json::Value>(text);
    let format = match (options.format, &json) {
        (Some(format), _) => format,
        (None, Ok(value)) => detect(value).ok_or_else(not_recognised)?,
        (None, Err(_)) if looks_like_kubernetes_yaml(text) => Format::Kubernetes,
        (None, Err(e)) => return Err(not_json(text, e)),
    };
    let value = match (format, json) {
        (_, Ok(value)) => value,
        (Format::Kubernetes, Err(_)) => parse_kubernetes(text)?,
        (_, Err(e)) => return Err(not_json(text, &e)),
    };
    let reader: Reader = match format {
        Format::Azure => azure::read,
        Format::Terraform => terraform::read,
        Format::Kubernetes => kubernetes::read,
    };
    let mut draft = reader(&value, options.platform)?;
    draft.udp_rules_take_no_idle_settings();
    emit::write(&draft, &value, format, file_name, options)
}

/// The format of a parsed input, from its shape; None when it is none of them.
pub fn detect(value: &serde_json::Value) -> Option<Format> {
    use serde_json::Value;
    let is_azure_resource = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("microsoft.network/"))
            || [
                "frontendIPConfigurations",
                "loadBalancingRules",
                "publicIpAddresses",
            ]
            .iter()
            .any(|k| v.get(k).is_some() || v.pointer(&format!("/properties/{k}")).is_some())
            || (v.get("idleTimeoutInMinutes").is_some() && v.get("ipAddress").is_some())
            || (v.pointer("/properties/idleTimeoutInMinutes").is_some()
                && v.pointer("/properties/ipAddress").is_some())
    };
    let is_kubernetes = |v: &Value| v.get("apiVersion").is_some() && v.get("kind").is_some();
    match value {
        Value::Object(o) => {
            if o.contains_key("format_version") && o.contains_key("terraform_version") {
                Some(Format::Terraform)
            } else if o
                .get("$schema")
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains("deploymentTemplate"))
                || o.get("resources").is_some_and(Value::is_array)
                || is_azure_resource(value)
            {
                Some(Format::Azure)
            } else if is_kubernetes(value) {
                Some(Format::Kubernetes)
            } else {
                None
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if items.iter().all(is_azure_resource) {
                Some(Format::Azure)
            } else if items.iter().all(is_kubernetes) {
                Some(Format::Kubernetes)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn not_recognised() -> ImportError {
    ImportError::at(
        "",
        "not a format idlegate imports (an ARM template or `az network … show` JSON, `terraform show -json`, Kubernetes manifests)",
    )
    .with_hint("name the format with --format azure|terraform|kubernetes")
}

/// serde_json's reason ends with "at line L column C": said once. The hint names a Service
/// manifest when `text` reads as YAML.
fn not_json(text: &str, e: &serde_json::Error) -> ImportError {
    let error = ImportError::at("", format!("not JSON ({e}), nor Kubernetes YAML"));
    if looks_like_yaml(text) {
        error.with_hint("a Kubernetes input is a Service manifest, with apiVersion and kind (`kubectl get service NAME -o yaml`); for Azure or Terraform give the JSON the tool prints (`az network lb show -o json`, `terraform show -json`)")
    } else {
        error.with_hint("give the JSON the tool prints (`az network lb show -o json`, `terraform show -json`), or --format")
    }
}

/// Whether `text` reads as YAML: its first line that is not blank or a comment is a document
/// marker, a list item or a `key:` mapping entry.
fn looks_like_yaml(text: &str) -> bool {
    let Some(first) = text
        .lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    let key_entry = first.split_once(':').is_some_and(|(key, rest)| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_alphanumeric() || "_-./".contains(c))
            && (rest.is_empty() || rest.starts_with(' '))
    });
    first.starts_with("---") || first.starts_with("- ") || key_entry
}

fn looks_like_kubernetes_yaml(text: &str) -> bool {
    let has = |key: &str| text.lines().any(|l| l.trim_start().starts_with(key));
    has("apiVersion:") && has("kind:")
}

/// Kubernetes manifests as a value (YAML documents read by the kubernetes reader's parser).
fn parse_kubernetes(text: &str) -> Result<serde_json::Value, ImportError> {
    kubernetes::parse(text)
}
