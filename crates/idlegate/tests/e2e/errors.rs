//! One error style across commands: each command run with a typical bad input prints
//! `idlegate: <what failed>: <why>` as its first stderr line, then `hint: <what to do>` where
//! there is one, and exits with the documented status: 2 for a mistake in the arguments or a
//! file they name (nothing started), 1 for a failure while running, 127/126 for a program that
//! `run` cannot find or execute.
//!
//! Nothing here needs a network: every case fails before anything is bound or created, except
//! the gateway's, which fails at its first TUN device (so no device is left behind).

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const IDLEGATE: &str = env!("CARGO_BIN_EXE_idlegate");

/// How long a refused command may take (it refuses before anything starts: well under a
/// second, even on a loaded machine).
const WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Every profile's name, as the hint of an unknown profile lists them.
const ALL_PROFILES: &str = "azure-lb, azure-snat, azure-natgw, azure-appservice, \
                            azure-firewall, azure-firewall-east-west, aws-nlb, aws-natgw, \
                            aws-alb, gcp-nat, gcp-firewall, linux-conntrack, kube-proxy, ipvs, \
                            rfc5382 (`idlegate profiles` shows their timers)";

/// A command with a bad input and what it must say.
struct Case {
    what: &'static str,
    /// The command: `idlegate` with these arguments, or (with `wrap`) the wrapper first.
    args: Vec<String>,
    /// A program that runs idlegate (setpriv dropping privilege), with its arguments.
    wrap: Vec<String>,
    /// The binary to run (a copy anyone may run, for a case as another user).
    binary: PathBuf,
    /// The first stderr line, whole.
    line: String,
    /// The hint line, whole (`None`: there must be none).
    hint: Option<String>,
    status: i32,
}

impl Case {
    fn new(what: &'static str, args: &[&str], status: i32, line: &str) -> Case {
        Case {
            what,
            args: args.iter().map(|a| a.to_string()).collect(),
            wrap: Vec::new(),
            binary: PathBuf::from(IDLEGATE),
            line: line.to_string(),
            hint: None,
            status,
        }
    }

    fn hint(mut self, hint: &str) -> Case {
        self.hint = Some(hint.to_string());
        self
    }

