//! Provider adapters: translation between the wire format a client speaks and the one an
//! upstream pool speaks, at the edges of the engine.
//!
//! The engine routes, admits, caches and accounts requests without knowing which format
//! they are in; everything format-specific an attempt needs goes through a
//! [`Translation`]: the upstream request body, path and credential headers, the answer
//! (whole, or one stream event at a time through a [`StreamAdapter`]), upstream error
//! bodies, and the token usage read from the upstream's own answer. Adding a provider
//! means adding a [`Wire`] and its adapter module; nothing else in the engine changes.
//!
//! What this module must not do: buffer a stream, or decide anything about routing,
//! retries or limits.

pub mod anthropic;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{AUTHORIZATION, InvalidHeaderValue};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{PoolSpec, ProviderKind, Secret};
use crate::error::GatewayError;
use crate::openai::{Api, InferenceRequest, Usage, put_event};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// A wire format: how requests, answers, streams and errors are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's HTTP API (chat completions, completions, embeddings): OpenAI, vLLM, SGLang …
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

impl Wire {
    /// What a client calling `api` speaks.
    pub fn of_api(api: Api) -> Wire {
        match api {
            Api::Messages => Wire::Anthropic,
            Api::ChatCompletions | Api::Completions | Api::Embeddings => Wire::OpenAi,
        }
    }

    /// What a pool of `provider` speaks (the built-in mock answers as OpenAI does).
    pub fn of_provider(provider: ProviderKind) -> Wire {
        match provider {
            ProviderKind::Anthropic => Wire::Anthropic,
            ProviderKind::Openai | ProviderKind::Mock => Wire::OpenAi,
        }
    }

    /// The path after the endpoint's API prefix for a request of `api`.
    pub fn path(self, api: Api) -> &'static str {
        match (self, api) {
            (Wire::Anthropic, _) => "/messages",
            (Wire::OpenAi, Api::Messages) => Api::ChatCompletions.path(),
            (Wire::OpenAi, api) => api.path(),
        }
    }

    /// Sets the upstream credential (and any header the provider requires) on an
    /// upstream request's headers. Fails on a key no header value may hold.
    pub fn authorize(
        self,
        headers: &mut HeaderMap,
        key: Option<&Secret>,
    ) -> Result<(), InvalidHeaderValue> {
        let secret = |text: String| {
            HeaderValue::try_from(text).map(|mut v| {
                v.set_sensitive(true);
                v
            })
        };
        match self {
            Wire::OpenAi => {
                if let Some(key) = key {
                    let mut value = String::with_capacity(7 + key.expose().len());
                    value.push_str("Bearer ");
                    value.push_str(key.expose());
                    headers.insert(AUTHORIZATION, secret(value)?);
                }
            }
            Wire::Anthropic => {
                if let Some(key) = key {
                    headers.insert(X_API_KEY, secret(key.expose().to_owned())?);
                }
                // A client speaking Anthropic's API chose its version; keep it.
                if !headers.contains_key(&ANTHROPIC_VERSION) {
                    headers.insert(
                        ANTHROPIC_VERSION,
                        HeaderValue::from_static(anthropic::API_VERSION),
                    );
                }
            }
        }
        Ok(())
    }

    /// One event as this wire frames it: `data:` lines, after an `event:` line for
    /// Anthropic (whose clients dispatch on it).
    pub fn frame(self, event: &ClientEvent, out: &mut BytesMut) {
        if let (Wire::Anthropic, Some(name)) = (self, event.name) {
            out.put_slice(b"event: ");
            out.put_slice(name.as_bytes());
            out.put_slice(b"\n");
        }
        put_event(&event.data, out);
    }

    /// The error event that ends a stream broken after it started.
    pub fn stream_error(self, e: &GatewayError) -> Bytes {
        let mut out = BytesMut::new();
        let event = match self {
            Wire::OpenAi => ClientEvent::data(crate::error::error_body(
                &e.message(),
                "server_error",
                None,
                Some(e.code()),
            )),
            Wire::Anthropic => ClientEvent {
                name: Some("error"),
                data: anthropic::error_body(500, &e.message()),
            },
        };
        self.frame(&event, &mut out);
        out.freeze()
    }

    /// The body of the gateway's own error `e`, in this wire's shape.
    pub fn error_body(self, e: &GatewayError) -> Bytes {
        match self {
            Wire::OpenAi => e.body(),
            Wire::Anthropic => anthropic::error_body(e.status(), &e.message()),
        }
    }
}

/// One event for the client: its `event:` name (Anthropic) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    pub name: Option<&'static str>,
    pub data: Bytes,
}

impl ClientEvent {
    pub fn data(data: impl Into<Bytes>) -> Self {
        ClientEvent {
            name: None,
            data: data.into(),
        }
    }

