//! `idlegate probe`: measure a path's idle timeout and what it does at expiry.

pub mod search;