    fn check(&self) {
        let mut command = match self.wrap.split_first() {
            Some((wrapper, wrap_args)) => {
                let mut c = Command::new(wrapper);
                c.args(wrap_args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        // Bounded: a command that starts instead of refusing (the old behaviour of some
        // cases) fails the test instead of hanging it.
        let out = common::output_within(command.args(&self.args).env_remove("RUST_LOG"), WITHIN);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines = stderr.lines();
        assert_eq!(
            lines.next(),
            Some(self.line.as_str()),
            "{}: {stderr}",
            self.what
        );
        assert!(self.line.starts_with("idlegate: "), "{}", self.what);
        let hint = lines.find_map(|l| l.strip_prefix("hint: "));
        assert_eq!(hint, self.hint.as_deref(), "{}: {stderr}", self.what);
        assert_eq!(
            out.status.code(),
            Some(self.status),
            "{}: {stderr}",
            self.what
        );
        assert!(out.stdout.is_empty(), "{}: nothing on stdout", self.what);
    }
}

/// A directory anyone may read, holding `files` (name, text), each readable by anyone.
fn files(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

fn at(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// examples/azure-lb.toml copied to `gateway.toml` in a new temporary directory (removed
/// when the first is dropped), and that copy's path.
fn example_gateway_config() -> (tempfile::TempDir, String) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/azure-lb.toml");
    let example = std::fs::read_to_string(&example).expect("examples/azure-lb.toml");
    let dir = files(&[("gateway.toml", &example)]);
    let config = at(dir.path(), "gateway.toml");
    (dir, config)
}

/// `gateway --config CONFIG --inside INSIDE --outside OUTSIDE`.
fn gateway_args<'a>(config: &'a str, inside: &'a str, outside: &'a str) -> [&'a str; 7] {
    [
        "gateway",
        "--config",
        config,
        "--inside",
        inside,
        "--outside",
        outside,
    ]
}

const GATEWAY_CONFIG: &str = "profile = \"azure-lb\"\n\
                              [[frontend]]\n\
                              name = \"public\"\n\
                              address = \"203.0.113.10\"\n\
                              idle_timeout = 240\n";

/// One member, vm1, and one LB rule whose timeout no whole-second keepalive beats.
const ONE_SECOND_CONFIG: &str = "profile = \"linux-conntrack\"\n\
                                 [[frontend]]\n\
                                 name = \"public\"\n\
                                 address = \"203.0.113.10\"\n\
                                 [[backend_pool]]\n\
                                 name = \"vms\"\n\
                                 members = [{ name = \"vm1\", address = \"192.0.2.11\" }]\n\
                                 [[lb_rule]]\n\
                                 name = \"app\"\n\
                                 frontend = \"public\"\n\
                                 frontend_port = 80\n\
                                 backend_pool = \"vms\"\n\
                                 backend_port = 8080\n\
                                 idle_timeout = \"1s\"\n";

const RELAY_CONFIG: &str = "[[relay]]\n\
                            listen = \"127.0.0.1:15432\"\n\
                            connect = \"127.0.0.1:5432\"\n\
                            keepalive = \"2m,abc\"\n";

#[test]
fn bad_arguments_and_files_are_refused_in_one_style_with_exit_status_2() {
    let dir = files(&[
        ("gateway.toml", GATEWAY_CONFIG),
        ("relays.toml", RELAY_CONFIG),
        ("empty.toml", ""),
        ("one-second.toml", ONE_SECOND_CONFIG),
        (
            "udp-only.toml",
            &ONE_SECOND_CONFIG.replace("idle_timeout = \"1s\"", "protocol = \"udp\""),
        ),
        (
            "no-port.toml",
            &RELAY_CONFIG
                .replace("\"127.0.0.1:5432\"", "\"db.example.com\"")
                .replace("2m,abc", "2m,30s,8"),
        ),
    ]);
    let relay = [
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "127.0.0.1:9",
    ];
    let pid = std::process::id().to_string();
    let profiles_hint = format!("the profiles are {ALL_PROFILES}");
    let natgw_hint = format!("did you mean aws-natgw? The profiles are {ALL_PROFILES}");
    let gateway_config = at(dir.path(), "gateway.toml");
    let relay_config = at(dir.path(), "relays.toml");
    let empty = at(dir.path(), "empty.toml");
    let no_port = at(dir.path(), "no-port.toml");
    let missing = at(dir.path(), "missing.toml");
    let one_second = at(dir.path(), "one-second.toml");
    let udp_only = at(dir.path(), "udp-only.toml");
    let not_a_dir = at(dir.path(), "empty.toml");
    let cases = [
        Case::new(
            "relay --profile nope",
            &[&relay[..], &["--profile", "nope"]].concat(),
            2,
            "idlegate: --profile nope: no such profile",
        )
        .hint(&profiles_hint),
        Case::new(
            "advise --profile aws-nat-gateway",
            &["advise", "--profile", "aws-nat-gateway", "--os", "windows"],
            2,
            "idlegate: --profile aws-nat-gateway: no such profile",
        )
        .hint(&natgw_hint),
        Case::new(
            "lab demo --profile aws-nat-gateway",
            &["lab", "demo", "--profile", "aws-nat-gateway"],
            2,
            "idlegate: --profile aws-nat-gateway: no such profile",
        )
        .hint(&natgw_hint),
        Case::new(
            "lab demo --profile azure-firewall-east-west --expiry reset",
            &[
                "lab",
                "demo",
                "--profile",
                "azure-firewall-east-west",
                "--expiry",
                "reset",
            ],
            2,
            "idlegate: --expiry reset: Azure Firewall (east-west) cannot do that; at expiry it \
             drops the flow silently, with no RST to either end",
        )
        .hint("leave --expiry out, or give --expiry silent"),
        Case::new(
            "keepalive --profile nope",
            &["keepalive", "--pid", &pid, "--profile", "nope"],
            2,
            "idlegate: --profile nope: no such profile",
        )
        .hint(&profiles_hint),
        Case::new(
            "run --profile nope",
            &["run", "--profile", "nope", "--", "true"],
            2,
            "idlegate: --profile nope: no such profile",
        )
        .hint(&profiles_hint),
        Case::new(
            "relay --keepalive 2m,abc",
            &[&relay[..], &["--keepalive", "2m,abc"]].concat(),
            2,
            "idlegate: --keepalive \"2m,abc\": INTERVAL \"abc\" is not a duration (like 30s or 2m)",
        )
        .hint("give IDLE,INTERVAL,COUNT, e.g. --keepalive 120s,30s,8"),
        Case::new(
            "run --keepalive 2m,30s,abc",
            &["run", "--keepalive", "2m,30s,abc", "--", "true"],
            2,
            "idlegate: --keepalive \"2m,30s,abc\": COUNT \"abc\" is not a number",
        )
        .hint("give IDLE,INTERVAL,COUNT, e.g. --keepalive 120s,30s,8"),
        Case::new(
            "gateway --explain with idle_timeout = 240",
            &["gateway", "--explain", "--config", &gateway_config],
            2,
            &format!(
                "idlegate: {gateway_config}:5:16: idle_timeout: expected a duration string like \
                 \"240s\" or \"4m\", found integer 240"
            ),
        ),
        Case::new(
            "relay --config with keepalive = \"2m,abc\"",
            &["relay", "--config", &relay_config],
            2,
            &format!(
                "idlegate: {relay_config}:4:13: keepalive = \"2m,abc\": INTERVAL \"abc\" is not \
                 a duration (like 30s or 2m)"
            ),
        )
        .hint("write IDLE,INTERVAL,COUNT, e.g. keepalive = \"120s,30s,8\""),
        Case::new(
            "relay --config with an empty file",
            &["relay", "--config", &empty],
            2,
            &format!("idlegate: {empty}: no [[relay]] table"),
        )
        .hint(
            "write one [[relay]] table per relay, each with listen, connect and keepalive or \
             profile, e.g. [[relay]] listen = \"127.0.0.1:15432\" connect = \
             \"db.example.com:5432\" keepalive = \"120s,30s,8\" (each key on its own line)",
        ),
        Case::new(
            "relay --config whose connect is not HOST:PORT",
            &["relay", "--config", &no_port],
            2,
            &format!(
                "idlegate: {no_port}:3:11: connect = \"db.example.com\": not HOST:PORT: no :PORT"
            ),
        )
        .hint("give HOST:PORT, e.g. db.example.com:5432, 192.0.2.10:5432 or [fd00::10]:5432"),
        Case::new(
            "relay --config naming a file that is not there",
            &["relay", "--config", &missing],
            2,
            &format!("idlegate: reading {missing}: No such file or directory (os error 2)"),
        ),
        Case::new(
            "audit --idle-timeout 1s",
            &["audit", "--idle-timeout", "1s"],
            2,
            "idlegate: --idle-timeout 1 s: at least 2 s (keepalive timers are whole seconds)",
        )
        .hint("give --idle-timeout 2s or more"),
        Case::new(
            "audit --metrics with --interval 500ms",
            &["audit", "--metrics", "127.0.0.1:0", "--interval", "500ms"],
            2,
            "idlegate: --interval 500 ms: at least 1 s (each scan reads every process's descriptors)",
        )
        .hint("give --interval 1s or more"),
        Case::new(
            "advise --config whose rule has 1s",
            &["advise", "--config", &one_second],
            2,
            &format!(
                "idlegate: {one_second}: lb_rule \"app\" has 1 s: keepalive timers are whole seconds, at least 2 s"
            ),
        )
        .hint("raise lb_rule \"app\"'s idle_timeout to 2s or more"),
        Case::new(
            "audit --config with no TCP rule",
            &["audit", "--config", &udp_only],
            2,
            &format!(
                "idlegate: {udp_only}: no TCP rule (lb_rule, inbound_nat_rule, outbound_rule or nat_gateway): nothing to judge by"
            ),
        )
        .hint("give a config with a TCP rule, or --idle-timeout or --profile instead of --config"),
        Case::new(
            "advise --config --member naming no member of it",
            &["advise", "--config", &one_second, "--member", "vm9"],
            2,
            &format!("idlegate: --member vm9: {one_second} has no such member"),
        )
        .hint(&format!("the members of {one_second}: vm1")),
        Case::new(
            "audit --config --member naming no member of it",
            &["audit", "--config", &one_second, "--member", "vm9"],
            2,
            &format!("idlegate: --member vm9: {one_second} has no such member"),
        )
        .hint(&format!("the members of {one_second}: vm1")),
        Case::new(
            "lab demo --time-scale 0",
            &["lab", "demo", "--time-scale", "0"],
            2,
            "idlegate: --time-scale 0: must be at least 1",
        ),
        Case::new(
            "man --out naming a file",
            &["man", "--out", &not_a_dir],
            2,
            &format!("idlegate: --out {not_a_dir}: not a directory"),
        )
        .hint(&format!("create it first: mkdir -p {not_a_dir}")),
        Case::new(
            "probe --max abc (refused by the command-line parser)",
            &["probe", "192.0.2.10:7000", "--max", "abc"],
            2,
            "idlegate: invalid value 'abc' for '--max <MAX>': not a duration (like 30s or 2m)",
        )
        .hint("`idlegate probe --help` shows its usage"),
        Case::new(
            "relay --lisen (an unknown flag, with the parser's tip)",
            &["relay", "--lisen", "127.0.0.1:0"],
            2,
            "idlegate: unexpected argument '--lisen' found",
        )
        .hint("a similar argument exists: '--listen'; `idlegate relay --help` shows its usage"),
    ];
    for case in &cases {
        case.check();
    }
}

#[test]
fn run_exits_127_for_a_program_not_found_and_126_for_one_not_executable() {
    let dir = files(&[("not-a-program", "plain text\n")]);
    let text = at(dir.path(), "not-a-program");
    Case::new(
        "run -- /nonexistent",
        &["run", "--", "/nonexistent"],
        127,
        "idlegate: starting \"/nonexistent\": No such file or directory",
    )
    .hint("give the program's path, or a name found on $PATH")
    .check();
    Case::new(
        "run -- a file without x",
        &["run", "--", &text],
        126,
        &format!("idlegate: starting \"{text}\": Permission denied"),
    )
    .hint(&format!(
        "make it executable (chmod +x {text}) or run it through its interpreter"
    ))
    .check();
}

/// The gateway started without the privilege a TUN device needs says what it needs, exit 1.
/// Opening /dev/net/tun is checked against its mode (EACCES), making the device against
/// CAP_NET_ADMIN (EPERM): as user nobody the first refusal depends on the device's mode; as
/// root without CAP_NET_ADMIN it is always EPERM.
#[test]
fn the_gateway_without_privilege_names_what_it_needs() {
    common::require_root();
    let (_dir, config) = example_gateway_config();
    let (_bin_dir, binary) = common::runnable_by_anyone(IDLEGATE);
    let inside = common::unique("igE");
    let outside = common::unique("ogE");
    let args = |wrap: &[&str]| Case {
        what: "",
        args: gateway_args(&config, &inside, &outside)
            .map(String::from)
            .to_vec(),
        wrap: wrap.iter().map(|a| a.to_string()).collect(),
        binary: binary.clone(),
        line: String::new(),
        hint: None,
        status: 1,
    };
    let eperm = |what| Case {
        what,
        line: format!(
            "idlegate: creating TUN device {inside}: Operation not permitted (os error 1)"
        ),
        hint: Some(format!(
            "run it as root, or give the binary CAP_NET_ADMIN (sudo setcap cap_net_admin+ep {}) \
             and a --control path this user can write",
            binary.display()
        )),
        ..args(&[])
    };
    let others_may_open = std::fs::metadata("/dev/net/tun")
        .expect("/dev/net/tun (the TUN device; modprobe tun)")
        .permissions()
        .mode()
        & 0o006
        == 0o006;
    let nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ];
    let as_nobody = if others_may_open {
        Case {
            wrap: nobody.map(String::from).to_vec(),
            ..eperm("gateway as nobody")
        }
    } else {
        let mode = std::fs::metadata("/dev/net/tun")
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        Case {
            what: "gateway as nobody",
            line: format!(
                "idlegate: creating TUN device {inside}: Permission denied (os error 13)"
            ),
            hint: Some(format!(
                "run it as root: this user may not open /dev/net/tun (its mode is {mode:04o}); \
                 the gateway needs read-write access to it and CAP_NET_ADMIN"
            )),
            ..args(&nobody)
        }
    };
    as_nobody.check();
    Case {
        wrap: ["setpriv", "--bounding-set=-net_admin"]
            .map(String::from)
            .to_vec(),
        ..eperm("gateway as root without CAP_NET_ADMIN")
    }
    .check();
    let devices = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let devices = String::from_utf8_lossy(&devices.stdout);
    assert!(!devices.contains(&inside), "no device was left: {devices}");
}

/// A listener's port held by another socket is refused the same way for every flag that sets
/// one, with the hint naming that flag, exit 1; `relay --metrics` is refused before any relay
/// is bound and says in its log that it runs. (The relay may first log what its descriptor
/// limit allows, depending on the limit it inherits: that line is let through.)
#[test]
fn a_port_in_use_is_refused_with_one_hint_naming_the_flag_that_set_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port to hold");
    let addr = taken.local_addr().unwrap().to_string();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = at(dir.path(), "tunnel.key");
    let made = Command::new(IDLEGATE)
        .args(["keygen", &key])
        .output()
        .expect("running idlegate keygen");
    assert!(made.status.success(), "keygen: {made:?}");
    let listening = format!("idlegate: listening on {addr}: Address already in use (os error 98)");
    let metrics =
        format!("idlegate: listening for metrics on {addr}: Address already in use (os error 98)");
    let relay = ["relay", "--connect", "127.0.0.1:9"];
    let cases: [(&[&str], &str, &str); 4] = [
        (&["echo", "--listen", &addr], &listening, "--listen"),
        (
            &[&relay[..], &["--listen", &addr]].concat(),
            &listening,
            "--listen",
        ),
        (
            &[&relay[..], &["--tunnel-listen", &addr, "--key", &key]].concat(),
            &listening,
            "--tunnel-listen",
        ),
        (
            &[&relay[..], &["--listen", "127.0.0.1:0", "--metrics", &addr]].concat(),
            &metrics,
            "--metrics",
        ),
    ];
    for (args, line, flag) in cases {
        let out = common::output_within(
            Command::new(IDLEGATE).args(args).env_remove("RUST_LOG"),
            WITHIN,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("descriptors: the limit is"))
            .collect();
        let hint = format!("hint: another process has port {port}: pick another {flag} port");
        assert_eq!(lines, [line, hint.as_str()], "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
    drop(taken);
}

/// A `--control` socket in a directory that is not there is refused before any device is made
/// (exit 2), and the directory is not created: only the default's, /run/idlegate, is made.
#[test]
fn a_control_socket_in_a_missing_directory_is_refused_and_no_directory_made() {
    let (dir, config) = example_gateway_config();
    let missing = dir.path().join(common::unique("nodir"));
    let socket = missing.join("gw.sock");
    let inside = common::unique("igC");
    let outside = common::unique("ogC");
    Case::new(
        "gateway --control in a missing directory",
        &[
            &gateway_args(&config, &inside, &outside)[..],
            &["--control", &socket.display().to_string()],
        ]
        .concat(),
        2,
        &format!(
            "idlegate: --control {}: no directory {}",
            socket.display(),
            missing.display()
        ),
    )
    .hint(&format!(
        "create it first (mkdir -p {}), or give a path in one that exists",
        missing.display()
    ))
    .check();
    assert!(!missing.exists(), "{} was made", missing.display());
}

/// Files and names the arguments give that are wrong, refused before anything starts with
/// exit 2 and what to do: a key file that cannot be read or that others may read, a key file
/// keygen would overwrite, a namespace that is not there, a probe limit (echoing the value).
#[test]
fn wrong_key_files_namespaces_and_limits_are_usage_errors_with_a_hint() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = at(dir.path(), "tunnel.key");
    let private = at(dir.path(), "site-a.key");
    let missing = at(dir.path(), "nokey");
    for args in [vec!["keygen", &key], vec!["keygen", "--pair", &private]] {
        let made = Command::new(IDLEGATE)
            .args(&args)
            .output()
            .expect("running idlegate keygen");
        assert!(made.status.success(), "{args:?}: {made:?}");
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
    let peers = format!("{private}.pub");
    let netns = common::unique("nons");
    let exit = |flags: &[&str]| -> Vec<String> {
        [
            &[
                "relay",
                "--tunnel-listen",
                "127.0.0.1:0",
                "--connect",
                "127.0.0.1:9",
            ][..],
            flags,
        ]
        .concat()
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let with_args = |what, args: Vec<String>, line: String| Case {
        args,
        ..Case::new(what, &[], 2, &line)
    };
    let cases = [
        Case::new(
            "keygen over an existing file",
            &["keygen", &key],
            2,
            &format!("idlegate: {key}: cannot create a new key file: File exists (os error 17)"),
        )
        .hint("keygen never overwrites a file: remove it first, or choose another FILE"),
        with_args(
            "relay --key of a file that is not there",
            exit(&["--key", &missing]),
            format!(
                "idlegate: --key: {missing}: cannot read: No such file or directory (os error 2)"
            ),
        )
        .hint(
            "make the pair's key with `idlegate keygen FILE` (the same file on both ends), or \
             each end's key pair with `idlegate keygen --pair FILE`",
        ),
        with_args(
            "relay --private-key others may read",
            exit(&["--private-key", &private, "--peers", &peers]),
            format!("idlegate: --private-key: {private}: mode 644 lets others read the private key"),
        )
        .hint(&format!("chmod 600 {private}")),
        Case::new(
            "audit --netns of a namespace that is not there",
            &["audit", "--netns", &netns],
            2,
            &format!(
                "idlegate: opening network namespace {netns} (/run/netns/{netns}): No such file \
                 or directory (os error 2)"
            ),
        )
        .hint("`ip netns list` shows the names (a lab host's namespace is ig-LAB-HOST: `idlegate lab list`)"),
        Case::new(
            "probe --connections 1",
            &["probe", "192.0.2.10:7000", "--connections", "1"],
            2,
            "idlegate: --connections 1: must be at least 16",
        )
        .hint(
            "the probe takes 4 connections for its behaviour and keepalive tests and 2 for each \
             idle time it tries, and needs a few idle times per round: give 16 or more",
        ),
        Case::new(
            "echo --max-connections 0",
            &["echo", "--listen", "127.0.0.1:0", "--max-connections", "0"],
            2,
            "idlegate: --max-connections 0: must be at least 1",
        ),
    ];
    for case in &cases {
        case.check();
    }
}
