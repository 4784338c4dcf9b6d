//! The API-key / JWT path of the auth plugin, on arbitrary credential headers.
//!
//! The plugin is configured as the engine builds it (from YAML) with one valid API key, a
//! disabled one, an expired one and an HS256 JWT issuer. Whatever is presented: never a
//! panic, never anonymous (a credential is required), and never accepted unless it is the
//! valid key or a JWT signed with the configured secret whose claims pass (alg HS256, not
//! expired, the issuer and audience configured, a subject). Tokens are either raw bytes or
//! built by the harness from fuzzed header and claims JSON, signed with the right secret,
//! a wrong one or fuzzed bytes, so the claim checks behind a good signature are reached.

use std::path::Path;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

const KEY: &str = "sk-fuzz-aaaaaaaaaaaaaaaa";
const SECRET: &str = "a-fuzz-hmac-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "tollgate";
const LEEWAY: u64 = 30;

const CONFIG: &str = "\
listeners:
  - address: 127.0.0.1:8080
models:
  gpt-4o:
    targets:
      - pool: p
pools:
  p:
    provider: mock
auth:
  keys:
    - {id: a, secret: sk-fuzz-aaaaaaaaaaaaaaaa, team: t, models: ['gpt-*']}
    - {id: off, secret: sk-fuzz-disabled-bbbbbbbb, enabled: false}
    - {id: old, secret: sk-fuzz-expired-cccccccc, expires: '2001-01-01T00:00:00Z'}
  jwt:
    algorithms: [HS256]
    hs256_secret: 'a-fuzz-hmac-secret-of-at-least-32-bytes'
    issuer: https://issuer.example
    audience: [tollgate, other]
    leeway: 30
    claims: {team: team, tier: tier, models: models}
";

static AUTH: LazyLock<tollgate::config::Auth> = LazyLock::new(|| {
    match tollgate::config::parse(CONFIG, "fuzz.yaml", Path::new("."), &|_| None) {
        Ok(c) => match c.auth {
            Some(auth) => auth,
            None => panic!("the fuzz config has no auth section"),
        },
        Err(e) => panic!("the fuzz config does not load: {e}"),
    }
});

enum Signature<'a> {
    Right,
    Wrong,
    Raw(&'a [u8]),
}

/// The input, in a layout that seeds can be written by hand:
/// - byte 0, the headers: `b` `Authorization: Bearer`, `a` `api-key`, `x` `x-api-key`,
///   `s` `Authorization` with a scheme of the input's own (text up to the first newline),
///   `m` all three headers (any other byte: its value modulo 5);
/// - byte 1, the credential: `r` raw bytes (the rest), `j` a JWT built from the rest as
///   `<header JSON>\n<claims JSON>\n<signature>`, where the signature `!right` signs with
///   the configured secret, `!wrong` with another one, anything else is used as it is, and
///   `$NOW` in the claims is the current Unix time.
struct Input<'a> {
    header: u8,
    scheme: &'a [u8],
    credential: Credential<'a>,
}

enum Credential<'a> {
    Raw(&'a [u8]),
    Jwt {
        header: &'a [u8],
        claims: Vec<u8>,
        signature: Signature<'a>,
    },
}

fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&h, rest) = data.split_first()?;
    let (&c, rest) = rest.split_first()?;
    let header = match h {
        b'b' => 0,
        b'a' => 1,
        b'x' => 2,
        b's' => 3,
        b'm' => 4,
        other => other % 5,
    };
    let (scheme, rest) = if header == 3 {
        split_line(rest)
    } else {
        (&[][..], rest)
    };
    let credential = if c == b'r' || (c != b'j' && c % 2 == 0) {
        Credential::Raw(rest)
    } else {
        let (header, rest) = split_line(rest);
        let (claims, signature) = split_line(rest);
        let now = now().to_string();
        let claims = String::from_utf8_lossy(claims)
            .replace("$NOW", &now)
            .into_bytes();
        let signature = match signature {
            b"!right" => Signature::Right,
            b"!wrong" => Signature::Wrong,
            raw => Signature::Raw(raw),
        };
        Credential::Jwt {
            header,
            claims,
            signature,
        }
    };
    Some(Input {
        header,
        scheme,
        credential,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `header.claims.signature`, and whether it is signed with the configured secret.
fn jwt(header: &[u8], claims: &[u8], signature: &Signature<'_>) -> (String, bool) {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sign = |secret: &str| {
        jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap_or_default()
    };
    let right = sign(SECRET);
    let sig = match signature {
        Signature::Right => right.clone(),
        Signature::Wrong => sign("another-secret-of-at-least-32-bytes!!"),
        Signature::Raw(s) => String::from_utf8_lossy(s).into_owned(),
    };
    let signed = sig == right;
    (format!("{message}.{sig}"), signed)
}

/// Runs one input; panics when an invariant breaks.
pub fn check(data: &[u8]) {
    let Some(input) = decode(data) else { return };
    let auth = &AUTH.0;
    // The header value's token, and the token when the harness signed it with the secret.
    let (value, signed): (Vec<u8>, Option<String>) = match &input.credential {
        Credential::Raw(bytes) => (bytes.to_vec(), None),
        Credential::Jwt {
            header,
            claims,
            signature,
        } => {
            let (t, signed) = jwt(header, claims, signature);
            (t.clone().into_bytes(), signed.then_some(t))
        }
    };

    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, v: Vec<u8>| {
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    let bearer = |v: &[u8]| [b"Bearer ".as_slice(), v].concat();
    match input.header % 5 {
        0 => put("authorization", bearer(&value)),
        1 => put("api-key", value.clone()),
        2 => put("x-api-key", value.clone()),
        3 => put("authorization", [input.scheme, b" ", &value].concat()),
        _ => {
            put("authorization", bearer(&value));
            put("api-key", value.clone());
            put("x-api-key", value.clone());
        }
    }

    let result = auth.authenticate(&headers);
    if headers.is_empty() {
        assert!(result.is_err(), "no credential, yet not refused");
    }
    let principal = match result {
        Ok(Some(p)) => p,
        Ok(None) => panic!("anonymous, yet a credential is required"),
        Err(rejection) => {
            assert!(
                (400..500).contains(&rejection.status),
                "status {}",
                rejection.status
            );
            assert!(!rejection.message.contains(KEY) || value == KEY.as_bytes());
            return;
        }
    };

    // Accepted: the valid key, or a good JWT. What the plugin read: the first header
    // present, the token after the scheme for `Authorization`.
    let first = ["authorization", "api-key", "x-api-key"]
        .into_iter()
        .find_map(|name| headers.get(name).map(|v| (name, v)));
    let Some((name, raw)) = first else {
        panic!("accepted with no credential header")
    };
    let text = String::from_utf8_lossy(raw.as_bytes());
    let presented = if name == "authorization" {
        text.trim().split_once(' ').map_or("", |(_, t)| t.trim())
    } else {
        text.trim()
    };
    if presented == KEY {
        assert_eq!(principal.id, "a");
        return;
    }
    assert!(
        signed.as_deref() == Some(presented),
        "accepted without the key or the secret: {presented:?} -> {principal:?}"
    );
    let mut parts = presented.split('.');
    let (Some(h), Some(c)) = (parts.next(), parts.next()) else {
        panic!("accepted a token that is not a JWT")
    };
    let json_of = |part: &str| -> Value {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let (header, claims) = (json_of(h), json_of(c));
    assert_eq!(header["alg"], "HS256", "accepted alg {}", header["alg"]);
    let exp = claims["exp"].as_u64();
    assert!(
        exp.is_some_and(|e| e.saturating_add(LEEWAY + 5) >= now()),
        "expired or no exp: {claims}"
    );
    if let Some(nbf) = claims["nbf"].as_u64() {
        assert!(nbf <= now() + LEEWAY + 5, "not yet valid: {claims}");
    }
    let iss_ok = claims["iss"] == ISSUER
        || claims["iss"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == ISSUER));
    assert!(iss_ok, "accepted issuer {}", claims["iss"]);
    let aud_ok = |v: &Value| v == AUDIENCE || v == "other";
    let aud_ok = aud_ok(&claims["aud"])
        || claims["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(aud_ok));
    assert!(aud_ok, "accepted audience {}", claims["aud"]);
    assert_eq!(claims["sub"].as_str(), Some(principal.id.as_str()));
    assert!(!principal.id.is_empty());
}
