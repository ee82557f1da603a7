//! A real browser for the end-to-end tests: Debian's headless Chromium (`/usr/bin/chromium`),
//! driven over the Chrome DevTools Protocol by the `headless_chrome` crate.
//!
//! Contract:
//! - [`Browser::start`] launches one Chromium with the flags every test uses
//!   ([`CHROMIUM_FLAGS`]: headless, no sandbox, no GPU, no QUIC, no first run, no background
//!   networking, no component updates, no sync) and a fresh, empty profile in a temporary
//!   directory. It fails, naming what is missing, when Chromium is not installed.
//! - Dropping the [`Browser`] — at the end of the test, or while a failed test unwinds —
//!   closes it, kills its process and every process of its profile that is still alive, and
//!   removes the profile directory.
//! - A [`Page`] is one tab: [`Page::eval`] (JavaScript to JSON), [`Page::wait_until`] (a
//!   condition polled with a bound), [`Page::click`], [`Page::text`],
//!   [`Page::console_errors`] (what a person would see in red in the console) and
//!   [`Page::screenshot`], written to [`artifacts_dir`] and checked with [`non_blank`].
//!
//! ```ignore
//! let browser = Browser::start()?;
//! let page = browser.open(&format!("file://{}", report.display()))?;
//! page.wait_until("document.readyState === 'complete'", Duration::from_secs(10))?;
//! assert_eq!(page.console_errors(), Vec::<String>::new());
//! let shot = page.screenshot("demo-report.png")?;
//! non_blank(&shot)?;
//! ```
#![allow(dead_code)] // not every test file uses every method

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use headless_chrome::protocol::cdp::{Log, Page as Cdp, Runtime};
use headless_chrome::{LaunchOptions, Tab};

/// Where the tests find Chromium: Debian's package `chromium`, installed by `scripts/setup`.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags of every browser the tests start, besides the profile directory
/// (`--user-data-dir`, a fresh temporary directory) and the DevTools port the crate picks.
pub const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The browser window's size in CSS pixels: what a screenshot of the viewport shows.
pub const WINDOW: (u32, u32) = (1280, 900);

/// How long the DevTools connection may stay without any message from the browser before the
/// crate closes it: longer than any wait of a test (a lab's idle gap, a demo), so an idle
/// page does not lose its browser.
const IDLE_BROWSER_TIMEOUT: Duration = Duration::from_secs(600);

/// How often [`Page::wait_until`] evaluates its condition.
const POLL: Duration = Duration::from_millis(100);

/// A running headless Chromium with a profile of its own. Dropping it ends the browser and
/// removes the profile, even while a failed test unwinds.
pub struct Browser {
    // Declared first, so dropped first: closes the browser and kills its process before the
    // profile below is removed.
    inner: Option<headless_chrome::Browser>,
    profile: Option<tempfile::TempDir>,
}

impl Browser {
    /// Starts Chromium ([`CHROMIUM`]) headless with [`CHROMIUM_FLAGS`] and a new empty
    /// profile directory.
    ///
    /// Fails with what is missing ("chromium not found at /usr/bin/chromium: run
    /// scripts/setup") or why the browser did not come up.
    pub fn start() -> Result<Browser> {
        Browser::start_at(Path::new(CHROMIUM))
    }

    /// [`Browser::start`] with the browser at `chromium`.
    pub fn start_at(chromium: &Path) -> Result<Browser> {
        if !chromium.exists() {
            bail!(
                "chromium not found at {}: run scripts/setup (it installs Debian's packages \
                 chromium and chromium-driver)",
                chromium.display()
            );
        }
        let profile = tempfile::Builder::new()
            .prefix("idlegate-chromium-")
            .tempdir()
            .context("creating a temporary profile directory for chromium")?;
        let options = LaunchOptions::default_builder()
            .path(Some(chromium.to_path_buf()))
            .headless(true)
            .sandbox(false)
            .enable_gpu(false)
            .window_size(Some(WINDOW))
            .user_data_dir(Some(profile.path().to_path_buf()))
            .args(CHROMIUM_FLAGS.iter().map(OsStr::new).collect())
            .idle_browser_timeout(IDLE_BROWSER_TIMEOUT)
            .build()
            .map_err(|e| anyhow!("chromium's launch options: {e}"))?;
        let inner = headless_chrome::Browser::new(options)
            .map_err(|e| anyhow!("starting {}: {e:#}", chromium.display()))?;
        Ok(Browser {
            inner: Some(inner),
            profile: Some(profile),
        })
    }

