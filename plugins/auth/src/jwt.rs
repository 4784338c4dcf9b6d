//! JSON Web Tokens: keys from the config, verification, claims → principal.
//!
//! Every key is bound to one algorithm when the config is built, and a token is only
//! checked against keys bound to its header's `alg`, which must be one the operator
//! listed. So an HS256 token can never be checked with a public key used as an HMAC
//! secret (algorithm confusion), and `alg: none` is refused before any key is touched.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_plugin::{ModelFilter, Principal, PrincipalKind};

use crate::config::{ClaimNames, JwtAlgorithm, JwtConfig};
use crate::problem::Problems;

/// Longer tokens are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
const MIN_HS256_SECRET_BYTES: usize = 32;

struct VerifyKey {
    alg: JwtAlgorithm,
    kid: Option<String>,
    key: DecodingKey,
}

pub(crate) struct JwtVerifier {
    keys: Vec<VerifyKey>,
    /// One per configured algorithm, each allowing that algorithm only.
    validations: Vec<(JwtAlgorithm, Validation)>,
    claims: ClaimNames,
}

/// Why a token was refused; the text is safe to show the client (no token content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwtError {
    TooLong,
    Malformed,
    UnsupportedAlgorithm,
    NoKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    MissingClaim(String),
    BadClaim(String),
}

impl JwtError {
    pub fn reason(&self) -> String {
        match self {
            JwtError::TooLong => "token too long".to_owned(),
            JwtError::Malformed => "malformed token".to_owned(),
            JwtError::UnsupportedAlgorithm => "unsupported algorithm".to_owned(),
            JwtError::NoKey => "no key for this token".to_owned(),
            JwtError::BadSignature => "bad signature".to_owned(),
            JwtError::Expired => "token expired".to_owned(),
            JwtError::NotYetValid => "token not yet valid".to_owned(),
            JwtError::WrongAudience => "wrong audience".to_owned(),
            JwtError::WrongIssuer => "wrong issuer".to_owned(),
            JwtError::MissingClaim(c) => format!("missing claim `{c}`"),
            JwtError::BadClaim(c) => format!("invalid claim `{c}`"),
        }
    }
}

/// The part of the header read before verification, to pick the key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

