//! JWTs with real keys: HS256, RS256 and ES256 accepted and mapped; every kind of bad
//! token refused with 401 `invalid_token`.

mod common;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{accepted, bearer, build_in, p256_pair, refused, rsa_pair};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use openssl::pkey::PKey;
use serde_json::{Value, json};
use tollgate_auth::AuthPlugin;
use tollgate_plugin::PrincipalKind;

const HS_SECRET: &str = "hs256-test-secret-0123456789abcdefghijkl";

struct Setup {
    _dir: tempfile::TempDir,
    plugin: AuthPlugin,
    rsa_private: Vec<u8>,
    rsa_public: Vec<u8>,
    ec_private: Vec<u8>,
}

/// A plugin trusting HS256, an RSA key (from a PEM file) and an EC key (from a JWKS
/// file, kid `ec-1`), with issuer, audience and claim mapping set.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = rsa_pair();
    let (ec_private, ec_public) = p256_pair();
    std::fs::write(dir.path().join("rsa.pem"), &rsa_public).unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        jwks_for_ec(&ec_public, "ec-1"),
    )
    .unwrap();
    let plugin = build_in(
        &format!(
            r#"
jwt:
  algorithms: [HS256, RS256, ES256]
  hs256_secret: "{HS_SECRET}"
  public_key_file: rsa.pem
  jwks_file: jwks.json
  issuer: https://idp.example
  audience: [tollgate, other]
  claims:
    team: org
    tier: plan
    models: allowed_models
"#
        ),
        dir.path(),
    )
    .unwrap_or_else(|p| panic!("{p:?}"));
    Setup {
        _dir: dir,
        plugin,
        rsa_private,
        rsa_public,
        ec_private,
    }
}

fn jwks_for_ec(public_pem: &[u8], kid: &str) -> String {
    let pkey = PKey::public_key_from_pem(public_pem).unwrap();
    let ec = pkey.ec_key().unwrap();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    let mut x = openssl::bn::BigNum::new().unwrap();
    let mut y = openssl::bn::BigNum::new().unwrap();
    ec.public_key()
        .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
        .unwrap();
    let b64 = |n: &openssl::bn::BigNum| URL_SAFE_NO_PAD.encode(n.to_vec_padded(32).unwrap());
    json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                     "x": b64(&x), "y": b64(&y)}]})
    .to_string()
}

fn claims() -> Value {
    let now = get_current_timestamp();
    json!({
        "sub": "user-42",
        "iss": "https://idp.example",
        "aud": "tollgate",
        "exp": now + 600,
        "iat": now,
        "org": "research",
        "plan": "gold",
        "allowed_models": "gpt-4o* llama-*",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

fn rs256(s: &Setup, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&s.rsa_private).unwrap(),
    )
    .unwrap()
}

fn es256(s: &Setup, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(&s.ec_private).unwrap(),
    )
    .unwrap()
}

fn refused_token(plugin: &AuthPlugin, token: &str, reason: &str) {
    let r = refused(plugin, &bearer(token));
    assert_eq!(r.code, "invalid_token", "{r:?}");
    assert!(
        r.message.contains(reason),
        "{} (wanted {reason})",
        r.message
    );
    assert!(!r.message.contains(token), "the token is echoed");
}

#[test]
fn valid_hs256_rs256_and_es256_tokens_map_their_claims() {
    let s = setup();
    for token in [
        hs256(&claims()),
        rs256(&s, &claims()),
        es256(&s, Some("ec-1"), &claims()),
        es256(&s, None, &claims()),
    ] {
        let p = accepted(&s.plugin, &bearer(&token));
        assert_eq!(p.kind, PrincipalKind::Jwt);
        assert_eq!(p.id, "user-42");
        assert_eq!(p.team.as_deref(), Some("research"));
        assert_eq!(p.tier.as_deref(), Some("gold"));
        assert!(p.models.allows("gpt-4o-mini"));
        assert!(p.models.allows("llama-3.1-8b"));
        assert!(!p.models.allows("o1"));
    }
}

#[test]
fn the_models_claim_may_be_a_list_and_may_be_absent() {
    let s = setup();
    let list = with(claims(), "allowed_models", json!(["o1", "gpt-4o"]));
    let p = accepted(&s.plugin, &bearer(&hs256(&list)));
    assert!(p.models.allows("o1") && !p.models.allows("gpt-4o-mini"));

    let mut none = claims();
    none.as_object_mut().unwrap().remove("allowed_models");
    assert!(
        accepted(&s.plugin, &bearer(&hs256(&none)))
            .models
            .allows("any")
    );

    refused_token(
        &s.plugin,
        &hs256(&with(claims(), "allowed_models", json!([]))),
        "allowed_models",
    );
    refused_token(
        &s.plugin,
        &hs256(&with(claims(), "allowed_models", json!(7))),
        "allowed_models",
    );
    refused_token(
        &s.plugin,
        &hs256(&with(claims(), "org", json!({"x": 1}))),
        "org",
    );
}

#[test]
fn a_token_works_from_the_api_key_headers_too() {
    let s = setup();
    let token = hs256(&claims());
    let h = common::headers(&[("x-api-key", token.as_bytes())]);
    assert_eq!(accepted(&s.plugin, &h).id, "user-42");
}

