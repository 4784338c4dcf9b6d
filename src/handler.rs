//! What happens to one request, from its first byte to its answer: route, read and check
//! the body, then hand it to `dispatch`, which finds the upstream that answers.
//!
//! Every failure becomes a [`GatewayError`] and is answered in one place,
//! [`answer_failure`]; the access log line is written after, by `gateway`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;

use crate::body::BodyBuf;
use crate::cache::{self, ResponseCache};
use crate::config::Limits;
use crate::gateway::Session;
use tollgate_plugin::{Outcome, Principal, Request as PluginRequest, Settle, TokenUsage};

use crate::adapters::Wire;
use crate::dispatch::{self, AttemptRecord};
use crate::error::GatewayError;
use crate::headers::{self, Header, X_CACHE, X_TOLLGATE_ATTEMPTS, X_TOLLGATE_MODEL};
use crate::openai::{self, Api, InferenceRequest};
use crate::respond;
use crate::route::{self, Route};
use crate::state::State;
use crate::tokens;
use crate::trace::Trace;
use crate::upstream::Delivery;

/// Per-request facts gathered on the way, for the access log.
#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: String,
    /// The W3C trace this request belongs to.
    pub trace: Trace,
    pub started: Instant,
    pub route: &'static str,
    /// The wire format the client speaks (Anthropic's on `/v1/messages`): errors are
    /// shaped for it.
    pub wire: Wire,
    /// The model the client asked for.
    pub model: Option<String>,
    /// The configured model it resolved to (aliases resolved), once known.
    pub resolved_model: Option<String>,
    /// The public model that answered (differs from `model` after a fallback).
    pub served_model: Option<String>,
    /// The model id sent upstream by the answering attempt.
    pub upstream_model: Option<String>,
    /// Unique per request, whatever the client sent as `x-request-id`: what plugins key
    /// per-request state on (e.g. concurrency leases).
    pub internal_id: String,
    /// Who is calling, once identified.
    pub principal: Option<Principal>,
    /// Response headers the plugins asked for at admission (e.g. `x-ratelimit-*`).
    pub admit_headers: Vec<Header>,
    /// Reservations to reconcile when the request is over.
    settles: Settles,
    /// The prompt's tokens, counted exactly when a stream was cut short (its usage is
    /// then the gateway's own count).
    counted_prompt: Option<u64>,
    /// Every upstream attempt, in order.
    pub attempts: Vec<AttemptRecord>,
    pub delivery: Delivery,
    /// The usage charged to the caller's limits and budgets, once settled.
    pub charged: Option<TokenUsage>,
    /// The usage charged was the gateway's count, not the upstream's.
    pub usage_estimated: bool,
    /// What the response cache did, when one is configured (`x-cache`).
    pub cache: Option<cache::Status>,
    /// A cache hit's charge: nothing, or the cached answer's usage (`charge_hits`).
    hit_charge: Option<TokenUsage>,
    /// What the charged usage costs at the configured prices (micro-dollars).
    pub cost_micro_usd: Option<u64>,
    /// Time spent on upstream attempts and their answers (not the gateway's own work).
    pub upstream_time: Duration,
    /// Counts the request in flight while it lives.
    _in_flight: crate::request_metrics::InFlight,
    pub error: Option<GatewayError>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            request_id: String::new(),
            trace: Trace::default(),
            started: Instant::now(),
            route: "unknown",
            wire: Wire::OpenAi,
            model: None,
            resolved_model: None,
            served_model: None,
            upstream_model: None,
            internal_id: String::new(),
            principal: None,
            admit_headers: Vec::new(),
            settles: Settles::default(),
            counted_prompt: None,
            attempts: Vec::new(),
            delivery: Delivery::default(),
            charged: None,
            usage_estimated: false,
            cache: None,
            hit_charge: None,
            cost_micro_usd: None,
            upstream_time: Duration::ZERO,
            _in_flight: crate::request_metrics::InFlight::enter(),
            error: None,
        }
    }
}

