//! The platform layer: every system call idlegate makes, in one place per domain word.
//!
//! Features (gateway, lab, measure, survive, the command line) call what is here and never
//! `libc` or `windows-sys` themselves; a port to another operating system adds its side of
//! these files here, and nowhere else. Two-sided (a Linux side and a Windows side behind the
//! same functions, `#[cfg]` inside the file): `errno`, `evidence`, `pipe`, `poll`, `resolve`,
//! `rlimit`, `signal` (`stop_on_interrupt`), `socket`, `timeout`, `readiness`, `interest`, `secret`, `wake`;
//! a function with no Windows side says so. `service` is Windows only. The rest is Linux-only, and `lib.rs`, `survive/mod.rs` and the command line leave
//! out the features that need it (ARCHITECTURE.md, "The platform seam").
//!
//! | module | domain word |
//! |---|---|
//! | [`errno`] | the error numbers features tell apart, and their names |
//! | [`evidence`] | what the system lets a program see of its TCP connections (acknowledgements, ICMP errors, a RST told from a FIN) |
//! | [`file`](mod@file) | flock(2) locks, inodes |
//! | [`interest`] | many sockets, each watched by a token for reading and/or writing: mio (epoll) on Linux, WSAPoll on Windows (the tunnel's workers) |
//! | [`job`] | job control: a program in its own process group, holding the terminal |
//! | [`netns`] | network namespaces |
//! | [`pipe`] | a bounded buffer between two sockets: splice(2) on Linux, a copy on Windows |
//! | [`notify`] | telling systemd the service is ready (sd_notify's `READY=1`) |
//! | [`poll`] | waiting on sockets: the one poll(2) / WSAPoll wrapper, [`poll::STOP_CHECK`] |
//! | [`privilege`] | capabilities and dropping privileges |
//! | [`proc`] | procfs: processes, their names, socket descriptors and children; sysctls |
//! | [`readiness`] | many sockets and which are readable: mio (epoll) on Linux, WSAPoll on Windows (the tunnel exit's gate) |
//! | [`process`] | who this process runs as, signals to others, pidfds, a child's exit code |
//! | [`resolve`] | HOST:PORT to an address |
//! | [`rlimit`] | the descriptor limit |
//! | [`rtnl`] | links, addresses, routes (rtnetlink): what `ip link/addr/route` would set |
//! | [`secret`] | files that hold secrets: readable by their owner alone (Unix modes; Windows: the directory's ACL) |
//! | [`signal`] | SIGINT/SIGTERM (Windows: console control events): stop flags, the gateway's interrupt, signals passed on to a child |
//! | [`sock_diag`] | every TCP connection of a namespace, with tcp_info (sock_diag netlink) |
//! | [`steer`] | steering eBPF on TUN devices: each packet to the queue of the worker that owns it (bpf(2), TUNSETSTEERINGEBPF) |
//! | [`socket`] | raw socket handles, the listener, SO_LINGER 0 resets, keepalive, IP_RECVERR, non-blocking reads, SIOCOUTQ |
//! | [`tcp_info`] | TCP_INFO: state, unacknowledged segments, retransmissions |
//! | [`timeout`] | timeouts named as timeouts |
//! | [`tun`] | TUN devices |
//! | [`wake`] | waking a thread that waits in poll, from any thread, never blocking |

pub mod errno;
pub mod evidence;
#[cfg(target_os = "linux")]
pub mod file;
pub mod interest;
#[cfg(target_os = "linux")]
pub mod job;
#[cfg(target_os = "linux")]
pub mod netns;
#[cfg(target_os = "linux")]
pub mod notify;
pub mod pipe;
pub mod poll;
#[cfg(target_os = "linux")]
pub mod privilege;
#[cfg(target_os = "linux")]
pub mod proc;
#[cfg(target_os = "linux")]
pub mod process;
pub mod readiness;
pub mod resolve;
pub mod rlimit;
#[cfg(target_os = "linux")]
pub mod rtnl;
pub mod secret;
#[cfg(windows)]
pub mod service;
pub mod signal;
#[cfg(target_os = "linux")]
pub mod sock_diag;
pub mod socket;
#[cfg(target_os = "linux")]
pub mod steer;
#[cfg(target_os = "linux")]
pub mod tcp_info;
pub mod timeout;
#[cfg(target_os = "linux")]
pub mod tun;
pub mod wake;
