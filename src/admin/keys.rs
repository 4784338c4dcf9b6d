//! `/admin/keys`: gateway keys at run time (see [`crate::key_admin`]).
//!
//! - `GET /admin/keys`: every key (configured and runtime) with its limits' usage now;
//! - `POST /admin/keys` `{id, team?, tier?, models?, expires?, limits?}`: a new key; the
//!   answer holds its secret, shown this once;
//! - `PATCH /admin/keys/{id}` `{enabled?, limits?}` (runtime keys also `team`, `tier`,
//!   `models`, `expires`): switch a key off or on, change its limits or budget;
//! - `POST /admin/keys/{id}/rotate`: a new secret for a runtime key (the old one stops
//!   working at once);
//! - `DELETE /admin/keys/{id}`: removes a runtime key, or a configured key's overrides.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Reply, error};
use crate::key_admin::{KeyError, KeyRecord, KeyRegistry, new_secret, sha256_hex};
use crate::state::State;

/// What `POST /admin/keys` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    id: String,
    team: Option<String>,
    tier: Option<String>,
    models: Option<Vec<String>>,
    expires: Option<String>,
    limits: Option<Value>,
}

/// What `PATCH /admin/keys/{id}` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyChange {
    enabled: Option<bool>,
    /// `null` removes the runtime limits.
    #[serde(default, deserialize_with = "present")]
    limits: Option<Option<Value>>,
    team: Option<String>,
    tier: Option<String>,
    models: Option<Vec<String>>,
    expires: Option<String>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Answers a request under `/admin/keys`; `rest` is the path after it.
pub async fn handle(
    registry: &KeyRegistry,
    state: &State,
    method: &Method,
    rest: &str,
    body: &[u8],
) -> Reply {
    let Some(auth) = state.config.auth.as_ref().map(|a| a.0.clone()) else {
        return error(
            StatusCode::CONFLICT,
            "auth_off",
            "Authentication is off (no `auth` section): there are no keys to manage.",
        );
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result = match (method, segments.as_slice()) {
        (&Method::GET, []) => return list(registry, state, &auth).await,
        (&Method::POST, []) => create(registry, &auth, body).await,
        (&Method::PATCH, [id]) => update(registry, &auth, id, body).await,
        (&Method::POST, [id, "rotate"]) if auth.has_key_id(id) => Err(KeyError::Conflict(format!(
            "`{id}` is a key of the config file: rotate it there"
        ))),
        (&Method::POST, [id, "rotate"]) => rotate(registry, id).await,
        (&Method::DELETE, [id]) => remove(registry, id).await,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_url",
                &format!("Unknown admin URL: {method} /admin/keys{rest}."),
            );
        }
    };
    match result {
        Ok((status, value)) => super::json_response(status, &value),
        Err(KeyError::Invalid(m)) => error(StatusCode::BAD_REQUEST, "invalid_request", &m),
        Err(KeyError::NotFound(m)) => error(StatusCode::NOT_FOUND, "key_not_found", &m),
        Err(KeyError::Conflict(m)) => error(StatusCode::CONFLICT, "conflict", &m),
        Err(KeyError::Unavailable(m)) => {
            tracing::warn!(error = %m, "Admin API: a key change could not be persisted");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_unavailable",
                "The change could not be persisted; nothing changed.",
            )
        }
    }
}

type Answer = Result<(StatusCode, Value), KeyError>;

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, KeyError> {
    serde_json::from_slice(body).map_err(|e| KeyError::Invalid(format!("body: {e}")))
}

