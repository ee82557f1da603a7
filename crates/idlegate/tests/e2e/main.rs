//! idlegate's end-to-end tests, one test binary: real Linux TCP stacks in network namespaces
//! the tests make, through the gateway, the relay, the tunnel, the probe and the CLI.
//!
//! One module per area (`cargo test -p idlegate --test e2e relay::` runs the relay's tests),
//! and [`common`], the helpers they share, compiled once. The tests run in parallel threads of
//! this one process: each uses its own names ([`common::unique`]), ports
//! ([`common::free_port`] or port 0) and namespaces, and the one process-wide setting a test
//! changes, the descriptor limit, is only ever raised, under a lock
//! ([`common::raise_fd_limit`]). Privilege drops and signals happen in the `idlegate`
//! processes the tests start, never in this one.
//!
//! Linux only: every test needs network namespaces, and the Windows build is tested from here
//! under Wine (`windows`). Built for another target, this binary holds no test.
#![cfg(target_os = "linux")]

mod common;

mod api;
mod api_example;
mod api_flags;
mod appservice;
mod audit;
mod audit_prometheus;
mod browser_harness;
mod cli;
mod conntrack;
mod demo_config;
mod deploy;
mod docs;
mod echo;
mod errors;
mod fragments;
mod gateway;
mod hardening;
mod icmp;
mod import;
mod import_kubernetes;
mod import_terraform;
mod ipv6;
mod json;
mod keepalive;
mod killed;
mod live_browser;
mod live_page;
mod netns_tun;
mod offpath;
mod operator;
mod probe;
mod probe_hostile;
mod probe_trust;
mod relay;
mod relay_messages;
mod reports_html;
mod rtnl;
mod scaled_handshake;
mod scenario;
mod standalone;
mod steering;
mod tunnel;
mod tunnel_exit;
mod tunnel_reuse;
mod tunnel_stress;
mod windows;