    pub fn named(name: &'static str, data: impl Into<Bytes>) -> Self {
        ClientEvent {
            name: Some(name),
            data: data.into(),
        }
    }

    /// The end marker of an OpenAI stream.
    pub fn is_done(&self) -> bool {
        self.name.is_none() && self.data.as_ref() == b"[DONE]"
    }
}

/// Turns an upstream's stream into the client's, one upstream event at a time.
pub trait StreamAdapter: Send {
    /// One upstream event's data; pushes the client's events for it (maybe none).
    fn event(&mut self, data: &[u8], out: &mut Vec<ClientEvent>) -> Result<(), GatewayError>;
    /// Whether the upstream stream reached its proper end.
    fn finished(&self) -> bool;
    /// The usage the upstream reported, once known.
    fn usage(&self) -> Option<Usage>;
    /// The upstream's bytes go to the client unchanged; [`event`](Self::event) only
    /// observes (and pushes nothing).
    fn relays(&self) -> bool {
        false
    }
}

/// How one attempt's request and answer are translated: the client's wire and the pool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub client: Wire,
    pub upstream: Wire,
}

impl Translation {
    pub fn new(api: Api, provider: ProviderKind) -> Self {
        Translation {
            client: Wire::of_api(api),
            upstream: Wire::of_provider(provider),
        }
    }

    /// Both sides speak OpenAI: the engine's own path, bytes untouched.
    pub fn is_identity(self) -> bool {
        self.client == Wire::OpenAi && self.upstream == Wire::OpenAi
    }

    /// The body sent upstream for `req` on `pool`, as `model`; `ask_usage`: an OpenAI
    /// stream must report usage (see [`InferenceRequest::upstream_body`]).
    pub fn request(
        self,
        req: &InferenceRequest,
        model: &str,
        ask_usage: bool,
        pool: &PoolSpec,
    ) -> Result<Bytes, GatewayError> {
        match (self.client, self.upstream) {
            (Wire::OpenAi, Wire::OpenAi) => Ok(req.upstream_body(model, ask_usage)),
            (Wire::Anthropic, Wire::Anthropic) => Ok(req.body_with_model(model)),
            (Wire::OpenAi, Wire::Anthropic) => {
                if req.api != Api::ChatCompletions {
                    return Err(GatewayError::invalid(
                        format!(
                            "Pool `{}` (provider anthropic) serves chat completions only, not {}.",
                            pool.name,
                            req.api.path()
                        ),
                        None,
                    ));
                }
                anthropic::upstream::request(&req.body, model, &pool.anthropic)
            }
            (Wire::Anthropic, Wire::OpenAi) => anthropic::client::request(&req.body, model),
        }
    }

    /// A 2xx answer read whole, in the client's wire.
    pub fn response(self, body: Bytes) -> Result<Bytes, GatewayError> {
        match (self.client, self.upstream) {
            (a, b) if a == b => Ok(body),
            (Wire::OpenAi, _) => anthropic::upstream::response(&body),
            (Wire::Anthropic, _) => anthropic::client::response(&body),
        }
    }

    /// The usage in a whole answer, read in the upstream's wire.
    pub fn usage(self, upstream_body: &[u8]) -> Option<Usage> {
        match self.upstream {
            Wire::OpenAi => Usage::find(upstream_body),
            Wire::Anthropic => anthropic::usage_of_message(upstream_body),
        }
    }

    /// An upstream error response (status and body) as the client's wire shapes it.
    pub fn error(self, status: u16, body: Bytes) -> (u16, Bytes) {
        match (self.client, self.upstream) {
            (a, b) if a == b => (status, body),
            (Wire::OpenAi, _) => anthropic::upstream::error(status, &body),
            (Wire::Anthropic, _) => anthropic::client::error(status, &body),
        }
    }

    /// The per-stream translator; `None` when the stream goes through as the engine
    /// handles OpenAI streams.
    pub fn stream(self, req: &InferenceRequest) -> Option<Box<dyn StreamAdapter>> {
        match (self.client, self.upstream) {
            (Wire::OpenAi, Wire::OpenAi) => None,
            // The usage chunk is always made, as an OpenAI upstream is always asked for
            // it: the engine keeps it from a client that did not ask (and caches it).
            (Wire::OpenAi, Wire::Anthropic) => Some(Box::new(
                anthropic::upstream::StreamToOpenAi::new(req.include_usage),
            )),
            (Wire::Anthropic, Wire::OpenAi) => {
                Some(Box::new(anthropic::client::StreamToAnthropic::new()))
            }
            (Wire::Anthropic, Wire::Anthropic) => Some(Box::new(anthropic::Relay::default())),
        }
    }
}
