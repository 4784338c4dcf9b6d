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

use crate::dispatch::{AttemptRecord, Outcome};
use crate::gateway::Session;
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

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

pub fn write(session: &Session, ctx: &RequestCtx) {
    let Some(sink) = SINK.get() else { return };
    let req = session.req_header();
    let f = &ctx.delivery;
    let last = ctx.attempts.last();
    // What was charged (the gateway's count for a stream cut short), else what the
    // upstream reported.
    let usage = ctx.usage().unwrap_or_default();
    let error = ctx.error.as_ref();
    let millis = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        let mut line = Fields(buf);
        line.text(
            "timestamp",
            humantime::format_rfc3339_micros(std::time::SystemTime::now()),
        );
        line.str("level", "INFO");
        line.str("target", "access");
        line.str("message", "request");
        line.str("request_id", &ctx.request_id);
        line.str("trace_id", &ctx.trace.trace_id);
        line.text("client", OrEmpty(session.client_addr()));
        line.str("method", req.method.as_str());
        line.str("path", req.uri.path());
        line.str("route", ctx.route);
        let principal = ctx.principal.as_ref();
        line.str("key_id", principal.map_or("", |p| p.id.as_str()));
        line.str(
            "team",
            principal.and_then(|p| p.team.as_deref()).unwrap_or(""),
        );
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        line.int("status", status.into());
        line.str("model", ctx.model.as_deref().unwrap_or(""));
        line.str(
            "upstream_model",
            ctx.upstream_model.as_deref().unwrap_or(""),
        );
        line.str("served_model", ctx.served_model.as_deref().unwrap_or(""));
        line.str("pool", last.map_or("", |a| a.pool.spec.name.as_str()));
        line.str("endpoint", last.map_or("", |a| a.endpoint_name()));
        line.int("attempts", ctx.attempts.len() as u64);
        line.text("attempt_log", AttemptLog(&ctx.attempts));
        line.int("prompt_tokens", usage.prompt);
        line.int("completion_tokens", usage.completion);
        line.int("cached_tokens", usage.cached);
        line.int("reasoning_tokens", usage.reasoning);
        line.bool("usage_estimated", ctx.usage_estimated);
        line.str("cache", ctx.cache.map_or("", |c| c.as_str()));
        line.float("cost_usd", ctx.cost_micro_usd.map(|m| m as f64 / 1e6));
        line.float("ttft_ms", f.ttft.map(millis));
        line.int("response_bytes", f.response_bytes);
        line.bool("client_gone", f.client_gone);
        line.str("error", error.map_or("", |e| e.code()));
        line.str("error_type", error.map_or("", |e| e.kind()));
        match error {
            Some(detail) => line.text("error_detail", detail),
            None => line.str("error_detail", ""),
        }
        line.float("elapsed_ms", Some(millis(ctx.started.elapsed())));
        buf.extend_from_slice(b"}\n");
        // One write per line, so lines from several threads never interleave.
        if let Err(e) = (&*sink).write_all(buf) {
            tracing::debug!(error = %e, "Writing the access log failed");
        }
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::with_capacity(1024);
        }
    });
}

/// Writes a JSON object field by field into a buffer, in the order given. Strings that
/// need no escaping (nearly all) are copied as they are; the others go through
/// `serde_json`. (A derived `Serialize` costs about twice as much per line.)
struct Fields<'b>(&'b mut Vec<u8>);

impl Fields<'_> {
    fn key(&mut self, key: &'static str) {
        self.0.push(if self.0.is_empty() { b'{' } else { b',' });
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        if needs_escape(value.as_bytes()) {
            let _ = serde_json::to_writer(&mut *self.0, value);
        } else {
            self.0.push(b'"');
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(b'"');
        }
    }

    /// A string field from a value's `Display` text, written without a `String` first.
    fn text(&mut self, key: &'static str, value: impl std::fmt::Display) {
        self.key(key);
        let start = self.0.len();
        let _ = write!(self.0, "{value}");
        if needs_escape(&self.0[start..]) {
            let raw = self.0.split_off(start);
            let _ = serde_json::to_writer(&mut *self.0, &String::from_utf8_lossy(&raw));
        } else {
            self.0.insert(start, b'"');
            self.0.push(b'"');
        }
    }

    fn int(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.0
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// A number, or `null` for none (or for a value JSON cannot hold).
    fn float(&mut self, key: &'static str, value: Option<f64>) {
        self.key(key);
        let _ = serde_json::to_writer(&mut *self.0, &value);
    }
}

/// Whether a JSON string needs escapes: a quote, a backslash or a control character.
fn needs_escape(text: &[u8]) -> bool {
    text.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_make_one_json_object_whatever_the_text() {
        let mut buf = Vec::new();
        let mut line = Fields(&mut buf);
        line.str("plain", "abc é");
        line.str("escaped", "a\"b\\c\nd\u{1}");
        line.text("shown", format_args!("x{}y", "\"q\""));
        line.text("shown_plain", 42);
        line.text("empty", OrEmpty(None::<u8>));
        line.int("n", u64::MAX);
        line.bool("b", true);
        line.float("f", Some(1.5));
        line.float("nan", Some(f64::NAN));
        line.float("none", None);
        buf.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "plain": "abc é", "escaped": "a\"b\\c\nd\u{1}", "shown": "x\"q\"y",
                "shown_plain": "42", "empty": "", "n": u64::MAX, "b": true, "f": 1.5,
                "nan": null, "none": null,
            })
        );
        assert!(buf.starts_with(br#"{"plain":"#), "fields keep their order");
    }
}
