//! The resumable tunnel of `idlegate relay --tunnel` (in progress: the stream below is its
//! core; the framing, legs, heartbeats and authentication are still to come).

pub mod stream;
