//! What a middlebox does when it forgets an idle flow.
//!
//! The three behaviours real boxes show (their sources: `crate::model::profile`): Azure's default
//! silent drop, Azure's optional "TCP reset" that resets both endpoints at the moment of expiry,
//! and the AWS NAT gateway / NLB way of staying silent until the dead flow's next packet, which
//! is answered with a RST; and, as a test double, acknowledging data it will never deliver.

use std::fmt;
use std::str::FromStr;

/// The expiry action of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Nothing is sent; later packets of the flow are dropped (Azure's default).
    Silent,
    /// At the moment of expiry a RST goes to both endpoints, with the exact sequence number
    /// each one expects (Azure "TCP reset on idle"). Only for ESTABLISHED flows, as Azure does.
    Reset,
    /// Silent at expiry; the next packet of the dead flow, from either side, is answered with a
    /// RST to its sender (AWS NAT gateway, AWS NLB).
    ResetOnNext,
    /// After expiry the gateway answers the sender's data with a valid ACK and never delivers
    /// it: what a user once reported of an Azure path and later traced to their own router or
    /// ISP. No real box is known to do it on purpose; it is a
    /// test double for probes and applications that must detect it. Only for ESTABLISHED flows.
    AckAndDiscard,
}

impl Expiry {
    pub const ALL: [Expiry; 4] = [
        Expiry::Silent,
        Expiry::Reset,
        Expiry::ResetOnNext,
        Expiry::AckAndDiscard,
    ];

    /// The name used in the config file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Silent => "silent",
            Expiry::Reset => "reset",
            Expiry::ResetOnNext => "reset-on-next",
            Expiry::AckAndDiscard => "ack-and-discard",
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not an expiry action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of \"silent\", \"reset\", \"reset-on-next\", \"ack-and-discard\"")]
pub struct UnknownExpiry;

impl FromStr for Expiry {
    type Err = UnknownExpiry;
    fn from_str(s: &str) -> Result<Expiry, UnknownExpiry> {
        Expiry::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or(UnknownExpiry)
    }
}
