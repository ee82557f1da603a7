//! What the operator writes and what the vendors publish: the TOML config, validated; the
//! real middleboxes' timers (profiles); which setting wins; what happens at expiry.

pub mod config;
pub mod expiry;
pub mod precedence;
pub mod profile;
pub mod units;
