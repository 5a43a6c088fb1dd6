//! HTTP/1.1 request framing for the control API: the request line, headers and a
//! `Content-Length` body, each bounded, and the API route the target names.
//!
//! Pure functions over bytes (no I/O), so the fuzz target `api_request` compiles this file as
//! it is. Anything malformed is an [`HttpError`] carrying the status to answer with.

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (a whole signed mesh configuration fits).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 64;

/// A request that could not be read, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// Status line text, such as `400 Bad Request`.
    pub status: &'static str,
    /// What was wrong.
    pub message: String,
}

impl HttpError {
    /// A `400 Bad Request`.
    pub fn bad(message: impl Into<String>) -> Self {
        HttpError {
            status: "400 Bad Request",
            message: message.into(),
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body length the head announces.
    pub content_length: usize,
}

impl Head {
    /// Returns the first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Returns the token of an `Authorization: Bearer <token>` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// Finds the end of the head in `buf`: the index just after the blank line.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a request head (everything before the blank line).
pub fn parse_head(bytes: &[u8]) -> Result<Head, HttpError> {
    if bytes.len() > MAX_HEAD {
        return Err(HttpError {
            status: "431 Request Header Fields Too Large",
            message: format!("the request head is longer than {MAX_HEAD} bytes"),
        });
    }
    let text =
        std::str::from_utf8(bytes).map_err(|_| HttpError::bad("the request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::bad(format!(
            "bad request line {:?}",
            truncate(line)
        )));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(HttpError {
            status: "505 HTTP Version Not Supported",
            message: format!("{:?} is not HTTP/1.0 or HTTP/1.1", truncate(version)),
        });
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::bad(format!("bad method {:?}", truncate(method))));
    }
    if !target.starts_with('/') {
        return Err(HttpError::bad("the request target must start with `/`"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError {
                status: "431 Request Header Fields Too Large",
                message: format!("more than {MAX_HEADERS} headers"),
            });
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::bad(format!(
                "header line without `:`: {:?}",
                truncate(line)
            )));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b < 0x21) {
            return Err(HttpError::bad(format!(
                "bad header name {:?}",
                truncate(name)
            )));
        }
        let name = name.to_ascii_lowercase();
        let value = value.trim().to_owned();
        if name == "transfer-encoding" {
            return Err(HttpError {
                status: "501 Not Implemented",
                message: "chunked bodies are not accepted; send Content-Length".into(),
            });
        }
        if name == "content-length" {
            let n: usize = value.parse().map_err(|_| {
                HttpError::bad(format!("bad Content-Length {:?}", truncate(&value)))
            })?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::bad("two different Content-Length headers"));
            }
            if n > MAX_BODY {
                return Err(HttpError {
                    status: "413 Content Too Large",
                    message: format!("the body is longer than {MAX_BODY} bytes"),
                });
            }
            content_length = Some(n);
        }
        headers.push((name, value));
    }
    Ok(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        content_length: content_length.unwrap_or(0),
    })
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A static file of the web UI (`/`, `/ui.js`, ...).
    Asset(String),
    /// `POST /api/v1/control`: a control request, as JSON, like the unix socket's.
    Control,
    /// `GET /api/v1/status`: the latest status report (refreshed every second).
    Status,
    /// `GET /api/v1/graph`: the mesh graph, compact, for the UI.
    Graph,
    /// `GET /api/v1/config`: the running configuration and its signature.
    Config,
    /// `GET /api/v1/whoami`: who the token belongs to.
    Whoami,
    /// `GET /api/v1/nodes/<name>/<view>`: another node's `status`, `graph`, `config` or
    /// `whoami`, fetched from its API through the mesh with the caller's token.
    Proxy {
        /// The node.
        node: String,
        /// The view's path on that node (`/api/v1/status`, ...).
        path: String,
    },
    /// `POST /api/v1/ping`: the node pings a mesh node and returns the lines.
    Ping,
    /// `POST /api/v1/traceroute`: the node traces the path to a mesh node.
    Traceroute,
    /// An unknown path under `/api/`.
    NotFound,
    /// A known path with the wrong method; the allowed one.
    WrongMethod(&'static str),
}

