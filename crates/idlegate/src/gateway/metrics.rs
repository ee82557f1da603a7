//! `--metrics ADDR`: what the gateway's Prometheus metrics say; [`crate::obs::scrape`] serves them
//! over HTTP on a thread of its own.
//!
//! `GET /metrics` answers the text exposition format (version 0.0.4) with the engine's counters
//! and the flow table as it stands, summed over the gateway's workers (each takes a
//! [`Snapshot`] of its shard; they [`Snapshot::merge`]): flows by rule and TCP state, expiries by action, drops by
//! reason, SNAT ports in use and free per frontend, packets and bytes per interface and
//! direction. The listener binds only where it is told.
//! The exposition is written by [`crate::obs::prometheus`].

use crate::gateway::steering::Steering;
use crate::obs::prometheus::{Kind, Writer};
use idlegate_core::Expiry;
use idlegate_core::{Counters, DropReason, Engine, Interface, SnatUsage};
use std::collections::BTreeMap;
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
    /// How packets reach their owner's queue: the gateway's, not a shard's (set by whoever
    /// asks the workers).
    pub(super) steering: Option<Steering>,
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
            steering: None,
        }
    }

    /// An empty snapshot of a gateway whose packets reach their owner's queue by `steering`,
    /// for the workers' snapshots to [`Snapshot::merge`] into.
    pub(super) fn steered(steering: Steering) -> Snapshot {
        Snapshot {
            steering: Some(steering),
            ..Snapshot::default()
        }
    }

    /// The engine's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Flows remembered, all rules and states.
    pub fn flow_count(&self) -> u64 {
        self.flows.values().sum()
    }

    /// SNAT ports per frontend.
    pub fn snat(&self) -> &[SnatUsage] {
        &self.snat
    }

    /// The devices' own counts.
    pub fn device(&self) -> &DeviceCounters {
        &self.device
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
        self.steering = self.steering.or(other.steering);
    }
}

