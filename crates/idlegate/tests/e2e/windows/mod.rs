//! The Windows build, `idlegate.exe` (x86_64-pc-windows-gnu), run under Wine: what it offers
//! and that it runs.
//!
//! [`exe`] is the binary: `$IDLEGATE_WINDOWS_EXE` when set (scripts/test builds it first),
//! otherwise built once per test process with `cargo build --target x86_64-pc-windows-gnu`
//! into a target directory of its own (so it never waits on the one running these tests).
//! [`prefix`] is a Wine prefix made once per test process (wineboot's first run takes tens of
//! seconds), under the test target's temporary directory, named after the process; prefixes
//! of processes that have ended are removed when the next one is made. Every run has
//! `WINEDEBUG=-all` and a bounded time. Without Wine (`wine64`) or the MinGW-w64 linker
//! (`x86_64-w64-mingw32-gcc`) the tests fail saying which is missing (scripts/setup installs
//! both).
//!
//! Wine 8.0 has no bcryptprimitives.dll, which every Rust program since 1.78 imports
//! (`ProcessPrng`): the prefix gets a stand-in built from `bcryptprimitives.c` (see there),
//! only when Wine has none of its own.

mod cli;
mod measure;
mod relay;
mod service;
mod tunnel;

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The target the Windows build is made for.
const TARGET: &str = "x86_64-pc-windows-gnu";
/// MinGW-w64's C compiler: the Windows build's linker, and the stand-in DLL's compiler.
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";
/// A command of idlegate.exe under Wine (a running wineserver: a few seconds; a loaded
/// 2-core machine: more).
pub const WINE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command printed, and how it ended.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Wine's loader: `wine64` on PATH, or where Debian's wine64 package puts it.
fn wine() -> &'static Path {
    static WINE: OnceLock<PathBuf> = OnceLock::new();
    WINE.get_or_init(|| {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|dir| dir.join("wine64"));
        on_path
            .chain([PathBuf::from("/usr/lib/wine/wine64")])
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("wine64 is missing (Debian package wine64): run scripts/setup")
            })
    })
}

fn require_mingw() {
    let found = Command::new(MINGW_GCC).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{MINGW_GCC} is missing (Debian package gcc-mingw-w64-x86-64): run scripts/setup"
    );
}

/// The Windows binary.
pub fn exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        if let Some(given) = std::env::var_os("IDLEGATE_WINDOWS_EXE") {
            let given = PathBuf::from(given);
            assert!(
                given.is_file(),
                "IDLEGATE_WINDOWS_EXE={}: no such file",
                given.display()
            );
            return given;
        }
        require_mingw();
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("windows-build");
        let built = common::output_within(
            Command::new(env!("CARGO"))
                .args(["build", "-p", "idlegate", "--target", TARGET])
                .env("CARGO_TARGET_DIR", &target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR")),
            Duration::from_secs(900),
        );
        assert!(
            built.status.success(),
            "cargo build --target {TARGET} failed (is the target installed? `rustup target add \
             {TARGET}`, run by scripts/setup):\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        target_dir.join(TARGET).join("debug").join("idlegate.exe")
    })
}

