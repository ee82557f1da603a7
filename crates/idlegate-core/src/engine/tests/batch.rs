//! Engine tests of batches: [`Engine::handle_batch`] against the same packets one at a time.

use super::*;
use crate::engine::batch::BatchPacket;
use proptest::prelude::*;

/// One packet of the test's traffic: its family, protocol, side, which client and port, and
/// TCP flags and numbers.
#[derive(Debug, Clone)]
struct Made {
    v6: bool,
    udp: bool,
    outside: bool,
    client: u8,
    port: u16,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    data: bool,
}

fn made() -> impl Strategy<Value = Made> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        0u16..3,
        prop::sample::select(vec![
            TcpFlags::SYN,
            TcpFlags::SYN | TcpFlags::ACK,
            TcpFlags::ACK,
            TcpFlags::FIN | TcpFlags::ACK,
            TcpFlags::RST,
        ]),
        0u32..4,
        0u32..4,
        any::<bool>(),
    )
        .prop_map(
            |(v6, udp, outside, client, port, flags, seq, ack, data)| Made {
                v6,
                udp,
                outside,
                client,
                port,
                flags,
                seq,
                ack,
                data,
            },
        )
}

impl Made {
    /// The packet's side and bytes: clients talk to the frontend from outside, the member
    /// answers them (or, over IPv6, also opens outbound flows to them) from inside.
    fn bytes(&self) -> (Interface, Vec<u8>) {
        let payload: &[u8] = if self.data { b"data" } else { b"" };
        let flags = self.flags;
        let port = 40_000 + self.port;
        let from = if self.outside {
            Interface::Outside
        } else {
            Interface::Inside
        };
        let packet = if self.v6 {
            let client = ep6(&format!("fd00:203::{}", 100 + self.client), port);
            let (frontend, member) = (ep6("fd00:203::10", 7000), ep6("fd00:192::11", 7000));
            let (src, dst) = if self.outside {
                (client, frontend)
            } else {
                (member, client)
            };
            if self.udp {
                udp_packet(src, dst, payload)
            } else {
                tcp_packet(src, dst, flags, self.seq, self.ack, payload)
            }
        } else {
            let client = ep(Ipv4Addr::new(203, 0, 113, 100 + self.client), port);
            let (src, dst) = if self.outside {
                (client, FRONTEND_7000)
            } else {
                (ep(VM1, 7000), client)
            };
            if self.udp {
                udp_packet(src, dst, payload)
            } else {
                tcp_packet(src, dst, flags, self.seq, self.ack, payload)
            }
        };
        (from, packet)
    }
}

/// A test step: a batch of packets at the current time, or time passing (timers run).
#[derive(Debug, Clone)]
enum Step {
    Packets(Vec<Made>),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec(made(), 1..80).prop_map(Step::Packets),
        1 => (0u64..8_000).prop_map(Step::Wait),
    ]
}

/// Everything an engine shows from outside, as text: what it sent and said since the last
/// call, its counters and its flows.
fn outputs(engine: &mut Engine, now: Instant) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; packet::CONTROL_LEN.max(crate::state::fragment::HELD_LEN)];
    while let Some(tx) = engine.poll_transmit(&mut buf) {
        out.push(format!("{tx:?} {:?}", &buf[..tx.len]));
    }
    while let Some(event) = engine.poll_event() {
        out.push(format!("{event:?}"));
    }
    out.push(format!("{:?}", engine.counters()));
    let mut flows: Vec<String> = engine.flows(now).map(|f| format!("{f:?}")).collect();
    flows.sort();
    out.extend(flows);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_batch_is_handled_exactly_as_its_packets_one_at_a_time(
        steps in proptest::collection::vec(step(), 1..12)
    ) {
        let config = dual_stack_config("reset-on-next");
        let t0 = Instant::now();
        let mut batched = Engine::new(&config, t0, 99);
        let mut single = Engine::new(&config, t0, 99);
        let mut now = t0 + Duration::from_millis(1);
        for step in steps {
            match step {
                Step::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    batched.handle_timeout(now);
                    single.handle_timeout(now);
                }
                Step::Packets(made) => {
                    let packets: Vec<(Interface, Vec<u8>)> = made.iter().map(Made::bytes).collect();
                    let mut one_by_one = packets.clone();
                    let verdicts: Vec<Verdict> = one_by_one
                        .iter_mut()
                        .map(|(from, p)| single.handle_packet(now, *from, p))
                        .collect();
                    let mut together = packets.clone();
                    let mut batch: Vec<BatchPacket> = together
                        .iter_mut()
                        .map(|(from, p)| BatchPacket::new(*from, p))
                        .collect();
                    batched.handle_batch(now, batch.as_mut_slice());
                    let batch_verdicts: Vec<Verdict> =
                        batch.iter().map(|p| p.verdict.expect("handled")).collect();
                    drop(batch);
                    prop_assert_eq!(batch_verdicts, verdicts);
                    prop_assert_eq!(&together, &one_by_one);
                }
            }
            prop_assert_eq!(outputs(&mut batched, now), outputs(&mut single, now));
            prop_assert!(batched.check_invariants().is_ok());
        }
    }
}