    /// Opens `url` in a new tab and waits until it has loaded (the load event). Console
    /// messages and exceptions are recorded from before the navigation, so
    /// [`Page::console_errors`] sees everything the page did. `file://` URLs work: a report
    /// is opened by its path.
    pub fn open(&self, url: &str) -> Result<Page> {
        let tab = self
            .inner()
            .new_tab()
            .map_err(|e| anyhow!("opening a tab: {e:#}"))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        tab.add_event_listener(Arc::new(
            move |event: &headless_chrome::protocol::cdp::types::Event| {
                if let (Some(error), Ok(mut errors)) = (console_error(event), sink.lock()) {
                    errors.push(error);
                }
            },
        ))
        .map_err(|e| anyhow!("listening to the tab's console: {e:#}"))?;
        tab.enable_runtime()
            .map_err(|e| anyhow!("enabling the Runtime domain: {e:#}"))?;
        tab.enable_log()
            .map_err(|e| anyhow!("enabling the Log domain: {e:#}"))?;
        tab.navigate_to(url)
            .and_then(|tab| tab.wait_until_navigated())
            .map_err(|e| anyhow!("loading {url}: {e:#}"))?;
        Ok(Page {
            tab,
            url: url.to_owned(),
            errors,
        })
    }

    /// The operating system's id of the browser's main process.
    pub fn pid(&self) -> Option<u32> {
        self.inner.as_ref().and_then(|b| b.get_process_id())
    }

    /// The profile directory (`--user-data-dir`) of this browser; removed when it is dropped.
    pub fn profile_dir(&self) -> &Path {
        self.profile
            .as_ref()
            .map(|p| p.path())
            .unwrap_or(Path::new(""))
    }