impl Route {
    /// Maps a method and path to a route.
    pub fn parse(method: &str, path: &str) -> Route {
        let read = matches!(method, "GET" | "HEAD");
        let want = |ok: bool, route: Route, allowed: &'static str| {
            if ok {
                route
            } else {
                Route::WrongMethod(allowed)
            }
        };
        match path {
            "/api/v1/control" => want(method == "POST", Route::Control, "POST"),
            "/api/v1/status" => want(read, Route::Status, "GET"),
            "/api/v1/graph" => want(read, Route::Graph, "GET"),
            "/api/v1/config" => want(read, Route::Config, "GET"),
            "/api/v1/whoami" => want(read, Route::Whoami, "GET"),
            "/api/v1/ping" => want(method == "POST", Route::Ping, "POST"),
            "/api/v1/traceroute" => want(method == "POST", Route::Traceroute, "POST"),
            p if p.starts_with("/api/v1/nodes/") => Route::proxy(p, read),
            p if p.starts_with("/api/") || p == "/api" => Route::NotFound,
            p => want(read, Route::Asset(p.to_owned()), "GET"),
        }
    }

    fn proxy(path: &str, read: bool) -> Route {
        let rest = path.trim_start_matches("/api/v1/nodes/");
        let Some((node, view)) = rest.split_once('/') else {
            return Route::NotFound;
        };
        let name_ok = !node.is_empty()
            && node.len() <= 63
            && node
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok || !matches!(view, "status" | "graph" | "config" | "whoami") {
            return Route::NotFound;
        }
        if !read {
            return Route::WrongMethod("GET");
        }
        Route::Proxy {
            node: node.to_owned(),
            path: format!("/api/v1/{view}"),
        }
    }

    /// Tells whether the route needs a token on the mesh port (static assets do not).
    pub fn needs_token(&self) -> bool {
        !matches!(
            self,
            Route::Asset(_) | Route::WrongMethod(_) | Route::NotFound
        )
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_bad_ones_say_why() {
        let head = parse_head(
            b"POST /api/v1/control?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer cxt1.a.b\r\nContent-Length: 12\r\n",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/api/v1/control");
        assert_eq!(head.query, "x=1");
        assert_eq!(head.content_length, 12);
        assert_eq!(head.bearer(), Some("cxt1.a.b"));
        assert_eq!(Route::parse(&head.method, &head.path), Route::Control);
        for (bad, status) in [
            (&b"GET /\r\n"[..], "400 Bad Request"),
            (b"GET / HTTP/2\r\n", "505 HTTP Version Not Supported"),
            (b"get / HTTP/1.1\r\n", "400 Bad Request"),
            (b"GET x HTTP/1.1\r\n", "400 Bad Request"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n", "400 Bad Request"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n",
                "400 Bad Request",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n",
                "413 Content Too Large",
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
                "501 Not Implemented",
            ),
            (b"\xff / HTTP/1.1\r\n", "400 Bad Request"),
        ] {
            assert_eq!(parse_head(bad).unwrap_err().status, status, "{bad:?}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(Route::parse("GET", "/"), Route::Asset("/".into()));
        assert_eq!(Route::parse("GET", "/api/v1/status"), Route::Status);
        assert_eq!(
            Route::parse("POST", "/api/v1/status"),
            Route::WrongMethod("GET")
        );
        assert_eq!(
            Route::parse("GET", "/api/v1/control"),
            Route::WrongMethod("POST")
        );
        assert_eq!(Route::parse("GET", "/api/v2/x"), Route::NotFound);
        assert!(Route::Status.needs_token());
        assert_eq!(
            Route::parse("GET", "/api/v1/nodes/baz/status"),
            Route::Proxy {
                node: "baz".into(),
                path: "/api/v1/status".into()
            }
        );
        assert_eq!(
            Route::parse("GET", "/api/v1/nodes/baz/control"),
            Route::NotFound
        );
        assert_eq!(
            Route::parse("GET", "/api/v1/nodes/../status"),
            Route::NotFound
        );
        assert_eq!(
            Route::parse("POST", "/api/v1/nodes/baz/status"),
            Route::WrongMethod("GET")
        );
        assert!(!Route::Asset("/".into()).needs_token());
    }
}
