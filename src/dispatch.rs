//! Where an inference request goes, and what happens when an upstream fails.
//!
//! The catalog gives the candidates in order (the model's targets, then its fallbacks).
//! For each candidate's pool, the pool's strategy picks an endpoint among the usable ones
//! (up, breaker closed, not resting) and one attempt is made. A failure before the first
//! response byte reaches the client — connect error, timeout, 429, 5xx, an invalid or
//! oversized answer — is retried: on another endpoint of the pool while its retry policy
//! allows, then on the next candidate, within the request's attempt budget and deadline,
//! with jittered exponential backoff, honouring `retry-after`. Once a byte has gone to
//! the client nothing is retried. If every attempt failed, the client gets the last
//! upstream error response as it was, or the gateway's own error.
//!
//! A pool with a `queue` admits each attempt first (see `upstream::queue`): the attempt
//! holds a slot on its endpoint until it ends, and waits in the pool's queue, by its
//! caller's priority, while no endpoint has room. A saturated pool that cannot take the
//! request passes it to the next candidate, and its refusal is the error if none can.

use std::sync::Arc;
use std::time::Duration;

use crate::upstream::Connector;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, response};
use pingora_http::ResponseHeader;
use tokio::time::Instant;
use tollgate_plugin::Principal;

use crate::adapters::Translation;
use crate::catalog::Resolved;
use crate::config::{HashSource, Strategy};
use crate::error::GatewayError;
use crate::gateway::Session;
use crate::handler::RequestCtx;
use crate::headers::{
    self, Header, X_TOLLGATE_ATTEMPTS, X_TOLLGATE_ENDPOINT, X_TOLLGATE_MODEL, X_TOLLGATE_POOL,
};
use crate::openai::InferenceRequest;
use crate::state::State;
use crate::tokens;
use crate::upstream::breaker::Admit;
use crate::upstream::queue::{Ask, Entry, Priority, Slot, Waited};
use crate::upstream::{self, Attempt, Endpoint, Hints, Pool, Sent, StreamMode, balance};

/// Largest upstream error body kept to hand to the client.
const MAX_ERROR_BODY: usize = 1024 * 1024;
/// How long a key the upstream refused (401/403) is left aside.
const REFUSED_KEY_REST: Duration = Duration::from_secs(300);
/// How long a rate-limited key rests when the upstream does not say.
const DEFAULT_KEY_REST: Duration = Duration::from_secs(1);

/// One upstream attempt, for the access log.
#[derive(Debug)]
pub struct AttemptRecord {
    pub pool: Arc<Pool>,
    pub endpoint: usize,
    pub outcome: Outcome,
    pub took: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// The attempt failed with this error code (see `GatewayError::code`).
    Failed(&'static str),
    /// The client left during the attempt.
    ClientGone,
}

impl AttemptRecord {
    pub fn endpoint_name(&self) -> &str {
        &self.pool.endpoints[self.endpoint].spec.name
    }
}

/// What the last failed attempt left to tell the client.
enum LastFailure {
    Error(GatewayError),
    /// An upstream error response, read whole: the client's head for it and its body.
    Response(Box<response::Parts>, Bytes),
}

/// How a response status steers the attempt loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Success,
    /// Worth another attempt (elsewhere): throttled, overloaded or broken upstream.
    Retryable,
    /// The credential was refused: another key may do.
    KeyRefused,
    /// The answer stands (e.g. 400 for a bad request): goes to the client as is.
    Final,
}

fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        408 | 429 | 500 | 502 | 503 | 504 | 529 => Class::Retryable,
        401 | 403 => Class::KeyRefused,
        _ => Class::Final,
    }
}

