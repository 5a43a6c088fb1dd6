//! The loader must never panic, whatever the bytes.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

const VALID: &[u8] = include_bytes!("fixtures/valid.yml");

/// Exercises every public path on arbitrary input.
fn exercise(bytes: &[u8]) {
    let diags = connectopus_config::check("fuzz.yml", bytes);
    let _ = diags.to_string();
    if let Ok(cfg) = connectopus_config::load("fuzz.yml", bytes) {
        let _ = cfg.node("foo");
        let _ = cfg.node("nope").unwrap_err().to_string();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        exercise(&bytes);
    }

    #[test]
    fn yamlish_text_never_panics(s in "[a-z:{}\\[\\], \\-\\n'\"#&*!|>0-9.]{0,200}") {
        exercise(s.as_bytes());
    }

    #[test]
    fn mutated_valid_config_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8)
    ) {
        let mut bytes = VALID.to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        exercise(&bytes);
    }

    #[test]
    fn truncated_valid_config_never_panics(cut in 0usize..VALID.len()) {
        exercise(&VALID[..cut]);
    }
}
