//! One JSON object per request, on one line, written when the request is over to where
//! `log.access` says (stderr, stdout, a file, or nowhere). Errors are logged here, once,
//! with their detail (which the client never sees).
//!
//! The line is serialized straight from the request's facts into a reused buffer and
//! written with one call: a tenth of the CPU of a JSON `tracing` layer per request.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let millis = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        let mut line = Fields(buf);
        line.string_with("timestamp", |b| push_timestamp(b, SystemTime::now()));
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
        line.string_with("attempt_log", |b| push_attempt_log(b, &ctx.attempts));
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
        self.string_with(key, |b| {
            let _ = write!(b, "{value}");
        });
    }

    /// A string field whose text `write` appends to the buffer, escaped afterwards if it
    /// needs to be.
    fn string_with(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        let start = self.0.len();
        write(self.0);
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

/// Every attempt as `pool/endpoint=status|error:ms`, `;`-separated, the time in tenths
/// of a millisecond.
fn push_attempt_log(buf: &mut Vec<u8>, attempts: &[AttemptRecord]) {
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            buf.push(b';');
        }
        buf.extend_from_slice(a.pool.spec.name.as_bytes());
        buf.push(b'/');
        buf.extend_from_slice(a.endpoint_name().as_bytes());
        buf.push(b'=');
        match a.outcome {
            Outcome::Status(s) => buf.extend_from_slice(itoa::Buffer::new().format(s).as_bytes()),
            Outcome::Failed(code) => buf.extend_from_slice(code.as_bytes()),
            Outcome::ClientGone => buf.extend_from_slice(b"client_gone"),
        }
        let tenths = (a.took.as_micros() + 50) / 100;
        buf.push(b':');
        buf.extend_from_slice(itoa::Buffer::new().format(tenths / 10).as_bytes());
        buf.push(b'.');
        buf.push(b'0' + (tenths % 10) as u8);
        buf.extend_from_slice(b"ms");
    }
}

/// The time as RFC 3339 in UTC with microseconds (`2026-11-23T11:50:26.123456Z`). Date
/// and time of day are formatted once a second per thread; each line adds the digits of
/// the microseconds.
fn push_timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let prefix = SECOND.with(|cached| {
        let (at, text) = cached.get();
        if at == secs {
            return text;
        }
        // `YYYY-MM-DDTHH:MM:SSZ`: the first 19 bytes are the second's text.
        let formatted =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        let mut text = [b'0'; 19];
        if let Some(head) = formatted.as_bytes().get(..19) {
            text.copy_from_slice(head);
        }
        cached.set((secs, text));
        text
    });
    buf.extend_from_slice(&prefix);
    buf.push(b'.');
    let micros = since.subsec_micros();
    for unit in [100_000, 10_000, 1_000, 100, 10, 1] {
        buf.push(b'0' + (micros / unit % 10) as u8);
    }
    buf.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_attempt_log_lists_each_attempt_with_its_time() {
        let yaml = "listeners: [{address: '127.0.0.1:0'}]\n\
                    models: {m: {targets: [{pool: a}]}}\n\
                    pools: {a: {provider: openai, endpoints: [{url: 'http://127.0.0.1:1/v1'}], health_check: {enabled: false}}}\n";
        let config = crate::config::parse(yaml, "test.yaml", std::path::Path::new("."), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        let state = crate::state::State::build_for_test(config).unwrap();
        let pool = state.pools[0].clone();
        let record = |outcome, micros| AttemptRecord {
            pool: pool.clone(),
            endpoint: 0,
            outcome,
            took: Duration::from_micros(micros),
        };
        let attempts = [
            record(Outcome::Failed("upstream_timeout"), 15_960),
            record(Outcome::ClientGone, 0),
            record(Outcome::Status(200), 1_234),
        ];
        let mut buf = Vec::new();
        push_attempt_log(&mut buf, &attempts);
        let e = attempts[0].endpoint_name();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            format!("a/{e}=upstream_timeout:16.0ms;a/{e}=client_gone:0.0ms;a/{e}=200:1.2ms")
        );
        let mut buf = Vec::new();
        push_attempt_log(&mut buf, &[]);
        assert!(buf.is_empty());
    }

    #[test]
    fn timestamps_read_as_rfc3339_with_microseconds() {
        for at in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789),
            UNIX_EPOCH + Duration::new(1_795_000_000, 999_999),
            UNIX_EPOCH + Duration::new(1_795_000_001, 7_000),
            SystemTime::now(),
        ] {
            let mut buf = Vec::new();
            push_timestamp(&mut buf, at);
            let expected = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(String::from_utf8(buf).unwrap(), expected);
        }
    }

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
