//! The `config_load` fuzz target: the checks live in `fuzz/checks/config_load.rs`, which the main
//! test suite also runs over the committed corpus (`tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../checks/config_load.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
