//! The I/O edges of idlegate around the sans-IO engine in `idlegate-core`, in layers:
//! features on top, the platform and observability layers below them, the core at the bottom
//! (ARCHITECTURE.md is the map). A feature uses the layers below it and never another feature's
//! internals.
//!
//! | module | layer | what it holds |
//! |---|---|---|
//! | [`gateway`] | feature: emulate | the engine driven by TUN devices and the clock; `idlegate flows` |
//! | [`lab`] | feature: emulate | namespaces of real hosts wired to the gateway; the demo; scripted scenarios |
//! | [`import`] | feature: emulate | `idlegate import`: a box's own configuration (ARM, `az`, Terraform, Kubernetes) as an idlegate config |
//! | [`measure`] | feature: measure | `idlegate probe` and `idlegate echo` |
//! | [`survive`] | feature: survive | `relay`, the resumable tunnel, `keepalive`, `audit`, `advise` |
//! | [`obs`] | observability | the Prometheus text writer, the metrics' HTTP server, pcapng capture |
//! | [`sys`] | platform | every system call: poll, sockets, TCP_INFO, signals, processes, rlimits, namespaces, TUN devices, privileges |
//!
//! The Windows build (`idlegate.exe`) has what makes sense there: `sys`'s two-sided modules
//! (and `sys::service`, Windows only), `obs`, `measure`, and `survive` but `audit` and the
//! reading of other processes' keepalive; `gateway`, `lab` and the rest are
//! `#[cfg(target_os = "linux")]` (ARCHITECTURE.md, "The platform seam").

#![deny(unsafe_code)]

/// The target of the commands' own log lines (starting, stopping, signals, what a command
/// reports): `idlegate`, as when they were all in main.rs, so a `RUST_LOG` filter or a script
/// matching them keeps working. Every other line's target is its module path
/// (`idlegate::survive::relay`, `idlegate::gateway::worker`, …).
pub const LOG_TARGET: &str = "idlegate";

#[cfg(target_os = "linux")]
pub mod gateway;
pub mod import;
#[cfg(target_os = "linux")]
pub mod lab;
pub mod measure;
pub mod obs;
pub mod survive;
// The only module with `unsafe` (system calls); the rest of the crate denies it.
#[allow(unsafe_code)]
pub mod sys;