/// Answers `req` from the first candidate that can; see the module doc.
pub async fn dispatch(
    state: &State,
    connector: &Connector,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &InferenceRequest,
) -> Result<(), GatewayError> {
    let candidates = state
        .catalog
        .candidates(&req.model)
        .ok_or_else(|| GatewayError::UnknownModel(req.model.clone()))?;
    let routing = state.config.routing;
    let deadline = Instant::now() + routing.deadline.saturating_sub(ctx.started.elapsed());
    let mut prompt_tokens: Option<u64> = None;
    let mut too_long: Option<(u64, u64)> = None;
    let mut last: Option<LastFailure> = None;
    let mut made = 0u32;
    let traceparent = ctx.trace.traceparent();
    // Usage is always asked for, so that every stream is accounted; the client sees it
    // only if it asked.
    let stream_mode = StreamMode {
        strip_usage: req.needs_usage_requested(),
        keep_text: state.accounting,
    };

    'candidates: for c in candidates {
        if let Some(window) = c.context_window
            && let Err(needed) = tokens::fits(req, window, &mut prompt_tokens)
        {
            {
                tracing::debug!(request_id = %ctx.request_id, model = c.model, needed, window, "skipped: context window");
                too_long = Some((needed, window));
                continue;
            }
        }
        let pool = &state.pools[c.pool];
        if pool.is_mock() {
            ctx.served(c);
            let extra = served_headers(ctx, &c, pool, None, 0);
            return upstream::mock_answer(
                session,
                pool,
                req,
                c.upstream_model,
                &ctx.request_id,
                &extra,
                &mut ctx.delivery,
            )
            .await;
        }
        let translation = Translation::new(req.api, pool.spec.provider);
        let body = match translation.request(
            req,
            c.upstream_model,
            stream_mode.strip_usage,
            &pool.spec,
        ) {
            Ok(body) => body,
            Err(e) => {
                // This pool cannot take the request as it is; another candidate may.
                tracing::debug!(request_id = %ctx.request_id, pool = %pool.spec.name, error = %e, "request not translatable for the pool");
                last = Some(LastFailure::Error(e));
                continue 'candidates;
            }
        };
        let hints = hints(pool, session, req);
        let policy = pool.spec.retry;
        let mut tried: Vec<usize> = Vec::new();
        let mut on_pool = 0;
        while on_pool < policy.attempts {
            if made >= routing.max_attempts {
                break 'candidates;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break 'candidates;
            }
            let principal = ctx.principal.as_ref();
            let (i, slot) = match admit(state, pool, session, principal, &hints, &tried, left).await
            {
                Admitted::Endpoint(i, slot) => (i, slot),
                Admitted::ClientGone => {
                    ctx.delivery.client_gone = true;
                    return Ok(());
                }
                Admitted::Saturated(e) => {
                    tracing::debug!(request_id = %ctx.request_id, pool = %pool.spec.name, error = %e, "pool saturated");
                    last = Some(LastFailure::Error(e));
                    continue 'candidates;
                }
                Admitted::NoUsableEndpoint => {
                    // Every endpoint is down, open or resting. A short rest is waited out.
                    match shortest_rest(pool) {
                        Some(wait) if wait <= policy.max_retry_after && wait < left => {
                            if !pause(session, wait).await {
                                ctx.delivery.client_gone = true;
                                return Ok(());
                            }
                            continue;
                        }
                        _ => {
                            last.get_or_insert_with(|| {
                                LastFailure::Error(GatewayError::NoHealthyUpstream {
                                    model: req.model.clone(),
                                    detail: format!(
                                        "pool `{}`: no usable endpoint",
                                        pool.spec.name
                                    ),
                                })
                            });
                            continue 'candidates;
                        }
                    }
                }
            };
            let endpoint = &pool.endpoints[i];
            let admitted = endpoint.breaker.as_ref().map(|b| b.admit());
            if admitted == Some(Admit::No) {
                // Opened between the pick and now.
                tried.push(i);
                if tried.len() >= pool.endpoints.len() {
                    continue 'candidates;
                }
                continue;
            }
            if made > 0 {
                let wait = backoff(policy.backoff, policy.max_backoff, made).min(left);
                if !pause(session, wait).await {
                    ctx.delivery.client_gone = true;
                    return Ok(());
                }
            }
            made += 1;
            on_pool += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = Attempt {
                pool,
                endpoint,
                api: req.api,
                wire: translation.upstream,
                body: body.clone(),
                request_id: &ctx.request_id,
                traceparent: &traceparent,
                header_wait: pool.spec.timeouts.first_byte.min(left),
            };
            let key = endpoint.keys().pick();
            let _in_flight = InFlight::enter(endpoint);
            let started = Instant::now();
            // Boxed: sending is over before a stream starts, and inline its state (4 KiB,
            // Pingora's connector mostly) would size the request's future for its whole life.
            let sent = Box::pin(upstream::send(
                connector,
                session,
                &attempt,
                key.map(|(_, k)| k),
            ))
            .await;
            let record = |ctx: &mut RequestCtx, outcome| {
                ctx.attempts.push(AttemptRecord {
                    pool: pool.clone(),
                    endpoint: i,
                    outcome,
                    took: started.elapsed(),
                });
            };
            let mut exchange = match sent {
                Err(e) => {
                    tracing::debug!(request_id = %ctx.request_id, pool = %pool.spec.name, endpoint = %endpoint.spec.name, error = %e, "attempt failed");
                    record(ctx, Outcome::Failed(e.code()));
                    breaker_record(pool, endpoint, admitted, false);
                    tried.push(i);
                    last = Some(LastFailure::Error(e));
                    continue;
                }
                Ok(Sent::ClientGone) => {
                    record(ctx, Outcome::ClientGone);
                    breaker_cancel(endpoint, admitted);
                    ctx.delivery.client_gone = true;
                    return Ok(());
                }
                Ok(Sent::Answer(exchange)) => exchange,
            };
            endpoint.traffic.record_latency(exchange.took);
            let status = exchange.status();
            let class = classify(status);

            if class == Class::Success && exchange.is_event_stream() {
                record(ctx, Outcome::Status(status));
                ctx.served(c);
                pool.balancer.served(&hints, i);
                let extra = served_headers(ctx, &c, pool, Some(endpoint), made);
                let delivered = upstream::deliver_stream(
                    connector,
                    session,
                    exchange,
                    pool,
                    &extra,
                    &ctx.request_id,
                    stream_mode,
                    translation.stream(req),
                    translation.client,
                    &mut ctx.delivery,
                )
                .await;
                if ctx.delivery.client_gone {
                    breaker_cancel(endpoint, admitted);
                } else {
                    breaker_record(pool, endpoint, admitted, delivered.is_ok());
                }
                return delivered;
            }

            // Everything else is read whole before the client sees any of it, so a bad
            // answer can still be retried.
            let cap = if class == Class::Success {
                pool.spec.max_response_bytes
            } else {
                MAX_ERROR_BODY.min(pool.spec.max_response_bytes)
            };
            let upstream_body = match exchange.read_all(session, pool, cap).await {
                Ok(Some(body)) => body,
                Ok(None) => {
                    record(ctx, Outcome::ClientGone);
                    breaker_cancel(endpoint, admitted);
                    ctx.delivery.client_gone = true;
                    return Ok(());
                }
                Err(e) => {
                    record(ctx, Outcome::Failed(e.code()));
                    breaker_record(pool, endpoint, admitted, false);
                    tried.push(i);
                    last = Some(LastFailure::Error(e));
                    continue;
                }
            };
            // The answer in the client's wire: a success translated (an answer that does
            // not translate is a broken one), an error reshaped.
            // Usage is read by parsing the whole body: an answer with usage is JSON.
            let usage = match class {
                Class::Success => translation.usage(&upstream_body),
                _ => None,
            };
            let (client_status, body) = if class == Class::Success {
                match check_json(pool, exchange.header(), &upstream_body, usage.is_some())
                    .and_then(|()| translation.response(upstream_body.clone()))
                {
                    Ok(body) => (status, body),
                    Err(e) => {
                        let e = e.in_pool(&pool.spec.name);
                        record(ctx, Outcome::Failed(e.code()));
                        breaker_record(pool, endpoint, admitted, false);
                        tried.push(i);
                        last = Some(LastFailure::Error(e));
                        continue;
                    }
                }
            } else {
                let upstream_body =
                    without_key(upstream_body.clone(), key.map(|(_, k)| k.expose()));
                translation.error(status, upstream_body)
            };
            record(ctx, Outcome::Status(status));
            let retry_after = retry_after(exchange.header());
            let retry = match (class, key) {
                (Class::Success | Class::Final, _) => false,
                (Class::KeyRefused, Some((k, _))) if endpoint.keys().has_other_than(k) => {
                    endpoint.keys().rest(k, REFUSED_KEY_REST);
                    true
                }
                (Class::KeyRefused, _) => false,
                (Class::Retryable, key) => {
                    match (status, key) {
                        (429, Some((k, _))) if endpoint.keys().has_other_than(k) => {
                            // Another key of the same endpoint may go at once.
                            endpoint
                                .keys()
                                .rest(k, retry_after.unwrap_or(DEFAULT_KEY_REST));
                        }
                        _ => {
                            if let Some(wait) = retry_after {
                                endpoint.rest(wait);
                            }
                            tried.push(i);
                        }
                    }
                    true
                }
            };
            // Throttling and refused keys say nothing against the endpoint's health.
            breaker_record(pool, endpoint, admitted, !matches!(status, 500..=599 | 408));
            if !retry {
                ctx.served(c);
                if class == Class::Success {
                    pool.balancer.served(&hints, i);
                    ctx.delivery.usage = usage;
                    if status == 200
                        && let Some(c) = ctx.delivery.capture.as_mut()
                    {
                        c.json(body.clone());
                    }
                }
                let extra = served_headers(ctx, &c, pool, Some(endpoint), made);
                let head = client_head(exchange.header(), client_status, ctx, extra.len())?;
                exchange.release(connector).await;
                // The endpoint is done with it; the client's download needs no slot.
                drop(slot);
                return upstream::deliver_whole(
                    session,
                    head,
                    body,
                    &extra,
                    &ctx.request_id,
                    &mut ctx.delivery,
                )
                .await;
            }
            tracing::debug!(request_id = %ctx.request_id, pool = %pool.spec.name, endpoint = %endpoint.spec.name, status, "attempt refused; retrying");
            let extra = 1 + ctx.admit_headers.len();
            let head = Box::new(client_head(exchange.header(), client_status, ctx, extra)?);
            exchange.release(connector).await;
            last = Some(LastFailure::Response(head, body));
        }
    }

    match last {
        Some(LastFailure::Response(head, body)) => {
            let mut extra = vec![(X_TOLLGATE_ATTEMPTS, HeaderValue::from(made))];
            extra.extend(ctx.admit_headers.iter().cloned());
            upstream::deliver_whole(
                session,
                *head,
                body,
                &extra,
                &ctx.request_id,
                &mut ctx.delivery,
            )
            .await
        }
        Some(LastFailure::Error(e)) => Err(e),
        None => match too_long {
            Some((tokens, window)) => Err(GatewayError::ContextTooLong { tokens, window }),
            None => Err(GatewayError::NoHealthyUpstream {
                model: req.model.clone(),
                detail: "no attempt could be made within the request's budget".into(),
            }),
        },
    }
}

