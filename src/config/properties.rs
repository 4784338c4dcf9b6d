//! Properties of the config loader and of the JWT path over generated inputs (proptest):
//! whatever the text or token, an answer (a config or errors; a principal or a refusal),
//! never a panic.

use std::path::Path;

use proptest::prelude::*;

use super::parse;

/// A config that loads, with every section that has its own checks.
const BASE: &str = "\
listeners:
  - address: 127.0.0.1:8080
models:
  gpt-4o:
    aliases: [four]
    targets:
      - pool: p
    context_window: 128000
pools:
  p:
    provider: openai
    endpoints:
      - {url: 'https://api.example.com/v1', api_key: k}
    balance: {strategy: consistent_hash, hash_on: ['header:x-session-id']}
    breaker: {consecutive_failures: 3}
    retry: {attempts: 2}
auth:
  keys:
    - {id: a, secret: sk-aaaaaaaaaaaaaaaa, team: t, models: ['gpt-*']}
  jwt: {algorithms: [HS256], hs256_secret: 'a-test-hmac-secret-of-at-least-32-bytes'}
quotas:
  keys:
    a: {rpm: 10, budgets: [{usd: 1, window: day}]}
  prices:
    gpt-4o: {input: 2.5, output: 10}
cache: {ttl: 10m, models: {'gpt-*': {ttl: 1m}}}
";

fn load(text: &str) {
    let _ = parse(text, "gw.yaml", Path::new("."), &|_| None);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_breaks_the_loader(text in "\\PC{0,400}") {
        load(&text);
    }

    /// The base config with one span of it replaced by generated text: near-valid files,
    /// where the validator (not the YAML parser) does the work.
    #[test]
    fn a_mangled_config_gets_errors_not_a_panic(
        at in 0usize..BASE.len(),
        len in 0usize..40,
        with in "[ -~\n]{0,30}",
    ) {
        let start = (0..=at).rev().find(|&i| BASE.is_char_boundary(i)).unwrap_or(0);
        let end = (start + len).min(BASE.len());
        let end = (end..=BASE.len()).find(|&i| BASE.is_char_boundary(i)).unwrap_or(BASE.len());
        load(&format!("{}{}{}", &BASE[..start], with, &BASE[end..]));
    }

    #[test]
    fn arbitrary_tokens_never_break_authentication(
        token in "[A-Za-z0-9_.=+/-]{0,300}",
        header in prop::sample::select(vec!["authorization", "api-key", "x-api-key"]),
    ) {
        let config = parse(BASE, "gw.yaml", Path::new("."), &|_| None).unwrap();
        let auth = config.auth.as_ref().unwrap();
        let mut headers = http::HeaderMap::new();
        let value = if header == "authorization" { format!("Bearer {token}") } else { token.clone() };
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(header, v);
        }
        // Only the configured key is valid; anything generated is refused or anonymous.
        if let Ok(Some(p)) = auth.0.authenticate(&headers) {
            prop_assert_eq!(token, "sk-aaaaaaaaaaaaaaaa");
            prop_assert_eq!(p.id, "a");
        }
    }
}