#[test]
fn time_claims_are_enforced() {
    let s = setup();
    let now = get_current_timestamp();
    refused_token(
        &s.plugin,
        &hs256(&with(claims(), "exp", json!(now - 120))),
        "expired",
    );
    refused_token(
        &s.plugin,
        &rs256(&s, &with(claims(), "nbf", json!(now + 600))),
        "not yet valid",
    );
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    refused_token(&s.plugin, &hs256(&no_exp), "exp");
    // Within the leeway (30 s) both are fine.
    let skewed = with(with(claims(), "exp", json!(now - 5)), "nbf", json!(now + 5));
    accepted(&s.plugin, &bearer(&hs256(&skewed)));
}

#[test]
fn audience_and_issuer_are_enforced() {
    let s = setup();
    refused_token(
        &s.plugin,
        &hs256(&with(claims(), "aud", json!("someone-else"))),
        "wrong audience",
    );
    accepted(
        &s.plugin,
        &bearer(&hs256(&with(claims(), "aud", json!(["x", "other"])))),
    );
    let mut no_aud = claims();
    no_aud.as_object_mut().unwrap().remove("aud");
    refused_token(&s.plugin, &hs256(&no_aud), "aud");
    refused_token(
        &s.plugin,
        &es256(
            &s,
            Some("ec-1"),
            &with(claims(), "iss", json!("https://evil.example")),
        ),
        "wrong issuer",
    );
    refused_token(&s.plugin, &hs256(&with(claims(), "sub", json!(""))), "sub");
}

#[test]
fn wrong_signatures_are_refused() {
    let s = setup();
    let wrong_secret = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"another-secret-0123456789abcdefghijkl"),
    )
    .unwrap();
    refused_token(&s.plugin, &wrong_secret, "bad signature");

    let (other_private, _) = rsa_pair();
    let other = encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(&other_private).unwrap(),
    )
    .unwrap();
    refused_token(&s.plugin, &other, "bad signature");

    // A valid token whose claims were swapped afterwards.
    let good = hs256(&claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("admin")).to_string());
    parts[1] = &forged;
    refused_token(&s.plugin, &parts.join("."), "bad signature");

    // An unknown kid has no key.
    refused_token(&s.plugin, &es256(&s, Some("ec-2"), &claims()), "no key");
}

#[test]
fn alg_none_is_refused() {
    let s = setup();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims().to_string());
    refused_token(
        &s.plugin,
        &format!("{header}.{body}."),
        "unsupported algorithm",
    );
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#);
    refused_token(
        &s.plugin,
        &format!("{header}.{body}.c2ln"),
        "unsupported algorithm",
    );
}

#[test]
fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm confusion: the attacker knows the public key and uses its
    // PEM bytes as the HMAC secret.
    let s = setup();
    let forged = |public: &[u8]| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(public),
        )
        .unwrap()
    };
    // Here HS256 is allowed (with its own secret): the signature does not verify.
    refused_token(&s.plugin, &forged(&s.rsa_public), "bad signature");

    // Here only RS256 is allowed: HS256 is refused outright.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rsa.pem"), &s.rsa_public).unwrap();
    let rs_only = build_in(
        "jwt:\n  algorithms: [RS256]\n  public_key_file: rsa.pem\n",
        dir.path(),
    )
    .unwrap();
    accepted(&rs_only, &bearer(&rs256(&s, &claims())));
    refused_token(&rs_only, &forged(&s.rsa_public), "unsupported algorithm");
    // And ES256 is not on its list either.
    refused_token(
        &rs_only,
        &es256(&s, None, &claims()),
        "unsupported algorithm",
    );
}

#[test]
fn garbage_and_huge_tokens_are_refused_without_panic() {
    let s = setup();
    let body = URL_SAFE_NO_PAD.encode(claims().to_string());
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    for token in [
        "a.b.c".to_owned(),
        "eyJ.eyJ.eyJ".to_owned(),
        format!("{header}.@@@.sig"),
        format!("{header}.{body}.!!"),
        format!("{header}.bm90IGpzb24.c2ln"),
        format!("{}.{body}.c2ln", URL_SAFE_NO_PAD.encode("[1,2,3]")),
        format!("{}.{body}.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":7}"#)),
    ] {
        let r = refused(&s.plugin, &bearer(&token));
        assert!(
            r.code == "invalid_token" || r.code == "invalid_api_key",
            "{r:?}"
        );
    }
    let huge =
        URL_SAFE_NO_PAD.encode(with(claims(), "pad", json!("x".repeat(1024 * 1024))).to_string());
    refused_token(&s.plugin, &format!("{header}.{huge}.c2ln"), "too long");
    refused_token(
        &s.plugin,
        &hs256(&with(claims(), "pad", json!("x".repeat(20_000)))),
        "too long",
    );
}

#[test]
fn without_jwt_configured_a_token_is_looked_up_as_a_key() {
    let plugin = common::build("keys:\n  - id: a\n    secret: sk-aaaaaaaaaaaaaaaaaaaaaaaa\n");
    let r = refused(&plugin, &bearer(&hs256(&claims())));
    assert_eq!(r.code, "invalid_api_key");
}

#[test]
fn keys_and_jwt_work_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = build_in(
        &format!(
            "keys:\n  - id: a\n    secret: sk-aaaaaaaaaaaaaaaaaaaaaaaa\njwt:\n  algorithms: [HS256]\n  hs256_secret: \"{HS_SECRET}\"\n"
        ),
        Path::new(dir.path()),
    )
    .unwrap();
    assert_eq!(
        accepted(&plugin, &bearer("sk-aaaaaaaaaaaaaaaaaaaaaaaa")).id,
        "a"
    );
    // No issuer or audience configured: a token with an `aud` is still accepted.
    assert_eq!(accepted(&plugin, &bearer(&hs256(&claims()))).id, "user-42");
}
