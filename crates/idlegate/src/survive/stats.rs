//! What `idlegate relay` counts, plain or as a tunnel end: one [`Stats`] per listener, shared
//! by the relay's workers or the tunnel's sessions (atomics, updated as bytes move) and read
//! by the metrics.

use std::sync::atomic::AtomicU64;

/// What a relay, or a tunnel end, counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections being relayed now.
    pub open: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Connections that ended with a RST passed on.
    pub resets: AtomicU64,
    /// Tunnel: sessions resumed on a new leg.
    pub reconnects: AtomicU64,
    /// Tunnel: bytes sent again after a resume.
    pub replayed_bytes: AtomicU64,
    /// Tunnel: legs lost because no heartbeat arrived in time.
    pub heartbeat_misses: AtomicU64,
    /// Tunnel: sessions ended because no new leg came within the resume limit, or the far
    /// end no longer knew them.
    pub expired: AtomicU64,
    /// Tunnel: sessions stalled now (no byte moved for a while although bytes wait).
    pub stalled: AtomicU64,
    /// Tunnel: times a session was reported stalled.
    pub stalls: AtomicU64,
    /// Tunnel: sessions started or resumed on a leg dialed for them (a new connection and
    /// handshake; at the exit, a leg through its gate).
    pub legs_dialed: AtomicU64,
    /// Tunnel: sessions started or resumed on a leg another session had ended on whole.
    pub legs_reused: AtomicU64,
    /// Tunnel: legs kept between sessions now (the entry's free ones, the exit's idle ones).
    pub legs_free: AtomicU64,
}
