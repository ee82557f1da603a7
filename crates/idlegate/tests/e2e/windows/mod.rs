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
        dir
    })
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
            .and_then(|p| p.parse::<u32>().ok())
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

/// Runs `idlegate.exe ARGS` under Wine, within [`WINE_TIMEOUT`].
pub fn idlegate_exe(args: &[&str]) -> Ran {
    let exe = exe();
    let out = common::output_within(wine_command(prefix()).arg(exe).args(args), WINE_TIMEOUT);
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---- Helper M (echo and probe): Wine programs in a network namespace ----------------------

/// A prefix of its own for a Wine program run inside network namespace `tag`'s test: a copy of
/// [`prefix`] whose files are hard links (no space taken) but whose registry files are real
/// copies (the wineserver rewrites them). A Wine program's sockets belong to the wineserver of
/// its prefix, which runs in the network namespace of the first program that started it; a
/// prefix of its own starts a wineserver in the namespace the program runs in. Removed, with
/// its wineserver stopped, when dropped.
pub struct NamespacePrefix {
    pub dir: PathBuf,
}

impl NamespacePrefix {
    pub fn new(tag: &str) -> NamespacePrefix {
        let base = prefix();
        let dir = base.with_file_name(format!(
            "{}-{tag}",
            base.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("wine-prefix")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let copied = common::output_within(
            Command::new("cp").arg("-al").arg(base).arg(&dir),
            Duration::from_secs(120),
        );
        assert!(
            copied.status.success(),
            "cp -al {} {}: {}",
            base.display(),
            dir.display(),
            String::from_utf8_lossy(&copied.stderr)
        );
        for reg in ["system.reg", "user.reg", "userdef.reg"] {
            let file = dir.join(reg);
            if file.exists() {
                let bytes = std::fs::read(&file).expect("reading a registry file");
                std::fs::remove_file(&file).expect("unlinking a registry file");
                std::fs::write(&file, bytes).expect("writing a registry file");
            }
        }
        NamespacePrefix { dir }
    }

    /// `idlegate.exe ARGS` under Wine in network namespace `ns` with this prefix.
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(wine())
            .arg(exe())
            .args(args)
            .env("WINEPREFIX", &self.dir)
            .env("WINEDEBUG", "-all")
            .env_remove("DISPLAY");
        command
    }
}

impl Drop for NamespacePrefix {
    fn drop(&mut self) {
        // Stops this prefix's wineserver (and any program still attached to it).
        let server = wine().with_file_name("wineserver");
        let _ = common::output_within(
            Command::new(if server.is_file() {
                server
            } else {
                PathBuf::from("wineserver")
            })
            .arg("-k")
            .env("WINEPREFIX", &self.dir),
            Duration::from_secs(30),
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A long-running `idlegate.exe` under Wine (`echo`): its stderr lines gathered, killed (its
/// process group) when dropped.
pub struct WineChild {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl WineChild {
    pub fn spawn(mut command: Command) -> WineChild {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = command
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting idlegate.exe under Wine");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        WineChild {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits up to `within` for a stderr line containing `text`; false if it never came (or
    /// the program ended first).
    pub fn wait_for_line(&mut self, text: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.stderr.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }
}

impl Drop for WineChild {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own process group (process_group(0) above).
        let _ = unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
