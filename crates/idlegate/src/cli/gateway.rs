//! `idlegate gateway`: the config read and checked, two TUN devices made and brought up,
//! privileges dropped, systemd told it is ready (`READY=1` to `$NOTIFY_SOCKET`, when set), then
//! the gateway run until SIGINT or SIGTERM; `--explain` prints what every rule's flows will get
//! instead. Also the config loading `lab up` shares.

use super::{print_ready, workers_in_range, DEFAULT_CONTROL};
use anyhow::{Context, Result};
use clap::Args;
use idlegate::gateway::{ApiOptions, Attachment, Gateway, Options};
use idlegate::obs::report::{Report, Status};
use idlegate::sys::signal::Interrupt;
use idlegate::sys::tun::Tun;
use idlegate_core::Interface;
use idlegate_core::{precedence, Config};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GatewayArgs {
    /// The gateway's TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// TUN device on the backend pool's side.
    #[arg(long, default_value = "igw-inside")]
    pub inside: String,
    /// TUN device on the internet's side.
    #[arg(long, default_value = "igw-outside")]
    pub outside: String,
    /// Print, for every rule, the idle timeout and expiry action that will apply and which
    /// setting won, then exit without starting.
    #[arg(long)]
    pub explain: bool,
    /// With --explain: print it as one JSON document (the profile's timers, and per rule the
    /// TCP and UDP timeouts in seconds, the expiry, the setting that won and why).
    #[arg(long, requires = "explain")]
    pub json: bool,
    /// The control socket `idlegate flows` talks to.
    #[arg(long, default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
    /// Write every packet the gateway sees or makes to this file, as pcapng (whatever its
    /// name): one interface per side (inside, outside), each packet marked inbound or
    /// outbound. Open it in Wireshark or tshark.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Worker threads, each with a shard of the flows and a queue of every device
    /// [default: IDLEGATE_WORKERS, else one fewer than the cores, at least one].
    #[arg(long, value_parser = workers_in_range)]
    pub workers: Option<usize>,
    /// Run as this user once the devices are open and the sockets bound (the control socket
    /// is handed to it). Without it the gateway stays root but drops every capability.
    #[arg(long)]
    pub user: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Where `--api` alone serves.
pub const DEFAULT_API: &str = "127.0.0.1:9466";
/// The shortest token `--api-token-file` may hold.
pub const MIN_TOKEN: usize = 16;

/// `--api [ADDR]` and `--api-token-file FILE`, for `gateway` and `lab up`.
#[derive(Args, Debug, Default)]
pub struct ApiArgs {
    /// Serve the HTTP API and the live page at http://ADDR/: HOST:PORT, or PORT alone for
    /// 127.0.0.1:PORT; --api alone serves on 127.0.0.1:9466; port 0 takes any free port. An
    /// address not on loopback needs --api-token-file.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = DEFAULT_API,
        value_parser = api_addr
    )]
    pub api: Option<std::net::SocketAddr>,
    /// A file holding the token every API request must then carry (Authorization: Bearer
    /// TOKEN, or the cookie a browser gets from /?token=TOKEN): the file's content without its
    /// trailing newline (one: a blank line after it is refused), at least 16 bytes of visible
    /// ASCII.
    #[arg(long, value_name = "FILE", requires = "api")]
    pub api_token_file: Option<PathBuf>,
}

/// `--api`'s ADDR: `PORT`, `HOST:PORT` with an IP address or `localhost`, `[IPv6]:PORT`.
/// A refusal says what is wrong with the value (clap prints the value itself before it).
pub fn api_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    const FORMS: &str = "e.g. 127.0.0.1:9466, [::1]:9466 or 9466";
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Refused from here on: say why.
    if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        return Err("a port is at most 65535".to_string());
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() || bare.eq_ignore_ascii_case("localhost") {
        let example = match bare.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:9466"),
            _ => format!("{bare}:9466"),
        };
        return Err(format!("no port: add one, e.g. {example}"));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("not HOST:PORT or PORT ({FORMS})"));
    };
    if host.is_empty() {
        return Err(format!("no host before the port: {FORMS}"));
    }
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!("{port:?} is not a port (0 to 65535): {FORMS}"));
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "an IPv6 address takes brackets before its port, e.g. [::1]:{port}"
        ));
    }
    Err(format!(
        "the host must be an IP address or localhost (a name is not looked up), \
         e.g. 127.0.0.1:{port} or 0.0.0.0:{port}"
    ))
}

