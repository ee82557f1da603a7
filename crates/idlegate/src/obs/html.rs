//! The one writer of idlegate's HTML reports (`lab demo --html`, `probe --html`).
//!
//! Contract: a report is one self-contained file: the page shell ([`Page`]) carries its CSS
//! inline, drawings are inline SVG ([`Svg`]), and there is no script and no external fetch, so
//! the file opens anywhere, offline, and shows the same thing every time. Every piece of text
//! and every attribute value that comes from data goes through [`escape`]; the figures a test
//! compares with the JSON go into `data-*` attributes ([`data`]). [`Output`] is the file:
//! checked before the command runs (its directory exists, it is not there unless `--force`),
//! written through a temporary file renamed into place.

use crate::obs::report::{Report as _, Status};
use anyhow::{anyhow, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `text` safe in HTML text and in a quoted attribute value: `& < > " '` as character
/// references.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// ` name="value"`, the value escaped: one attribute to put in a start tag.
pub fn attr(name: &str, value: impl std::fmt::Display) -> String {
    format!(" {name}=\"{}\"", escape(&value.to_string()))
}

/// ` data-name="value"`: a figure a test reads back from the page's DOM.
pub fn data(name: &str, value: impl std::fmt::Display) -> String {
    attr(&format!("data-{name}"), value)
}

/// `<tag attributes>text</tag>`, the text escaped; `attributes` as made by [`attr`] and
/// [`data`].
pub fn element(tag: &str, attributes: &str, text: &str) -> String {
    format!("<{tag}{attributes}>{}</{tag}>", escape(text))
}

/// The style every report shares: a readable page, the colours of the drawings' classes
/// (`ok` alive or delivered, `bad` lost, dead or reset, `warn` doubtful, `muted` secondary).
const CSS: &str = "\
:root{--ink:#1d2330;--muted:#667085;--line:#c9cfd8;--ok:#1a7f37;--bad:#c62828;--warn:#b26a00;\
--box:#3558b8;--paper:#fff;--shade:#f4f6fa}\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--ink);\
background:var(--paper);margin:2rem auto;max-width:70rem;padding:0 1.5rem}\
h1{font-size:1.6rem;margin:0 0 .3rem}h2{font-size:1.25rem;margin:1.8rem 0 .4rem}\
h3{font-size:1.05rem;margin:1rem 0 .3rem}\
.muted{color:var(--muted)}.ok{color:var(--ok)}.bad{color:var(--bad)}.warn{color:var(--warn)}\
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.6rem 0}\
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}\
section{border-top:1px solid var(--line);padding-top:.4rem}\
.verdict{display:inline-block;padding:.05rem .55rem;border-radius:.8rem;color:#fff;\
font-size:.95rem;margin-left:.4rem;vertical-align:middle}\
.verdict.ok{background:var(--ok)}.verdict.bad{background:var(--bad)}.verdict.warn{background:var(--warn)}\
svg{display:block;margin:.6rem 0;max-width:100%;height:auto;background:var(--shade);border-radius:6px}\
svg text{font:12px system-ui,sans-serif;fill:var(--ink)}svg text.small{font-size:11px}\
svg text.title{font-weight:600;font-size:13px}\
svg .lifeline{stroke:var(--line);stroke-width:2}svg .lifeline.box{stroke:var(--box)}\
svg .axis{stroke:var(--muted);stroke-width:1}svg .guide{stroke:var(--line);stroke-dasharray:3 4}\
svg .message{stroke:var(--ink);stroke-width:1.6;fill:var(--ink)}\
svg .ok{stroke:var(--ok);fill:var(--ok)}svg .bad{stroke:var(--bad);fill:var(--bad)}\
svg .warn{stroke:var(--warn);fill:var(--warn)}svg .muted{stroke:var(--muted);fill:var(--muted)}\
svg text.ok{fill:var(--ok);stroke:none}svg text.bad{fill:var(--bad);stroke:none}\
svg text.warn{fill:var(--warn);stroke:none}svg text.muted{fill:var(--muted);stroke:none}\
svg .gap{fill:#ffe9b3;stroke:none}svg .bracket{fill:#dce6ff;stroke:var(--box)}\
svg .head{fill:#fff;stroke:var(--ink)}svg .head.box{stroke:var(--box)}\
svg .dashed{stroke-dasharray:5 4}\
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.15rem .6rem;text-align:left;\
border-bottom:1px solid var(--line);font-size:.9rem}\
details{margin:.5rem 0}summary{cursor:pointer;color:var(--muted)}";

/// A report's HTML page: a title, then blocks of body markup made with this module's
/// functions (text escaped there), all in one file.
pub struct Page {
    title: String,
    body: String,
}

impl Page {
    /// An empty page titled `title` (shown as the window's title, not in the body).
    pub fn new(title: &str) -> Page {
        Page {
            title: title.to_owned(),
            body: String::new(),
        }
    }

    /// Appends `markup` to the body: HTML made with [`element`], [`attr`], [`data`], [`Svg`]
    /// or other markup whose text was [`escape`]d.
    pub fn push(&mut self, markup: &str) {
        self.body.push_str(markup);
        self.body.push('\n');
    }

    /// The whole document: doctype, head with the shared CSS inline, the body.
    pub fn render(&self) -> String {
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{}</body>\n</html>\n",
            escape(&self.title),
            self.body
        )
    }
}