async fn list(registry: &KeyRegistry, state: &State, auth: &tollgate_auth::AuthPlugin) -> Reply {
    let records = registry.records().await;
    let mut keys: Vec<(tollgate_plugin::Principal, bool, &'static str)> = auth
        .configured_keys()
        .into_iter()
        .map(|(p, enabled)| {
            let enabled = enabled && records.get(&p.id).is_none_or(|r| r.enabled);
            (p, enabled, "config")
        })
        .collect();
    for (id, r) in &records {
        if r.sha256.is_some() {
            let principal = tollgate_plugin::Principal {
                kind: tollgate_plugin::PrincipalKind::ApiKey,
                id: id.clone(),
                team: r.team.clone(),
                tier: r.tier.clone(),
                ..tollgate_plugin::Principal::anonymous()
            };
            keys.push((principal, r.enabled, "runtime"));
        }
    }
    let mut data = Vec::with_capacity(keys.len());
    for (p, enabled, source) in keys {
        let record = records.get(&p.id);
        let usage = match &state.limits {
            Some(limits) => match limits.usage(&p).await {
                Ok(lines) => lines
                    .iter()
                    .map(|l| {
                        json!({
                            "scope": l.scope,
                            "metric": l.metric,
                            "window": l.window,
                            "used": l.used,
                            "limit": l.limit,
                            "remaining": l.limit.saturating_sub(l.used),
                        })
                    })
                    .collect(),
                Err(e) => vec![json!({"error": e.to_string()})],
            },
            None => Vec::new(),
        };
        data.push(json!({
            "id": p.id,
            "source": source,
            "team": p.team,
            "tier": p.tier,
            "enabled": enabled,
            "models": record.and_then(|r| r.models.clone()),
            "expires": record.and_then(|r| r.expires.clone()),
            "runtime_limits": record.and_then(|r| r.limits.clone()),
            "usage": usage,
        }));
    }
    super::json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn create(registry: &KeyRegistry, auth: &tollgate_auth::AuthPlugin, body: &[u8]) -> Answer {
    let new: NewKey = parse(body)?;
    let id = new.id.trim().to_owned();
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(KeyError::Invalid(
            "id: 1 to 128 characters, no control characters".into(),
        ));
    }
    if auth.has_key_id(&id) {
        return Err(KeyError::Conflict(format!(
            "`{id}` is a key of the config file"
        )));
    }
    let secret = new_secret();
    let record = KeyRecord {
        sha256: Some(sha256_hex(&secret)),
        team: new.team,
        tier: new.tier,
        models: new.models,
        expires: new.expires,
        enabled: true,
        limits: new.limits,
    };
    registry
        .change(|m| {
            if m.get(&id).is_some_and(|r| r.sha256.is_some()) {
                return Err(KeyError::Conflict(format!("a key `{id}` exists")));
            }
            m.insert(id.clone(), record);
            Ok(())
        })
        .await?;
    tracing::info!(key = %id, "Admin API: key created");
    Ok((
        StatusCode::CREATED,
        json!({"id": id, "secret": secret, "enabled": true}),
    ))
}

async fn update(
    registry: &KeyRegistry,
    auth: &tollgate_auth::AuthPlugin,
    id: &str,
    body: &[u8],
) -> Answer {
    let change: KeyChange = parse(body)?;
    let configured = auth.has_key_id(id);
    let record = registry
        .change(|m| {
            if !configured && m.get(id).is_none_or(|r| r.sha256.is_none()) {
                return Err(KeyError::NotFound(format!("no key `{id}`")));
            }
            let r = m.entry(id.to_owned()).or_default();
            if configured
                && (change.team.is_some()
                    || change.tier.is_some()
                    || change.models.is_some()
                    || change.expires.is_some())
            {
                return Err(KeyError::Invalid(format!(
                    "`{id}` is a key of the config file: only `enabled` and `limits` change at run time"
                )));
            }
            if let Some(v) = change.enabled {
                r.enabled = v;
            }
            if let Some(v) = change.limits {
                r.limits = v;
            }
            if change.team.is_some() {
                r.team = change.team;
            }
            if change.tier.is_some() {
                r.tier = change.tier;
            }
            if change.models.is_some() {
                r.models = change.models;
            }
            if change.expires.is_some() {
                r.expires = change.expires;
            }
            let record = r.clone();
            // An override that changes nothing is not kept.
            if configured && record == KeyRecord::default() {
                m.remove(id);
            }
            Ok(record)
        })
        .await?;
    tracing::info!(key = %id, enabled = record.enabled, "Admin API: key changed");
    Ok((StatusCode::OK, view(id, &record)))
}

async fn rotate(registry: &KeyRegistry, id: &str) -> Answer {
    let secret = new_secret();
    let digest = sha256_hex(&secret);
    registry
        .change(|m| match m.get_mut(id) {
            Some(r) if r.sha256.is_some() => {
                r.sha256 = Some(digest);
                Ok(())
            }
            Some(_) => Err(KeyError::Conflict(format!(
                "`{id}` is a key of the config file: rotate it there"
            ))),
            None => Err(KeyError::NotFound(format!("no runtime key `{id}`"))),
        })
        .await?;
    tracing::info!(key = %id, "Admin API: key rotated");
    Ok((StatusCode::OK, json!({"id": id, "secret": secret})))
}

async fn remove(registry: &KeyRegistry, id: &str) -> Answer {
    registry
        .change(|m| {
            m.remove(id)
                .map(drop)
                .ok_or_else(|| KeyError::NotFound(format!("no runtime key or override `{id}`")))
        })
        .await?;
    tracing::info!(key = %id, "Admin API: key removed");
    Ok((StatusCode::OK, json!({"id": id, "deleted": true})))
}

fn view(id: &str, r: &KeyRecord) -> Value {
    json!({
        "id": id,
        "source": if r.sha256.is_some() { "runtime" } else { "config" },
        "enabled": r.enabled,
        "team": r.team,
        "tier": r.tier,
        "models": r.models,
        "expires": r.expires,
        "runtime_limits": r.limits,
    })
}
