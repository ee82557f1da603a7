//! The platform layer: every system call idlegate makes, in one place per domain word.
//!
//! Features (gateway, lab, measure, survive, the command line) call what is here and never
//! `libc` themselves; a port to another operating system adds files here and nowhere else.

pub mod netns;
pub mod privilege;
pub mod process;
pub mod signal;
pub mod timeout;
pub mod tun;
