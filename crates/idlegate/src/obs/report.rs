//! What a failed command tells its user, the same way for every command.
//!
//! A failure prints as one line, `idlegate: <what failed>: <why>` (the error and its causes,
//! outermost first), then, where one is known, a line `hint: <what to do>`, and the process
//! exits with the failure's [`Status`]: 1 for a runtime failure unless a layer says otherwise.
//!
//! Where a failure is found attaches what only it knows: a hint ([`Report::hint`]) and a status
//! ([`Report::status`]), on a `Result` as `anyhow`'s `context` is. Both survive further
//! `context` around them; [`render`] and [`status`] find them anywhere in the chain (the
//! innermost hint wins: it was written closest to the cause). A child's own exit status is not
//! a failure: a command that ran one returns it as its `ExitCode`.

use std::fmt;

/// The exit status of a failed command (documented in the book's "Exit codes" page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Something failed while the command ran (the default).
    Runtime,
    /// The command line or a file it names is wrong: nothing was started (as clap's usage
    /// errors).
    Usage,
    /// A program to run was found but could not be executed (as a shell's 126).
    CannotExecute,
    /// A program to run was not found (as a shell's 127).
    NotFound,
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Runtime => 1,
            Status::Usage => 2,
            Status::CannotExecute => 126,
            Status::NotFound => 127,
        }
    }
}

/// An error with what to do about it and the status it exits with. It stands in the chain for
/// the error it wraps: its text is that error's own message and its source that error's cause,
/// so the chain prints as before and a `Reported` further in is still found.
#[derive(Debug)]
struct Reported {
    error: anyhow::Error,
    hint: Option<String>,
    status: Option<Status>,
}

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)
    }
}

impl std::error::Error for Reported {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.chain().nth(1)
    }
}

/// `error` with a hint or status; one already directly on it keeps its own (the inner one was
/// written closer to the cause). Only the outermost error is looked at: anyhow's `downcast`
/// would also find a `Reported` under a `context`, and merging into that would drop the context.
fn wrap(error: anyhow::Error, hint: Option<String>, status: Option<Status>) -> anyhow::Error {
    let direct = error.chain().next().is_some_and(|e| e.is::<Reported>());
    if !direct {
        return anyhow::Error::new(Reported {
            error,
            hint,
            status,
        });
    }
    match error.downcast::<Reported>() {
        Ok(mut reported) => {
            reported.hint = reported.hint.take().or(hint);
            reported.status = reported.status.or(status);
            anyhow::Error::new(reported)
        }
        Err(error) => anyhow::Error::new(Reported {
            error,
            hint,
            status,
        }),
    }
}

/// Hints and statuses on a `Result`, as `anyhow::Context` adds context.
pub trait Report<T> {
    /// What the user can do about this failure: one sentence, no "hint:" prefix.
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T>;
    /// As [`Report::hint`], made only on failure.
    fn with_hint<H: Into<String>>(self, hint: impl FnOnce() -> H) -> anyhow::Result<T>;
    /// The status this failure exits with.
    fn status(self, status: Status) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Report<T> for Result<T, E> {
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| wrap(e.into(), Some(hint.into()), None))
    }

    fn with_hint<H: Into<String>>(self, hint: impl FnOnce() -> H) -> anyhow::Result<T> {
        self.map_err(|e| wrap(e.into(), Some(hint().into()), None))
    }

    fn status(self, status: Status) -> anyhow::Result<T> {
        self.map_err(|e| wrap(e.into(), None, Some(status)))
    }
}

/// `error` with what to do about it: [`Report::hint`] for an error at hand rather than a
/// `Result`.
pub fn hinted(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    wrap(error.into(), Some(hint.into()), None)
}

/// A program that could not be started, said and exited as a shell does, the same for `run`
/// and `lab exec`: `reason` is the OS's (`No such file or directory`), the status 127 when
/// there is no such program and 126 when it cannot be executed, with what to do. The caller
/// adds what it was starting as context.
pub fn cannot_start(program: &str, kind: std::io::ErrorKind, reason: String) -> anyhow::Error {
    let (status, hint) = match kind {
        std::io::ErrorKind::NotFound => (
            Status::NotFound,
            "give the program's path, or a name found on $PATH".to_string(),
        ),
        std::io::ErrorKind::PermissionDenied => (
            Status::CannotExecute,
            format!("make it executable (chmod +x {program}) or run it through its interpreter"),
        ),
        _ => (
            Status::CannotExecute,
            format!("check that {program} is a program this system can run"),
        ),
    };
    wrap(anyhow::Error::msg(reason), Some(hint), Some(status))
}

/// A config file's mistake ([`idlegate_core::config::ConfigError`]: `file:line:column:
/// message`) as a usage error, with its hint if it has one.
pub fn refused<T>(mistake: idlegate_core::config::ConfigError) -> anyhow::Result<T> {
    let hint = mistake.hint.clone();
    let refused = Err(anyhow::Error::new(mistake)).status(Status::Usage);
    match hint {
        Some(hint) => refused.hint(hint),
        None => refused,
    }
}

