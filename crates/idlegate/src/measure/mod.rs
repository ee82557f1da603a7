//! Measure: a real path's idle timeout and what happens when it expires.
//!
//! [`probe`] holds idle connections open for longer and longer against an [`echo`] server on
//! the far side of the path and reports when, and how, the path forgot them.

pub mod echo;
pub mod probe;