impl RequestCtx {
    fn served(&mut self, c: Resolved<'_>) {
        self.served_model = Some(c.model.to_owned());
        self.upstream_model = Some(c.upstream_model.to_owned());
    }
}

/// Where an attempt may go on a pool.
enum Admitted<'a> {
    /// Endpoint `i`, with its slot when the pool queues.
    Endpoint(usize, Option<Slot<'a>>),
    /// No endpoint is usable (down, open or resting).
    NoUsableEndpoint,
    /// The pool is at capacity and the request cannot wait (longer) for room.
    Saturated(GatewayError),
    /// The client left while the request waited.
    ClientGone,
}

/// Picks the endpoint for an attempt: at once on a pool without a queue; on a pool with
/// one, an endpoint with room, waiting in the pool's queue by the caller's priority until
/// one has room, the wait runs out, or the client leaves.
async fn admit<'a>(
    state: &'a State,
    pool: &'a Pool,
    session: &mut Session,
    principal: Option<&Principal>,
    hints: &Hints,
    tried: &[usize],
    left: Duration,
) -> Admitted<'a> {
    let pick = || match pool.pick(hints, tried) {
        Some(i) => Admitted::Endpoint(i, None),
        None => Admitted::NoUsableEndpoint,
    };
    let Some(queue) = pool.queue() else {
        return pick();
    };
    let (index, class) = state.config.priorities.class_of(principal);
    let ask = Ask {
        hints: *hints,
        tried,
        caller: principal.map_or("anonymous", |p| p.id.as_str()),
    };
    let saturated = |cause| {
        let retry_after = queue.settings().retry_after;
        Admitted::Saturated(GatewayError::saturated(
            &pool.spec.name,
            cause,
            class.sheddable,
            retry_after,
        ))
    };
    let Some(entry) = pool.admit(&ask, Priority { class, index }) else {
        return pick();
    };
    let ticket = match entry {
        Entry::Slot(slot) => return Admitted::Endpoint(slot.endpoint(), Some(slot)),
        Entry::NoUsableEndpoint => return Admitted::NoUsableEndpoint,
        Entry::Refused(cause) => return saturated(cause),
        Entry::Queued(ticket) => ticket,
    };
    // Dropping the wait (the client left) leaves the queue at once.
    let waited = tokio::select! {
        waited = ticket.wait(left) => waited,
        _ = session.read_body_or_idle(true) => return Admitted::ClientGone,
    };
    match waited {
        Waited::Slot(slot) => Admitted::Endpoint(slot.endpoint(), Some(slot)),
        Waited::NoUsableEndpoint => Admitted::NoUsableEndpoint,
        Waited::Refused(cause) => saturated(cause),
    }
}

