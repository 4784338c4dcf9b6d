//! The `auth:` section of the gateway's YAML file, exactly as operators write it.
//!
//! Nothing here checks more than types: [`crate::AuthPlugin::build`] turns the section
//! into the runtime plugin and reports every problem with its key path and line.

use std::fmt;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The `auth:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Gateway API keys.
    #[serde(default)]
    pub keys: Vec<Spanned<KeyConfig>>,
    /// JSON Web Tokens from a trusted issuer.
    pub jwt: Option<Spanned<JwtConfig>>,
    /// Refuse requests without a credential (401). Default: true.
    pub required: Option<bool>,
}

/// One gateway API key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Unique; what logs, limits and budgets name the key by.
    pub id: Spanned<String>,
    /// The key itself (`${ENV}` expanded by the engine before the plugin is built).
    pub secret: Option<Spanned<Secret>>,
    /// The SHA-256 of the key, in hex, so that the file never holds the key.
    pub sha256: Option<Spanned<String>>,
    pub team: Option<String>,
    pub tier: Option<String>,
    /// Allowed public model names as globs; absent: all models.
    pub models: Option<Spanned<Vec<String>>>,
    /// RFC 3339 timestamp after which the key is refused.
    pub expires: Option<Spanned<String>>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// JWT verification settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The algorithms a token may be signed with; any other is refused.
    pub algorithms: Spanned<Vec<JwtAlgorithm>>,
    /// The HMAC secret for HS256 (`${ENV}` expanded by the engine).
    pub hs256_secret: Option<Spanned<Secret>>,
    /// A PEM public key (RSA for RS256, EC P-256 for ES256).
    pub public_key_file: Option<Spanned<String>>,
    /// A JWKS JSON file; a token's `kid` selects the key.
    pub jwks_file: Option<Spanned<String>>,
    /// Required `iss`, when given.
    pub issuer: Option<String>,
    /// Accepted `aud` values (one is enough), when given; the claim is then required.
    pub audience: Option<Audience>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway: u64,
    #[serde(default)]
    pub claims: ClaimNames,
}

fn default_leeway() -> u64 {
    30
}

/// The algorithms Tollgate verifies. `none` and everything else are not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

impl JwtAlgorithm {
    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `audience: api` or `audience: [api, web]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub(crate) fn values(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(a) => a.clone(),
        }
    }
}

/// Which claims fill which fields of the principal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimNames {
    #[serde(default = "default_subject_claim")]
    pub subject: String,
    pub team: Option<String>,
    pub tier: Option<String>,
    /// A claim holding model globs: a list, or one space-separated string.
    pub models: Option<String>,
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            subject: default_subject_claim(),
            team: None,
            tier: None,
            models: None,
        }
    }
}

pub use tollgate_plugin::Secret;

impl AuthConfig {
    /// Rewrites every secret in the section (`keys[*].secret`, `jwt.hs256_secret`) through
    /// `expand`, which gets the raw value with its location and key path (e.g.
    /// `auth.keys[0].secret`) and returns the final value, or `None` to leave it as it is
    /// (the engine has recorded why). This is how the engine applies `${ENV}` expansion.
    pub fn expand_secrets(
        &mut self,
        mut expand: impl FnMut(&Spanned<String>, &str) -> Option<String>,
    ) {
        let mut apply = |s: &mut Spanned<Secret>, path: String| {
            let raw = Spanned::new(s.value.expose().to_owned(), s.referenced, s.defined);
            if let Some(v) = expand(&raw, &path) {
                s.value = Secret::new(v);
            }
        };
        for (i, k) in self.keys.iter_mut().enumerate() {
            if let Some(s) = k.value.secret.as_mut() {
                apply(s, format!("auth.keys[{i}].secret"));
            }
        }
        if let Some(jwt) = self.jwt.as_mut()
            && let Some(s) = jwt.value.hs256_secret.as_mut()
        {
            apply(s, "auth.jwt.hs256_secret".to_owned());
        }
    }
}