impl RequestCtx {
    /// The usage the request is accounted with: what was charged, else (no limits or
    /// budgets to charge) what the upstream reported.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.charged
            .or(self.hit_charge)
            .or_else(|| self.delivery.usage.map(|u| u.tokens()))
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles the request completely; the response has been written (or the client is
/// gone) when this returns.
pub async fn handle(
    state: &Arc<State>,
    connector: &crate::upstream::Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
) {
    ctx.internal_id = uuid::Uuid::new_v4()
        .simple()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned();
    ctx.request_id = request_id(session, &ctx.internal_id);
    ctx.trace = Trace::from_headers(&session.req_header().headers);
    // Bytes of a client's next request that arrive while this one is still answered are
    // kept for it, rather than read as a protocol error while the client is watched.
    session.set_pipelining_enabled(true);
    if let Err(e) = serve(state, connector, session, ctx).await {
        answer_failure(session, ctx, &e).await;
        ctx.error = Some(e);
    }
    settle(ctx).await;
    if let (Some(quotas), Some(usage)) = (&state.config.quotas, ctx.usage()) {
        let model = ctx
            .served_model
            .as_deref()
            .or(ctx.resolved_model.as_deref());
        ctx.cost_micro_usd = model.and_then(|m| quotas.cost_micro_usd(m, &usage));
    }
}

/// Who is calling: the first plugin that can tell; without authentication, anonymous.
async fn identify(state: &State, session: &Session) -> Result<Principal, GatewayError> {
    let headers = &session.req_header().headers;
    for plugin in &state.plugins {
        if let Some(p) = plugin
            .identify(headers)
            .await
            .map_err(|r| GatewayError::Rejected(Box::new(r)))?
        {
            return Ok(p);
        }
    }
    Ok(Principal::anonymous())
}

/// Asks every plugin to let the request through; keeps their headers and reservations.
async fn admit(
    state: &State,
    session: &Session,
    ctx: &mut RequestCtx,
    req: &InferenceRequest,
    model: &str,
) -> Result<(), GatewayError> {
    let Some(principal) = ctx.principal.as_ref() else {
        return Ok(());
    };
    let request = PluginRequest {
        headers: &session.req_header().headers,
        model,
        stream: req.stream,
        // Embeddings generate nothing: no completion to reserve.
        max_tokens: if req.api == Api::Embeddings {
            Some(0)
        } else {
            req.max_tokens
        },
        prompt_tokens: tokens::estimate(req),
        request_id: &ctx.internal_id,
    };
    for plugin in &state.plugins {
        let admission = plugin
            .admit(&request, principal)
            .await
            .map_err(|r| GatewayError::Rejected(Box::new(r)))?;
        ctx.admit_headers.extend(admission.headers);
        ctx.settles.0.extend(admission.settle);
    }
    Ok(())
}

/// Reconciles every reservation with what the request used: the upstream's usage, or,
/// for a stream cut short, the gateway's count of what was streamed (estimated); nothing
/// if nothing was served.
async fn settle(ctx: &mut RequestCtx) {
    if ctx.settles.0.is_empty() {
        return;
    }
    let d = &ctx.delivery;
    let (usage, estimated) = match (&d.usage, &d.generated) {
        _ if ctx.hit_charge.is_some() => (ctx.hit_charge, false),
        (Some(u), _) => (Some(u.tokens()), false),
        (None, Some(text)) if d.response_started => (
            Some(TokenUsage {
                prompt: ctx.counted_prompt.unwrap_or(0),
                completion: tokens::count(text),
                cached: 0,
                reasoning: 0,
            }),
            true,
        ),
        _ => (None, false),
    };
    ctx.usage_estimated = estimated;
    let outcome = Outcome {
        usage,
        estimated,
        served_model: ctx.served_model.as_deref(),
    };
    for s in std::mem::take(&mut ctx.settles.0) {
        s.settle(&outcome).await;
    }
    ctx.charged = usage;
}

/// The plugins' reservations of one request.
#[derive(Default)]
struct Settles(Vec<Box<dyn Settle>>);

impl std::fmt::Debug for Settles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} reservation(s)", self.0.len())
    }
}