impl ApiArgs {
    /// The API's address and token, or `None` without `--api`. Refused as usage errors before
    /// anything starts: a token file that cannot be read, a token too short or with
    /// characters a header or cookie cannot carry, and an address not on loopback without a
    /// token.
    pub fn options(&self) -> Result<Option<ApiOptions>> {
        let Some(addr) = self.api else {
            return Ok(None);
        };
        let token = self
            .api_token_file
            .as_deref()
            .map(read_token)
            .transpose()
            .status(Status::Usage)?;
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(anyhow::anyhow!(
                "--api {addr}: not a loopback address, and no token"
            ))
            .hint(
                "give --api-token-file FILE (every request then carries it), or serve on 127.0.0.1",
            )
            .status(Status::Usage);
        }
        if !addr.ip().is_loopback() {
            // Said once, as the command starts: the token is no secret from the network.
            tracing::warn!(target: idlegate::LOG_TARGET,
                "--api {addr}: not on loopback, and the API is plain HTTP: the token and \
                 everything the API serves travel in clear; serve it only on a network you \
                 trust, or behind a TLS proxy"
            );
        }
        Ok(Some(ApiOptions { addr, token }))
    }
}

/// The token in `path`: its content, the trailing newline trimmed (one: more is refused, so
/// that a blank line an editor left is not read as part of the token nor silently dropped).
fn read_token(path: &Path) -> Result<String> {
    let named = || format!("--api-token-file {}", path.display());
    let bytes = std::fs::read(path).with_context(named)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: the token is not text", named()))?;
    let token = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    let trailing = &token[token.trim_end().len()..];
    if !trailing.is_empty() && trailing.len() < token.len() {
        let what = if trailing.contains('\n') {
            "a blank line"
        } else {
            "white space"
        };
        return Err(anyhow::anyhow!(
            "{}: a trailing newline is dropped, but this file has more: {what} after the token",
            named()
        ))
        .hint(format!(
            "remove the {what} at the end of {}",
            path.display()
        ));
    }
    if token.len() < MIN_TOKEN {
        return Err(anyhow::anyhow!(
            "{}: the token is {} bytes long; at least {MIN_TOKEN} are needed",
            named(),
            token.len()
        ))
        .hint("write a longer one, e.g. head -c 24 /dev/urandom | base64 > FILE");
    }
    if !idlegate::obs::scrape::token_is_sendable(token) {
        return Err(anyhow::anyhow!(
            "{}: the token has a space, a control character, or one of \" , ; \\ or non-ASCII: \
             a header or a cookie cannot carry it as it is",
            named()
        ))
        .hint("use letters, digits and -._~+/=, e.g. head -c 24 /dev/urandom | base64 > FILE");
    }
    Ok(token.to_string())
}

