//! The admin listener, apart from client traffic: `/metrics` for Prometheus, and an API
//! for operators behind `admin.token` (`Authorization: Bearer <token>`):
//!
//! - `GET /admin/pools`: pools and endpoints with health, breaker state and load, and
//!   each queue's waiting requests by priority class;
//! - `GET /admin/config`: the running config file, secrets redacted;
//! - `/admin/keys`: gateway keys at run time (see [`keys`]).
//!
//! Errors are OpenAI-shaped, like the client API's.

mod keys;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::error::error_body;
use crate::key_admin::KeyRegistry;
use crate::state::State;
use crate::upstream::breaker::BreakerState;

/// Keys whose values are secrets wherever they appear in the config.
const SECRET_KEYS: &[&str] = &[
    "secret",
    "api_key",
    "api_keys",
    "token",
    "hs256_secret",
    "password",
];

/// The largest admin request body read.
const MAX_BODY: usize = 64 * 1024;

type Reply = Response<Vec<u8>>;

pub struct AdminApp {
    state: Arc<ArcSwap<State>>,
    registry: Arc<KeyRegistry>,
}

impl AdminApp {
    pub fn new(state: Arc<ArcSwap<State>>, registry: Arc<KeyRegistry>) -> Self {
        crate::request_metrics::init();
        AdminApp { state, registry }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let state = self.state.load_full();
        let req = session.req_header();
        let path = req.uri.path().trim_end_matches('/').to_owned();
        let method = req.method.clone();
        let Some(admin) = state.config.admin.as_ref() else {
            return error(StatusCode::NOT_FOUND, "not_found", "No admin listener.");
        };
        let authorized = bearer(session).is_some_and(|given| {
            admin
                .token
                .as_ref()
                .is_some_and(|t| bool::from(t.expose().as_bytes().ct_eq(given.as_bytes())))
        });
        let read_only = method == http::Method::GET || method == http::Method::HEAD;
        match path.as_str() {
            "/metrics" if read_only => {
                if admin.metrics_require_token && !authorized {
                    return unauthorized();
                }
                crate::request_metrics::observe_endpoints(&state);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::render().into_bytes(),
                )
            }
            p if p.starts_with("/admin/") && admin.token.is_none() => error(
                StatusCode::NOT_FOUND,
                "admin_api_off",
                "The admin API is off: set admin.token to turn it on.",
            ),
            p if p.starts_with("/admin/") && !authorized => unauthorized(),
            "/admin/pools" if read_only => json_response(StatusCode::OK, &pools(&state)),
            "/admin/config" if read_only => {
                json_response(StatusCode::OK, &redacted_config(&state.config.text))
            }
            p if p == "/admin/keys" || p.starts_with("/admin/keys/") => {
                let body = match read_body(session).await {
                    Ok(body) => body,
                    Err(reply) => return reply,
                };
                let rest = &path["/admin/keys".len()..];
                keys::handle(&self.registry, &state, &method, rest, &body).await
            }
            "/metrics" | "/admin/pools" | "/admin/config" => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{method} is not allowed on {path}."),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "unknown_url",
                &format!("Unknown admin URL: {method} {path}."),
            ),
        }
    }
}

/// The request body, up to [`MAX_BODY`].
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request_too_large",
                        &format!("Admin request bodies are limited to {MAX_BODY} bytes."),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "incomplete_body",
                    &format!("Reading the body failed: {e}"),
                ));
            }
        }
    }
}

/// The bearer token of the request, if any.
fn bearer(session: &ServerSession) -> Option<String> {
    let value = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn pools(state: &State) -> Value {
    let pools: Vec<Value> = state
        .pools
        .iter()
        .map(|pool| {
            let endpoints: Vec<Value> = pool
                .endpoints
                .iter()
                .map(|e| {
                    let breaker = e.breaker.as_ref().map(|b| match b.state() {
                        BreakerState::Closed => "closed",
                        BreakerState::HalfOpen => "half_open",
                        BreakerState::Open => "open",
                    });
                    json!({
                        "name": e.spec.name,
                        "url": e.spec.url,
                        "weight": e.spec.weight,
                        "up": e.health.is_up(),
                        "breaker": breaker,
                        "in_flight": e.traffic.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                        "resting_ms": u64::try_from(e.resting_for().as_millis()).unwrap_or(u64::MAX),
                    })
                })
                .collect();
            let queue = pool.queue().map(|q| {
                let waiting: serde_json::Map<String, Value> = state
                    .config
                    .priorities
                    .classes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.clone(), json!(q.waiting(i))))
                    .collect();
                let held: Vec<u32> = (0..pool.endpoints.len()).map(|i| q.held(i)).collect();
                json!({
                    "max_in_flight_per_endpoint": q.settings().max_in_flight_per_endpoint,
                    "max_length": q.settings().max_length,
                    "waiting": waiting,
                    "slots_held": held,
                })
            });
            json!({
                "name": pool.spec.name,
                "provider": format!("{:?}", pool.spec.provider).to_lowercase(),
                "strategy": format!("{:?}", pool.spec.balance.strategy).to_lowercase(),
                "endpoints": endpoints,
                "queue": queue,
            })
        })
        .collect();
    json!({ "object": "list", "data": pools })
}

/// The config file as JSON, with every secret replaced by `"[redacted]"`: values under
/// [`SECRET_KEYS`], and passwords inside URLs.
pub fn redacted_config(text: &str) -> Value {
    let mut value: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => return json!({ "error": format!("the running config does not parse: {e}") }),
    };
    redact(&mut value);
    value
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) {
                    *v = match v {
                        Value::Array(items) => {
                            Value::Array(items.iter().map(|_| json!("[redacted]")).collect())
                        }
                        _ => json!("[redacted]"),
                    };
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Ok(mut url) = url::Url::parse(s)
                && url.password().is_some()
                && url.set_password(Some("redacted")).is_ok()
            {
                *s = url.to_string();
            }
        }
        _ => {}
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

fn json_response(status: StatusCode, value: &Value) -> Reply {
    respond(status, "application/json", value.to_string().into_bytes())
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Vec<u8>> {
    let kind = if status == StatusCode::UNAUTHORIZED {
        "authentication_error"
    } else {
        "invalid_request_error"
    };
    respond(
        status,
        "application/json",
        error_body(message, kind, None, Some(code)).to_vec(),
    )
}

fn unauthorized() -> Response<Vec<u8>> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "invalid_admin_token",
        "Missing or wrong admin token: send `Authorization: Bearer <admin.token>`.",
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let v = redacted_config(
            "pools:\n  p:\n    endpoints:\n      - {url: 'https://x', api_key: sk-live-1}\n      - {url: 'https://y', api_keys: [a, b]}\n\
             auth:\n  keys:\n    - {id: k, secret: sk-client}\n  jwt: {hs256_secret: hush}\n\
             state:\n  redis: {url: 'redis://user:pw@redis:6379/0'}\nadmin: {address: '127.0.0.1:1', token: tok}\n",
        );
        let text = v.to_string();
        for secret in ["sk-live-1", "sk-client", "hush", ":pw@", "\"tok\"", "\"a\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            v["pools"]["p"]["endpoints"][1]["api_keys"],
            json!(["[redacted]", "[redacted]"])
        );
        assert_eq!(v["auth"]["keys"][0]["id"], "k");
        assert_eq!(v["pools"]["p"]["endpoints"][0]["url"], "https://x");
        assert!(
            text.contains("redis://user:redacted@redis:6379/0"),
            "{text}"
        );
    }
}