/// The response headers that say what served the request.
/// Plus the headers the plugins asked for at admission. A `mock` pool has no endpoint
/// and makes no upstream attempt.
fn served_headers(
    ctx: &RequestCtx,
    c: &Resolved<'_>,
    pool: &Pool,
    endpoint: Option<&Endpoint>,
    attempts: u32,
) -> Vec<Header> {
    let mut h = Vec::with_capacity(4 + ctx.admit_headers.len());
    let names = [
        (X_TOLLGATE_MODEL, c.model),
        (X_TOLLGATE_POOL, pool.spec.name.as_str()),
    ];
    let endpoint = endpoint.map(|e| (X_TOLLGATE_ENDPOINT, e.spec.name.as_str()));
    for (name, text) in names.into_iter().chain(endpoint) {
        if let Some(value) = headers::text(text) {
            h.push((name, value));
        }
    }
    h.push((X_TOLLGATE_ATTEMPTS, HeaderValue::from(attempts)));
    h.extend(ctx.admit_headers.iter().cloned());
    h
}

/// What the pool's strategy needs from the request, and nothing more.
fn hints(pool: &Pool, session: &Session, req: &InferenceRequest) -> Hints {
    let balance = &pool.spec.balance;
    match balance.strategy {
        Strategy::ConsistentHash => {
            let headers = &session.req_header().headers;
            let key = balance.hash_on.iter().find_map(|source| match source {
                HashSource::Header(name) => headers
                    .get(name.as_str())
                    .map(|v| v.as_bytes())
                    .filter(|v| !v.is_empty()),
                HashSource::BodyUser => req.user.as_deref().map(str::as_bytes),
            });
            Hints {
                session: key.map(balance::session_hash),
                prefix: None,
            }
        }
        Strategy::LoadAware => {
            let input = req.input();
            let prefix = &input[..input.len().min(balance.load.prefix_bytes)];
            Hints {
                session: None,
                prefix: (!prefix.is_empty()).then(|| balance::prefix_hash(prefix)),
            }
        }
        _ => Hints::default(),
    }
}

