//! The I/O edges of idlegate around the sans-IO engine in `idlegate-core`: TUN devices,
//! network namespaces, the gateway's event loop, the lab, and the demo.
//!
//! | module | domain word |
//! |---|---|
//! | [`advise`] | `idlegate advise`: the keepalive settings for a box, a system and a library |
//! | [`audit`] | `idlegate audit`: the host's TCP connections judged against an idle timeout |
//! | [`gateway`] | the engine driven by TUN devices and the clock |
//! | [`control`] | the control socket: `idlegate flows` |
//! | [`capture`] | `--pcap`: every packet seen or made, for Wireshark |
//! | [`metrics`] | `--metrics`: Prometheus metrics |
//! | [`scrape`] | the metrics' HTTP server: its own thread, scrapers that cannot stall each other |
//! | [`lab`] | namespaces of real hosts wired to the gateway |
//! | [`demo`] | the idle-drop experiment replayed in the lab |
//! | [`echo`] | `idlegate echo`, the far end of a probe, and its protocol |
//! | [`scenario`] | scripted connections observed from both ends |
//! | [`probe`] | `idlegate probe`: a path's idle timeout and its behaviour at expiry |
//! | [`keepalive`] | keepalive settings, read back, and given to running programs' sockets |
//! | [`relay`] | `idlegate relay`: keepalive on both sockets for unmodified applications |
//! | [`netns`] | named network namespaces |
//! | [`privilege`] | a running gateway gives up every privilege (`--user`) |
//! | [`timeout`] | timeouts named as timeouts (`timed out after …`), not EAGAIN |
//! | [`tun`] | TUN devices living in another namespace |
//! | [`tunnel`] | `idlegate relay --tunnel`: connections that outlive the path, resumed without a lost byte |

pub mod advise;
pub mod audit;
pub mod capture;
pub mod control;
pub mod demo;
pub mod echo;
pub mod gateway;
pub mod keepalive;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod privilege;
pub mod probe;
pub mod relay;
pub mod scenario;
pub mod scrape;
pub mod timeout;
pub mod tun;
pub mod tunnel;