/// This process's Wine prefix, booted, with the stand-in bcryptprimitives.dll where Wine has
/// none.
pub fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_prefixes(parent);
        let dir = parent.join(format!("wine-prefix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let booted = common::output_within(
            wine_command(&dir).args(["wineboot", "--init"]),
            Duration::from_secs(300),
        );
        assert!(
            booted.status.success(),
            "wineboot --init in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&booted.stderr)
        );
        let system32 = dir.join("drive_c/windows/system32");
        assert!(system32.is_dir(), "wineboot made no {}", system32.display());
        let dll = system32.join("bcryptprimitives.dll");
        if !dll.exists() {
            require_mingw();
            let source =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/windows/bcryptprimitives.c");
            let built = common::output_within(
                Command::new(MINGW_GCC)
                    .arg("-shared")
                    .arg("-O2")
                    .arg("-o")
                    .arg(&dll)
                    .arg(&source)
                    .arg("-ladvapi32"),
                Duration::from_secs(120),
            );
            assert!(
                built.status.success(),
                "building the stand-in bcryptprimitives.dll: {}",
                String::from_utf8_lossy(&built.stderr)
            );
        }
        // A still copy for the prefixes of their own ([`OwnPrefix`]): taken once the boot's
        // wineserver has ended (`wineserver -w`), before any test runs a program here. A copy
        // of the shared prefix itself, while another test's program runs in it, can catch
        // Wine rewriting a file of system32 or the registry between cp's reading of a
        // directory and its link, and miss it (`sc.exe` not found in the copy).
        let mut wait = Command::new(wineserver());
        wait.arg("-w")
            .env("WINEPREFIX", &dir)
            .env("WINEDEBUG", "-all");
        let _ = common::output_within(&mut wait, Duration::from_secs(60));
        let still = pristine_of(&dir);
        let _ = std::fs::remove_dir_all(&still);
        let copied = common::output_within(
            Command::new("cp").arg("-al").arg(&dir).arg(&still),
            Duration::from_secs(120),
        );
        assert!(
            copied.status.success(),
            "cp -al {} {}: {}",
            dir.display(),
            still.display(),
            String::from_utf8_lossy(&copied.stderr)
        );
        dir
    })
}

/// Where the still copy of the shared prefix `dir` is kept (see [`prefix`]).
fn pristine_of(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push("-pristine");
    PathBuf::from(name)
}

