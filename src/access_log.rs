//! One JSON object per request, on one line, written when the request is over to where
//! `log.access` says (stderr, stdout, a file, or nowhere). Errors are logged here, once,
//! with their detail (which the client never sees).
//!
//! The line is serialized straight from the request's facts into a reused buffer and
//! written with one call: a tenth of the CPU of a JSON `tracing` layer per request.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;

use pingora_error::Error;
use pingora_proxy::Session;
use serde::Serialize;

use crate::dispatch::{AttemptRecord, Outcome};
use crate::handler::RequestCtx;

/// Where access-log lines go; unset (tests, `--validate`): nowhere.
static SINK: OnceLock<File> = OnceLock::new();

/// Sets where lines go (once, at start; later calls are ignored): a file, or a duplicate
/// of the stderr or stdout descriptor. Lines are written to it directly, not through
/// `std::io::Stderr`, whose lock the worker threads would contend for on every request;
/// each line is one `write`, which the kernel does not interleave with others.
pub fn set_sink(sink: File) {
    let _ = SINK.set(sink);
}

/// One access-log line.
#[derive(Serialize)]
struct Line<'a> {
    timestamp: Shown<humantime::Rfc3339Timestamp>,
    level: &'static str,
    target: &'static str,
    message: &'static str,
    request_id: &'a str,
    trace_id: &'a str,
    client: Shown<OrEmpty<&'a pingora_core::protocols::l4::socket::SocketAddr>>,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    key_id: &'a str,
    team: &'a str,
    status: u16,
    model: &'a str,
    upstream_model: &'a str,
    served_model: &'a str,
    pool: &'a str,
    endpoint: &'a str,
    attempts: usize,
    attempt_log: Shown<AttemptLog<'a>>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    usage_estimated: bool,
    cache: &'a str,
    cost_usd: Option<f64>,
    ttft_ms: Option<f64>,
    response_bytes: u64,
    client_gone: bool,
    error: &'a str,
    error_type: &'a str,
    error_detail: String,
    elapsed_ms: f64,
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

pub fn write(session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    let Some(sink) = SINK.get() else { return };
    let req = session.req_header();
    let f = &ctx.delivery;
    let last = ctx.attempts.last();
    // What was charged (the gateway's count for a stream cut short), else what the
    // upstream reported.
    let usage = ctx.usage().unwrap_or_default();
    let error = ctx.error.as_ref();
    let millis = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let line = Line {
        timestamp: Shown(humantime::format_rfc3339_micros(
            std::time::SystemTime::now(),
        )),
        level: "INFO",
        target: "access",
        message: "request",
        request_id: &ctx.request_id,
        trace_id: &ctx.trace.trace_id,
        client: Shown(OrEmpty(session.client_addr())),
        method: req.method.as_str(),
        path: req.uri.path(),
        route: ctx.route,
        key_id: ctx.principal.as_ref().map_or("", |p| p.id.as_str()),
        team: ctx
            .principal
            .as_ref()
            .and_then(|p| p.team.as_deref())
            .unwrap_or(""),
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        model: ctx.model.as_deref().unwrap_or(""),
        upstream_model: ctx.upstream_model.as_deref().unwrap_or(""),
        served_model: ctx.served_model.as_deref().unwrap_or(""),
        pool: last.map_or("", |a| a.pool.spec.name.as_str()),
        endpoint: last.map_or("", |a| a.endpoint_name()),
        attempts: ctx.attempts.len(),
        attempt_log: Shown(AttemptLog(&ctx.attempts)),
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        cached_tokens: usage.cached,
        reasoning_tokens: usage.reasoning,
        usage_estimated: ctx.usage_estimated,
        cache: ctx.cache.map_or("", |c| c.as_str()),
        cost_usd: ctx.cost_micro_usd.map(|m| m as f64 / 1e6),
        ttft_ms: f.ttft.map(millis),
        response_bytes: f.response_bytes,
        client_gone: f.client_gone,
        error: error.map_or("", |e| e.code()),
        error_type: error.map_or("", |e| e.kind()),
        error_detail: error
            .map(ToString::to_string)
            .or_else(|| e.map(ToString::to_string))
            .unwrap_or_default(),
        elapsed_ms: millis(ctx.started.elapsed()),
    };
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        if serde_json::to_writer(&mut *buf, &line).is_err() {
            return;
        }
        buf.push(b'\n');
        // One write per line, so lines from several threads never interleave.
        if let Err(e) = (&*sink).write_all(buf) {
            tracing::debug!(error = %e, "Writing the access log failed");
        }
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::with_capacity(1024);
        }
    });
}

/// A field written as its `Display` text, straight into the line (no `String` first).
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// The value's text, or nothing.
struct OrEmpty<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.as_ref().map_or(Ok(()), |v| v.fmt(f))
    }
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
