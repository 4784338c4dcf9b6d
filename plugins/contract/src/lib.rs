//! The contract between the gateway's engine and its policy plugins (authentication,
//! rate limits, budgets, and what comes next).
//!
//! A request meets the plugins in the order of its path (see `../shared/DESIGN.md`):
//!
//! 1. **identify** — from the request headers, who is calling: a [`Principal`], or a
//!    [`Rejection`] (e.g. 401 for an unknown key);
//! 2. **admit** — with the parsed request ([`Request`]) and the principal: let it through
//!    (maybe reserving capacity, returned as a [`Settle`] handle, and adding response
//!    headers) or refuse it (403, 429 …);
//! 3. **settle** — when the answer is over, the handle learns the [`Outcome`] (real token
//!    usage, or that nothing was served) and reconciles what it reserved.
//!
//! Plugins see plain types only — never Pingora's, never a socket — so each one is tested
//! on its own. The engine turns a [`Rejection`] into an OpenAI error response.

mod local_store;
mod principal;
mod secret;
mod store;

pub use local_store::{Clock, LocalStore, ManualClock, SystemClock};
pub use principal::{ModelFilter, Principal, PrincipalKind};
pub use secret::Secret;
pub use store::{Acquire, Acquired, Adjust, Lease, Release, Store, StoreError};

use async_trait::async_trait;
pub use http::{HeaderMap, HeaderName, HeaderValue};

/// A response header a plugin asks for. Name and value are checked when they are made (the
/// names are constants), so the engine puts them on the response as they are.
pub type Header = (HeaderName, HeaderValue);

/// What plugins see of a parsed inference request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    /// The public model asked for (canonical name, aliases resolved).
    pub model: &'a str,
    pub stream: bool,
    /// `max_completion_tokens` or `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// The prompt's tokens, estimated (cheaply) by the engine.
    pub prompt_tokens: u64,
    /// The gateway's id for the request (for leases and logs).
    pub request_id: &'a str,
}

/// A refusal, shaped as the OpenAI error the client will get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// OpenAI's `error.type`, e.g. `invalid_request_error`, `requests`, `tokens`.
    pub kind: &'static str,
    /// OpenAI's `error.code`, e.g. `invalid_api_key`, `rate_limit_exceeded`.
    pub code: &'static str,
    pub message: String,
    /// Extra response headers, e.g. `retry-after`.
    pub headers: Vec<Header>,
    /// Why, for the log line and the rejection metric: a short stable label such as
    /// `auth`, `model_not_allowed`, `rate_limit`, `budget`.
    pub reason: &'static str,
}

/// A request let through.
#[derive(Default)]
pub struct Admission {
    /// Response headers to add (e.g. `x-ratelimit-*`).
    pub headers: Vec<Header>,
    /// Called once the request is over, to reconcile a reservation.
    pub settle: Option<Box<dyn Settle>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("headers", &self.headers)
            .field("settle", &self.settle.is_some())
            .finish()
    }
}

/// Token usage of one answer, as the upstream reported it (or as the gateway counted it
/// when the stream was cut short).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens served from the provider's cache (part of `prompt`).
    pub cached: u64,
    /// Completion tokens spent on reasoning (part of `completion`).
    pub reasoning: u64,
}

/// How a request ended, for settling.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The usage to charge; `None` when nothing was served (no upstream answer, or an
    /// answer without usage, e.g. an error).
    pub usage: Option<TokenUsage>,
    /// The usage was counted by the gateway, not reported by the upstream.
    pub estimated: bool,
    /// The public model that answered (may differ from the one asked, after a fallback).
    pub served_model: Option<&'a str>,
}

/// The end of an admitted request: reconcile what was reserved with what was used.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn settle(self: Box<Self>, outcome: &Outcome<'_>);
}

/// A policy plugin. Every phase has a default that does nothing.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// A short stable name, for logs.
    fn name(&self) -> &'static str;

    /// Who is calling, from the request headers. `Ok(None)`: this plugin cannot tell
    /// (the next one may).
    async fn identify(&self, _headers: &HeaderMap) -> Result<Option<Principal>, Rejection> {
        Ok(None)
    }

    /// Whether the request may go on.
    async fn admit(
        &self,
        _request: &Request<'_>,
        _principal: &Principal,
    ) -> Result<Admission, Rejection> {
        Ok(Admission::default())
    }
}
