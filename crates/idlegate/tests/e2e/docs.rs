//! The documentation: the book (`docs/`, mdBook) builds, and every relative link in README.md,
//! SECURITY.md, ARCHITECTURE.md and the book's pages resolves to a file of the repository and,
//! where it names one (`#…`), to a heading of that file, slugged as mdBook and GitHub slug
//! them. Markdown is parsed with pulldown-cmark, so links in code are not links. External
//! (https) links are not fetched.
//!
//! Needs `mdbook` (0.5.4, which `scripts/setup` installs) on PATH; without it the book test
//! fails and says so.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .unwrap_or_else(|e| panic!("the repository at {}: {e}", root.display()))
}

/// `{{#include PATH}}` lines (mdBook's) replaced by the file they name, as the book shows it.
fn expand_includes(file: &Path, text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(target) = trimmed
            .strip_prefix("{{#include ")
            .and_then(|rest| rest.strip_suffix("}}"))
        {
            let path = file.parent().unwrap().join(target.trim());
            let included = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {{{{#include {target}}}}}: {e}", file.display()));
            out += &included;
        } else {
            out += line;
        }
        out.push('\n');
    }
    out
}

fn read_markdown(file: &Path) -> String {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    expand_includes(file, &text)
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES
}

/// A heading's anchor as mdBook (`normalize_id`) and GitHub make it: lower case, letters,
/// digits, `_` and `-` kept, spaces made `-`, everything else dropped.
fn slug(text: &str) -> String {
    text.trim()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().collect::<String>())
            } else if c.is_whitespace() {
                Some("-".to_string())
            } else {
                None
            }
        })
        .collect()
}

/// Every anchor a Markdown file offers: its headings' slugs (a repeated one gets `-1`, `-2`,
/// as both renderers number them).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let n = seen.entry(base.clone()).or_insert(0);
                let id = if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                *n += 1;
                out.insert(id);
            }
            _ => {}
        }
    }
    out
}

/// Every link and image destination of a Markdown text.
fn links(text: &str) -> Vec<String> {
    Parser::new_ext(text, options())
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .collect()
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The files whose links are checked: the three top-level documents and every book page.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "SECURITY.md", "ARCHITECTURE.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    markdown_files(&root.join("docs/src"), &mut files);
    files.sort();
    files
}

