//! Authentication: who is calling, from a gateway API key or a JWT, and which models that
//! caller may use.
//!
//! - **identify** reads the credential from `Authorization: Bearer <token>`, else
//!   `api-key`, else `x-api-key`. A token shaped like a JWT goes to JWT verification when
//!   `jwt:` is configured; anything else is looked up as an API key.
//! - **admit** refuses (403) a model outside the principal's `models` globs.
//!
//! Build the plugin with [`AuthPlugin::build`] from the `auth:` section ([`AuthConfig`]);
//! it reports every problem in the section at once, as [`ConfigProblem`]s.
//!
//! Secrets never leave this crate: keys are kept as SHA-256 digests, logs name the key's
//! id, and error messages show at most 8 characters of a presented key.

mod config;
mod jwt;
mod keys;
mod problem;
mod runtime;

use std::path::Path;

use async_trait::async_trait;
use tollgate_plugin::{Admission, HeaderMap, Plugin, Principal, Rejection, Request};

pub use config::{Audience, AuthConfig, ClaimNames, JwtAlgorithm, JwtConfig, KeyConfig, Secret};
pub use jwt::MAX_TOKEN_BYTES;
pub use problem::ConfigProblem;
pub use runtime::{RuntimeKey, RuntimeKeys};

use jwt::JwtVerifier;
use keys::{KeyLookup, KeyTable};
use problem::Problems;

/// Longer API keys are refused without being hashed.
pub const MAX_KEY_BYTES: usize = 4 * 1024;

/// The authentication plugin, built from an [`AuthConfig`].
pub struct AuthPlugin {
    keys: KeyTable,
    /// Keys managed at run time, and ids switched off (see [`RuntimeKeys`]).
    runtime: std::sync::OnceLock<std::sync::Arc<RuntimeKeys>>,
    jwt: Option<JwtVerifier>,
    required: bool,
}

// === impl AuthPlugin ===

impl AuthPlugin {
    /// Builds the plugin, or returns every problem in the section. Files named in the
    /// section (`public_key_file`, `jwks_file`) are read as written, else relative to
    /// `base_dir` (the config file's folder). Secrets must already be expanded (see
    /// [`AuthConfig::expand_secrets`]).
    pub fn build(config: &AuthConfig, base_dir: &Path) -> Result<AuthPlugin, Vec<ConfigProblem>> {
        let mut p = Problems {
            base_dir,
            list: Vec::new(),
        };
        let keys = KeyTable::build(&config.keys, &mut p);
        let jwt = config
            .jwt
            .as_ref()
            .map(|j| JwtVerifier::build(&j.value, &mut p));
        if config.keys.is_empty() && config.jwt.is_none() {
            p.at(
                serde_saphyr::Location::UNKNOWN,
                "auth",
                "configures neither `keys` nor `jwt`: no caller could ever authenticate",
            );
        }
        if !p.list.is_empty() {
            p.list
                .sort_by_key(|e| if e.line == 0 { u64::MAX } else { e.line });
            return Err(p.list);
        }
        Ok(AuthPlugin {
            keys,
            runtime: std::sync::OnceLock::new(),
            jwt,
            required: config.required.unwrap_or(true),
        })
    }

    /// Every problem in the section (empty: it builds).
    pub fn validate(config: &AuthConfig, base_dir: &Path) -> Vec<ConfigProblem> {
        Self::build(config, base_dir).err().unwrap_or_default()
    }

    /// Who presents these headers: `Ok(None)` when there is no credential and none is
    /// required (the engine then goes on as anonymous).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, Rejection> {
        let credential = match credential(headers) {
            Ok(Some(c)) => c,
            Ok(None) if self.required => return Err(missing_key()),
            Ok(None) => return Ok(None),
            Err(rejection) => return Err(rejection),
        };
        if let Some(jwt) = &self.jwt
            && looks_like_jwt(credential)
        {
            return match jwt.verify(credential) {
                Ok(principal) => Ok(Some(principal)),
                Err(e) => {
                    tracing::debug!(reason = %e.reason(), "JWT refused");
                    Err(invalid_token(&e.reason()))
                }
            };
        }
        self.api_key(credential).map(Some)
    }

    /// Takes keys managed at run time into account too (once; later calls are ignored).
    pub fn attach_runtime_keys(&self, runtime: std::sync::Arc<RuntimeKeys>) {
        let _ = self.runtime.set(runtime);
    }

    /// Whether `id` names a configured key.
    pub fn has_key_id(&self, id: &str) -> bool {
        self.keys.has_id(id)
    }

    /// The configured keys: who each one is, and whether the file enables it.
    pub fn configured_keys(&self) -> Vec<(Principal, bool)> {
        self.keys.principals()
    }

    fn api_key(&self, key: &str) -> Result<Principal, Rejection> {
        if key.len() > MAX_KEY_BYTES {
            return Err(unknown_key(key));
        }
        let runtime = self.runtime.get();
        let switched_off = |id: &str| runtime.is_some_and(|r| r.is_disabled(id));
        let lookup = if self.keys.is_empty() {
            KeyLookup::Unknown
        } else {
            self.keys.lookup(key.as_bytes())
        };
        match lookup {
            KeyLookup::Valid(entry) if switched_off(&entry.principal.id) => {
                tracing::debug!(key = %entry.principal.id, "Disabled API key refused");
                Err(disabled_key(key))
            }
            KeyLookup::Valid(entry) => Ok(entry.principal.clone()),
            KeyLookup::Disabled(entry) => {
                tracing::debug!(key = %entry.principal.id, "Disabled API key refused");
                Err(disabled_key(key))
            }
            KeyLookup::Expired(entry) => {
                tracing::debug!(key = %entry.principal.id, "Expired API key refused");
                Err(auth_rejection(
                    "invalid_api_key",
                    format!("The API key provided ({}) has expired.", mask_key(key)),
                ))
            }
            KeyLookup::Unknown => match runtime.and_then(|r| r.lookup(key.as_bytes())) {
                None => Err(unknown_key(key)),
                Some(entry) if !entry.enabled || switched_off(&entry.principal.id) => {
                    tracing::debug!(key = %entry.principal.id, "Disabled API key refused");
                    Err(disabled_key(key))
                }
                Some(entry) if entry.expires_at.is_some_and(|at| keys::now_unix() >= at) => {
                    tracing::debug!(key = %entry.principal.id, "Expired API key refused");
                    Err(auth_rejection(
                        "invalid_api_key",
                        format!("The API key provided ({}) has expired.", mask_key(key)),
                    ))
                }
                Some(entry) => Ok(entry.principal.clone()),
            },
        }
    }
}

