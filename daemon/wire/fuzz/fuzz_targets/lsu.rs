//! Parses arbitrary bytes as an update body and as a signed-update container; whatever parses
//! must re-encode to exactly the input, since both encodings are canonical.

#![no_main]

use connectopus_wire::{LinkStateUpdate, SignedUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = LinkStateUpdate::parse_body(data) {
        assert!(update.is_canonical());
        assert_eq!(update.encode_body(), data);
    }
    if let Ok(signed) = SignedUpdate::parse(data) {
        assert_eq!(signed.encode(), data);
        if let Ok(update) = LinkStateUpdate::parse_body(signed.body) {
            assert_eq!(update.encode_body(), signed.body);
        }
    }
});