/// Prefixes named after processes that no longer run.
fn remove_stale_prefixes(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wine-prefix-"))
            .and_then(|p| p.trim_end_matches("-pristine").parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn wine_command(prefix: &Path) -> Command {
    let mut command = Command::new(wine());
    command
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        // No display: Wine must not try to open windows (or wait for an X server).
        .env_remove("DISPLAY");
    command
}

/// What a finished command printed, and how it ended, as text.
pub fn ran(out: std::process::Output) -> Ran {
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Wine's server, next to its loader (Debian: /usr/lib/wine/wineserver64), or `wineserver`
/// on PATH.
fn wineserver() -> PathBuf {
    let beside = wine().with_file_name("wineserver64");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("wineserver")
    }
}

/// Runs `idlegate.exe ARGS` under Wine, within [`WINE_TIMEOUT`].
pub fn idlegate_exe(args: &[&str]) -> Ran {
    let exe = exe();
    ran(common::output_within(
        wine_command(prefix()).arg(exe).args(args),
        WINE_TIMEOUT,
    ))
}

/// Runs the Wine program `program` (`sc`, `reg`, or an .exe's path) in this test process's
/// shared [`prefix`], within [`WINE_TIMEOUT`].
pub fn in_shared_prefix(program: &str, args: &[&str]) -> Ran {
    ran(common::output_within(
        wine_command(prefix()).arg(program).args(args),
        WINE_TIMEOUT,
    ))
}

// ---- Helpers A (helper A, the relay): a long-running idlegate.exe under Wine, a prefix of
// its own (for a program that must run in a network namespace), waiting for its port. ----

/// A Wine prefix of its own, for a program that must run in a network namespace: since Wine
/// 6 the wineserver creates a Wine program's sockets, so they live in the network namespace
/// the prefix's wineserver was started in, not in the one of the process that ran `wine`
/// (measured: `ip netns exec NS wine64 idlegate.exe relay` with [`prefix`]'s wineserver
/// already running listens in the root namespace). A new prefix gets a new wineserver,
/// started by its first program wherever that runs. It is a hard-linked copy of [`prefix`]'s still copy
/// (`cp -al`: instant, no disk; Wine replaces the registry files it saves rather than writing
/// into them). On drop its wineserver is killed (`wineserver -k`, for this prefix alone) and
/// the copy removed.
pub struct OwnPrefix {
    dir: PathBuf,
}

impl OwnPrefix {
    pub fn new() -> OwnPrefix {
        let shared = &pristine_of(prefix());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "wine-prefix-{}-own-{}",
            std::process::id(),
            common::unique("a")
        ));
        // The shared prefix's wineserver, serving other tests, saves the registry through a
        // temporary file (`regNNNN.tmp`) renamed into place: one that vanishes between cp's
        // reading of the directory and its link fails the copy ("cannot stat … No such file").
        // Such a file is transient: the copy, started over, is whole.
        let mut copied;
        let mut attempts = 0;
        loop {
            attempts += 1;
            copied = common::output_within(
                Command::new("cp").arg("-al").arg(shared).arg(&dir),
                Duration::from_secs(120),
            );
            let vanished = String::from_utf8_lossy(&copied.stderr).contains("No such file");
            if copied.status.success() || !vanished || attempts == 5 {
                break;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            copied.status.success(),
            "cp -al {} {}: {}",
            shared.display(),
            dir.display(),
            String::from_utf8_lossy(&copied.stderr)
        );
        OwnPrefix { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for OwnPrefix {
    fn drop(&mut self) {
        let mut kill = Command::new(wineserver());
        kill.arg("-k").env("WINEPREFIX", &self.dir);
        let _ = common::output_within(&mut kill, Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Wine's loader for `wine_prefix` (as [`wine_command`]), run in the named network namespace
/// `netns` if given: `ip netns exec NS wine64 …`, which execs Wine, with Wine's environment.
/// In a namespace, give it an [`OwnPrefix`] (see there).
pub fn wine_in(wine_prefix: &Path, netns: Option<&str>) -> Command {
    let wine_program = wine_command(wine_prefix);
    let Some(ns) = netns else {
        return wine_program;
    };
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns])
        .arg(wine_program.get_program());
    for (key, value) in wine_program.get_envs() {
        match value {
            Some(v) => command.env(key, v),
            None => command.env_remove(key),
        };
    }
    command
}

/// `idlegate.exe ARGS` running under Wine until dropped (then killed, SIGKILL, and reaped);
/// what it writes to stderr is kept for the test's messages.
pub struct RunningExe {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    netns: Option<String>,
}

impl RunningExe {
    /// Starts `idlegate.exe ARGS` in `wine_prefix`, in the named network namespace `netns`
    /// if given (`ip netns exec`, which execs Wine: the child is the Windows program itself).
    /// In a namespace, give it an [`OwnPrefix`] (see there).
    pub fn spawn(args: &[&str], wine_prefix: &Path, netns: Option<&str>) -> RunningExe {
        use std::io::Read;
        use std::process::Stdio;
        let exe = exe();
        let mut command = wine_in(wine_prefix, netns);
        command
            .arg(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting idlegate.exe under Wine");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        RunningExe {
            child,
            stderr,
            netns: netns.map(str::to_string),
        }
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (at most [`WINE_TIMEOUT`]) until a socket listens on TCP `port` in its network
    /// namespace, as `ss` sees it; fails the test, with its stderr, if it exits first or the
    /// time runs out.
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = std::time::Instant::now() + WINE_TIMEOUT;
        loop {
            let listening = ss(
                self.netns.as_deref(),
                &["-Hltn", &format!("sport = :{port}")],
            );
            if !listening.trim().is_empty() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("waiting on idlegate.exe") {
                panic!(
                    "idlegate.exe exited ({status}) before listening on port {port}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "idlegate.exe not listening on port {port} after {WINE_TIMEOUT:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (at most [`WINE_TIMEOUT`]) until its stderr holds `text`; whether it came.
    pub fn wait_said(&self, text: &str) -> bool {
        let deadline = std::time::Instant::now() + WINE_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if self.stderr().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stderr().contains(text)
    }
}

impl Drop for RunningExe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ss ARGS` in the named namespace `netns` (or this one): its stdout. `ss` is iproute2's, as
/// `ip` (scripts/setup).
pub fn ss(netns: Option<&str>, args: &[&str]) -> String {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => Command::new("ss"),
    };
    let out = common::output_within(command.args(args), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "ss {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- Helpers S (helper S, the service): an [`OwnPrefix`] as a machine that is powered off
// and on, for services. ----

/// Under Wine, services.exe and the services it runs are system processes, which the
/// wineserver ends a few seconds after the last other program of the prefix ends. So
/// [`OwnPrefix::power_on`] starts a persistent server (`wineserver -p`), and the next Wine
/// program starts services.exe, which starts every automatic-start service: a boot.
/// [`OwnPrefix::power_off`] (`wineserver -k`) kills everything of the prefix, as a power cut
/// would.
impl OwnPrefix {
    /// `wineserver FLAG` for this prefix, within [`WINE_TIMEOUT`]: whether it succeeded.
    fn server(&self, flag: &str) -> bool {
        let mut command = Command::new(wineserver());
        command
            .arg(flag)
            .env("WINEPREFIX", self.path())
            .env("WINEDEBUG", "-all");
        quietly(&mut command, std::process::Stdio::null())
    }

    /// Starts the prefix's persistent server, then boots it (`wineboot`): services.exe starts,
    /// and with it every automatic-start service. Nothing started then holds a pipe of the
    /// test's (services.exe would keep it open for ever: a later command's output would never
    /// end).
    pub fn power_on(&self) {
        self.boot(None);
    }

    /// [`OwnPrefix::power_on`], with what services.exe (and the services it starts) write to
    /// stderr appended to `log`, Wine's FIXME messages of its service channel included
    /// (`WINEDEBUG=-all,fixme+service`): what a call to the service manager that Wine does not
    /// implement asked for.
    pub fn power_on_logging_services(&self, log: &Path) {
        self.boot(Some(log));
    }

    fn boot(&self, log: Option<&Path>) {
        assert!(
            self.server("-p"),
            "wineserver -p in {} failed",
            self.path().display()
        );
        let mut boot = wine_command(self.path());
        boot.arg("wineboot");
        let stderr = match log {
            Some(log) => {
                boot.env("WINEDEBUG", "-all,fixme+service");
                std::process::Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)
                        .expect("the services.exe log"),
                )
            }
            None => std::process::Stdio::null(),
        };
        assert!(
            quietly(&mut boot, stderr),
            "wineboot in {} failed",
            self.path().display()
        );
    }

    /// Kills every process of the prefix and its server (with none running, `-k` fails
    /// saying so: nothing to stop), and waits until the server has ended.
    pub fn power_off(&self) {
        let _ = self.server("-k");
        let _ = self.server("-w");
    }

    /// Runs a Wine program (`sc`, `reg`, or an .exe's path) in this prefix, within
    /// [`WINE_TIMEOUT`].
    pub fn run(&self, program: &Path, args: &[&str]) -> Ran {
        ran(common::output_within(
            wine_command(self.path()).arg(program).args(args),
            WINE_TIMEOUT,
        ))
    }
}

/// Runs `command` with no standard input or output and `stderr` (null, or a file), within
/// [`WINE_TIMEOUT`]: whether it succeeded. For programs that leave a daemon behind
/// (`wineserver -p`, a Wine boot), which would hold a pipe open for ever.
fn quietly(command: &mut Command, stderr: std::process::Stdio) -> bool {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting a Wine command");
    let deadline = std::time::Instant::now() + WINE_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a Wine command") {
            return status.success();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {WINE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- helper T (the tunnel) ----

/// A Windows path for a Linux one: Wine's drive Z: is the Linux root.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display())
}

// ---- helper F2 (the tunnel session's and echo's fixes) ----

impl RunningExe {
    /// The CPU time (user and system) its process has used so far, from /proc/PID/stat. Under
    /// Wine, `wine64` becomes the Windows program itself (its loader execs the preloader, which
    /// loads the .exe in place), so the child is idlegate.exe's process, whose loop runs there
    /// with its threads; its sockets' work is the wineserver's (see [`OwnPrefix`]), not counted
    /// here.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/stat of idlegate.exe: {e}"));
        // The command (field 2) is in parentheses and may hold spaces: count after it.
        let after = &stat[stat.rfind(')').expect("/proc/PID/stat has (comm)") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); 3 is the first after comm.
        let ticks: u64 = [fields[14 - 3], fields[15 - 3]]
            .iter()
            .map(|f| f.parse::<u64>().expect("utime/stime are numbers"))
            .sum();
        // SAFETY: sysconf reads a constant of the system.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / per_second)
    }

    /// How much CPU time it uses over `window` (slept through: the measurement window itself,
    /// nothing is awaited).
    pub fn cpu_over(&self, window: Duration) -> Duration {
        let before = self.cpu_time();
        std::thread::sleep(window);
        self.cpu_time().saturating_sub(before)
    }
}
