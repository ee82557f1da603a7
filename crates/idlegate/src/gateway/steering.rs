//! How a packet reaches the worker that owns it: the kernel puts it on that worker's queue
//! (a steering eBPF program on every device, [`crate::sys::steer`]), or the kernel picks a
//! queue by its own hash of the flow and whoever reads a packet that is not its own hands it
//! over (`handoff.rs`). The handover stays in every mode, for what the program cannot place.
//!
//! [`steer`] sets the programs up once, before the workers start, and falls back to the
//! handover alone, with one log line saying why, where the kernel refuses (no CAP_BPF, an old
//! kernel, a verifier that says no) or `IDLEGATE_TUN_STEERING=off` says so.

use super::Attachment;
use crate::sys::steer::{self, Program};
use idlegate_core::{Interface, Sharding};

/// How packets reach their owner's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// The steering program on every device puts each packet on its owner's queue.
    Ebpf,
    /// The kernel's own choice of queue; packets read by another worker are handed over.
    Handover,
    /// One worker, one queue: every packet is its own.
    OneQueue,
}

impl Steering {
    pub const ALL: [Steering; 3] = [Steering::Ebpf, Steering::Handover, Steering::OneQueue];

    /// The name the metrics and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Steering::Ebpf => "ebpf",
            Steering::Handover => "handover",
            Steering::OneQueue => "one-queue",
        }
    }
}

/// Sets a steering program on every device of `attachments` (whose queue `w` is worker `w`'s,
/// as `sharding` numbers them), or none: says which, and why not, in the log.
pub(super) fn steer(attachments: &[Attachment], sharding: &Sharding) -> Steering {
    if sharding.count() == 1 {
        return Steering::OneQueue;
    }
    if !steer::wanted() {
        tracing::info!(
            "queues: IDLEGATE_TUN_STEERING=off: the kernel picks each device's queue by its own \
             flow hash; packets read by another worker are handed over"
        );
        return Steering::Handover;
    }
    match set_programs(attachments, sharding) {
        Ok(()) => {
            tracing::info!(
                "queues: a steering eBPF program on each of {} TUN devices puts every packet on \
                 the queue of the worker that owns its flow",
                attachments.len()
            );
            Steering::Ebpf
        }
        Err(e) => {
            for attachment in attachments {
                if let Some(device) = attachment.queues.first() {
                    // A device that had none is left as it was.
                    let _ = Program::detach(device);
                }
            }
            tracing::warn!(
                "queues: no steering ({e:#}); the kernel picks each device's queue by its own \
                 flow hash and packets read by another worker are handed over; hint: to steer, \
                 give the gateway CAP_BPF and the bpf system call (systemd: \
                 AmbientCapabilities=CAP_NET_ADMIN CAP_BPF, SystemCallFilter=bpf)"
            );
            Steering::Handover
        }
    }
}

fn set_programs(attachments: &[Attachment], sharding: &Sharding) -> anyhow::Result<()> {
    // One program per side, shared by that side's devices (each holds a reference).
    let outside = Program::load(sharding, Interface::Outside)?;
    let inside = Program::load(sharding, Interface::Inside)?;
    for attachment in attachments {
        let program = match attachment.interface {
            Interface::Outside => &outside,
            Interface::Inside => &inside,
        };
        if let Some(device) = attachment.queues.first() {
            program.attach(device)?;
        }
    }
    Ok(())
}