/// A listener that `setting` (a flag such as `--listen` or `--metrics`, or a config key)
/// asked for at `addr` and that could not be bound: when the address is in use, the one hint
/// every command gives for it. Other failures pass unchanged.
pub fn listening<T>(
    result: anyhow::Result<T>,
    setting: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<T> {
    result.map_err(|error| {
        if io_kind(&error) == Some(std::io::ErrorKind::AddrInUse) {
            let hint = format!(
                "another process has port {}: pick another {setting} port",
                addr.port()
            );
            wrap(error, Some(hint), None)
        } else {
            error
        }
    })
}

/// The kind of the first system error in `error`'s chain, if there is one: what a layer
/// reads to choose its hint (a port in use, a file that exists, a missing privilege).
pub fn io_kind(error: &anyhow::Error) -> Option<std::io::ErrorKind> {
    io_cause(error).map(std::io::Error::kind)
}

/// The first system error in `error`'s chain, if there is one.
pub fn io_cause(error: &anyhow::Error) -> Option<&std::io::Error> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>())
}

/// The innermost hint in `error`'s chain, if any.
pub fn hint_of(error: &anyhow::Error) -> Option<&str> {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<Reported>())
        .filter_map(|r| r.hint.as_deref())
        .last()
}

/// The status `error` exits with: the innermost one attached, else [`Status::Runtime`].
pub fn status(error: &anyhow::Error) -> Status {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<Reported>())
        .filter_map(|r| r.status)
        .last()
        .unwrap_or(Status::Runtime)
}

/// The whole text of a failure: `idlegate: <chain>` and, if one is known, `\nhint: <hint>`.
/// No trailing newline.
pub fn render(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    let mut out = format!("idlegate: {text}");
    if let Some(hint) = hint_of(error) {
        // A message that already carries its own hint line (older code writes them inline)
        // is not given a second one.
        if !text.contains("\nhint: ") {
            out.push_str("\nhint: ");
            out.push_str(hint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::{anyhow, Context};

    fn failing() -> anyhow::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("creating TUN device igw-inside")
    }

    #[test]
    fn a_failure_renders_as_one_prefixed_line_with_its_causes() {
        let e = failing().unwrap_err();
        assert_eq!(
            render(&e),
            "idlegate: creating TUN device igw-inside: permission denied"
        );
        assert_eq!(status(&e), Status::Runtime);
    }

    #[test]
    fn a_port_in_use_gets_the_hint_naming_the_setting_and_other_failures_none() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let bound =
            std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"));
        let e = listening(bound, "--listen", addr).unwrap_err();
        assert_eq!(
            render(&e),
            format!(
                "idlegate: listening on {addr}: Address already in use (os error 98)\n\
                 hint: another process has port {}: pick another --listen port",
                addr.port()
            )
        );
        let e = listening(failing(), "--listen", addr).unwrap_err();
        assert_eq!(hint_of(&e), None);
    }

    #[test]
    fn a_hint_is_printed_on_its_own_line_after_the_chain() {
        let e = failing()
            .hint("run as root, or give the binary CAP_NET_ADMIN")
            .unwrap_err();
        assert_eq!(
            render(&e),
            "idlegate: creating TUN device igw-inside: permission denied\n\
             hint: run as root, or give the binary CAP_NET_ADMIN"
        );
    }

    #[test]
    fn hint_and_status_survive_context_added_around_them() {
        let e = failing()
            .hint("run as root")
            .status(Status::Usage)
            .context("starting the gateway")
            .unwrap_err();
        assert_eq!(
            render(&e),
            "idlegate: starting the gateway: creating TUN device igw-inside: permission denied\n\
             hint: run as root"
        );
        assert_eq!(status(&e), Status::Usage);
        assert_eq!(status(&e).code(), 2);
    }

    #[test]
    fn an_error_at_hand_is_hinted_as_a_result_is() {
        let e = hinted(anyhow!("lab \"x\" is not up"), "start it");
        assert_eq!(render(&e), "idlegate: lab \"x\" is not up\nhint: start it");
        assert_eq!(status(&e), Status::Runtime);
    }

    #[test]
    fn a_hint_on_a_context_around_a_hinted_error_keeps_the_context() {
        let e = failing()
            .hint("inner")
            .context("--private-key")
            .hint("outer")
            .unwrap_err();
        assert_eq!(
            render(&e),
            "idlegate: --private-key: creating TUN device igw-inside: permission denied\n\
             hint: inner"
        );
    }

    #[test]
    fn the_innermost_hint_wins() {
        let e = failing().hint("inner").hint("outer").unwrap_err();
        assert_eq!(hint_of(&e), Some("inner"));
    }

    #[test]
    fn a_message_with_its_own_hint_line_gets_no_second_one() {
        let e: anyhow::Result<()> = Err(anyhow!("bad key\nhint: make one"));
        let e = e.hint("other").unwrap_err();
        assert_eq!(render(&e), "idlegate: bad key\nhint: make one");
    }

    #[test]
    fn exec_statuses_are_the_shells_126_and_127() {
        assert_eq!(Status::CannotExecute.code(), 126);
        assert_eq!(Status::NotFound.code(), 127);
        assert_eq!(Status::Runtime.code(), 1);
    }
}
