//! The fuzz targets' checks (`fuzz/checks/`), run over every committed seed and
//! regression input in `fuzz/corpus/<target>/`: the short fuzz step of the test suite.
//! The long, coverage-guided runs that find new inputs are `fuzz/run.sh` (libFuzzer);
//! an input they turn up that broke a check is added to the corpus, and so replayed here.

#[path = "../fuzz/checks/auth_token.rs"]
mod auth_token;
#[path = "../fuzz/checks/config_load.rs"]
mod config_load;
#[path = "../fuzz/checks/request_body.rs"]
mod request_body;
#[path = "../fuzz/checks/sse_stream.rs"]
mod sse_stream;

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} breaks a check",
            file.display()
        );
    }
    files.len()
}

#[test]
fn request_body_corpus() {
    replay("request_body", request_body::check);
}

#[test]
fn sse_stream_corpus() {
    replay("sse_stream", sse_stream::check);
}

#[test]
fn config_load_corpus() {
    replay("config_load", config_load::check);
}

#[test]
fn auth_token_corpus() {
    replay("auth_token", auth_token::check);
}
