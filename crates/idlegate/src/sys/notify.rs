//! The systemd readiness protocol (sd_notify(3)): a service of `Type=notify` tells systemd it
//! is ready by sending the datagram `READY=1` to the unix socket named in `$NOTIFY_SOCKET`, a
//! path or, starting with `@`, an abstract-namespace name. [`Notifier::from_env`] connects to
//! it (nothing when the variable is unset: not run by systemd), before privileges are dropped,
//! so [`Notifier::ready`] still reaches it after; errors name the socket.
//!
//! Written on std's unix datagram sockets, no crate: the protocol is one datagram
//! (<https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html>).

use anyhow::{Context, Result};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    name: String,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET`; `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Notifier>> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(name) if !name.is_empty() => {
                let name = name
                    .into_string()
                    .map_err(|n| anyhow::anyhow!("{NOTIFY_SOCKET}={n:?}: not UTF-8"))?;
                Notifier::connect(&name).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Connects to `name`: a path, or an abstract name after `@`.
    pub fn connect(name: &str) -> Result<Notifier> {
        let what = || format!("connecting to the service manager's {NOTIFY_SOCKET}={name}");
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
            None => SocketAddr::from_pathname(name),
        }
        .with_context(what)?;
        let socket = UnixDatagram::unbound().with_context(what)?;
        socket.connect_addr(&address).with_context(what)?;
        Ok(Notifier {
            socket,
            name: name.to_string(),
        })
    }

    /// Sends `READY=1`: the service is up.
    pub fn ready(&self) -> Result<()> {
        self.send("READY=1")
    }

    /// Sends `state`, newline-separated `VARIABLE=value` assignments (sd_notify(3)).
    pub fn send(&self, state: &str) -> Result<()> {
        self.socket.send(state.as_bytes()).with_context(|| {
            format!(
                "telling the service manager {state:?} on {NOTIFY_SOCKET}={}",
                self.name
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn received(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buffer = [0u8; 256];
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    #[test]
    fn ready_reaches_a_socket_named_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
        notifier.ready().unwrap();
        assert_eq!(received(&manager), "READY=1");
    }

    #[test]
    fn ready_reaches_an_abstract_socket_named_with_an_at_sign() {
        let name = format!("idlegate-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier::connect(&format!("@{name}")).unwrap();
        notifier.ready().unwrap();
        assert_eq!(received(&manager), "READY=1");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        let err = Notifier::connect(path.to_str().unwrap()).err().unwrap();
        assert!(
            format!("{err:#}").contains(&format!("NOTIFY_SOCKET={}", path.display())),
            "{err:#}"
        );
    }
}
