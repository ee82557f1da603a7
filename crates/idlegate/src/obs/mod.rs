//! Observability: what idlegate shows of itself while it runs.
//!
//! One writer of the Prometheus text format ([`prometheus`]) and one HTTP server
//! ([`scrape`]) for the metrics of every command that serves them, and packet capture to
//! pcapng files ([`capture`]); the one writer of the HTML reports ([`html`]); and what a failed command tells its user ([`report`]: the
//! `idlegate: …` line, its hint and its exit status).

pub mod capture;
pub mod html;
pub mod http;
pub mod prometheus;
pub mod report;
pub mod scrape;
