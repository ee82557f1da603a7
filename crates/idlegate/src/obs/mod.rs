//! Observability: what idlegate shows of itself while it runs.
//!
//! One writer of the Prometheus text format ([`prometheus`]) and one HTTP server
//! ([`scrape`]) for the metrics of every command that serves them, and packet capture to
//! pcap files ([`capture`]).

pub mod capture;
pub mod prometheus;
pub mod scrape;
