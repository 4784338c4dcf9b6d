//! The `auth_token` fuzz target: the checks live in `fuzz/checks/auth_token.rs`, which the main
//! test suite also runs over the committed corpus (`tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../checks/auth_token.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
