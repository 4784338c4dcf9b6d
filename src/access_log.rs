//! One line per request, written when the request is over. Errors are logged here, once,
//! with their detail (which the client never sees).

use pingora_error::Error;
use pingora_proxy::Session;

use crate::handler::RequestCtx;

pub fn write(session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let f = &ctx.forwarded;
    let error = ctx.error.as_ref();
    let client = session
        .client_addr()
        .map(ToString::to_string)
        .unwrap_or_default();
    let elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        client = %client,
        method = %req.method,
        path = %req.uri.path(),
        route = ctx.route,
        status,
        model = ctx.model.as_deref().unwrap_or(""),
        upstream_model = ctx.upstream_model.as_deref().unwrap_or(""),
        pool = ctx.pool.as_deref().unwrap_or(""),
        endpoint = f.endpoint.as_deref().unwrap_or(""),
        upstream_status = f.status.unwrap_or(0),
        response_bytes = f.response_bytes,
        client_gone = f.client_gone,
        error = error.map_or("", |e| e.code()),
        error_detail = %error.map(ToString::to_string).or_else(|| e.map(ToString::to_string)).unwrap_or_default(),
        elapsed_ms = format_args!("{elapsed_ms:.3}"),
        "request"
    );
}
