//! The mesh file loader on raw bytes (what `config check`, `config set` and a config offer
//! from a neighbour feed it). Never panics; every diagnostic points inside the file and
//! renders; a file that loads answers `node()` for each of its nodes.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/config_check.rs"]
mod config_check;

fuzz_target!(|data: &[u8]| {
    config_check::exercise(data);
});
