//! One line per request, written when the request is over. Errors are logged here, once,
//! with their detail (which the client never sees).

use pingora_error::Error;
use pingora_proxy::Session;

use crate::dispatch::{AttemptRecord, Outcome};
use crate::handler::RequestCtx;

pub fn write(session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let f = &ctx.delivery;
    let last = ctx.attempts.last();
    // What was charged (the gateway's count for a stream cut short), else what the
    // upstream reported.
    let usage = ctx.usage().unwrap_or_default();
    let error = ctx.error.as_ref();
    let client = session
        .client_addr()
        .map(ToString::to_string)
        .unwrap_or_default();
    let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        trace_id = %ctx.trace.trace_id,
        client = %client,
        method = %req.method,
        path = %req.uri.path(),
        route = ctx.route,
        key_id = ctx.principal.as_ref().map_or("", |p| p.id.as_str()),
        team = ctx.principal.as_ref().and_then(|p| p.team.as_deref()).unwrap_or(""),
        status,
        model = ctx.model.as_deref().unwrap_or(""),
        upstream_model = ctx.upstream_model.as_deref().unwrap_or(""),
        served_model = ctx.served_model.as_deref().unwrap_or(""),
        pool = last.map_or("", |a| a.pool.spec.name.as_str()),
        endpoint = last.map_or("", |a| a.endpoint_name()),
        attempts = ctx.attempts.len(),
        attempt_log = %AttemptLog(&ctx.attempts),
        prompt_tokens = usage.prompt,
        completion_tokens = usage.completion,
        cached_tokens = usage.cached,
        reasoning_tokens = usage.reasoning,
        usage_estimated = ctx.usage_estimated,
        cache = ctx.cache.map_or("", |c| c.as_str()),
        cost_usd = %ctx.cost_micro_usd.map(|m| format!("{:.6}", m as f64 / 1e6)).unwrap_or_default(),
        ttft_ms = %f.ttft.map(|t| format!("{:.3}", t.as_secs_f64() * 1000.0)).unwrap_or_default(),
        response_bytes = f.response_bytes,
        client_gone = f.client_gone,
        error = error.map_or("", |e| e.code()),
        error_type = error.map_or("", |e| e.kind()),
        error_detail = %error.map(ToString::to_string).or_else(|| e.map(ToString::to_string)).unwrap_or_default(),
        elapsed_ms = format_args!("{elapsed_ms:.3}"),
        "request"
    );
}

/// Every attempt as `pool/endpoint=status|error:ms`, `;`-separated.
struct AttemptLog<'a>(&'a [AttemptRecord]);

impl std::fmt::Display for AttemptLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{}/{}=", a.pool.spec.name, a.endpoint_name())?;
            match a.outcome {
                Outcome::Status(s) => write!(f, "{s}")?,
                Outcome::Failed(code) => f.write_str(code)?,
                Outcome::ClientGone => f.write_str("client_gone")?,
            }
            write!(f, ":{:.1}ms", a.took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}