#[async_trait]
impl Plugin for AuthPlugin {
    fn name(&self) -> &'static str {
        "auth"
    }

    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Principal>, Rejection> {
        self.authenticate(headers)
    }

    async fn admit(
        &self,
        request: &Request<'_>,
        principal: &Principal,
    ) -> Result<Admission, Rejection> {
        if principal.models.allows(request.model) {
            return Ok(Admission::default());
        }
        tracing::debug!(principal = %principal.id, model = %request.model, "Model not allowed");
        Err(Rejection {
            status: 403,
            kind: "invalid_request_error",
            code: "model_not_allowed",
            message: format!(
                "The model `{}` is not allowed for this API key.",
                request.model
            ),
            headers: Vec::new(),
            reason: "model_not_allowed",
        })
    }
}

fn disabled_key(key: &str) -> Rejection {
    auth_rejection(
        "invalid_api_key",
        format!("The API key provided ({}) is disabled.", mask_key(key)),
    )
}

// === credentials ===

/// The presented credential: `Ok(None)` when there is none at all.
fn credential(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let malformed = || {
            auth_rejection(
                "invalid_api_key",
                "The Authorization header must be `Bearer <API key>`.".to_owned(),
            )
        };
        let text = value.to_str().map_err(|_| malformed())?;
        let (scheme, token) = text.trim().split_once(' ').ok_or_else(malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(malformed());
        }
        return Ok(Some(token));
    }
    for name in ["api-key", "x-api-key"] {
        if let Some(value) = headers.get(name) {
            let token = value.to_str().map(str::trim).map_err(|_| {
                auth_rejection(
                    "invalid_api_key",
                    format!("The `{name}` header holds characters an API key cannot have."),
                )
            })?;
            if token.is_empty() || token.contains(' ') {
                return Err(auth_rejection(
                    "invalid_api_key",
                    format!("The `{name}` header is empty or malformed."),
                ));
            }
            return Ok(Some(token));
        }
    }
    Ok(None)
}

/// Three base64url segments separated by dots (the signature may be empty, as with
/// `alg: none`, so that such a token is refused as a token rather than as a key).
fn looks_like_jwt(s: &str) -> bool {
    let b64url = |seg: &str| {
        seg.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = s.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(sig), None) => {
            !h.is_empty() && !c.is_empty() && b64url(h) && b64url(c) && b64url(sig)
        }
        _ => false,
    }
}

/// At most 4 + 4 characters of a key, and none of a short one.
pub fn mask_key(key: &str) -> String {
    const SHOWN: usize = 4;
    // Show anything only when the hidden part is larger than what is shown.
    if key.len() < 4 * SHOWN || !key.is_ascii() {
        return "****".to_owned();
    }
    format!("{}****{}", &key[..SHOWN], &key[key.len() - SHOWN..])
}

// === rejections ===

fn auth_rejection(code: &'static str, message: String) -> Rejection {
    Rejection {
        status: 401,
        kind: "invalid_request_error",
        code,
        message,
        headers: Vec::new(),
        reason: "auth",
    }
}

fn missing_key() -> Rejection {
    auth_rejection(
        "missing_api_key",
        "You didn't provide an API key. You need to provide your API key in an \
         Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), \
         or as the `api-key` or `x-api-key` header."
            .to_owned(),
    )
}

fn unknown_key(key: &str) -> Rejection {
    auth_rejection(
        "invalid_api_key",
        format!(
            "Incorrect API key provided: {}. You can get an API key from the operator of \
             this gateway.",
            mask_key(key)
        ),
    )
}

fn invalid_token(reason: &str) -> Rejection {
    auth_rejection("invalid_token", format!("Invalid token: {reason}."))
}
