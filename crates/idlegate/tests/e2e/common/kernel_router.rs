//! A real Linux NAT router in namespaces: the independent reference the conntrack profile and
//! the probe are checked against. The router masquerades the client's connections (or, as
//! [`KernelRouter::dnat_only`], forwards one port of its outside address to the client and
//! masquerades nothing); its forward chain drops what conntrack calls invalid, its input chain
//! takes only what belongs to its own connections. Root only.

#![allow(dead_code)] // each test file uses what it needs

use super::unique;
use idlegate::sys::netns::Namespace;
use idlegate_core::profile::Pickup;
use std::io::Write;
use std::process::{Command, Stdio};

/// A Linux NAT router between a client and a server namespace, torn down on drop.
/// What the router does with a packet conntrack calls invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Drop,
    /// Answer with ICMP "administratively prohibited", as many firewalls do.
    RejectWithIcmp,
}

/// What the router's NAT does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nat {
    /// Masquerade whatever leaves on the outside.
    Masquerade,
    /// DNAT TCP `port` of the router's outside address to the client's same port; no
    /// masquerade. The server's default route points at the router, as the lab's `internet`
    /// host's points at the gateway, so what the server sends to the client's own address
    /// goes back through the router.
    DnatOnly { port: u16 },
}

pub struct KernelRouter {
    pub client: String,
    pub server: String,
    // Dropped last, after nothing uses them.
    _namespaces: [Namespace; 3],
}

fn run(args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl KernelRouter {
    /// The router with `established_s` as its established timeout and loose pickup on or off;
    /// packets conntrack calls invalid (a late packet of a forgotten connection) are dropped.
    pub fn new(established_s: u64, pickup: Pickup) -> KernelRouter {
        KernelRouter::with(established_s, pickup, Invalid::Drop)
    }

    /// The same, with `invalid` deciding what the forward chain does with invalid packets.
    pub fn with(established_s: u64, pickup: Pickup, invalid: Invalid) -> KernelRouter {
        KernelRouter::build(established_s, pickup, invalid, Nat::Masquerade)
    }

    /// A router that forwards TCP `port` of its outside address (203.0.113.10) to the
    /// client's (192.0.2.11) same port and masquerades nothing: the client is a server behind a
    /// port forward. Invalid packets are dropped.
    pub fn dnat_only(established_s: u64, pickup: Pickup, port: u16) -> KernelRouter {
        KernelRouter::build(established_s, pickup, Invalid::Drop, Nat::DnatOnly { port })
    }

    fn build(established_s: u64, pickup: Pickup, invalid: Invalid, nat: Nat) -> KernelRouter {
        let tag = unique("kr");
        let [c, r, s] = ["c", "r", "s"].map(|h| format!("ig-{tag}-{h}"));
        let namespaces = [&c, &r, &s].map(|n| Namespace::create(n).expect("namespace"));
        let ip = |args: &[&str]| crate::common::ip(args).unwrap_or_else(|e| panic!("{e:#}"));
        // Both veth pairs are made inside the namespaces: nothing is left in the root one.
        ip(&[
            "-n", &r, "link", "add", "in0", "type", "veth", "peer", "name", "c0", "netns", &c,
        ]);
        ip(&[
            "-n", &r, "link", "add", "out0", "type", "veth", "peer", "name", "s0", "netns", &s,
        ]);
        for (ns, dev, addr) in [
            (&c, "c0", "192.0.2.11/24"),
            (&r, "in0", "192.0.2.1/24"),
            (&r, "out0", "203.0.113.10/24"),
            (&s, "s0", "203.0.113.100/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &c, "route", "add", "default", "via", "192.0.2.1"]);
        let nat_chains = match nat {
            Nat::Masquerade => {
                "chain postrouting { type nat hook postrouting priority 100; oif \"out0\" masquerade; }"
                    .to_string()
            }
            Nat::DnatOnly { port } => {
                ip(&["-n", &s, "route", "add", "default", "via", "203.0.113.10"]);
                format!("chain prerouting {{ type nat hook prerouting priority -100; iif \"out0\" ip daddr 203.0.113.10 tcp dport {port} dnat to 192.0.2.11:{port}; }}")
            }
        };
        let verdict = match invalid {
            Invalid::Drop => "drop",
            Invalid::RejectWithIcmp => "reject with icmp type admin-prohibited",
        };
        let ruleset = format!("table ip idlegate_reference {{
  chain forward {{ type filter hook forward priority 0; policy accept; ct state invalid {verdict}; }}
  chain input {{ type filter hook input priority 0; policy drop; ct state established,related accept; iif \"lo\" accept; }}
  {nat_chains}
}}
");
        run(
            &["ip", "netns", "exec", &r, "nft", "-f", "-"],
            Some(&ruleset),
        );
        // The ruleset loaded nf_conntrack, so its per-namespace sysctls now exist.
        let established =
            format!("net.netfilter.nf_conntrack_tcp_timeout_established={established_s}");
        let loose = format!(
            "net.netfilter.nf_conntrack_tcp_loose={}",
            u8::from(pickup == Pickup::Loose)
        );
        for setting in ["net.ipv4.ip_forward=1", &established, &loose] {
            run(&["ip", "netns", "exec", &r, "sysctl", "-qw", setting], None);
        }
        KernelRouter {
            client: c,
            server: s,
            _namespaces: namespaces,
        }
    }
}
