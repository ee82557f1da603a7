//! Names to addresses: the one HOST:PORT resolver.
//!
//! Contract: [`host_port`] turns `HOST:PORT` (an IP address or a name the system resolves,
//! `[v6]:PORT` for IPv6) into the first socket address the lookup gives. Its error says which
//! way it failed: the text is not HOST:PORT (and what is wrong with it), the lookup of HOST
//! failed (with the resolver's reason), or the name has no address.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use thiserror::Error;

/// Why [`host_port`] gave no address.
#[derive(Debug, Error)]
pub enum Unresolved {
    /// Not of the form HOST:PORT.
    #[error("not HOST:PORT")]
    NotHostPort(#[source] Syntax),
    /// HOST:PORT, but the lookup of HOST failed (the resolver's reason is the source).
    #[error("looking up {host}")]
    Lookup {
        host: String,
        #[source]
        reason: io::Error,
    },
    /// The lookup succeeded with no address.
    #[error("no address")]
    NoAddress,
}

/// What is wrong with text that is not HOST:PORT.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Syntax {
    #[error("no :PORT")]
    NoPort,
    #[error("no HOST before the :PORT")]
    NoHost,
    #[error("port {0:?} is not a number from 0 to 65535")]
    BadPort(String),
    #[error("an IPv6 address goes in brackets, [ADDRESS]:PORT")]
    Brackets,
}

/// The first address `v` (`HOST:PORT`) resolves to.
pub fn host_port(v: &str) -> Result<SocketAddr, Unresolved> {
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = split(v).map_err(Unresolved::NotHostPort)?;
    (host, port)
        .to_socket_addrs()
        .map_err(|reason| Unresolved::Lookup {
            host: host.to_string(),
            reason,
        })?
        .next()
        .ok_or(Unresolved::NoAddress)
}

/// `HOST:PORT` as its host (brackets taken off) and port, or what is wrong with it.
fn split(v: &str) -> Result<(&str, u16), Syntax> {
    let (host, port) = v.rsplit_once(':').ok_or(Syntax::NoPort)?;
    let port = match port.parse::<u16>() {
        Ok(port) => port,
        Err(_) if port.is_empty() => return Err(Syntax::NoPort),
        Err(_) => return Err(Syntax::BadPort(port.to_string())),
    };
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or(Syntax::Brackets)?,
        None if host.contains(':') || host.contains(']') => return Err(Syntax::Brackets),
        None => host,
    };
    if host.is_empty() {
        return Err(Syntax::NoHost);
    }
    Ok((host, port))
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
        assert_eq!(text, "--connect nonsense: not HOST:PORT: no :PORT");
    }

    #[test]
    fn text_that_is_not_host_port_says_what_is_wrong_with_it() {
        for (bad, why) in [
            ("192.0.2.1", Syntax::NoPort),
            ("192.0.2.1:", Syntax::NoPort),
            (":80", Syntax::NoHost),
            ("192.0.2.1:70000", Syntax::BadPort("70000".into())),
            ("fd00::1", Syntax::Brackets),
            ("fd00::1:80", Syntax::Brackets),
            ("[fd00::1:80", Syntax::Brackets),
        ] {
            match host_port(bad) {
                Err(Unresolved::NotHostPort(e)) => assert_eq!(e, why, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_name_that_does_not_resolve_is_a_failed_lookup_not_bad_syntax() {
        use anyhow::Context;
        // .invalid never resolves (RFC 2606, section 2).
        let e = host_port("db.example.invalid:5432").unwrap_err();
        assert!(
            matches!(&e, Unresolved::Lookup { host, .. } if host == "db.example.invalid"),
            "{e:?}"
        );
        let text = format!(
            "{:#}",
            Err::<(), _>(e)
                .context("--connect db.example.invalid:5432")
                .unwrap_err()
        );
        assert!(
            text.starts_with("--connect db.example.invalid:5432: looking up db.example.invalid: "),
            "{text}"
        );
        assert!(!text.contains("not HOST:PORT"), "{text}");
    }
}