/// The client's head for an upstream answer, with the status the client gets (a translated
/// error's may differ, e.g. Anthropic's 529 is a 503 to OpenAI clients).
fn client_head(
    header: &ResponseHeader,
    status: u16,
    ctx: &RequestCtx,
    extra: usize,
) -> Result<response::Parts, GatewayError> {
    let status = StatusCode::from_u16(status)
        .map_err(|e| GatewayError::Internal(format!("setting the status {status}: {e}")))?;
    Ok(upstream::client_head(
        header,
        status,
        &ctx.request_id,
        extra,
    ))
}

/// A 2xx body must be the JSON the API promises; anything else is a broken upstream.
/// `parsed`: the body is already known to be JSON (it was parsed whole).
fn check_json(
    pool: &Pool,
    header: &ResponseHeader,
    body: &[u8],
    parsed: bool,
) -> Result<(), GatewayError> {
    let content_type = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let broken = |detail: String| GatewayError::UpstreamProtocol {
        pool: pool.spec.name.clone(),
        detail,
    };
    if !content_type.is_empty() && !content_type.contains("json") {
        return Err(broken(format!(
            "a 2xx answer of type `{content_type}`, not JSON"
        )));
    }
    if parsed {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| broken(format!("the answer is not valid JSON: {e}")))
}

