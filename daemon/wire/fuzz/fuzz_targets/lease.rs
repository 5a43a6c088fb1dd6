//! Parses arbitrary bytes as a lease message, a lease certificate and a delegated-prefix list;
//! whatever parses must re-encode to exactly the input, since every encoding is canonical.

#![no_main]

use connectopus_wire::delegated::{encode_delegated, parse_delegated};
use connectopus_wire::{LeaseCertificate, LeaseMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = LeaseMessage::parse(data) {
        assert_eq!(message.encode(), data);
    }
    if let Ok(cert) = LeaseCertificate::parse(data) {
        assert_eq!(cert.encode(), data);
    }
    if let Ok(list) = parse_delegated(data) {
        assert_eq!(encode_delegated(&list), data);
    }
});
