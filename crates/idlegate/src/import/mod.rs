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
