//! API keys: lookup by secret and by digest, header forms, refusals, model globs.

mod common;

use common::{accepted, bearer, build, headers, refused};
use sha2::{Digest, Sha256};
use tollgate_auth::mask_key;
use tollgate_plugin::{Plugin, PrincipalKind, Request};

const ALPHA: &str = "sk-alpha-0123456789abcdefghijklmnopqrstuvwxyz";
const BETA: &str = "sk-beta-zyxwvutsrqponmlkjihgfedcba9876543210";

fn plugin() -> tollgate_auth::AuthPlugin {
    let beta_digest = hex::encode(Sha256::digest(BETA.as_bytes()));
    build(&format!(
        r#"
keys:
  - id: alpha
    secret: "{ALPHA}"
    team: research
    tier: gold
    models: ["gpt-4o*", "llama-3.1-8b"]
  - id: beta
    sha256: "{beta_digest}"
  - id: old
    secret: sk-old-key-0000000000000000000000
    expires: 2020-01-01T00:00:00Z
  - id: later
    secret: sk-later-key-00000000000000000000
    expires: 2999-01-01T00:00:00+02:00
  - id: off
    secret: sk-off-key-00000000000000000000000
    enabled: false
"#
    ))
}

#[test]
fn a_key_given_as_secret_identifies_its_principal() {
    let p = accepted(&plugin(), &bearer(ALPHA));
    assert_eq!(p.kind, PrincipalKind::ApiKey);
    assert_eq!(p.id, "alpha");
    assert_eq!(p.team.as_deref(), Some("research"));
    assert_eq!(p.tier.as_deref(), Some("gold"));
    assert_eq!(p.models.patterns(), ["gpt-4o*", "llama-3.1-8b"]);
}

#[test]
fn a_key_given_as_sha256_identifies_its_principal() {
    let p = accepted(&plugin(), &bearer(BETA));
    assert_eq!(p.id, "beta");
    assert!(p.models.allows("anything"));
    assert_eq!(p.team, None);
}

#[test]
fn bearer_api_key_and_x_api_key_headers_are_all_read() {
    let plugin = plugin();
    assert_eq!(accepted(&plugin, &bearer(ALPHA)).id, "alpha");
    let lower = headers(&[("authorization", format!("bearer {BETA}").as_bytes())]);
    assert_eq!(accepted(&plugin, &lower).id, "beta");
    assert_eq!(
        accepted(&plugin, &headers(&[("api-key", ALPHA.as_bytes())])).id,
        "alpha"
    );
    assert_eq!(
        accepted(&plugin, &headers(&[("x-api-key", BETA.as_bytes())])).id,
        "beta"
    );
}

#[test]
fn authorization_wins_over_the_other_headers() {
    let h = headers(&[
        ("x-api-key", BETA.as_bytes()),
        ("authorization", format!("Bearer {ALPHA}").as_bytes()),
    ]);
    assert_eq!(accepted(&plugin(), &h).id, "alpha");
}

#[test]
fn an_unknown_key_is_refused_with_a_masked_echo() {
    let key = "sk-unknown-abcdefghijklmnopqrstuvwxyz";
    let r = refused(&plugin(), &bearer(key));
    assert_eq!(r.code, "invalid_api_key");
    assert_eq!(r.kind, "invalid_request_error");
    assert!(
        r.message
            .starts_with("Incorrect API key provided: sk-u****wxyz."),
        "{}",
        r.message
    );
    assert!(!r.message.contains("unknown"));
}

#[test]
fn masking_shows_at_most_eight_characters_and_none_of_a_short_key() {
    assert_eq!(mask_key("sk-abcdefghijklmnopwxyz"), "sk-a****wxyz");
    assert_eq!(mask_key("short-key"), "****");
    assert_eq!(mask_key("fifteen-chars-x"), "****");
    let long = "x".repeat(10_000);
    assert_eq!(mask_key(&long).chars().filter(|c| *c != '*').count(), 8);
}

#[test]
fn a_disabled_key_is_refused_as_disabled() {
    let r = refused(&plugin(), &bearer("sk-off-key-00000000000000000000000"));
    assert_eq!(r.code, "invalid_api_key");
    assert!(r.message.contains("disabled"), "{}", r.message);
    assert!(!r.message.contains("sk-off-key-0000"));
}

