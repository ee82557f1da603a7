//! `--metrics ADDR`: what the gateway's Prometheus metrics say; [`crate::obs::scrape`] serves them
//! over HTTP on a thread of its own.
//!
//! `GET /metrics` answers the text exposition format (version 0.0.4) with the engine's counters
//! and the flow table as it stands, summed over the gateway's workers (each takes a
//! [`Snapshot`] of its shard; they [`Snapshot::merge`]): flows by rule and TCP state, expiries by action, drops by
//! reason, SNAT ports in use and free per frontend, packets and bytes per interface and
//! direction. The listener binds only where it is told.
//! The exposition is written by hand: it is a few lines of text over values the engine already
//! counts, which a metrics library would only copy into its own registry.

use idlegate_core::Expiry;
use idlegate_core::{Counters, DropReason, Engine, Interface, SnatUsage};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// Packets and bytes through the gateway's devices, by interface and direction.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Indexed by [`Traffic::slot`].
    packets: [u64; 4],
    bytes: [u64; 4],
}

/// Into or out of the gateway.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Read from a device.
    In,
    /// Written to a device.
    Out,
}

impl Traffic {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Traffic) {
        for i in 0..4 {
            self.packets[i] += other.packets[i];
            self.bytes[i] += other.bytes[i];
        }
    }

    pub fn count(&mut self, interface: Interface, direction: Direction, len: usize) {
        let i = Self::slot(interface, direction);
        self.packets[i] += 1;
        self.bytes[i] += len as u64;
    }

    fn slot(interface: Interface, direction: Direction) -> usize {
        2 * usize::from(interface == Interface::Outside)
            + usize::from(matches!(direction, Direction::Out))
    }
}

/// A label value as the exposition format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a worker counts besides its shard: packets its devices gave or refused.
#[derive(Debug, Clone, Default)]
pub struct DeviceCounters {
    /// Packets the kernel refused to take (full queue).
    pub tx_errors: u64,
    /// Forwarded packets for a destination no device leads to.
    pub undeliverable: u64,
    /// Reads with a virtio-net header the kernel would never write.
    pub malformed: u64,
    /// Packets read by one worker and handed to the worker that owns their flow.
    pub handed_over: u64,
    /// Packets dropped because the worker that read them had [`crate::gateway`]'s limit of
    /// handed-over packets in flight, or their owner had stopped.
    pub handover_dropped: u64,
}

impl DeviceCounters {
    pub fn add(&mut self, other: &DeviceCounters) {
        self.tx_errors += other.tx_errors;
        self.undeliverable += other.undeliverable;
        self.malformed += other.malformed;
        self.handed_over += other.handed_over;
        self.handover_dropped += other.handover_dropped;
    }
}

/// What one worker's shard counts, taken between two packets.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Flows by rule name and TCP state.
    flows: BTreeMap<(String, &'static str), u64>,
    counters: Counters,
    /// The SNAT pools, which the shards share: taken once.
    snat: Vec<SnatUsage>,
    traffic: Traffic,
    device: DeviceCounters,
}

