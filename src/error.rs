//! The one error type for everything the gateway itself refuses or fails at, and the one
//! place that maps it to an HTTP status and an OpenAI-shaped body.
//!
//! Errors that come from an upstream as an HTTP response are not `GatewayError`s: those
//! pass through to the client with their own status and body.

use bytes::Bytes;
use http::HeaderValue;
use http::header::RETRY_AFTER;
use serde::Serialize;
use tollgate_plugin::Rejection;

use crate::headers::{Header, RETRY_AFTER_MS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The request is not something the API accepts (400).
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The body is not JSON (400).
    InvalidJson(String),
    /// No such route under `/v1/` (404).
    UnknownRoute { method: String, path: String },
    /// No such model in the catalog (404).
    UnknownModel(String),
    /// The route exists but not for this method (405).
    MethodNotAllowed { method: String, path: String },
    /// The client was too slow to send its body (408).
    BodyTimeout,
    /// The body is larger than `limits.max_body_bytes` (413).
    BodyTooLarge { limit: usize },
    /// The request line and headers are larger than `limits.max_header_bytes` (431).
    HeaderTooLarge { limit: usize },
    /// The body's framing cannot be trusted (`Content-Length` values that disagree, a
    /// `Transfer-Encoding` other than chunked): 400, and the connection is closed.
    BadFraming(&'static str),
    /// The client stopped sending before the body was complete; nobody is left to answer,
    /// but the attempt is logged and counted.
    BodyIncomplete(String),
    /// No upstream could be reached: DNS, connect or TLS failure (502).
    UpstreamUnreachable { pool: String, detail: String },
    /// The upstream broke the protocol or the connection mid-response (502).
    UpstreamProtocol { pool: String, detail: String },
    /// The upstream did not answer in time (504).
    UpstreamTimeout { pool: String, detail: String },
    /// No endpoint can take the request now: all down, open or resting (503).
    NoHealthyUpstream { model: String, detail: String },
    /// The request does not fit the context window of any model it may go to (400).
    ContextTooLong { tokens: u64, window: u64 },
    /// Every endpoint of the pool is at capacity and the request could not wait for room
    /// (see [`Saturation`]): 429 when its priority class is sheddable, else 503; both
    /// with `retry-after`.
    PoolSaturated {
        pool: String,
        cause: Saturation,
        sheddable: bool,
        /// `retry-after` and `retry-after-ms`.
        headers: Vec<Header>,
    },
    /// A plugin refused the request (401 unknown key, 403 model not allowed, 429 rate
    /// limit or budget …), with its own OpenAI error and headers.
    Rejected(Box<Rejection>),
    /// A bug or an impossible state (500).
    Internal(String),
}

/// Why a request found no room in a saturated pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saturation {
    /// The pool's queue, or its class's share of it, is full.
    QueueFull,
    /// It waited as long as it may (its class's or pool's `max_wait`, or the request's
    /// deadline) without a free endpoint.
    QueueTimeout,
    /// Its place in a full queue went to a request of a higher priority level.
    Shed,
}

impl Saturation {
    /// The rejection label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Saturation::QueueFull => "queue_full",
            Saturation::QueueTimeout => "queue_timeout",
            Saturation::Shed => "queue_shed",
        }
    }
}

