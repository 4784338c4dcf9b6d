//! The cache key: a SHA-256 of everything that changes a model's answer, in a canonical
//! form, within a tenant's scope.
//!
//! The body is read as JSON and written back in RFC 8785 canonical form (keys sorted,
//! no whitespace, numbers in one spelling), so field order, spacing and `0.50` vs `0.5`
//! do not change the key. `model` is replaced by the resolved model (aliases share
//! entries), and the fields that change only the delivery, not the answer, are left out:
//! `stream_options`, `user`, `metadata` and `store`. Whether the answer is a stream is a
//! separate part of the key: a stream and a non-stream answer are stored apart, each
//! replayed in its own shape. Everything else — messages, prompt or
//! input, tools, tool_choice, response_format, temperature, top_p, seed, stop,
//! max_tokens, n, logprobs, and fields the gateway does not know — is part of the key.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::openai::Api;

/// Body fields that do not change the answer (`stream` changes its shape, which is a
/// separate part of the key).
const DELIVERY_ONLY: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
];

/// Whose answers a request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One team's (the default): a tenant never sees another's answer.
    Team(&'a str),
    /// One key's.
    Key(&'a str),
    /// Everyone's.
    Shared,
}

/// A cache key: 32 bytes of SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lower-case hex, e.g. for a Redis key.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The key of a request body (a JSON object) for `api`, answered by `model` as a
/// stream or not, in `scope`. `None` if the body is not a JSON object (such a request is
/// not cached).
pub fn cache_key(
    api: Api,
    model: &str,
    body: &[u8],
    stream: bool,
    scope: Scope<'_>,
) -> Option<CacheKey> {
    let mut fields: Map<String, Value> = serde_json::from_slice(body).ok()?;
    for f in DELIVERY_ONLY {
        fields.remove(*f);
    }
    let mut canonical = Vec::with_capacity(body.len());
    let mut ser = serde_json::Serializer::with_formatter(
        &mut canonical,
        canon_json::CanonicalFormatter::new(),
    );
    serde::Serialize::serialize(&fields, &mut ser).ok()?;

    let mut h = Sha256::new();
    // Each part is length-prefixed so that no two different inputs hash the same bytes.
    let (kind, who) = match scope {
        Scope::Team(t) => ("team", t),
        Scope::Key(k) => ("key", k),
        Scope::Shared => ("shared", ""),
    };
    for part in [
        kind.as_bytes(),
        who.as_bytes(),
        api.path().as_bytes(),
        model.as_bytes(),
        if stream { b"sse" } else { b"json" },
        &canonical,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Some(CacheKey(h.finalize().into()))
}

/// Whether the request asks for a repeatable answer: `temperature` 0 or a `seed`. Only
/// such requests are cached unless config says otherwise.
pub fn is_deterministic(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Sampling {
        temperature: Option<f64>,
        seed: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Sampling>(body)
        .is_ok_and(|s| s.temperature == Some(0.0) || s.seed.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(body: &str) -> CacheKey {
        cache_key(
            Api::ChatCompletions,
            "gpt-4o",
            body.as_bytes(),
            false,
            Scope::Team("a"),
        )
        .unwrap()
    }

    const BASE: &str = r#"{"model":"gpt-4o","temperature":0.5,"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;

    #[test]
    fn order_whitespace_and_number_spelling_do_not_matter() {
        let reordered = r#"{ "tools": [{"function": {"name": "f"}, "type": "function"}],
            "messages": [{"content": "hi", "role": "user"}], "temperature": 0.50, "model": "four" }"#;
        assert_eq!(key(BASE), key(reordered));
    }

    #[test]
    fn delivery_fields_do_not_matter() {
        let streamed = BASE.replacen('{', r#"{"stream":true,"stream_options":{"include_usage":true},"user":"u1","metadata":{"x":"y"},"#, 1);
        assert_eq!(key(BASE), key(&streamed));
    }

    #[test]
    fn what_changes_the_answer_changes_the_key() {
        assert_ne!(key(BASE), key(&BASE.replace("0.5", "0.7")));
        assert_ne!(
            key(BASE),
            key(&BASE.replace(r#""name":"f""#, r#""name":"g""#))
        );
        assert_ne!(key(BASE), key(&BASE.replace(r#""hi""#, r#""hello""#)));
        assert_ne!(key(BASE), key(&BASE.replacen('{', r#"{"seed":1,"#, 1)));
        assert_ne!(
            key(BASE),
            key(&BASE.replacen('{', r#"{"max_tokens":5,"#, 1))
        );
    }

    #[test]
    fn scopes_models_and_apis_are_kept_apart() {
        let b = BASE.as_bytes();
        let k = |api, model, scope| cache_key(api, model, b, false, scope).unwrap();
        let base = k(Api::ChatCompletions, "gpt-4o", Scope::Team("a"));
        assert_ne!(base, k(Api::ChatCompletions, "gpt-4o", Scope::Team("b")));
        assert_ne!(base, k(Api::ChatCompletions, "gpt-4o", Scope::Key("a")));
        assert_ne!(base, k(Api::ChatCompletions, "gpt-4o", Scope::Shared));
        assert_ne!(
            base,
            k(Api::ChatCompletions, "gpt-4o-mini", Scope::Team("a"))
        );
        assert_ne!(base, k(Api::Completions, "gpt-4o", Scope::Team("a")));
        assert_eq!(base.hex().len(), 64);
        assert_ne!(
            base,
            cache_key(Api::ChatCompletions, "gpt-4o", b, true, Scope::Team("a")).unwrap(),
            "stream and non-stream answers are kept apart"
        );
        assert!(cache_key(Api::ChatCompletions, "m", b"[1]", false, Scope::Shared).is_none());
    }

    #[test]
    fn deterministic_requests() {
        assert!(is_deterministic(br#"{"temperature":0,"messages":[]}"#));
        assert!(is_deterministic(br#"{"temperature":0.0}"#));
        assert!(is_deterministic(br#"{"seed":42,"temperature":1}"#));
        assert!(!is_deterministic(br#"{"temperature":0.2}"#));
        assert!(!is_deterministic(br#"{"messages":[]}"#));
        assert!(!is_deterministic(b"not json"));
    }
}