/// What is wrong with one link of `file`, if anything.
fn check_link(root: &Path, book: &Path, file: &Path, dest: &str) -> Option<String> {
    if dest.contains("://") || dest.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match dest.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (dest, None),
    };
    let target = if path.is_empty() {
        file.to_path_buf()
    } else {
        normalize(&file.parent().unwrap().join(path))
    };
    if !target.starts_with(root) {
        return Some(format!("{dest}: leaves the repository"));
    }
    if file.starts_with(book) && !target.starts_with(book) {
        return Some(format!(
            "{dest}: leaves docs/src, so the built book cannot follow it (include the file in a \
             page with {{{{#include …}}}} and link to that page)"
        ));
    }
    if !target.exists() {
        return Some(format!("{dest}: no such file {}", target.display()));
    }
    let anchor = anchor?;
    if target.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "{dest}: an anchor into a file that is not Markdown"
        ));
    }
    let offered = anchors(&read_markdown(&target));
    (!offered.contains(anchor)).then(|| {
        format!(
            "{dest}: {} has no heading #{anchor} (its anchors: {})",
            target.display(),
            offered.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

#[test]
fn every_relative_link_and_anchor_of_the_docs_resolves() {
    let root = repo();
    let book = root.join("docs/src");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in documents(&root) {
        for dest in links(&read_markdown(&file)) {
            checked += 1;
            if let Some(why) = check_link(&root, &book, &file, &dest) {
                broken.push(format!(
                    "{}: {why}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is docs/src there?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Where a fenced code block of `text` is never closed, its first line (1-based): a block that
/// runs on to the end of the document because its closing fence was not on a line of its own
/// (CommonMark: a closing fence may be followed by spaces only).
fn unclosed_fences(text: &str) -> Vec<usize> {
    use pulldown_cmark::CodeBlockKind;
    Parser::new_ext(text, options())
        .into_offset_iter()
        .filter_map(|(event, range)| match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(_))) => {
                let block = text[range.clone()].trim_end();
                let last = block.lines().last().unwrap_or("").trim();
                let closed = block.lines().count() > 1
                    && last.len() >= 3
                    && ['`', '~'].iter().any(|&c| last.chars().all(|l| l == c));
                (!closed).then(|| text[..range.start].lines().count() + 1)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_fence_closed_on_a_line_with_text_is_found_unclosed() {
    assert_eq!(
        unclosed_fences("a\n\n```sh\nx\n```\n\nb\n"),
        Vec::<usize>::new()
    );
    assert_eq!(
        unclosed_fences("a\n\n```yaml\nx: 1\n``` If you change it\n"),
        [3]
    );
}

#[test]
fn every_code_block_of_the_docs_is_closed() {
    let root = repo();
    let mut unclosed = Vec::new();
    for file in documents(&root) {
        for line in unclosed_fences(&read_markdown(&file)) {
            unclosed.push(format!(
                "{}:{line}",
                file.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        unclosed.is_empty(),
        "code blocks never closed (the closing ``` must be on a line of its own): {unclosed:?}"
    );
}

/// The config reference's full example, pasted into a file as a reader would, is a config
/// the gateway accepts (`gateway --explain` exits 0).
#[test]
fn the_config_references_full_example_runs_as_written() {
    use pulldown_cmark::CodeBlockKind;
    let page = repo().join("docs/src/reference/config.md");
    let text = read_markdown(&page);
    // The first ```toml block, whole (pulldown-cmark may give a block's text in pieces).
    let (mut in_toml, mut done, mut example) = (false, false, String::new());
    for event in Parser::new_ext(&text, options()) {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                in_toml = !done && &*info == "toml"
            }
            Event::Text(code) if in_toml => example += &code,
            Event::End(TagEnd::CodeBlock) if in_toml => (in_toml, done) = (false, true),
            _ => {}
        }
    }
    assert!(
        example.contains("[[nat_gateway]]"),
        "the full example (a ```toml block) in docs/src/reference/config.md: {example}"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, &example).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["gateway", "--explain", "--config"])
        .arg(&file)
        .output()
        .expect("running idlegate gateway --explain");
    assert!(
        out.status.success(),
        "reference/config.md's example is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A page not in SUMMARY.md is never built: every page of docs/src is in it.
#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let root = repo();
    let book = root.join("docs/src");
    let summary = book.join("SUMMARY.md");
    let listed: BTreeSet<PathBuf> = links(&read_markdown(&summary))
        .into_iter()
        .map(|l| normalize(&book.join(l.split('#').next().unwrap())))
        .collect();
    let mut pages = Vec::new();
    markdown_files(&book, &mut pages);
    let missing: Vec<String> = pages
        .into_iter()
        .filter(|p| *p != summary && !listed.contains(p))
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "pages not in docs/src/SUMMARY.md: {missing:?}"
    );
}

#[test]
fn the_book_builds_with_mdbook() {
    let root = repo();
    let out = tempfile::tempdir().unwrap();
    let built = Command::new("mdbook")
        .arg("build")
        .arg(root.join("docs"))
        .arg("--dest-dir")
        .arg(out.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `mdbook build docs`: {e}: mdbook (0.5.4) is needed; scripts/setup \
                 installs it (cargo install mdbook --locked --version 0.5.4 \
                 --no-default-features --features search)"
            )
        });
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(
        built.status.success(),
        "mdbook build docs failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "mdbook build docs warned:\n{stderr}"
    );
    for page in [
        "index.html",
        "errors.html",
        "reference/profile-figures.html",
    ] {
        assert!(
            out.path().join(page).is_file(),
            "mdbook build docs wrote no {page}"
        );
    }
}

#[test]
fn headings_are_slugged_as_mdbook_and_github_slug_them() {
    assert_eq!(
        slug("The lab: your own application against the box"),
        "the-lab-your-own-application-against-the-box"
    );
    assert_eq!(
        slug("The tunnel and `keygen` on Windows"),
        "the-tunnel-and-keygen-on-windows"
    );
    let text = "# A\n## `azure-lb`\n## A\n";
    let found = anchors(text);
    assert!(found.contains("azure-lb") && found.contains("a") && found.contains("a-1"));
}

/// The README is the page a newcomer reads in five minutes (issue 20: about 200 lines); the
/// rest is in the book.
#[test]
fn the_readme_fits_in_about_200_lines() {
    let readme = repo().join("README.md");
    let lines = std::fs::read_to_string(&readme).unwrap().lines().count();
    assert!(
        lines <= 220,
        "README.md has {lines} lines: move detail into the book (docs/src) and link to it"
    );
}

/// A reader cannot resolve private names ("seed 002", "the original write-up") or paths
/// outside the repository: the docs cite public sources instead.
#[test]
fn the_docs_cite_no_private_seed_names_or_paths() {
    let root = repo();
    let mut found = Vec::new();
    for file in documents(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            let seed_number = lower.match_indices("seed").any(|(at, _)| {
                let rest = lower[at + 4..].trim_start_matches('s').trim_start();
                rest.len() >= 3 && rest.as_bytes()[..3].iter().all(u8::is_ascii_digit)
            });
            if seed_number
                || lower.contains("original write-up")
                || lower.contains("shared/reference")
                || lower.contains("/work/")
            {
                found.push(format!(
                    "{}:{}: {line}",
                    file.strip_prefix(&root).unwrap().display(),
                    n + 1
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "cite the public source instead:\n{}",
        found.join("\n")
    );
}

/// Every way the docs write a figure of `seconds`: "350 s", "6,000 s", and as idlegate's
/// messages do ("4 min", "24 h", "5 days").
fn written_durations(seconds: f64, out: &mut BTreeSet<String>) {
    if seconds <= 0.0 || seconds.fract() != 0.0 {
        return;
    }
    let whole = seconds as u64;
    out.insert(format!("{whole} s"));
    out.insert(format!("{} s", with_commas(whole)));
    out.insert(idlegate_core::config::human(
        std::time::Duration::from_secs(whole),
    ));
}

fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The figures of `profiles --json`: each duration (fields ending in `_s`, and the numbers
/// inside them) and each port count, as the docs would write them.
fn profile_figures(value: &serde_json::Value, in_seconds: bool, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Number(n) if in_seconds => {
            written_durations(n.as_f64().unwrap_or(0.0), out)
        }
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                if key.starts_with("ports_per_") {
                    if let Some(n) = v.as_u64().filter(|n| *n > 1) {
                        out.insert(format!("{n} ports"));
                        if n >= 1000 {
                            out.insert(with_commas(n));
                        }
                    }
                }
                profile_figures(v, in_seconds || key.ends_with("_s"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                profile_figures(v, in_seconds, out);
            }
        }
        _ => {}
    }
}

/// The profiles page gives no figure of the profile tables by hand (it would drift from them):
/// each section links to the generated Profile figures page instead. Code (test names, config
/// lines) is not prose and is not checked.
#[test]
fn the_profiles_page_states_no_figure_of_the_profile_tables() {
    let json = Command::new(env!("CARGO_BIN_EXE_idlegate"))
        .args(["profiles", "--json"])
        .output()
        .expect("running idlegate profiles --json");
    assert!(json.status.success(), "idlegate profiles --json failed");
    let json: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("profiles --json prints JSON");
    let mut figures = BTreeSet::new();
    profile_figures(&json, false, &mut figures);
    assert!(
        figures.contains("350 s") && figures.contains("4 min"),
        "{figures:?}"
    );

    let page = repo().join("docs/src/reference/profiles.md");
    let text = read_markdown(&page);
    let mut prose = String::new();
    for event in Parser::new_ext(&text, options()) {
        if let Event::Text(t) = event {
            prose += &t;
            prose.push('\n');
        }
    }
    let mut found = Vec::new();
    for figure in &figures {
        for (at, _) in prose.match_indices(figure.as_str()) {
            let before = prose[..at].chars().next_back();
            let after = prose[at + figure.len()..].chars().next();
            let digit_before = before.is_some_and(|c| c.is_ascii_digit() || c == ',' || c == '.');
            let word_after = after.is_some_and(|c| c.is_alphanumeric());
            if !digit_before && !word_after {
                let line = prose[..at].rsplit('\n').next().unwrap_or_default();
                found.push(format!("{figure:?} in \"{line}{figure}…\""));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} states figures of the profile tables; link to profile-figures.md instead:\n{}",
        page.display(),
        found.join("\n")
    );
}
