//! The control socket: a running gateway answers `idlegate flows` and `idlegate flows expire`.
//!
//! A Unix stream socket, mode 0600, owned by the gateway's user. A client connects, writes one
//! [`Request`] as a JSON line, reads one [`Response`] as a JSON line, and the gateway closes the
//! connection. The gateway serves it from its own event loop ([`Control::serve`] is called when
//! the listener is readable) and answers from every worker's shard ([`Shards`]), each of which
//! sees its flow table between two packets. A client that sends nothing within
//! [`CLIENT_TIMEOUT`] is dropped.

use anyhow::{bail, Context, Result};
use idlegate_core::{Engine, FlowInfo};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the gateway waits for a client's request line.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the gateway spends writing one answer (a `flows` answer of a full table is
/// hundreds of MB): a client that reads slower is dropped.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request line read; the rest is not read.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long `idlegate flows` waits for the gateway (for each read of its answer).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory of the default control socket and the labs' (`/run/idlegate`): the one
/// directory the gateway makes for its socket. Any other must exist: a mistyped `--control`
/// makes no directory.
pub const RUN_DIR: &str = "/run/idlegate";

/// Refuses a control socket `path` in a directory that is not there (other than
/// [`RUN_DIR`]): a usage error, found before anything starts.
pub fn check_directory(path: &Path) -> Result<()> {
    use crate::obs::report::{Report, Status};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => return Ok(()),
    };
    if dir == Path::new(RUN_DIR) || dir.is_dir() {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "--control {}: no directory {}",
        path.display(),
        dir.display()
    ))
    .with_hint(|| {
        format!(
            "create it first (mkdir -p {}), or give a path in one that exists",
            dir.display()
        )
    })
    .status(Status::Usage)
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The live flow table.
    Flows,
    /// Expire now, with their rules' actions, the flows of `rule`, or with `all`, every flow.
    Expire {
        #[serde(default)]
        rule: Option<String>,
        #[serde(default)]
        all: bool,
    },
}

/// What the gateway answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Flows {
        flows: Vec<FlowRow>,
    },
    Expired {
        count: usize,
    },
    /// `expire` named a rule the gateway does not have (nothing was expired): its rules.
    NoRule {
        rule: String,
        rules: Vec<String>,
    },
    Error {
        message: String,
    },
}

/// One flow, as `idlegate flows --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    pub rule: String,
    pub protocol: String,
    /// The outside peer.
    pub remote: String,
    /// The frontend address and port the remote sees.
    pub public: String,
    /// The backend pool member's address and port.
    pub private: String,
    pub state: String,
    pub idle_for_s: f64,
    pub expires_in_s: f64,
    /// The timeout of its state that runs now (scaled): `expires_in_s` counts down from it.
    #[serde(default)]
    pub timeout_s: f64,
}

impl FlowRow {
    pub fn new(engine: &Engine, f: &FlowInfo) -> FlowRow {
        FlowRow {
            rule: engine.rule_name(f.flow.rule).to_string(),
            protocol: format!("{:?}", f.flow.protocol).to_lowercase(),
            remote: f.flow.remote.to_string(),
            public: f.flow.public.to_string(),
            private: f.flow.private.to_string(),
            state: f.state.as_str().to_string(),
            idle_for_s: f.idle_for.as_secs_f64(),
            expires_in_s: f.expires_in.as_secs_f64(),
            timeout_s: f.timeout.as_secs_f64(),
        }
    }
}

/// What requests are answered from: the engine's shards, one per worker.
pub trait Shards {
    /// The names of the rules, as written in the config.
    fn rule_names(&self) -> &[String];
    /// Every flow of every shard, as it stands now; an error if a shard cannot say.
    fn flows(&mut self) -> Result<Vec<FlowRow>, String>;
    /// Expires now, with their rules' actions, the flows of `rule` (every flow with `None`);
    /// returns how many, or an error if a shard did not say (it may still expire them).
    fn expire(&mut self, rule: Option<&str>) -> Result<usize, String>;
}

/// The gateway's end: a listening socket, removed when dropped.
pub struct Control {
    listener: mio::net::UnixListener,
    path: PathBuf,
}

