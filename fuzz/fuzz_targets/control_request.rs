//! The node's control socket (`daemon/connectopus/src/control/request.rs`, compiled here
//! from the node's own source file, since it lives in the binary crate): one request line
//! from a local client. Never a panic; a request that parses re-serialises to a line that
//! parses to the same request (what `connectopus` clients send).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../daemon/connectopus/src/control/request.rs"]
mod request;

fuzz_target!(|data: &[u8]| {
    // The node reads the line with `read_line` into a String: UTF-8 or an I/O error.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = request::parse_request(line) else {
        return;
    };
    let mut sent = serde_json::to_string(&parsed).expect("a request serialises");
    assert!(!sent.contains('\n'), "a request must stay one line: {sent}");
    sent.push('\n');
    let again = request::parse_request(&sent).expect("a serialised request parses");
    assert_eq!(again, parsed);
});