/// Where a text's anchor point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// An inline SVG drawing in user units (CSS pixels), built from a few primitives; each takes
/// the CSS classes that colour it. Arrowheads are drawn as triangles, so a page may hold many
/// drawings without shared ids.
pub struct Svg {
    width: f64,
    height: f64,
    label: String,
    body: String,
}

impl Svg {
    /// A `width` × `height` drawing; `label` is what a screen reader says of it.
    pub fn new(width: f64, height: f64, label: &str) -> Svg {
        Svg {
            width,
            height,
            label: label.to_owned(),
            body: String::new(),
        }
    }

    /// A straight line.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), class: &str) {
        let _ = writeln!(
            self.body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\"{}/>",
            attr("class", class)
        );
    }

    /// A line with an arrowhead at its end, `to`.
    pub fn arrow(&mut self, from: (f64, f64), to: (f64, f64), class: &str) {
        self.line(from, to, class);
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let length = (dx * dx + dy * dy).sqrt().max(1e-9);
        let (ux, uy) = (dx / length, dy / length);
        let (size, half) = (9.0, 4.0);
        let base = (to.0 - ux * size, to.1 - uy * size);
        let left = (base.0 - uy * half, base.1 + ux * half);
        let right = (base.0 + uy * half, base.1 - ux * half);
        let _ = writeln!(
            self.body,
            "<polygon points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\"{}/>",
            to.0,
            to.1,
            left.0,
            left.1,
            right.0,
            right.1,
            attr("class", class)
        );
    }

    /// A rectangle, top left at `(x, y)`.
    pub fn rect(&mut self, (x, y): (f64, f64), (width, height): (f64, f64), class: &str) {
        let _ = writeln!(
            self.body,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"3\"{}/>",
            width.max(0.0),
            height.max(0.0),
            attr("class", class)
        );
    }

    /// A circle.
    pub fn circle(&mut self, (cx, cy): (f64, f64), r: f64, class: &str) {
        let _ = writeln!(
            self.body,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r:.1}\"{}/>",
            attr("class", class)
        );
    }

    /// An ✕ of half-width `size` centred on `(cx, cy)`: something lost or dead.
    pub fn cross(&mut self, (cx, cy): (f64, f64), size: f64, class: &str) {
        let class = format!("{class} cross");
        self.line(
            (cx - size, cy - size),
            (cx + size, cy + size),
            class.as_str(),
        );
        self.line(
            (cx - size, cy + size),
            (cx + size, cy - size),
            class.as_str(),
        );
    }

    /// Opens a group (`<g>`) with `attributes` (as made by [`attr`] and [`data`]): what is
    /// drawn until [`Svg::close_group`] belongs to it, e.g. one mark and the figures it shows.
    pub fn open_group(&mut self, attributes: &str) {
        let _ = writeln!(self.body, "<g{attributes}>");
    }

    /// Closes the group [`Svg::open_group`] opened.
    pub fn close_group(&mut self) {
        self.body.push_str("</g>\n");
    }

    /// A line of text; `(x, y)` is its baseline's anchor point.
    pub fn text(&mut self, (x, y): (f64, f64), anchor: Anchor, class: &str, text: &str) {
        let _ = writeln!(
            self.body,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{}\"{}>{}</text>",
            anchor.as_str(),
            attr("class", class),
            escape(text)
        );
    }

    /// The drawing as markup, its label as its `aria-label` and its tooltip (`<title>`).
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w:.0} {h:.0}\" \
             width=\"{w:.0}\" height=\"{h:.0}\" role=\"img\"{}>\n<title>{}</title>\n{}</svg>",
            attr("aria-label", &self.label),
            escape(&self.label),
            self.body,
            w = self.width,
            h = self.height,
        )
    }
}

/// The file a report goes to (`--html FILE`), checked before the command runs and written
/// whole or not at all.
#[derive(Debug, Clone)]
pub struct Output {
    path: PathBuf,
    force: bool,
    /// The flag that named it, for the messages (`--html`).
    flag: &'static str,
}

impl Output {
    /// Checks `path`, given with `flag`, before anything runs: its directory must exist, it
    /// must not be a directory, and it must not exist unless `force`. Each refusal is a usage
    /// error (exit 2) with a hint.
    pub fn check(path: &Path, force: bool, flag: &'static str) -> Result<Output> {
        let shown = path.display();
        if path.is_dir() {
            return Err(anyhow!("{flag} {shown}: is a directory"))
                .with_hint(|| format!("give {flag} a file name, e.g. {flag} report.html"))
                .status(Status::Usage);
        }
        let dir = directory_of(path);
        if !dir.is_dir() {
            return Err(anyhow!(
                "{flag} {shown}: the directory {} does not exist",
                dir.display()
            ))
            .with_hint(|| format!("create it, or give another {flag}"))
            .status(Status::Usage);
        }
        if !force && path.exists() {
            return Err(anyhow!("{flag} {shown}: it exists"))
                .with_hint(|| format!("give --force to overwrite it, or another {flag}"))
                .status(Status::Usage);
        }
        Ok(Output {
            path: path.to_path_buf(),
            force,
            flag,
        })
    }

