//! Names to addresses: the one HOST:PORT resolver.
//!
//! Contract: [`host_port`] turns `HOST:PORT` (an IP address or a name the system resolves,
//! `[v6]:PORT` for IPv6) into the first socket address the lookup gives. Its error says which
//! way it failed: the text is not HOST:PORT (or the lookup failed), or the name has no address.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use thiserror::Error;

/// Why [`host_port`] gave no address.
#[derive(Debug, Error)]
pub enum Unresolved {
    /// Not of the form HOST:PORT, or the lookup of HOST failed.
    #[error("not HOST:PORT")]
    NotHostPort(#[source] io::Error),
    /// The lookup succeeded with no address.
    #[error("no address")]
    NoAddress,
}

/// The first address `v` (`HOST:PORT`) resolves to.
pub fn host_port(v: &str) -> Result<SocketAddr, Unresolved> {
    v.to_socket_addrs()
        .map_err(Unresolved::NotHostPort)?
        .next()
        .ok_or(Unresolved::NoAddress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_both_families_and_localhost_resolve() {
        let v4: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert_eq!(host_port("192.0.2.1:80").unwrap(), v4);
        let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
        assert_eq!(host_port("[fd00::1]:443").unwrap(), v6);
        let local = host_port("localhost:9").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9);
    }

    #[test]
    fn text_that_is_not_host_port_is_refused_as_such() {
        for bad in ["192.0.2.1", "192.0.2.1:", "192.0.2.1:70000", ":80", ""] {
            let e = host_port(bad).unwrap_err();
            assert!(matches!(e, Unresolved::NotHostPort(_)), "{bad:?}: {e}");
            assert_eq!(e.to_string(), "not HOST:PORT");
        }
    }

    #[test]
    fn with_context_the_message_reads_flag_value_reason_cause() {
        use anyhow::Context;
        let e = host_port("nonsense")
            .with_context(|| "--connect nonsense")
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.starts_with("--connect nonsense: not HOST:PORT: "),
            "{text}"
        );
    }
}
