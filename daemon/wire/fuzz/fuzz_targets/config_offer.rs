//! Parses arbitrary bytes as a config offer; whatever parses must re-encode to exactly the
//! input.

#![no_main]

use connectopus_wire::ConfigOffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(offer) = ConfigOffer::parse(data) {
        assert_eq!(offer.encode().ok().as_deref(), Some(data));
    }
});