/// `--explain`: what every rule's flows will get, and why; as text or one JSON document.
pub fn explain(path: &Path, json: bool) -> Result<()> {
    use std::io::Write;
    let config = load_config(path)?;
    let text = if json {
        let explanation = precedence::explanation(&config);
        serde_json::to_string_pretty(&explanation)? + "\n"
    } else {
        precedence::explain(&config)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

/// Reads and validates a config file; nothing starts on a bad one (a usage error, as is a
/// file that cannot be read).
pub fn load_config(path: &Path) -> Result<Config> {
    super::load_config(path)
}

/// `--user NAME` looked up, its errors named after the flag.
fn lookup_user(name: &str) -> Result<idlegate::sys::privilege::User> {
    use idlegate::sys::privilege::{LookupError, User};
    User::lookup(name).map_err(|e| match e {
        LookupError::Nul => anyhow::anyhow!("{e}"),
        LookupError::Root => anyhow::anyhow!(
            "--user {name}: {e} (leave --user out to stay root with no capabilities)"
        ),
        _ => anyhow::anyhow!("--user {name}: {e}"),
    })
}

/// What to do when the TUN devices could not be made for want of privilege. Opening
/// `/dev/net/tun` is checked against its mode (EACCES, "Permission denied"), making a device
/// against CAP_NET_ADMIN (EPERM, "Operation not permitted"); the gateway needs both, and
/// after them write access to its control socket's directory (`/run/idlegate` by default).
fn privilege_hint<T>(error: anyhow::Error) -> Result<T> {
    let errno = idlegate::obs::report::io_cause(&error).and_then(std::io::Error::raw_os_error);
    let binary = std::env::current_exe()
        .map_or_else(|_| "idlegate".to_string(), |p| p.display().to_string());
    let hint = match errno {
        Some(libc::EACCES) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(TUN_DEVICE)
                .map(|m| format!(" (its mode is {:04o})", m.permissions().mode() & 0o7777))
                .unwrap_or_default();
            format!(
                "run it as root: this user may not open {TUN_DEVICE}{mode}; the gateway needs \
                 read-write access to it and CAP_NET_ADMIN"
            )
        }
        Some(libc::EPERM) => format!(
            "run it as root, or give the binary CAP_NET_ADMIN (sudo setcap cap_net_admin+ep \
             {binary}) and a --control path this user can write"
        ),
        _ => return Err(error),
    };
    Err(error).hint(hint)
}

/// The device every TUN device is made through.
const TUN_DEVICE: &str = "/dev/net/tun";

/// `idlegate gateway`: runs until SIGINT or SIGTERM (or, with `--explain`, prints and exits).
pub fn run(args: GatewayArgs) -> Result<()> {
    if args.explain {
        return explain(&args.config, args.json);
    }
    let config = load_config(&args.config)?;
    let api = args.api.options()?;
    let user = args
        .user
        .as_deref()
        .map(lookup_user)
        .transpose()
        .status(Status::Usage)?;
    idlegate::gateway::control::check_directory(&args.control)?;
    let workers = args
        .workers
        .unwrap_or_else(idlegate::gateway::default_workers);
    let mut ports = Vec::new();
    for (name, interface) in [
        (&args.inside, Interface::Inside),
        (&args.outside, Interface::Outside),
    ] {
        let queues = Tun::create_queues(name, workers).or_else(privilege_hint)?;
        // No IPv6 link-local address: the kernel would send router solicitations into it.
        queues.first().context("tun-rs made no queue")?.bring_up()?;
        ports.push(Attachment {
            queues,
            interface,
            host: None,
        });
    }
    tracing::info!(target: idlegate::LOG_TARGET,
        "TUN {} (inside) and {} (outside) are up: route every packet arriving from the backend pool into {} \
         and every packet arriving from the internet into {} (policy routing by incoming interface; see docs/src/commands/gateway.md)",
        args.inside,
        args.outside,
        args.inside,
        args.outside
    );
    let options = Options {
        control: Some(args.control.clone()),
        pcap: args.pcap,
        metrics: args.metrics,
        api,
    };
    let mut gateway = Gateway::new(&config, ports, &options)?;
    // Connected while still privileged; told only once the devices are up and the gateway is
    // built, so a unit's ExecStartPost= (the host's routes into the devices) runs after.
    let notifier = idlegate::sys::notify::Notifier::from_env()?;
    // Forwarding needs no privilege: the devices are open and the sockets bound. This is
    // still the only thread (capabilities and no_new_privs are per thread; threads started
    // later inherit them), so the signal handler's thread starts only after the drop. Until
    // then SIGINT and SIGTERM end the process as they always do, and the devices go with it.
    if let Some(user) = user {
        idlegate::sys::privilege::give(&args.control, user)?;
    }
    idlegate::sys::privilege::drop_all(user)?;
    let uid = idlegate::sys::process::uid();
    tracing::info!(target: idlegate::LOG_TARGET,
        "privileges dropped: running as uid {uid} with no capabilities{}",
        if uid == 0 {
            " (still uid 0, which owns root's files: give --user for less)"
        } else {
            ""
        }
    );
    let interrupt = Interrupt::install().context("installing signal handlers")?;
    let stopper = gateway.stopper();
    if interrupt.attach(move || stopper.stop()) {
        return Ok(());
    }
    if let Some(notifier) = &notifier {
        notifier.ready()?;
    }
    print_ready()?;
    gateway.run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use idlegate::obs::report::{render, status as status_of};

    #[derive(Parser)]
    struct Api {
        #[command(flatten)]
        args: ApiArgs,
    }

    fn parsed(args: &[&str]) -> ApiArgs {
        let line = std::iter::once("gateway").chain(args.iter().copied());
        Api::try_parse_from(line)
            .expect("arguments clap accepts")
            .args
    }

    /// A token file holding `content`.
    fn token_file(content: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, content.as_bytes()).unwrap();
        file
    }

    #[test]
    fn api_alone_is_127_0_0_1_9466_a_port_alone_is_on_127_0_0_1() {
        let addr = |args: &[&str]| parsed(args).api.map(|a| a.to_string());
        assert_eq!(addr(&[]), None);
        assert_eq!(addr(&["--api"]).as_deref(), Some("127.0.0.1:9466"));
        assert_eq!(addr(&["--api", "8080"]).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(addr(&["--api", "0"]).as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            addr(&["--api", "localhost:9000"]).as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(
            addr(&["--api", "[::1]:9466"]).as_deref(),
            Some("[::1]:9466")
        );
        assert_eq!(
            addr(&["--api", "192.0.2.1:9466"]).as_deref(),
            Some("192.0.2.1:9466")
        );
        assert_eq!(
            addr(&["--api", "LocalHost:9000"]).as_deref(),
            Some("127.0.0.1:9000")
        );
        for bad in ["host.example:9466", "70000", "127.0.0.1", ":9466"] {
            let line = ["gateway", "--api", bad];
            assert!(Api::try_parse_from(line).is_err(), "{bad}");
        }
        // The token file needs --api.
        assert!(Api::try_parse_from(["gateway", "--api-token-file", "/x"]).is_err());
    }

    #[test]
    fn a_refused_api_address_says_what_is_wrong_with_it() {
        for (bad, why) in [
            (
                "www.example.com:9470",
                "the host must be an IP address or localhost (a name is not looked up), \
                 e.g. 127.0.0.1:9470 or 0.0.0.0:9470",
            ),
            ("127.0.0.1", "no port: add one, e.g. 127.0.0.1:9466"),
            ("localhost", "no port: add one, e.g. localhost:9466"),
            ("::1", "no port: add one, e.g. [::1]:9466"),
            ("[::1]", "no port: add one, e.g. [::1]:9466"),
            ("70000", "a port is at most 65535"),
            (
                "127.0.0.1:99999",
                "\"99999\" is not a port (0 to 65535): e.g. 127.0.0.1:9466, [::1]:9466 or 9466",
            ),
            (
                ":9466",
                "no host before the port: e.g. 127.0.0.1:9466, [::1]:9466 or 9466",
            ),
            (
                "fd00::1:x",
                "\"x\" is not a port (0 to 65535): e.g. 127.0.0.1:9466, [::1]:9466 or 9466",
            ),
            (
                "fd00::1%eth0:9466",
                "an IPv6 address takes brackets before its port, e.g. [::1]:9466",
            ),
            (
                "nowhere",
                "not HOST:PORT or PORT (e.g. 127.0.0.1:9466, [::1]:9466 or 9466)",
            ),
        ] {
            assert_eq!(api_addr(bad), Err(why.to_string()), "{bad}");
        }
        // clap names the flag and the value, then says why.
        let error = Api::try_parse_from(["gateway", "--api", "www.example.com:9470"])
            .err()
            .expect("refused");
        let text = error.to_string();
        assert!(
            text.contains("'www.example.com:9470' for '--api [<ADDR>]': the host must be an IP"),
            "{text}"
        );
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn a_token_file_with_more_than_one_trailing_newline_says_to_remove_the_blank_line() {
        for (content, what) in [
            ("0123456789abcdef\n\n", "a blank line"),
            ("0123456789abcdef\r\n\r\n", "a blank line"),
            ("0123456789abcdef \n", "white space"),
        ] {
            let file = token_file(content);
            let path = file.path().to_str().unwrap();
            let error = parsed(&["--api", "--api-token-file", path])
                .options()
                .unwrap_err();
            assert_eq!(
                render(&error),
                format!(
                    "idlegate: --api-token-file {path}: a trailing newline is dropped, but this \
                     file has more: {what} after the token\n\
                     hint: remove the {what} at the end of {path}"
                ),
                "{content:?}"
            );
            assert_eq!(status_of(&error), Status::Usage);
        }
        // Nothing but newlines: too short, as an empty file is.
        let file = token_file("\n\n");
        let path = file.path().to_str().unwrap();
        let error = parsed(&["--api", "--api-token-file", path])
            .options()
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("the token is 1 bytes long"),
            "{error:#}"
        );
    }

    #[test]
    fn an_address_not_on_loopback_without_a_token_is_a_usage_error_with_its_hint() {
        let error = parsed(&["--api", "0.0.0.0:9466"]).options().unwrap_err();
        assert_eq!(
            render(&error),
            "idlegate: --api 0.0.0.0:9466: not a loopback address, and no token\n\
             hint: give --api-token-file FILE (every request then carries it), or serve on 127.0.0.1"
        );
        assert_eq!(status_of(&error), Status::Usage);
        // Loopback needs none.
        let api = parsed(&["--api", "[::1]:0"]).options().unwrap().unwrap();
        assert_eq!(api.token, None);
    }

    #[test]
    fn the_token_is_the_files_content_without_its_trailing_newline() {
        let file = token_file("0123456789abcdef\n");
        let path = file.path().to_str().unwrap();
        let api = parsed(&["--api", "0.0.0.0:9466", "--api-token-file", path])
            .options()
            .unwrap()
            .unwrap();
        assert_eq!(api.token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(api.addr.to_string(), "0.0.0.0:9466");
        let file = token_file("0123456789abcdef\r\n");
        let path = file.path().to_str().unwrap();
        let api = parsed(&["--api", "--api-token-file", path])
            .options()
            .unwrap()
            .unwrap();
        assert_eq!(api.token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn a_token_file_missing_short_or_unsendable_is_a_usage_error_naming_the_file() {
        let short = token_file("0123456789abcde\n");
        let spaced = token_file("0123456789 abcdef");
        let missing = short.path().with_extension("missing");
        for (path, why) in [
            (
                short.path(),
                "the token is 15 bytes long; at least 16 are needed",
            ),
            (spaced.path(), "the token has a space"),
            (&missing, "No such file or directory"),
        ] {
            let path = path.to_str().unwrap();
            let error = parsed(&["--api", "--api-token-file", path])
                .options()
                .unwrap_err();
            let text = format!("{error:#}");
            assert!(
                text.starts_with(&format!("--api-token-file {path}: ")),
                "{text}"
            );
            assert!(text.contains(why), "{text}");
            assert_eq!(status_of(&error), Status::Usage, "{text}");
        }
    }
}
