//! The browser harness itself ([`crate::common::browser`]): that it sees what a person would
//! see in the console, that a screenshot of a page is kept and judged blank or not, and that
//! the browser and its profile are gone when a test ends.

use std::time::Duration;

use crate::common::browser::{non_blank, profile_processes, Browser};

/// Writes `html` to a file in `dir` and returns its `file://` URL.
fn page_file(dir: &std::path::Path, name: &str, html: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, html).expect("writing the test page");
    format!("file://{}", path.display())
}

#[test]
fn console_errors_are_console_error_calls_uncaught_exceptions_and_failed_loads() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = page_file(
        dir.path(),
        "errors.html",
        "<!doctype html><title>errors</title><p id=p>hello</p>\
         <img src='missing.png'>\
         <script>console.log('fine'); console.error('first', 42);\
         setTimeout(() => { throw new Error('second'); }, 0);\
         setTimeout(() => { document.title = 'done'; }, 50);</script>",
    );
    let browser = Browser::start().expect("starting chromium");
    let page = browser.open(&url).expect("opening the page");
    page.wait_until("document.title === 'done'", Duration::from_secs(20))
        .expect("the page's timers ran");
    let errors = page.console_errors();
    assert!(
        errors.iter().any(|e| e == "console.error: first 42"),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("uncaught: Error: second")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("missing.png")),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(page.text("#p").expect("the paragraph's text"), "hello");
    assert_eq!(
        page.eval("document.querySelectorAll('p').length")
            .expect("evaluating"),
        serde_json::json!(1)
    );
}

#[test]
fn a_page_without_errors_reports_none_and_a_click_runs_its_handler() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = page_file(
        dir.path(),
        "click.html",
        "<!doctype html><title>click</title>\
         <button id=b onclick=\"this.textContent = 'clicked'\">press</button>",
    );
    let browser = Browser::start().expect("starting chromium");
    let page = browser.open(&url).expect("opening the page");
    page.click("#b").expect("clicking the button");
    page.wait_until(
        "document.getElementById('b').textContent === 'clicked'",
        Duration::from_secs(10),
    )
    .expect("the click handler ran");
    assert_eq!(page.console_errors(), Vec::<String>::new());
    assert!(page.click("#nothing-here").is_err());
    let waited = page
        .wait_until("false", Duration::from_millis(300))
        .expect_err("a condition that never holds times out");
    assert!(waited.to_string().contains("`false`"), "{waited:#}");
}

#[test]
fn a_screenshot_of_a_drawing_is_non_blank_and_of_an_empty_page_is_blank() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let drawn = page_file(
        dir.path(),
        "drawn.html",
        "<!doctype html><body style='margin:0'>\
         <svg width=400 height=300><rect x=10 y=10 width=300 height=200 fill='#36c'/></svg>",
    );
    let empty = page_file(dir.path(), "empty.html", "<!doctype html><body></body>");
    let browser = Browser::start().expect("starting chromium");

    let shot = browser
        .open(&drawn)
        .expect("opening the drawing")
        .screenshot(dir.path().join("drawn.png"))
        .expect("a screenshot");
    let share = non_blank(&shot).expect("a drawing is not blank");
    assert!(share > 0.03, "the rectangle covers {share}");

    let shot = browser
        .open(&empty)
        .expect("opening the empty page")
        .screenshot(dir.path().join("empty.png"))
        .expect("a screenshot");
    let blank = non_blank(&shot).expect_err("an empty page is blank");
    assert!(blank.to_string().contains("is blank"), "{blank:#}");
}

#[test]
fn dropping_the_browser_ends_its_processes_and_removes_its_profile() {
    let browser = Browser::start().expect("starting chromium");
    let pid = browser.pid().expect("the browser's pid");
    let profile = browser.profile_dir().to_path_buf();
    assert!(profile.is_dir());
    let page = browser.open("about:blank").expect("opening a blank page");
    drop(page);
    drop(browser);
    assert!(!profile.exists(), "{} is still there", profile.display());
    assert_eq!(profile_processes(&profile), Vec::<i32>::new());
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        status.is_empty(),
        "chromium (pid {pid}) still runs: {status}"
    );
}

#[test]
fn a_browser_that_is_not_installed_fails_naming_it_and_scripts_setup() {
    let missing = std::path::Path::new("/nonexistent/chromium");
    let error = Browser::start_at(missing)
        .err()
        .expect("no browser starts from a missing file");
    assert_eq!(
        error.to_string(),
        "chromium not found at /nonexistent/chromium: run scripts/setup (it installs Debian's \
         packages chromium and chromium-driver)"
    );
}

#[test]
fn a_test_that_fails_holding_the_browser_still_ends_it_and_removes_its_profile() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = std::sync::Arc::clone(&seen);
    // A test body that fails (panics) while its browser and page are open.
    let failed = std::thread::spawn(move || {
        let browser = Browser::start().expect("starting chromium");
        let _page = browser.open("about:blank").expect("opening a blank page");
        *record.lock().expect("the record") =
            Some((browser.pid(), browser.profile_dir().to_path_buf()));
        panic!("the test fails here, on purpose");
    })
    .join();
    assert!(failed.is_err(), "the thread was meant to panic");
    let (pid, profile) = seen
        .lock()
        .expect("the record")
        .clone()
        .expect("the browser had started");
    assert!(!profile.exists(), "{} is still there", profile.display());
    assert_eq!(profile_processes(&profile), Vec::<i32>::new());
    let pid = pid.expect("the browser's pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "chromium (pid {pid}) still runs: {stat}");
}