/// The upstream's `retry-after-ms` or `retry-after` (seconds or an HTTP date).
fn retry_after(header: &ResponseHeader) -> Option<Duration> {
    let text = |name: &str| header.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// How long until the first resting (but otherwise usable) endpoint takes traffic.
fn shortest_rest(pool: &Pool) -> Option<Duration> {
    pool.endpoints
        .iter()
        .filter(|e| e.health.is_up() && e.breaker.as_ref().is_none_or(|b| b.available()))
        .map(|e| e.resting_for())
        .filter(|d| !d.is_zero())
        .min()
}

/// Full-jitter exponential backoff before attempt `made + 1`.
fn backoff(base: Duration, max: Duration, made: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << made.saturating_sub(1).min(16))
        .min(max);
    ceiling.mul_f64(fastrand::f64())
}

/// Waits `wait` unless the client leaves first; `false` if it did.
async fn pause(session: &mut Session, wait: Duration) -> bool {
    if wait.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = session.read_body_or_idle(true) => false,
    }
}

fn breaker_record(pool: &Pool, endpoint: &Endpoint, admitted: Option<Admit>, ok: bool) {
    if let (Some(b), Some(a)) = (&endpoint.breaker, admitted)
        && let Some(change) = b.record(a, ok)
    {
        change.log(&pool.spec.name, &endpoint.spec.name);
    }
}

/// The attempt ended without telling anything about the endpoint (the client left).
fn breaker_cancel(endpoint: &Endpoint, admitted: Option<Admit>) {
    if let (Some(b), Some(a)) = (&endpoint.breaker, admitted) {
        b.cancel(a);
    }
}

/// Counts a request in flight on an endpoint for as long as it lives.
struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    fn enter(endpoint: &'a Endpoint) -> Self {
        endpoint
            .traffic
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .traffic
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An upstream's error body with the provider key the attempt carried blanked out: some
/// upstreams echo the credential they refused, and a client must never see it.
fn without_key(body: Bytes, key: Option<&str>) -> Bytes {
    let Some(key) = key.filter(|k| k.len() >= 8) else {
        return body;
    };
    let key = key.as_bytes();
    if memchr::memmem::find(&body, key).is_none() {
        return body;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = &body[..];
    while let Some(at) = memchr::memmem::find(rest, key) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"[redacted]");
        rest = &rest[at + key.len()..];
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_keys_echoed_in_error_bodies_are_blanked() {
        let key = "sk-provider-0123456789";
        let body = Bytes::from(format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}. Again: {key}"}}}}"#
        ));
        let out = without_key(body, Some(key));
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains(key), "{text}");
        assert_eq!(text.matches("[redacted]").count(), 2);
        let clean = Bytes::from_static(b"{\"error\":{\"message\":\"rate limited\"}}");
        assert_eq!(without_key(clean.clone(), Some(key)), clean);
        assert_eq!(without_key(clean.clone(), None), clean);
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(200), Class::Success);
        assert_eq!(classify(429), Class::Retryable);
        assert_eq!(classify(503), Class::Retryable);
        assert_eq!(classify(529), Class::Retryable);
        assert_eq!(classify(401), Class::KeyRefused);
        assert_eq!(classify(400), Class::Final);
        assert_eq!(classify(404), Class::Final);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = ResponseHeader::build(429, None).unwrap();
        assert_eq!(retry_after(&h), None);
        h.insert_header("retry-after", "2").unwrap();
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert_header("retry-after-ms", "150").unwrap();
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = ResponseHeader::build(429, None).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert_header("retry-after", httpdate::fmt_http_date(later))
            .unwrap();
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert_header("retry-after", "soon").unwrap();
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for made in 1..20 {
            let d = backoff(base, max, made);
            let ceiling = (base * 2u32.pow((made - 1).min(16))).min(max);
            assert!(d <= ceiling, "{made}: {d:?} > {ceiling:?}");
        }
    }
}
