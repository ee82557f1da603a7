//! Observability: what idlegate shows of itself while it runs.
//!
//! One HTTP server for the Prometheus metrics of every command that serves them
//! ([`scrape`]), and packet capture to pcap files ([`capture`]).

pub mod capture;
pub mod scrape;