async fn serve(
    state: &State,
    connector: &crate::upstream::Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let req = session.req_header();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    // Anthropic clients get Anthropic's error shape under its paths, unknown ones too
    // (e.g. `/v1/messages/count_tokens`).
    if path.starts_with("/v1/messages") {
        ctx.wire = Wire::Anthropic;
    }
    check_head(req, &state.config.limits)?;
    let route = route::route(&req.method, path)?;
    ctx.route = route.name();
    if !matches!(route, Route::Health | Route::Ready) {
        ctx.principal = Some(identify(state, session).await?);
    }
    let id = ctx.request_id.as_str();
    let written =
        |e: Box<pingora_error::Error>| GatewayError::BodyIncomplete(format!("client gone: {e}"));
    match route {
        Route::Health => respond::json(session, 200, Bytes::from_static(br#"{"status":"ok"}"#), id)
            .await
            .map_err(written),
        Route::Ready => {
            let mut waiting = Vec::new();
            for pool in &state.pools {
                if !pool.is_ready().await {
                    waiting.push(pool.spec.name.as_str());
                }
            }
            let (status, body) = if waiting.is_empty() {
                (200, r#"{"status":"ready"}"#.to_owned())
            } else {
                let body =
                    serde_json::json!({"status": "not_ready", "pools_without_address": waiting});
                (503, body.to_string())
            };
            respond::json(session, status, Bytes::from(body), id)
                .await
                .map_err(written)
        }
        Route::ListModels => {
            let allowed = ctx.principal.as_ref().map(|p| &p.models);
            let visible = state
                .catalog
                .list()
                .filter(|(name, _)| allowed.is_none_or(|m| m.allows(name)));
            let body = openai::model_list(visible, state.loaded_at);
            respond::json(session, 200, body, id).await.map_err(written)
        }
        Route::GetModel(name) => {
            // A model the caller may not use does not exist for it (as OpenAI answers).
            let (model, owned_by) = state
                .catalog
                .describe(&name)
                .filter(|(model, _)| {
                    ctx.principal
                        .as_ref()
                        .is_none_or(|p| p.models.allows(model))
                })
                .ok_or_else(|| GatewayError::UnknownModel(name.clone()))?;
            let body = openai::model_object(model, owned_by, state.loaded_at);
            respond::json(session, 200, body, id).await.map_err(written)
        }
        Route::Inference(api) => infer(state, connector, session, ctx, api).await,
    }
}

async fn infer(
    state: &State,
    connector: &crate::upstream::Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
    api: Api,
) -> Result<(), GatewayError> {
    let body = read_body(session, &state.config.limits).await?;
    let req = InferenceRequest::parse(api, body)?;
    ctx.model = Some(req.model.clone());
    let (model, _) = state
        .catalog
        .describe(&req.model)
        .ok_or_else(|| GatewayError::UnknownModel(req.model.clone()))?;
    ctx.resolved_model = Some(model.to_owned());
    admit(state, session, ctx, &req, model).await?;
    let mut cached = None;
    if let Some(cache) = &state.cache {
        match consult_cache(cache, session, ctx, &req, model).await? {
            CacheTurn::Served => return Ok(()),
            CacheTurn::Upstream(turn) => cached = turn.map(|t| (cache, t)),
        }
    }
    let dispatched = Instant::now();
    let result = dispatch::dispatch(state, connector, session, ctx, &req).await;
    ctx.upstream_time = dispatched.elapsed();
    if ctx.delivery.usage.is_none() && ctx.delivery.generated.is_some() {
        // A stream cut short: its charge is the gateway's own count.
        ctx.counted_prompt = Some(tokens::prompt_tokens(&req));
    }
    if let Some((cache, (plan, leader))) = cached {
        if result.is_ok() {
            keep_answer(cache, &plan, ctx, &req).await;
        }
        // Followers wake once the answer is stored (or known not to be).
        drop(leader);
    }
    result
}

/// What the cache left to do.
enum CacheTurn {
    /// Answered from the cache (or the client left while waiting for it).
    Served,
    /// Go upstream; with a plan, the answer is to be stored (and this request may lead
    /// identical ones waiting for it).
    Upstream(Option<(cache::Plan, Option<cache::Leader>)>),
}

/// Looks the request up in the cache, waiting for an identical request in flight when
/// coalescing; answers a hit. Otherwise says what to store, and sets `x-cache`.
async fn consult_cache(
    cache: &ResponseCache,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &InferenceRequest,
    model: &str,
) -> Result<CacheTurn, GatewayError> {
    let anonymous;
    let principal = match ctx.principal.as_ref() {
        Some(p) => p,
        None => {
            anonymous = Principal::anonymous();
            &anonymous
        }
    };
    let headers = &session.req_header().headers;
    let Some(plan) = cache.plan(req.api, model, &req.body, req.stream, principal, headers)? else {
        ctx.set_cache_status(cache, cache::Status::Bypass);
        return Ok(CacheTurn::Upstream(None));
    };
    let mut leader = None;
    let status = if !plan.lookup {
        cache::Status::Bypass
    } else {
        let found = match cache.lookup(&plan.key).await {
            Some(entry) => Some((entry, false)),
            None => match cache.join(plan.key) {
                Some(cache::Turn::Lead(l)) => {
                    leader = Some(l);
                    None
                }
                Some(cache::Turn::Follow(f)) => {
                    let wait = tokio::time::timeout(cache.coalesce_wait(), f.wait());
                    let waited = tokio::select! {
                        _ = wait => true,
                        _ = session.read_body_or_idle(true) => false,
                    };
                    if !waited {
                        ctx.delivery.client_gone = true;
                        return Ok(CacheTurn::Served);
                    }
                    cache.lookup(&plan.key).await.map(|e| (e, true))
                }
                None => None,
            },
        };
        match found {
            Some((entry, coalesced)) if entry.answer.is_stream() == req.stream => {
                serve_hit(cache, session, ctx, req, &entry, coalesced).await;
                return Ok(CacheTurn::Served);
            }
            _ => cache::Status::Miss,
        }
    };
    ctx.set_cache_status(cache, status);
    if let Some((_, max_bytes)) = plan.store {
        ctx.delivery.capture = Some(cache::Capture::new(max_bytes));
    }
    Ok(CacheTurn::Upstream(Some((plan, leader))))
}

impl RequestCtx {
    fn set_cache_status(&mut self, cache: &ResponseCache, status: cache::Status) {
        cache.record(status);
        self.cache = Some(status);
        self.admit_headers
            .push((X_CACHE, HeaderValue::from_static(status.as_str())));
    }
}

/// Answers from a cached entry, in the request's shape. A hit costs the caller nothing
/// unless `charge_hits`.
async fn serve_hit(
    cache: &ResponseCache,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &InferenceRequest,
    entry: &cache::Entry,
    coalesced: bool,
) {
    cache.record_hit(entry, coalesced);
    ctx.cache = Some(cache::Status::Hit);
    ctx.served_model = Some(entry.served_model.clone());
    ctx.hit_charge = Some(match entry.usage {
        Some(u) if cache.charge_hits() => u.into(),
        _ => TokenUsage::default(),
    });
    let mut extra = Vec::with_capacity(3 + ctx.admit_headers.len());
    extra.push((
        X_CACHE,
        HeaderValue::from_static(cache::Status::Hit.as_str()),
    ));
    if let Some(model) = headers::text(&entry.served_model) {
        extra.push((X_TOLLGATE_MODEL, model));
    }
    extra.push((X_TOLLGATE_ATTEMPTS, HeaderValue::from(0u32)));
    extra.extend(ctx.admit_headers.iter().cloned());
    let id = ctx.request_id.as_str();
    let d = &mut ctx.delivery;
    d.response_started = true;
    let written = match &entry.answer {
        cache::Answer::Json(body) => {
            d.response_bytes = body.len() as u64;
            respond::json_with(session, 200, body.clone(), id, &extra).await
        }
        cache::Answer::Events(events) => {
            d.event_stream = true;
            let body = match ctx.wire {
                Wire::OpenAi => cache::replay_events(events, req.needs_usage_requested()),
                Wire::Anthropic => crate::adapters::anthropic::replay_events(events),
            };
            d.response_bytes = body.len() as u64;
            match respond::sse_start(session, id, &extra).await {
                Ok(()) => session.write_response_body(body, true).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = written {
        tracing::debug!(request_id = id, error = %e, "client gone during a cache hit");
        d.client_gone = true;
    }
}

/// Stores the answer that went to the client, if it was captured whole.
async fn keep_answer(
    cache: &ResponseCache,
    plan: &cache::Plan,
    ctx: &mut RequestCtx,
    req: &InferenceRequest,
) {
    let Some(capture) = ctx.delivery.capture.as_mut() else {
        return;
    };
    if capture.too_large() {
        cache.too_large();
    }
    let (Some(answer), Some(model)) = (capture.take(), ctx.served_model.as_deref()) else {
        return;
    };
    // A stream request answered with JSON (or the reverse) is not what the key stands for.
    if answer.is_stream() != req.stream {
        return;
    }
    let usage = ctx.delivery.usage.map(|u| u.tokens());
    cache.store(plan, answer, model, usage).await;
}

/// Refuses a request head that is too large or whose body framing is ambiguous: several
/// `Content-Length`s that disagree, or a `Transfer-Encoding` that is not exactly chunked
/// (Pingora has already dropped a `Content-Length` sent beside `Transfer-Encoding`, and
/// closes such a connection after the response, as RFC 9112 asks).
fn check_head(req: &pingora_http::RequestHeader, limits: &Limits) -> Result<(), GatewayError> {
    let mut size =
        req.method.as_str().len() + req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    for (name, value) in &req.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    if size > limits.max_header_bytes {
        return Err(GatewayError::HeaderTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let valid =
            |v: &http::HeaderValue| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
        if !valid(first) || lengths.any(|v| v != first) {
            return Err(GatewayError::BadFraming(
                "invalid or conflicting Content-Length",
            ));
        }
    }
    let mut encodings = req.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(first) = encodings.next()
        && (encodings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(GatewayError::BadFraming("unsupported Transfer-Encoding"));
    }
    Ok(())
}

/// Reads the whole request body, refusing it as soon as it is known to exceed `limit`
/// (from `Content-Length` before reading anything, or while reading a chunked body).
async fn read_body(session: &mut Session, limits: &Limits) -> Result<Bytes, GatewayError> {
    let limit = limits.max_body_bytes;
    let too_large = GatewayError::BodyTooLarge { limit };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && !session.is_http2() {
        session
            .write_continue_response()
            .await
            .map_err(|e| GatewayError::BodyIncomplete(format!("writing 100-continue: {e}")))?;
    }

    let read_all = async {
        let mut body = BodyBuf::with_size_hint(declared.unwrap_or(0));
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| GatewayError::BodyIncomplete(e.to_string()))?
        {
            if body.len() + chunk.len() > limit {
                return Err(GatewayError::BodyTooLarge { limit });
            }
            body.push(chunk);
        }
        Ok(body.finish())
    };
    match tokio::time::timeout(limits.body_read_timeout, read_all).await {
        Ok(result) => result,
        Err(_) => Err(GatewayError::BodyTimeout),
    }
}

/// Answers a failure: an OpenAI error if nothing was sent yet; inside an event stream, an
/// error event and the end of the stream; otherwise the connection is closed so the
/// client sees a truncated response rather than a complete-looking one.
async fn answer_failure(session: &mut Session, ctx: &RequestCtx, e: &GatewayError) {
    let f = &ctx.delivery;
    if f.client_gone {
        return;
    }
    if !f.response_started {
        if matches!(e, GatewayError::BadFraming(_)) {
            // Where the body ends is not known: nothing more is read from this connection.
            session.set_keepalive(None);
        }
        if let Err(write_err) = respond::error(session, e, &ctx.request_id, ctx.wire).await {
            tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not send the error response");
        }
        if !matches!(e, GatewayError::BadFraming(_)) {
            discard_unread_body(session).await;
        }
        return;
    }
    session.set_keepalive(None);
    if f.event_stream {
        let event = ctx.wire.stream_error(e);
        let _ = session.write_response_body(event, false).await;
        let _ = session.write_response_body(Bytes::new(), true).await;
    }
}

/// Bounds on reading and throwing away a refused body before the connection closes.
const LINGER_TOTAL: Duration = Duration::from_secs(2);
const LINGER_IDLE: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// After refusing a request whose body was not read, reads and discards what the client
/// is still sending, for a bounded time. Closing a socket with unread data makes the
/// kernel reset the connection, and the client may then lose the error response it has
/// not read yet (nginx calls this lingering close). Nothing is kept.
async fn discard_unread_body(session: &mut Session) {
    if session.is_body_done() {
        return;
    }
    let drain = async {
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match tokio::time::timeout(LINGER_IDLE, session.read_request_body()).await {
                Ok(Ok(Some(chunk))) => discarded += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TOTAL, drain).await;
}

/// The client's `x-request-id` if it is sane (short, token characters), else the
/// gateway's own id for the request.
fn request_id(session: &Session, own: &str) -> String {
    let given = session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    given.unwrap_or(own).to_owned()
}
