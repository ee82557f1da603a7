//! Each test a probe made, as its report lists it (`tried` in `probe --json`, the marks of
//! `probe --html`): which way it sent after the idle period, how long it idled, in which part
//! of the search, and what it saw.

use serde::Serialize;

/// Which way a test sent after its idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    ClientToServer,
    ServerToClient,
}

/// The part of the search a test belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// Round 1: geometric idle times until the first dead one.
    Coarse,
    /// Round 2: idle times splitting the bracket.
    Fine,
    /// Round 2: past the bracket, to see what the box does at expiry.
    Behaviour,
    /// Round 2: past the bracket with TCP keepalive, to see whether it refreshes the flow.
    Keepalive,
}

/// One test and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tried {
    pub direction: Way,
    /// How long the connection idled before the test.
    pub idle_s: f64,
    /// The test's TCP keepalive interval; `null` without.
    pub keepalive_s: Option<f64>,
    pub part: Part,
    /// Whether the connection still worked after the idle period.
    pub alive: bool,
    /// What the test saw: `alive`, `reset-at-expiry`, `reset-on-next`, `silent`,
    /// `acked-not-delivered`, `server-reset`, `icmp`, `closed` or `confirmation-lost`.
    pub seen: &'static str,
}
