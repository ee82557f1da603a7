//! What a relay and each tunnel end are alike in: a listener, what they count, and the flag
//! that stops them.
//!
//! Contract: an [`Endpoint`] is bound to its address (refused with the address named), its
//! counters start at zero and its stop flag unset. [`Relay`](super::relay::Relay),
//! [`Entry`](super::tunnel::Entry) and [`Exit`](super::tunnel::Exit) each hold one and
//! dereference to it (`endpoint_of!`), so `local_addr`, `stats`, `stop_flag` and
//! `set_stop_flag` are written once.

use super::stats::Stats;
use anyhow::{Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A listener, its counters, and the flag that stops its `run`.
pub struct Endpoint {
    pub(super) listener: TcpListener,
    pub(super) stats: Arc<Stats>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Endpoint {
    /// Listens on `listen` (with the options of [`crate::sys::socket::listen`]).
    pub(super) fn bind(listen: SocketAddr) -> Result<Endpoint> {
        let listener =
            crate::sys::socket::listen(listen).with_context(|| format!("listening on {listen}"))?;
        Ok(Endpoint {
            listener,
            stats: Arc::default(),
            stop: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Makes `stop` the flag that stops this end (one flag for several).
    pub fn set_stop_flag(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    /// The flag that stops `run` when set: a tunnel end's sessions already open go on; a
    /// relay resets the connections it holds (they did not end whole).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }
}

/// Makes `$end` (a struct with a field `endpoint`) dereference to its [`Endpoint`].
macro_rules! endpoint_of {
    ($end:ty) => {
        impl std::ops::Deref for $end {
            type Target = $crate::survive::endpoint::Endpoint;
            fn deref(&self) -> &Self::Target {
                &self.endpoint
            }
        }

        impl std::ops::DerefMut for $end {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.endpoint
            }
        }
    };
}
pub(super) use endpoint_of;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::sync::atomic::Ordering;

    #[test]
    fn an_endpoint_listens_where_it_says_and_its_stop_flag_is_the_one_given() {
        let mut end = Endpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = end.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        TcpStream::connect(addr).unwrap();
        assert!(end.listener.accept().is_ok());

        assert!(!end.stop_flag().load(Ordering::Relaxed));
        let shared = Arc::new(AtomicBool::new(false));
        end.set_stop_flag(shared.clone());
        shared.store(true, Ordering::Relaxed);
        assert!(end.stop_flag().load(Ordering::Relaxed));
        assert!(Arc::ptr_eq(&end.stats(), &end.stats()));
    }

    #[test]
    fn an_address_in_use_is_refused_with_the_address_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Endpoint::bind(addr).err().unwrap();
        assert_eq!(err.to_string(), format!("listening on {addr}"));
    }
}
