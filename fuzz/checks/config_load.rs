//! The config loader and validator, on arbitrary text.
//!
//! Never a panic, whatever the YAML; every error names a place or at least says something;
//! and a config that loads loads again from its own text, to the same shape.

use std::path::Path;

/// `${VAR}`: a value for names starting with a letter up to M, none for the rest, so that
/// both the expanded and the missing-variable paths run.
fn env(name: &str) -> Option<String> {
    name.starts_with(|c: char| c.is_ascii_uppercase() && c <= 'M')
        .then(|| format!("value-of-{name}-0123456789abcdef0123456789abcdef"))
}

/// Runs one input; panics when an invariant breaks.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No file a config names exists under this folder.
    let base = Path::new("/nonexistent/tollgate-fuzz");
    match tollgate::config::parse(text, "fuzz.yaml", base, &env) {
        Ok(config) => {
            let again = match tollgate::config::parse(&config.text, "fuzz.yaml", base, &env) {
                Ok(c) => c,
                Err(e) => panic!("a config that loaded does not load again: {e}"),
            };
            assert_eq!(again.models.len(), config.models.len());
            assert_eq!(again.pools.len(), config.pools.len());
            assert_eq!(again.listeners.len(), config.listeners.len());
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error with no errors in it");
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an error without a message");
                let _ = e.to_string();
            }
            let _ = errors.to_string();
        }
    }
}