    fn inner(&self) -> &headless_chrome::Browser {
        self.inner
            .as_ref()
            .expect("the browser runs until the Browser is dropped")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The crate's Browser asks Chromium to close, then kills the main process and waits
        // for it.
        drop(self.inner.take());
        if let Some(profile) = self.profile.take() {
            // Chromium's helpers (zygote, renderers, the network service) end when the main
            // process does, but not at once: kill those still running with this profile, by
            // pid, before removing it.
            kill_profile_processes(profile.path());
            // A helper killed a moment ago may still have had a file open for writing when
            // the removal began ("Directory not empty"): try again, a few times, briefly.
            let path = profile.keep();
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir_all(&path) {
                tries += 1;
                if tries == 20 || e.kind() == std::io::ErrorKind::NotFound {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        eprintln!("removing chromium's profile {}: {e}", path.display());
                    }
                    break;
                }
                kill_profile_processes(&path);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One tab of a [`Browser`]; it works while its browser runs.
pub struct Page {
    tab: Arc<Tab>,
    url: String,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Page {
    /// Evaluates the JavaScript expression `js` in the page and returns its value as JSON
    /// (a promise is awaited; `undefined` is `null`; a DOM node or function is not JSON and
    /// comes back as `null`). An exception thrown by `js` is an error carrying its message.
    pub fn eval(&self, js: &str) -> Result<serde_json::Value> {
        let answer = self
            .tab
            .call_method(Runtime::Evaluate {
                expression: js.to_owned(),
                return_by_value: Some(true),
                generate_preview: None,
                silent: Some(true),
                await_promise: Some(true),
                include_command_line_api: Some(false),
                user_gesture: Some(false),
                object_group: None,
                context_id: None,
                throw_on_side_effect: None,
                timeout: None,
                disable_breaks: None,
                repl_mode: None,
                allow_unsafe_eval_blocked_by_csp: None,
                unique_context_id: None,
                serialization_options: None,
            })
            .map_err(|e| anyhow!("evaluating `{js}` in {}: {e:#}", self.url))?;
        if let Some(details) = answer.exception_details {
            bail!(
                "evaluating `{js}` in {}: {}",
                self.url,
                exception_text(&details)
            );
        }
        Ok(answer.result.value.unwrap_or(serde_json::Value::Null))
    }

    /// Evaluates `js_condition` every 100 ms until it is truthy (in JavaScript's sense), for
    /// `timeout` at most. The error says the condition, the time waited and the last value it
    /// had (or the last exception it threw).
    pub fn wait_until(&self, js_condition: &str, timeout: Duration) -> Result<()> {
        let wrapped = format!("!!({js_condition})");
        let started = Instant::now();
        loop {
            let last = self.eval(&wrapped);
            if let Ok(serde_json::Value::Bool(true)) = last {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let last = match last {
                    Ok(value) => format!("it was {value}"),
                    Err(e) => format!("it failed: {e:#}"),
                };
                let value = self.eval(js_condition).unwrap_or(serde_json::Value::Null);
                bail!(
                    "waiting {timeout:?} in {} for `{js_condition}`: {last} (its value: {value})",
                    self.url
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Clicks, as a mouse would, the middle of the first element matching `css_selector`
    /// (scrolled into view first). Fails when no element matches.
    pub fn click(&self, css_selector: &str) -> Result<()> {
        let element = self
            .tab
            .find_element(css_selector)
            .map_err(|e| anyhow!("finding `{css_selector}` in {}: {e:#}", self.url))?;
        element
            .click()
            .map_err(|e| anyhow!("clicking `{css_selector}` in {}: {e:#}", self.url))?;
        Ok(())
    }

    /// The rendered text (`innerText`; an SVG element's `textContent`) of the first element
    /// matching `css_selector`. Fails when no element matches.
    pub fn text(&self, css_selector: &str) -> Result<String> {
        let selector = serde_json::to_string(css_selector)?;
        match self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector}); \
             return e === null ? null : (e.innerText ?? e.textContent); }})()"
        ))? {
            serde_json::Value::String(text) => Ok(text),
            _ => bail!("no element matches `{css_selector}` in {}", self.url),
        }
    }

    /// Every error the page reported since it was opened, in order: `console.error` calls
    /// ("console.error: …"), uncaught exceptions and unhandled rejections ("uncaught: …"),
    /// and the browser's own error entries, among them resources that failed to load ("network:
    /// Failed to load resource: … (url)"). An empty list is a page without errors.
    pub fn console_errors(&self) -> Vec<String> {
        // Events arrive on the crate's reader thread: a round trip to the page first lets
        // those already sent be delivered.
        let _ = self.eval("0");
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Saves a PNG of the whole page (beyond the window's height, up to 16,384 pixels) and
    /// returns its path: `name` relative to [`artifacts_dir`] (created if missing), or as
    /// given when absolute. The file stays after the test, as its artifact.
    pub fn screenshot(&self, name: impl AsRef<Path>) -> Result<PathBuf> {
        let path = if name.as_ref().is_absolute() {
            name.as_ref().to_path_buf()
        } else {
            artifacts_dir()?.join(name)
        };
        let metrics = self
            .tab
            .call_method(Cdp::GetLayoutMetrics(None))
            .map_err(|e| anyhow!("measuring {}: {e:#}", self.url))?;
        let size = metrics.css_content_size;
        let clip = Cdp::Viewport {
            x: 0.0,
            y: 0.0,
            width: size.width.max(1.0),
            height: size.height.clamp(1.0, 16_384.0),
            scale: 1.0,
        };
        let shot = self
            .tab
            .call_method(Cdp::CaptureScreenshot {
                format: Some(Cdp::CaptureScreenshotFormatOption::Png),
                quality: None,
                clip: Some(clip),
                from_surface: Some(true),
                capture_beyond_viewport: Some(true),
                optimize_for_speed: None,
            })
            .map_err(|e| anyhow!("taking a screenshot of {}: {e:#}", self.url))?;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.data)
            .context("decoding the screenshot's base64")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The URL the page was opened at.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // Best effort: the browser may already be gone.
        let _ = self.tab.close(false);
    }
}

/// Where the browser tests keep their screenshots: `$IDLEGATE_TEST_ARTIFACTS` if set, else
/// `test-artifacts/browser/` in the target directory the tests were built in
/// (`target/test-artifacts/browser/` by default). Created if missing.
pub fn artifacts_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("IDLEGATE_TEST_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // The test binary is <target>/<profile>/deps/e2e-<hash>.
            let exe = std::env::current_exe().context("finding the test binary's path")?;
            let target = exe
                .ancestors()
                .nth(3)
                .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
            target.join("test-artifacts").join("browser")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The least share of a screenshot's pixels that must differ from its most common colour for
/// [`non_blank`] to accept it: 0.5 %, about 5,800 pixels of a 1280×900 window, more than a
/// lone cursor or border and less than a heading and a paragraph.
pub const NON_BLANK_SHARE: f64 = 0.005;

/// Checks that the PNG at `png_path` shows something: it decodes, and at least
/// [`NON_BLANK_SHARE`] of its pixels differ from its most common colour. Returns that share;
/// the error says the file, its size and the colour that fills it.
pub fn non_blank(png_path: &Path) -> Result<f64> {
    let file = std::fs::File::open(png_path)
        .with_context(|| format!("opening the screenshot {}", png_path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("decoding {} as PNG", png_path.display()))?;
    let mut buffer = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| anyhow!("{}: image too large", png_path.display()))?
    ];
    let info = reader
        .next_frame(&mut buffer)
        .with_context(|| format!("decoding {} as PNG", png_path.display()))?;
    let channels = info.color_type.samples();
    let pixels = buffer[..info.buffer_size()].chunks_exact(channels);
    let total = pixels.len();
    anyhow::ensure!(total > 0, "{} has no pixels", png_path.display());
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for pixel in pixels {
        *counts.entry(pixel).or_default() += 1;
    }
    let (colour, most) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (c.to_vec(), *n))
        .unwrap_or_default();
    let share = (total - most) as f64 / total as f64;
    anyhow::ensure!(
        share >= NON_BLANK_SHARE,
        "{} ({}×{}) is blank: {:.2} % of its pixels differ from its most common colour {:?} \
         (at least {:.1} % must)",
        png_path.display(),
        info.width,
        info.height,
        share * 100.0,
        colour,
        NON_BLANK_SHARE * 100.0
    );
    Ok(share)
}

/// The error a DevTools event reports, if it is one: a `console.error` call, an uncaught
/// exception, or an error entry of the browser's log (a failed resource load among them).
fn console_error(event: &headless_chrome::protocol::cdp::types::Event) -> Option<String> {
    use headless_chrome::protocol::cdp::types::Event;
    match event {
        Event::RuntimeConsoleAPICalled(called)
            if called.params.Type == Runtime::ConsoleAPICalledEventTypeOption::Error =>
        {
            let args: Vec<String> = called.params.args.iter().map(remote_text).collect();
            Some(format!("console.error: {}", args.join(" ")))
        }
        Event::RuntimeExceptionThrown(thrown) => Some(format!(
            "uncaught: {}",
            exception_text(&thrown.params.exception_details)
        )),
        Event::LogEntryAdded(added) if added.params.entry.level == Log::LogEntryLevel::Error => {
            let entry = &added.params.entry;
            let source = serde_json::to_value(&entry.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "browser".to_owned());
            Some(match &entry.url {
                Some(url) => format!("{source}: {} ({url})", entry.text),
                None => format!("{source}: {}", entry.text),
            })
        }
        _ => None,
    }
}

/// A console argument as text: its value for a primitive, else its description.
fn remote_text(object: &Runtime::RemoteObject) -> String {
    match (&object.value, &object.description) {
        (Some(serde_json::Value::String(s)), _) => s.clone(),
        (Some(value), _) => value.to_string(),
        (None, Some(description)) => description.clone(),
        (None, None) => format!("{:?}", object.Type),
    }
}

/// An exception's message with where it was thrown.
fn exception_text(details: &Runtime::ExceptionDetails) -> String {
    let message = details
        .exception
        .as_ref()
        .and_then(|e| e.description.clone())
        .unwrap_or_else(|| details.text.clone());
    match &details.url {
        Some(url) => format!(
            "{message} at {url}:{}:{}",
            details.line_number + 1,
            details.column_number + 1
        ),
        None => message,
    }
}

/// Kills (SIGKILL), by pid, every process whose command line names `profile` as its
/// `--user-data-dir`, and waits up to 5 s for them to be gone.
fn kill_profile_processes(profile: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = profile_processes(profile);
        if alive.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in alive {
            // SAFETY: kill has no memory preconditions; the pid was read from /proc just now
            // and runs with this test's own profile directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pids of the live (not zombie) processes whose command line names `profile` (as their
/// `--user-data-dir`, or a path inside it, as the crash handler's `--database` does): a
/// browser's main process and its helpers.
pub fn profile_processes(profile: &Path) -> Vec<i32> {
    let needle = profile.as_os_str().as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            !zombie
                && cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        .collect()
}