#[test]
fn an_expired_key_is_refused_as_expired_and_a_future_expiry_is_fine() {
    let plugin = plugin();
    let r = refused(&plugin, &bearer("sk-old-key-0000000000000000000000"));
    assert_eq!(r.code, "invalid_api_key");
    assert!(r.message.contains("expired"), "{}", r.message);
    assert_eq!(
        accepted(&plugin, &bearer("sk-later-key-00000000000000000000")).id,
        "later"
    );
}

#[test]
fn no_credential_is_refused_when_required() {
    let r = refused(&plugin(), &headers(&[]));
    assert_eq!(r.code, "missing_api_key");
    assert!(r.message.starts_with("You didn't provide an API key"));
}

#[test]
fn no_credential_passes_when_not_required_but_a_wrong_one_does_not() {
    let plugin = build(&format!(
        "required: false\nkeys:\n  - id: alpha\n    secret: \"{ALPHA}\"\n"
    ));
    assert!(matches!(plugin.authenticate(&headers(&[])), Ok(None)));
    refused(&plugin, &bearer("sk-wrong-0000000000000000000000"));
    assert_eq!(accepted(&plugin, &bearer(ALPHA)).id, "alpha");
}

#[test]
fn malformed_authorization_headers_are_refused() {
    let plugin = plugin();
    let cases: &[&[u8]] = &[
        b"Bearer",
        b"Bearer ",
        b"Bearer    ",
        b"Basic dXNlcjpwYXNz",
        b"Token abc",
        b"Bearer two words",
        b"Bearer \xff\xfe-not-ascii",
        b"Bearer tab\there",
        b"",
    ];
    for value in cases {
        let r = refused(&plugin, &headers(&[("authorization", value)]));
        assert_eq!(r.code, "invalid_api_key", "{value:?}");
    }
    for name in ["api-key", "x-api-key"] {
        refused(&plugin, &headers(&[(name, b"")]));
        refused(&plugin, &headers(&[(name, b"\x80\x81")]));
        refused(&plugin, &headers(&[(name, b"two words")]));
    }
}

#[test]
fn oversized_keys_are_refused_without_panic() {
    let plugin = plugin();
    for len in [4 * 1024 + 1, 1024 * 1024] {
        let key = format!("sk-{}", "a".repeat(len));
        let r = refused(&plugin, &bearer(&key));
        assert_eq!(r.code, "invalid_api_key");
        assert!(r.message.len() < 200);
        refused(&plugin, &headers(&[("x-api-key", key.as_bytes())]));
    }
}

#[test]
fn debug_output_never_shows_a_secret() {
    let config = common::config(&format!("keys:\n  - id: alpha\n    secret: \"{ALPHA}\"\n"));
    let text = format!("{config:?}");
    assert!(!text.contains(ALPHA), "{text}");
    assert!(text.contains("*****"));
}

fn request<'a>(h: &'a tollgate_plugin::HeaderMap, model: &'a str) -> Request<'a> {
    Request {
        headers: h,
        model,
        stream: false,
        max_tokens: None,
        prompt_tokens: 10,
        request_id: "req-1",
    }
}

#[tokio::test]
async fn admit_lets_allowed_models_through_and_refuses_others_with_403() {
    let plugin = plugin();
    let h = bearer(ALPHA);
    let principal = plugin.identify(&h).await.unwrap().unwrap();
    for model in ["gpt-4o", "gpt-4o-mini", "llama-3.1-8b"] {
        assert!(plugin.admit(&request(&h, model), &principal).await.is_ok());
    }
    let r = plugin
        .admit(&request(&h, "llama-3.1-70b"), &principal)
        .await
        .unwrap_err();
    assert_eq!(r.status, 403);
    assert_eq!(r.kind, "invalid_request_error");
    assert_eq!(r.code, "model_not_allowed");
    assert_eq!(r.reason, "model_not_allowed");
    assert!(r.message.contains("llama-3.1-70b"));

    let beta = plugin.identify(&bearer(BETA)).await.unwrap().unwrap();
    assert!(plugin.admit(&request(&h, "o1"), &beta).await.is_ok());
}