impl Snapshot {
    /// The shard `engine` and its worker's `traffic` and `device` counts at `now`.
    pub fn of(
        engine: &Engine,
        traffic: &Traffic,
        device: &DeviceCounters,
        now: Instant,
    ) -> Snapshot {
        // Counted by (rule id, state) without allocating per flow; named once per series.
        let mut by_rule_state: BTreeMap<(u16, &'static str), u64> = BTreeMap::new();
        for f in engine.flows(now) {
            *by_rule_state
                .entry((f.flow.rule, f.state.as_str()))
                .or_default() += 1;
        }
        Snapshot {
            flows: by_rule_state
                .into_iter()
                .map(|((rule, state), n)| ((engine.rule_name(rule).to_string(), state), n))
                .collect(),
            counters: engine.counters(),
            snat: engine.snat_usage().collect(),
            traffic: traffic.clone(),
            device: device.clone(),
        }
    }

    /// Adds another shard's snapshot to this one.
    pub fn merge(&mut self, other: Snapshot) {
        for (key, n) in other.flows {
            *self.flows.entry(key).or_default() += n;
        }
        self.counters.add(&other.counters);
        if self.snat.is_empty() {
            self.snat = other.snat;
        }
        self.traffic.add(&other.traffic);
        self.device.add(&other.device);
    }
}

/// The exposition text.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let flows: Vec<(String, u64)> = snapshot
        .flows
        .iter()
        .map(|((rule, state), n)| {
            (
                format!("{{rule=\"{}\",state=\"{state}\"}}", escape(rule)),
                *n,
            )
        })
        .collect();
    family(
        "idlegate_flows",
        "gauge",
        "Flows the gateway remembers, by rule and TCP state.",
        &flows,
    );
    let c = &snapshot.counters;
    family(
        "idlegate_flows_created_total",
        "counter",
        "Flows created.",
        &[(String::new(), c.flows_created)],
    );
    let expiries: Vec<(String, u64)> = Expiry::ALL
        .iter()
        .map(|a| (format!("{{action=\"{a}\"}}"), c.expired(*a)))
        .collect();
    family(
        "idlegate_expiries_total",
        "counter",
        "Flows expired, by the action carried out.",
        &expiries,
    );
    let drops: Vec<(String, u64)> = DropReason::ALL
        .iter()
        .map(|r| (format!("{{reason=\"{}\"}}", r.as_str()), c.dropped(*r)))
        .collect();
    family(
        "idlegate_drops_total",
        "counter",
        "Packets dropped, by reason.",
        &drops,
    );
    family(
        "idlegate_resets_sent_total",
        "counter",
        "RSTs the gateway made.",
        &[(String::new(), c.resets_sent)],
    );
    family(
        "idlegate_acks_sent_total",
        "counter",
        "ACKs the gateway made for data it discarded.",
        &[(String::new(), c.acks_sent)],
    );
    family(
        "idlegate_out_of_window_total",
        "counter",
        "TCP segments outside their flow's windows: passed on, changing and refreshing nothing.",
        &[(String::new(), c.out_of_window)],
    );
    family(
        "idlegate_fragments_forwarded_total",
        "counter",
        "IPv4 fragments forwarded, translated as their datagram's first fragment.",
        &[(String::new(), c.fragments_forwarded)],
    );
    family(
        "idlegate_icmp_errors_translated_total",
        "counter",
        "ICMP errors about a flow's packet, translated and passed on (RFC 5508).",
        &[(String::new(), c.icmp_errors_translated)],
    );
    let snat: Vec<(String, u64)> = snapshot
        .snat
        .iter()
        .flat_map(|u| {
            [("in_use", u.lent), ("held", u.held), ("free", u.free)].map(|(state, n)| {
                (
                    format!("{{frontend=\"{}\",state=\"{state}\"}}", u.frontend),
                    n as u64,
                )
            })
        })
        .collect();
    family(
        "idlegate_snat_ports",
        "gauge",
        "SNAT ports per frontend: lent to flows, held after a flow ended, or free.",
        &snat,
    );
    let sides = [
        (Interface::Inside, "inside"),
        (Interface::Outside, "outside"),
    ];
    let directions = [(Direction::In, "in"), (Direction::Out, "out")];
    let per = |values: &[u64; 4]| -> Vec<(String, u64)> {
        sides
            .iter()
            .flat_map(|&(i, iname)| {
                directions.iter().map(move |&(d, dname)| {
                    (
                        format!("{{interface=\"{iname}\",direction=\"{dname}\"}}"),
                        values[Traffic::slot(i, d)],
                    )
                })
            })
            .collect()
    };
    family(
        "idlegate_packets_total",
        "counter",
        "Packets read from and written to the devices (a TCP super-segment counts as one).",
        &per(&snapshot.traffic.packets),
    );
    family(
        "idlegate_bytes_total",
        "counter",
        "Bytes read from and written to the devices.",
        &per(&snapshot.traffic.bytes),
    );
    let d = &snapshot.device;
    family(
        "idlegate_handovers_total",
        "counter",
        "Packets one worker read for the worker that owns their flow, and handed over.",
        &[(String::new(), d.handed_over)],
    );
    let device_drops = [
        ("malformed", d.malformed),
        ("write-failed", d.tx_errors),
        ("undeliverable", d.undeliverable),
        ("handover-full", d.handover_dropped),
    ]
    .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), n));
    family(
        "idlegate_device_drops_total",
        "counter",
        "Packets lost at the devices, by reason (the engine's own drops are idlegate_drops_total).",
        &device_drops,
    );
    out
}