/// `{"error": {...}}`, exactly as OpenAI shapes it.
#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    /// A refusal by a saturated pool, with `retry_after` as its headers.
    pub fn saturated(
        pool: &str,
        cause: Saturation,
        sheddable: bool,
        retry_after: std::time::Duration,
    ) -> Self {
        let ms = u64::try_from(retry_after.as_millis().max(1)).unwrap_or(u64::MAX);
        GatewayError::PoolSaturated {
            pool: pool.to_owned(),
            cause,
            sheddable,
            headers: vec![
                (RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000))),
                (RETRY_AFTER_MS, HeaderValue::from(ms)),
            ],
        }
    }

    /// An upstream failure found by an adapter, which does not know the pool: named
    /// after `pool`.
    pub fn in_pool(self, pool: &str) -> Self {
        match self {
            GatewayError::UpstreamProtocol { detail, .. } => GatewayError::UpstreamProtocol {
                pool: pool.to_owned(),
                detail,
            },
            other => other,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::InvalidJson(_)
            | GatewayError::BodyIncomplete(_) => 400,
            GatewayError::UnknownRoute { .. } | GatewayError::UnknownModel(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTimeout => 408,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::HeaderTooLarge { .. } => 431,
            GatewayError::BadFraming(_) => 400,
            GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamProtocol { .. } => 502,
            GatewayError::UpstreamTimeout { .. } => 504,
            GatewayError::NoHealthyUpstream { .. } => 503,
            GatewayError::ContextTooLong { .. } => 400,
            GatewayError::PoolSaturated {
                sheddable: true, ..
            } => 429,
            GatewayError::PoolSaturated { .. } => 503,
            GatewayError::Rejected(r) => r.status,
            GatewayError::Internal(_) => 500,
        }
    }

    /// Response headers that go with the error (e.g. `retry-after`).
    pub fn headers(&self) -> &[Header] {
        match self {
            GatewayError::Rejected(r) => &r.headers,
            GatewayError::PoolSaturated { headers, .. } => headers,
            _ => &[],
        }
    }

    /// OpenAI's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Rejected(r) => return r.kind,
            // OpenAI's type for a 429 that limits requests.
            GatewayError::PoolSaturated {
                sheddable: true, ..
            } => return "requests",
            _ => {}
        }
        // OpenAI reports every 4xx of this kind (unknown model included) as
        // `invalid_request_error`; 5xx as `server_error`.
        match self.status() {
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// A stable, low-cardinality name: OpenAI's `error.code`, and the label for logs and
    /// metrics.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. } => "invalid_request",
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::UnknownRoute { .. } => "unknown_url",
            GatewayError::UnknownModel(_) => "model_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyTimeout => "request_timeout",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::HeaderTooLarge { .. } => "request_header_too_large",
            GatewayError::BadFraming(_) => "invalid_framing",
            GatewayError::BodyIncomplete(_) => "incomplete_body",
            GatewayError::UpstreamUnreachable { .. } => "upstream_unreachable",
            GatewayError::UpstreamProtocol { .. } => "upstream_protocol_error",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::ContextTooLong { .. } => "context_length_exceeded",
            GatewayError::PoolSaturated { .. } => "pool_saturated",
            GatewayError::Rejected(r) => r.code,
            GatewayError::Internal(_) => "internal_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => *param,
            GatewayError::ContextTooLong { .. } => Some("messages"),
            _ => None,
        }
    }

    /// What the client reads. Upstream details stay in the log: they can name internal
    /// hosts.
    pub fn message(&self) -> String {
        match self {
            GatewayError::InvalidRequest { message, .. } => message.clone(),
            GatewayError::InvalidJson(detail) => format!(
                "We could not parse the JSON body of your request ({detail}). \
                 The body must be a JSON object."
            ),
            GatewayError::UnknownRoute { method, path } => {
                format!("Unknown request URL: {method} {path}.")
            }
            GatewayError::UnknownModel(model) => {
                format!("The model `{model}` does not exist or you do not have access to it.")
            }
            GatewayError::MethodNotAllowed { method, path } => {
                format!("Method {method} is not allowed for {path}.")
            }
            GatewayError::BodyTimeout => "The request body was not received in time.".into(),
            GatewayError::BodyTooLarge { limit } => {
                format!("The request body is larger than the limit of {limit} bytes.")
            }
            GatewayError::HeaderTooLarge { limit } => {
                format!("The request headers are larger than the limit of {limit} bytes.")
            }
            GatewayError::BadFraming(why) => format!("The request is malformed: {why}."),
            GatewayError::BodyIncomplete(_) => "The request body ended early.".into(),
            GatewayError::UpstreamUnreachable { pool, .. } => {
                format!("The upstream for pool `{pool}` could not be reached.")
            }
            GatewayError::UpstreamProtocol { pool, .. } => {
                format!("The upstream for pool `{pool}` sent an invalid response.")
            }
            GatewayError::UpstreamTimeout { pool, .. } => {
                format!("The upstream for pool `{pool}` did not answer in time.")
            }
            GatewayError::NoHealthyUpstream { model, .. } => {
                format!("No upstream for model `{model}` can take requests right now.")
            }
            GatewayError::ContextTooLong { tokens, window } => format!(
                "This model's maximum context length is {window} tokens. However, you \
                 requested about {tokens} tokens (messages plus max_tokens). Please reduce \
                 the length of the messages or of max_tokens."
            ),
            GatewayError::PoolSaturated { pool, cause, .. } => {
                let why = match cause {
                    Saturation::QueueFull => "its queue is full",
                    Saturation::QueueTimeout => {
                        "the request waited as long as it may for a free endpoint"
                    }
                    Saturation::Shed => {
                        "the request's place in the queue went to one of higher priority"
                    }
                };
                format!(
                    "Pool `{pool}` is saturated: every endpoint is at capacity and {why}. \
                     Please retry after the time in `retry-after`."
                )
            }
            GatewayError::Rejected(r) => r.message.clone(),
            GatewayError::Internal(_) => "The gateway failed to handle the request.".into(),
        }
    }

    /// Everything known, for the log line (never sent to the client).
    pub fn detail(&self) -> Option<&str> {
        match self {
            GatewayError::BodyIncomplete(d)
            | GatewayError::Internal(d)
            | GatewayError::UpstreamUnreachable { detail: d, .. }
            | GatewayError::UpstreamProtocol { detail: d, .. }
            | GatewayError::UpstreamTimeout { detail: d, .. }
            | GatewayError::NoHealthyUpstream { detail: d, .. } => Some(d),
            _ => None,
        }
    }

    /// The OpenAI error body.
    pub fn body(&self) -> Bytes {
        error_body(
            &self.message(),
            self.kind(),
            self.param(),
            Some(self.code()),
        )
    }
}

/// Serializes an OpenAI error body; also used for errors that are not `GatewayError`s
/// (e.g. an error event inside a stream).
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            message,
            kind,
            param,
            code,
        },
    };
    // Serializing plain strings cannot fail.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())?;
        if let Some(d) = self.detail() {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape_with_string_code() {
        let e = GatewayError::UnknownModel("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn upstream_detail_is_logged_not_sent() {
        let e = GatewayError::UpstreamUnreachable {
            pool: "p".into(),
            detail: "connect 10.0.0.7:8000 refused".into(),
        };
        assert!(!String::from_utf8_lossy(&e.body()).contains("10.0.0.7"));
        assert!(e.to_string().contains("10.0.0.7"));
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn a_saturated_pool_sheds_with_429_and_holds_with_503() {
        let retry = std::time::Duration::from_millis(1500);
        let shed = GatewayError::saturated("gpu", Saturation::QueueFull, true, retry);
        assert_eq!((shed.status(), shed.kind()), (429, "requests"));
        let held = GatewayError::saturated("gpu", Saturation::QueueTimeout, false, retry);
        assert_eq!((held.status(), held.kind()), (503, "server_error"));
        for e in [&shed, &held] {
            assert_eq!(e.code(), "pool_saturated");
            assert!(e.message().contains("Pool `gpu` is saturated"), "{e}");
            let headers: Vec<_> = e
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                .collect();
            assert_eq!(headers, [("retry-after", "2"), ("retry-after-ms", "1500")]);
        }
    }
}
