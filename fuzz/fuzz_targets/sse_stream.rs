//! The `sse_stream` fuzz target: the checks live in `fuzz/checks/sse_stream.rs`, which the main
//! test suite also runs over the committed corpus (`tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../checks/sse_stream.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
