//! Survive: keep connections alive across boxes that forget idle flows, for applications
//! nobody can change.
//!
//! | module | domain word |
//! |---|---|
//! | [`keepalive`] | keepalive settings, read back, and given to running programs' sockets |
//! | [`relay`] | `idlegate relay`: keepalive on both sockets for unmodified applications |
//! | [`tunnel`] | `idlegate relay --tunnel`: connections that outlive the path, resumed without a lost byte |
//! | [`serve`] | `idlegate relay`'s wiring: the relays or tunnel end asked for, bound, served and run |
//! | [`endpoint`] | what a relay and a tunnel end share: listener, counters, stop flag |
//! | [`stats`] | what a relay or a tunnel end counts, for its metrics |
//! | [`audit`] | `idlegate audit`: the host's TCP connections judged against an idle timeout |
//! | [`advise`] | `idlegate advise`: the keepalive settings for a box, a system and a library |
//! | [`timeouts`] | a config's rules' idle timeouts, and which one a connection meets |

pub mod advise;
#[cfg(target_os = "linux")]
pub mod audit;
pub mod endpoint;
pub mod keepalive;
pub mod relay;
pub mod serve;
pub mod stats;
pub mod timeouts;
pub mod tunnel;