    /// The file's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `html` through a temporary file beside the target, renamed into place: a reader
    /// never sees half a report. Refuses, as [`Output::check`] did, a file that appeared
    /// meanwhile unless `--force`. A failure names the file (the temporary one is removed).
    pub fn write(&self, html: &str) -> Result<()> {
        let dir = directory_of(&self.path);
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report.html".into());
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::write(&temp, html).and_then(|()| {
            if !self.force && self.path.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "it appeared while the command ran",
                ));
            }
            std::fs::rename(&temp, &self.path)
        });
        let Err(e) = written else { return Ok(()) };
        let _ = std::fs::remove_file(&temp);
        let already = e.kind() == std::io::ErrorKind::AlreadyExists;
        let failed = Err::<(), _>(e)
            .with_context(|| format!("{} {}: writing the report", self.flag, self.path.display()));
        match already {
            true => failed
                .with_hint(|| format!("give --force to overwrite it, or another {}", self.flag)),
            false => failed,
        }
    }
}

/// The directory a file goes into: its parent, or `.` for a bare name.
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::report::{hint_of, status};

    #[test]
    fn escape_turns_every_markup_character_into_a_reference() {
        assert_eq!(
            escape("<a href=\"x\">Tom & 'Jerry'</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain – ünïcode"), "plain – ünïcode");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn attributes_and_elements_escape_their_values_and_text() {
        assert_eq!(data("verdict", "a\"b<"), " data-verdict=\"a&quot;b&lt;\"");
        assert_eq!(attr("class", "ok"), " class=\"ok\"");
        assert_eq!(
            element("h2", &data("n", 1), "<script>alert(1)</script>"),
            "<h2 data-n=\"1\">&lt;script&gt;alert(1)&lt;/script&gt;</h2>"
        );
    }

    #[test]
    fn svg_text_and_label_are_escaped_and_the_page_has_no_script_or_external_fetch() {
        let mut svg = Svg::new(100.0, 50.0, "a <drawing>");
        svg.text((1.0, 2.0), Anchor::Middle, "muted", "\"c\" & <d>");
        svg.arrow((0.0, 10.0), (90.0, 10.0), "message");
        svg.cross((50.0, 25.0), 4.0, "bad");
        let mut page = Page::new("t</title><script>");
        page.push(&svg.finish());
        let html = page.render();
        assert!(html.contains("&quot;c&quot; &amp; &lt;d&gt;"), "{html}");
        assert!(html.contains("aria-label=\"a &lt;drawing&gt;\""), "{html}");
        assert!(html.contains("<title>t&lt;/title&gt;&lt;script&gt;</title>"));
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("src="), "{html}");
        // The SVG namespace is a name, not a fetch; nothing else names a URL.
        let without_namespace = html.replace("http://www.w3.org/2000/svg", "");
        assert!(!without_namespace.contains("http"), "{html}");
    }

    #[test]
    fn an_arrowhead_ends_at_the_arrows_end() {
        let mut svg = Svg::new(10.0, 10.0, "");
        svg.arrow((0.0, 5.0), (100.0, 5.0), "message");
        let drawn = svg.finish();
        assert!(
            drawn.contains("<polygon points=\"100.0,5.0 91.0,9.0 91.0,1.0\""),
            "{drawn}"
        );
    }

    #[test]
    fn output_refuses_an_existing_file_without_force_and_a_missing_directory_as_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.html");
        std::fs::write(&file, "old").unwrap();
        let e = Output::check(&file, false, "--html").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--html {}: it exists", file.display())
        );
        assert_eq!(status(&e), Status::Usage);
        assert_eq!(
            hint_of(&e),
            Some("give --force to overwrite it, or another --html")
        );
        let missing = dir.path().join("no/such/dir/r.html");
        let e = Output::check(&missing, true, "--html").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--html {}: the directory {} does not exist",
                missing.display(),
                dir.path().join("no/such/dir").display()
            )
        );
        assert_eq!(status(&e), Status::Usage);
        let e = Output::check(dir.path(), true, "--html").unwrap_err();
        assert!(e.to_string().ends_with(": is a directory"), "{e}");
        assert_eq!(status(&e), Status::Usage);
    }

    #[test]
    fn output_writes_the_whole_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.html");
        let out = Output::check(&file, false, "--html").unwrap();
        out.write("<p>new</p>").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "<p>new</p>");
        // Appeared meanwhile: refused without --force, the old content kept.
        let e = out.write("<p>newer</p>").unwrap_err();
        assert!(
            format!("{e:#}").contains("it appeared while the command ran"),
            "{e:#}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "<p>new</p>");
        Output::check(&file, true, "--html")
            .unwrap()
            .write("<p>forced</p>")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "<p>forced</p>");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["r.html"]);
    }
}
