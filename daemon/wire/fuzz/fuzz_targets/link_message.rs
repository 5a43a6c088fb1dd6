//! Parses arbitrary bytes as a link message; a message that parses must re-encode to bytes
//! that parse back to the same value.

#![no_main]

use connectopus_wire::LinkMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = LinkMessage::parse(data) {
        let bytes = msg.encode();
        assert_eq!(LinkMessage::parse(&bytes), Ok(msg));
    }
});
