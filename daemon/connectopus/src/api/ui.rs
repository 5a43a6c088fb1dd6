//! The web UI's static files, built into the binary: one page, its script and its style
//! sheet. No CDN, no network at run time; the script draws the graph as SVG itself.

use super::Answer;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/ui.js");
const STYLE: &str = include_str!("ui/ui.css");

/// Only this page's own files, scripts and styles; no framing by other sites.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// Answers a request for a static file.
pub(super) fn asset(path: &str) -> Answer {
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/ui.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/ui.css" => ("text/css; charset=utf-8", STYLE),
        _ => {
            return Answer::error("404 Not Found", &format!("no page at {path}"));
        }
    };
    Answer {
        status: "200 OK",
        content_type,
        extra: vec![("Content-Security-Policy", POLICY.to_owned())],
        body: body.as_bytes().to_vec(),
    }
}