impl JwtVerifier {
    pub fn build(c: &JwtConfig, p: &mut Problems<'_>) -> JwtVerifier {
        let algs = &c.algorithms.value;
        if algs.is_empty() {
            p.at(
                c.algorithms.referenced,
                "auth.jwt.algorithms",
                "lists no algorithm",
            );
        }
        let mut keys = Vec::new();

        if let Some(s) = &c.hs256_secret {
            let path = "auth.jwt.hs256_secret";
            if !algs.contains(&JwtAlgorithm::HS256) {
                p.at(s.referenced, path, "HS256 is not in auth.jwt.algorithms");
            } else if s.value.expose().len() < MIN_HS256_SECRET_BYTES {
                p.at(
                    s.referenced,
                    path,
                    format!("must be at least {MIN_HS256_SECRET_BYTES} bytes"),
                );
            } else {
                keys.push(VerifyKey {
                    alg: JwtAlgorithm::HS256,
                    kid: None,
                    key: DecodingKey::from_secret(s.value.expose().as_bytes()),
                });
            }
        }

        if let Some(f) = &c.public_key_file {
            let path = "auth.jwt.public_key_file";
            if let Some(pem) = p.read_file(f, path) {
                match pem_key(&pem) {
                    Err(message) => p.at(f.referenced, path, message),
                    Ok((alg, _)) if !algs.contains(&alg) => p.at(
                        f.referenced,
                        path,
                        format!("holds a key for {alg}, which is not in auth.jwt.algorithms"),
                    ),
                    Ok((alg, key)) => keys.push(VerifyKey {
                        alg,
                        kid: None,
                        key,
                    }),
                }
            }
        }

        if let Some(f) = &c.jwks_file {
            let path = "auth.jwt.jwks_file";
            if let Some(json) = p.read_file(f, path) {
                match jwks_keys(&json) {
                    Err(message) => p.at(f.referenced, path, message),
                    Ok(found) => keys.extend(found.into_iter().filter(|k| algs.contains(&k.alg))),
                }
            }
        }

        for alg in algs {
            if !keys.iter().any(|k| k.alg == *alg) {
                let source = match alg {
                    JwtAlgorithm::HS256 => "hs256_secret",
                    JwtAlgorithm::RS256 => "an RSA key in public_key_file or jwks_file",
                    JwtAlgorithm::ES256 => "an EC P-256 key in public_key_file or jwks_file",
                };
                p.at(
                    c.algorithms.referenced,
                    "auth.jwt.algorithms",
                    format!("{alg} has no key: give {source}"),
                );
            }
        }

        let audience = c.audience.as_ref().map(|a| a.values());
        if audience
            .as_ref()
            .is_some_and(|a| a.is_empty() || a.iter().any(String::is_empty))
        {
            p.at(
                c.algorithms.referenced,
                "auth.jwt.audience",
                "must name at least one audience, none empty",
            );
        }
        if c.issuer.as_ref().is_some_and(String::is_empty) {
            p.at(
                c.algorithms.referenced,
                "auth.jwt.issuer",
                "must not be empty",
            );
        }
        if c.claims.subject.is_empty() {
            p.at(
                c.algorithms.referenced,
                "auth.jwt.claims.subject",
                "must not be empty",
            );
        }

        let mut validations = Vec::new();
        for alg in algs {
            if validations.iter().any(|(a, _)| a == alg) {
                continue;
            }
            let mut v = Validation::new(alg.to_jsonwebtoken());
            v.leeway = c.leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &c.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &audience {
                Some(aud) => {
                    v.set_audience(aud);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            validations.push((*alg, v));
        }

        JwtVerifier {
            keys,
            validations,
            claims: c.claims.clone(),
        }
    }

    /// Verifies a token and maps its claims to a principal.
    pub fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        let header = raw_header(token).ok_or(JwtError::Malformed)?;
        let alg = match header.alg.as_str() {
            "HS256" => JwtAlgorithm::HS256,
            "RS256" => JwtAlgorithm::RS256,
            "ES256" => JwtAlgorithm::ES256,
            _ => return Err(JwtError::UnsupportedAlgorithm),
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(JwtError::UnsupportedAlgorithm);
        };
        let mut candidates = self.keys.iter().filter(|k| {
            k.alg == alg
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    _ => true,
                }
        });
        let mut tried = false;
        for k in &mut candidates {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(if tried {
            JwtError::BadSignature
        } else {
            JwtError::NoKey
        })
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, JwtError> {
        let names = &self.claims;
        let id = match claims.get(&names.subject) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(JwtError::BadClaim(names.subject.clone())),
            None => return Err(JwtError::MissingClaim(names.subject.clone())),
        };
        let text = |name: &Option<String>| -> Result<Option<String>, JwtError> {
            let Some(name) = name else { return Ok(None) };
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(JwtError::BadClaim(name.clone())),
            }
        };
        let team = text(&names.team)?;
        let tier = text(&names.tier)?;
        let models = match &names.models {
            None => ModelFilter::any(),
            Some(name) => model_claim(claims.get(name)).ok_or(JwtError::BadClaim(name.clone()))?,
        };
        Ok(Principal {
            kind: PrincipalKind::Jwt,
            id,
            team,
            tier,
            models,
        })
    }
}

/// A models claim: absent means all models; present, it must list at least one glob.
fn model_claim(v: Option<&Value>) -> Option<ModelFilter> {
    let patterns: Vec<&str> = match v {
        None | Some(Value::Null) => return Some(ModelFilter::any()),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    if patterns.is_empty() {
        return None;
    }
    ModelFilter::new(&patterns).ok()
}

fn raw_header(token: &str) -> Option<RawHeader> {
    let (header, _) = token.split_once('.')?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            JwtError::UnsupportedAlgorithm
        }
        // The names come from the library's fixed set (exp, nbf, iss, aud, sub).
        ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => JwtError::BadClaim(c.clone()),
        _ => JwtError::Malformed,
    }
}

/// A PEM public key and the one algorithm it serves.
fn pem_key(pem: &[u8]) -> Result<(JwtAlgorithm, DecodingKey), String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    if text.contains("PRIVATE KEY") {
        return Err("holds a private key; give the public key".to_owned());
    }
    let found = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (JwtAlgorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        (JwtAlgorithm::ES256, key)
    } else {
        return Err("not a PEM RSA or EC public key".to_owned());
    };
    usable(&found.1, found.0)?;
    Ok(found)
}

/// Checks the crypto backend accepts the key for the algorithm (e.g. an EC key on the
/// P-256 curve for ES256), so that a wrong key fails at load rather than on every token.
fn usable(key: &DecodingKey, alg: JwtAlgorithm) -> Result<(), String> {
    jsonwebtoken::crypto::verify("AA", b"probe", key, alg.to_jsonwebtoken())
        .map(|_| ())
        .map_err(|_| format!("not a usable {alg} key"))
}

/// The RSA and EC P-256 keys of a JWKS file, each bound to its algorithm.
fn jwks_keys(json: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS file: {e}"))?;
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => JwtAlgorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                JwtAlgorithm::ES256
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "keys[{i}] is a symmetric key; give HMAC secrets as hs256_secret"
                ));
            }
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
        usable(&key, alg).map_err(|e| format!("keys[{i}]: {e}"))?;
        out.push(VerifyKey {
            alg,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    Ok(out)
}