impl Control {
    /// Listens at `path` (mode 0600). A live socket there is refused; a stale one is replaced.
    /// Its directory must exist, except [`RUN_DIR`], which is made (mode 0755) if missing.
    pub fn bind(path: &Path) -> Result<Control> {
        check_directory(path)?;
        if path.parent() == Some(Path::new(RUN_DIR)) {
            std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is the control socket of a running gateway; give another with --control",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path);
        let listener =
            listen_private(path).with_context(|| format!("listening on {}", path.display()))?;
        // Already 0600; said again in case the umask took more.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
        Ok(Control {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The listener, to register with the event loop.
    pub fn listener(&mut self) -> &mut mio::net::UnixListener {
        &mut self.listener
    }

    /// Answers every client waiting to be accepted.
    pub fn serve(&mut self, shards: &mut dyn Shards) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = answer(stream, shards) {
                        tracing::debug!("control client: {e:#}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!("control socket {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A listening socket at `path` that is mode 0600 from the moment it exists: Linux gives the
/// file the mode of the socket being bound (less the umask), so the socket is made 0600
/// first. No other user can connect in the moment before a chmod, and the process's umask,
/// which other threads share, is left alone.
fn listen_private(path: &Path) -> std::io::Result<mio::net::UnixListener> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    std::fs::File::from(std::os::fd::OwnedFd::from(socket.try_clone()?))
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(mio::net::UnixListener::from_std(socket.into()))
}

fn answer(stream: mio::net::UnixStream, shards: &mut dyn Shards) -> Result<()> {
    // mio's stream is a plain socket: serve it blocking, briefly.
    let stream: UnixStream = std::os::fd::OwnedFd::from(stream).into();
    stream.set_nonblocking(false)?;
    let line = read_request(&stream)?;
    let response = handle_line(&line, shards);
    let mut out = serde_json::to_string(&response)?;
    out.push('\n');
    write_by(&stream, out.as_bytes(), Instant::now() + ANSWER_TIMEOUT)
}

/// Writes all of `bytes` before `deadline`, or fails.
fn write_by(stream: &UnixStream, mut bytes: &[u8], deadline: Instant) -> Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the client did not read the answer within {ANSWER_TIMEOUT:?}");
        }
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(bytes) {
            Ok(0) => bail!("the client closed before the answer was written"),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The answer to one request line, as a client sent it (any bytes: a line that is not a
/// request gets an error response).
pub fn handle_line(line: &[u8], shards: &mut dyn Shards) -> Response {
    match serde_json::from_slice::<Request>(line) {
        Ok(request) => respond(request, shards),
        Err(e) => Response::Error {
            message: format!("not a request: {e}"),
        },
    }
}

fn respond(request: Request, shards: &mut dyn Shards) -> Response {
    match request {
        Request::Flows => match shards.flows() {
            Ok(flows) => Response::Flows { flows },
            Err(message) => Response::Error { message },
        },
        Request::Expire {
            rule: None,
            all: false,
        }
        | Request::Expire {
            rule: Some(_),
            all: true,
        } => Response::Error {
            message: "expire needs either a rule or all".to_string(),
        },
        Request::Expire {
            rule: Some(rule), ..
        } if !shards.rule_names().contains(&rule) => Response::NoRule {
            rule,
            rules: shards.rule_names().to_vec(),
        },
        Request::Expire { rule, .. } => {
            let count = match shards.expire(rule.as_deref()) {
                Ok(count) => count,
                Err(message) => return Response::Error { message },
            };
            if let Some(rule) = &rule {
                tracing::info!("control: expired {count} flow(s) of rule {rule} now");
            } else {
                tracing::info!("control: expired all {count} flow(s) now");
            }
            Response::Expired { count }
        }
    }
}

/// Reads the request line, all of it within [`CLIENT_TIMEOUT`] however slowly it comes, and at
/// most 64 KiB.
fn read_request(stream: &UnixStream) -> Result<Vec<u8>> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut line = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    while !line.contains(&b'\n') && line.len() < MAX_REQUEST {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no request within {CLIENT_TIMEOUT:?}");
        }
        stream.set_read_timeout(Some(left))?;
        let room = chunk.len().min(MAX_REQUEST - line.len());
        let n = (&*stream).read(&mut chunk[..room])?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&chunk[..n]);
    }
    Ok(line)
}

/// The client's end: sends `request` to the gateway at `path` and returns its answer.
pub fn ask(path: &Path, request: &Request) -> Result<Response> {
    let mut stream = connect(path)?;
    stream.set_read_timeout(Some(ASK_TIMEOUT))?;
    stream.set_write_timeout(Some(ASK_TIMEOUT))?;
    let no_answer = || format!("the gateway at {} did not answer", path.display());
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| crate::sys::timeout::explain(e, ASK_TIMEOUT))
        .with_context(no_answer)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| crate::sys::timeout::explain(e, ASK_TIMEOUT))
        .with_context(no_answer)?;
    serde_json::from_str(&answer)
        .with_context(|| format!("the gateway's answer is not a response: {answer:?}"))
}

/// Connects to the control socket at `path`; a failure says what the OS's reason means for
/// it and what to do.
fn connect(path: &Path) -> Result<UnixStream> {
    use crate::obs::report::Report;
    let at = path.display();
    UnixStream::connect(path).or_else(|e| {
        let reason = crate::sys::errno::reason(&e);
        let failed = Err(anyhow::anyhow!("{reason}"));
        match e.kind() {
            std::io::ErrorKind::NotFound => failed
                .with_context(|| format!("connecting to the gateway's control socket {at}"))
                .hint("start the gateway (`idlegate gateway --config FILE`), or give its socket with --control"),
            std::io::ErrorKind::ConnectionRefused => failed
                .with_context(|| format!("connecting to the gateway's control socket {at}"))
                .hint("the gateway that made it has stopped: start it again, or give the running one's socket with --control"),
            std::io::ErrorKind::PermissionDenied => failed
                .with_context(|| format!("the gateway's control socket {at} is there, but this user may not connect to it"))
                .with_hint(|| format!("run as root, or as the socket's owner (it is mode 0600: `ls -l {at}`)")),
            _ => failed.with_context(|| format!("connecting to the gateway's control socket {at}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_read_as_json_lines() {
        let expire = serde_json::to_string(&Request::Expire {
            rule: Some("app".into()),
            all: false,
        })
        .unwrap();
        assert_eq!(expire, r#"{"request":"expire","rule":"app","all":false}"#);
        // A misspelt field is refused, not taken for "expire everything".
        assert!(serde_json::from_str::<Request>(r#"{"request":"expire","rul":"app"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"flows"}"#).unwrap(),
            Request::Flows
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }

    /// A socket file left by a gateway that stopped: the OS's reason said once, then what to do.
    #[test]
    fn a_stale_control_socket_says_connection_refused_once_and_that_the_gateway_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = connect(&path).unwrap_err();
        assert_eq!(
            crate::obs::report::render(&e),
            format!(
                "idlegate: connecting to the gateway's control socket {}: Connection refused\n\
                 hint: the gateway that made it has stopped: start it again, or give the running \
                 one's socket with --control",
                path.display()
            )
        );
    }

    #[test]
    fn the_control_socket_is_0600_from_its_bind_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let _listener = listen_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_request_longer_than_the_limit_is_read_to_the_limit_and_no_further() {
        let (client, server) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = (&client).write_all(&vec![b'x'; MAX_REQUEST + 5000]);
            client
        });
        let line = read_request(&server).unwrap();
        assert_eq!(line.len(), MAX_REQUEST);
        drop(server);
        drop(writer.join().unwrap());
    }

    #[test]
    fn an_answer_the_client_does_not_read_is_given_up_at_the_deadline() {
        let (client, server) = UnixStream::pair().unwrap();
        // More than the socket buffers hold, to a client that never reads.
        let answer = vec![b'x'; 8 << 20];
        let deadline = Instant::now() + Duration::from_millis(200);
        let written = write_by(&server, &answer, deadline);
        assert!(written.is_err());
        // SO_SNDTIMEO may end up to a clock tick early.
        assert!(Instant::now() + Duration::from_millis(20) >= deadline);
        drop(client);
    }
}
