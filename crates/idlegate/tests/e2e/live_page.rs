//! The live page's files as the binary embeds them (`crates/idlegate/src/gateway/page/`): what
//! can be checked without a browser. They fetch nothing from outside (no CDN, no web font: the
//! box may have no network, and a page that calls out leaks what it shows), put the API's
//! data in the page as text only, and carry the ids and attributes the API's contract names
//! for the browser tests. The browser tests themselves load the page in Chromium.

use std::path::Path;

fn page(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/gateway/page")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_live_page_fetches_nothing_from_another_origin() {
    for file in ["index.html", "app.js", "style.css"] {
        let text = page(file);
        for (n, line) in text.lines().enumerate() {
            // The one URL allowed is the SVG namespace inside the icon's data: URI, which
            // names the format and is never fetched.
            let line = line.replace("http://www.w3.org/2000/svg", "");
            for outside in [
                "http://",
                "https://",
                "url(//",
                "src=\"//",
                "href=\"//",
                "@import",
            ] {
                assert!(
                    !line.contains(outside),
                    "{file}:{}: {outside} fetches from elsewhere: {line}",
                    n + 1
                );
            }
        }
    }
    let html = page("index.html");
    for asset in ["src=\"/assets/app.js\"", "href=\"/assets/style.css\""] {
        assert!(html.contains(asset), "index.html loads {asset}");
    }
}

#[test]
fn the_live_page_puts_the_apis_data_in_as_text_never_as_markup() {
    let js = page("app.js");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
}

#[test]
fn the_live_page_has_the_ids_and_attributes_of_the_apis_contract() {
    let html = page("index.html");
    for id in [
        "stream-status",
        "timeline",
        "counters",
        "rules",
        "expire-all",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "index.html has no id {id}"
        );
    }
    let js = page("app.js");
    // Rows keyed by flow, with the seconds left as last drawn; per-rule buttons and forms;
    // every event of the timeline with its kind as a class.
    for made in [
        "'flow'",
        "dataset.key",
        "dataset.expiresIn",
        "dataset.expireRule",
        "dataset.ruleForm",
        "'event event-'",
        "new EventSource('/api/events'",
        "credentials: 'same-origin'",
        "'Content-Type'] = 'application/json'",
    ] {
        assert!(js.contains(made), "app.js does not make {made}");
    }
}
