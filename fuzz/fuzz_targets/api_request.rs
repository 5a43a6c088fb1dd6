//! The control API's request framing (`daemon/connectopus/src/api/request.rs`, compiled here
//! from the node's own source file, since it lives in the binary crate): the request line,
//! headers and `Content-Length` of bytes from the mesh port, the route, and the bearer token
//! handed to the token parser. Never a panic; a head that parses respects the limits.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../daemon/connectopus/src/api/request.rs"]
mod request;

fuzz_target!(|data: &[u8]| {
    let Some(end) = request::head_end(data) else {
        let _ = request::parse_head(data);
        return;
    };
    assert!(end <= data.len());
    let Ok(head) = request::parse_head(&data[..end]) else {
        return;
    };
    assert!(head.content_length <= request::MAX_BODY);
    assert!(head.headers.len() <= request::MAX_HEADERS);
    assert!(head.path.starts_with('/'));
    let route = request::Route::parse(&head.method, &head.path);
    let _ = route.needs_token();
    if let Some(token) = head.bearer() {
        assert!(!token.is_empty());
        let _ = connectopus_config::token::Token::parse(token);
    }
});