/// The exposition text.
pub fn render(snapshot: &Snapshot) -> String {
    let mut w = Writer::new();
    let mut flows = w.family(
        "idlegate_flows",
        Kind::Gauge,
        "Flows the gateway remembers, by rule and TCP state.",
    );
    for ((rule, state), n) in &snapshot.flows {
        flows.sample(&[("rule", rule), ("state", state)], *n);
    }
    let c = &snapshot.counters;
    w.family(
        "idlegate_flows_created_total",
        Kind::Counter,
        "Flows created.",
    )
    .sample(&[], c.flows_created);
    let mut expiries = w.family(
        "idlegate_expiries_total",
        Kind::Counter,
        "Flows expired, by the action carried out.",
    );
    for a in Expiry::ALL {
        expiries.sample(&[("action", &a.to_string())], c.expired(a));
    }
    let mut drops = w.family(
        "idlegate_drops_total",
        Kind::Counter,
        "Packets dropped, by reason.",
    );
    for r in DropReason::ALL {
        drops.sample(&[("reason", r.as_str())], c.dropped(r));
    }
    for (name, help, value) in [
        (
            "idlegate_resets_sent_total",
            "RSTs the gateway made.",
            c.resets_sent,
        ),
        (
            "idlegate_acks_sent_total",
            "ACKs the gateway made for data it discarded.",
            c.acks_sent,
        ),
        (
            "idlegate_out_of_window_total",
            "TCP segments outside their flow's windows: passed on, changing and refreshing nothing.",
            c.out_of_window,
        ),
        (
            "idlegate_fragments_forwarded_total",
            "IPv4 fragments forwarded, translated as their datagram's first fragment.",
            c.fragments_forwarded,
        ),
        (
            "idlegate_icmp_errors_translated_total",
            "ICMP errors about a flow's packet, translated and passed on (RFC 5508).",
            c.icmp_errors_translated,
        ),
    ] {
        w.family(name, Kind::Counter, help).sample(&[], value);
    }
    let mut snat = w.family(
        "idlegate_snat_ports",
        Kind::Gauge,
        "SNAT ports per frontend: lent to flows, held after a flow ended, or free.",
    );
    for u in &snapshot.snat {
        let frontend = u.frontend.to_string();
        for (state, n) in [("in_use", u.lent), ("held", u.held), ("free", u.free)] {
            snat.sample(&[("frontend", &frontend), ("state", state)], n as u64);
        }
    }
    let sides = [
        (Interface::Inside, "inside"),
        (Interface::Outside, "outside"),
    ];
    let directions = [(Direction::In, "in"), (Direction::Out, "out")];
    for (name, help, values) in [
        (
            "idlegate_packets_total",
            "Packets read from and written to the devices (a TCP super-segment counts as one).",
            &snapshot.traffic.packets,
        ),
        (
            "idlegate_bytes_total",
            "Bytes read from and written to the devices.",
            &snapshot.traffic.bytes,
        ),
    ] {
        let mut family = w.family(name, Kind::Counter, help);
        for (i, iname) in sides {
            for (d, dname) in directions {
                family.sample(
                    &[("interface", iname), ("direction", dname)],
                    values[Traffic::slot(i, d)],
                );
            }
        }
    }
    let d = &snapshot.device;
    w.family(
        "idlegate_handovers_total",
        Kind::Counter,
        "Packets one worker read for the worker that owns their flow, and handed over.",
    )
    .sample(&[], d.handed_over);
    if let Some(mode) = snapshot.steering {
        let mut steering = w.family(
            "idlegate_gateway_steering",
            Kind::Gauge,
            "How packets reach the worker that owns their flow, 1 for the mode in force: ebpf (a steering program on the devices), handover (the kernel's own choice of queue, then a handover), one-queue (one worker).",
        );
        for m in Steering::ALL {
            steering.sample(&[("mode", m.as_str())], u64::from(m == mode));
        }
    }
    let mut device_drops = w.family(
        "idlegate_device_drops_total",
        Kind::Counter,
        "Packets lost at the devices, by reason (the engine's own drops are idlegate_drops_total).",
    );
    for (reason, n) in [
        ("malformed", d.malformed),
        ("write-failed", d.tx_errors),
        ("undeliverable", d.undeliverable),
        ("handover-full", d.handover_dropped),
    ] {
        device_drops.sample(&[("reason", reason)], n);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlegate_core::SnatUsage;

    /// A snapshot with every family non-empty, two shards' worth, and a rule name that needs
    /// escaping.
    fn fixed_snapshot() -> Snapshot {
        let mut counters = Counters::default();
        counters.flows_created = 7;
        counters.resets_sent = 2;
        counters.acks_sent = 1;
        counters.out_of_window = 4;
        counters.fragments_forwarded = 5;
        counters.icmp_errors_translated = 6;
        let mut traffic = Traffic::default();
        traffic.count(Interface::Inside, Direction::In, 1500);
        traffic.count(Interface::Inside, Direction::Out, 60);
        traffic.count(Interface::Outside, Direction::In, 40);
        traffic.count(Interface::Outside, Direction::Out, 1500);
        traffic.count(Interface::Outside, Direction::Out, 9000);
        let mut snapshot = Snapshot {
            flows: BTreeMap::from([
                (("web".to_string(), "established"), 3),
                (("odd \"q\" \\ x\ny".to_string(), "syn-sent"), 1),
            ]),
            counters,
            snat: vec![
                SnatUsage {
                    frontend: "203.0.113.1".parse().unwrap(),
                    lent: 3,
                    held: 1,
                    free: 60,
                },
                SnatUsage {
                    frontend: "fd00::1".parse().unwrap(),
                    lent: 0,
                    held: 0,
                    free: 64,
                },
            ],
            traffic,
            device: DeviceCounters {
                tx_errors: 1,
                undeliverable: 2,
                malformed: 3,
                handed_over: 4,
                handover_dropped: 5,
            },
            steering: Some(Steering::Ebpf),
        };
        snapshot.merge(Snapshot {
            flows: BTreeMap::from([(("web".to_string(), "established"), 2)]),
            ..Snapshot::default()
        });
        snapshot
    }

    /// The files hold what `render` wrote before it used [`crate::obs::prometheus`]: the
    /// exposition stays byte for byte the same.
    #[test]
    fn exposition_of_a_fixed_snapshot_is_unchanged() {
        assert_eq!(
            render(&fixed_snapshot()),
            include_str!("testdata/metrics-fixed.prom")
        );
    }

    #[test]
    fn exposition_of_an_empty_snapshot_is_unchanged() {
        assert_eq!(
            render(&Snapshot::default()),
            include_str!("testdata/metrics-empty.prom")
        );
    }
}
