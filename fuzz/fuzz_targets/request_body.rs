//! The `request_body` fuzz target: the checks live in `fuzz/checks/request_body.rs`, which the main
//! test suite also runs over the committed corpus (`tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../checks/request_body.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
