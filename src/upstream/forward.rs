//! One attempt with an upstream endpoint: send the (rewritten) request and read the
//! response header ([`send`]); then either read the whole body and send it on
//! ([`Exchange::read_all`], [`deliver_whole`]) or stream it through as it arrives
//! ([`deliver_stream`]). Choosing between them, and between attempts, is `dispatch`'s.
//!
//! The gateway reads the request body itself (to route on `model`), so it also drives the
//! upstream side itself, over connections from its own [`Connector`](super::Connector),
//! instead of Pingora's proxy loop, whose body replay stops at 64 KiB. Bodies of any size
//! up to the configured limit take the same path.

use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::upstream::Connector;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, StatusCode, response};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::v1;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::peer::UpstreamPeer;
use super::{Endpoint, Pool};
use crate::adapters::{ClientEvent, StreamAdapter, Wire};
use crate::body::BodyBuf;
use crate::config::Secret;
use crate::error::GatewayError;
use crate::gateway::Session;
use crate::headers::{self, Header, TRACEPARENT, X_REQUEST_ID, X_UPSTREAM_REQUEST_ID};
use crate::openai::{Api, SseParser, Usage, append_generated_text, is_usage_only_chunk, put_event};
use crate::request_metrics::StreamTimer;

/// How long an idle upstream connection stays in the pool.
const POOLED_IDLE: Duration = Duration::from_secs(60);

/// Hop-by-hop headers: they describe one connection and never cross the gateway.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// Client request headers never sent upstream besides [`HOP_BY_HOP`]: the client's own
/// credentials (the pool's replace them), headers the gateway sets itself, and account
/// headers that would not match the gateway's credential.
const DROP_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "expect",
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "traceparent",
];

/// Upstream response headers never passed to the client besides [`HOP_BY_HOP`]: cookies
/// and account details of the gateway's credential, and the request id (the gateway's own
/// replaces it; the upstream's is kept as `x-upstream-request-id`).
const DROP_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "openai-organization",
    "openai-project",
    "x-request-id",
];

fn keeps(name: &str, dropped: &[&str]) -> bool {
    !HOP_BY_HOP.contains(&name) && !dropped.contains(&name)
}

/// How a response went to the client, for the access log and the error path.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The response header has gone to the client: errors can no longer change it.
    pub response_started: bool,
    /// The response is an SSE stream.
    pub event_stream: bool,
    /// The client went away before the response was complete; the upstream request was
    /// cancelled.
    pub client_gone: bool,
    pub response_bytes: u64,
    /// Token usage the upstream reported.
    pub usage: Option<Usage>,
    /// What a stream generated so far, kept when accounting may need to count it (a
    /// stream cut short reports no usage).
    pub generated: Option<String>,
    /// A copy of the answer for the response cache, when it is to be stored.
    pub capture: Option<crate::cache::Capture>,
    /// Streams: from sending the upstream request to its first body chunk.
    pub ttft: Option<Duration>,
}

/// How a stream is passed on.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamMode {
    /// The gateway asked for usage the client did not: the usage-only chunk is kept
    /// from the client.
    pub strip_usage: bool,
    /// Keep the generated text (see [`Delivery::generated`]).
    pub keep_text: bool,
}

/// One attempt: which endpoint, which request, how long it may wait for a header.
pub struct Attempt<'a> {
    pub pool: &'a Pool,
    pub endpoint: &'a Endpoint,
    pub api: Api,
    /// What the pool speaks: decides the path and the credential headers.
    pub wire: Wire,
    pub body: Bytes,
    pub request_id: &'a str,
    /// The `traceparent` sent upstream (see [`crate::trace`]).
    pub traceparent: &'a str,
    /// The longest wait for the response header: the pool's first-byte timeout, cut to
    /// what is left of the request's deadline.
    pub header_wait: Duration,
}

/// An upstream response whose header has arrived and whose body has not been read.
pub struct Exchange {
    conn: HttpSession,
    peer: UpstreamPeer,
    /// From sending the request to the response header.
    pub took: Duration,
}

/// What sending a request got.
pub enum Sent {
    Answer(Box<Exchange>),
    /// The client left while the upstream was thinking; the request was cancelled.
    ClientGone,
}

/// Sends the request and waits for the response header. Every error here happened
/// before anything reached the client, so another attempt may follow.
pub async fn send(
    connector: &Connector,
    session: &mut Session,
    a: &Attempt<'_>,
    key: Option<&Secret>,
) -> Result<Sent, GatewayError> {
    let pool = a.pool;
    let unreachable = |detail: String| GatewayError::UpstreamUnreachable {
        pool: pool.spec.name.clone(),
        detail,
    };
    let addr = a.endpoint.addrs.pick().await.map_err(&unreachable)?;
    let peer = pool.peer(a.endpoint, addr, POOLED_IDLE);
    let mut request = Some(request_header(session.req_header(), a, key)?);
    let started = Instant::now();
    let deadline = started + a.header_wait;

    // A pooled connection may have been closed by the upstream while idle; that shows
    // only when it is used. Such a failure, before any response byte, is retried once
    // on a fresh connection.
    for _ in 0..2 {
        let (conn, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| connect_error(pool, &e))?;
        let exchange = fast_timeout(
            deadline.saturating_duration_since(Instant::now()),
            // Only a reused connection may need a second try, and so its own copy.
            send_and_read_header(
                conn,
                &peer,
                if reused {
                    request.clone()
                } else {
                    request.take()
                },
                a.body.clone(),
            ),
        );
        // A client that leaves while the upstream is still thinking cancels it too.
        let sent = tokio::select! {
            sent = exchange => sent,
            _ = session.read_body_or_idle(true) => {
                return Ok(Sent::ClientGone);
            }
        };
        match sent {
            Ok(Ok(conn)) if conn.response_header().is_none() => {
                return Err(GatewayError::Internal(
                    "no response header after reading it".into(),
                ));
            }
            Ok(Ok(conn)) => {
                return Ok(Sent::Answer(Box::new(Exchange {
                    conn,
                    peer,
                    took: started.elapsed(),
                })));
            }
            Ok(Err(e)) if reused => {
                tracing::debug!(request_id = a.request_id, error = %e, "reused upstream connection failed; retrying on a new one");
            }
            Ok(Err(e)) => return Err(exchange_error(pool, &e, "sending the request")),
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout {
                    pool: pool.spec.name.clone(),
                    detail: format!("no response header within {:?}", a.header_wait),
                });
            }
        }
    }
    Err(unreachable(
        "the connection failed twice before a response".into(),
    ))
}

impl Exchange {
    #[allow(
        clippy::expect_used,
        reason = "`send` returns an exchange only once the header was read"
    )]
    pub fn header(&self) -> &ResponseHeader {
        self.conn
            .response_header()
            .expect("an exchange has a response header")
    }

    pub fn status(&self) -> u16 {
        self.header().status.as_u16()
    }

    pub fn is_event_stream(&self) -> bool {
        self.header()
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    /// Reads the whole body, at most `cap` bytes, within the pool's idle and total
    /// timeouts; `None` if the client left meanwhile.
    pub async fn read_all(
        &mut self,
        session: &mut Session,
        pool: &Pool,
        cap: usize,
    ) -> Result<Option<Bytes>, GatewayError> {
        let t = pool.spec.timeouts;
        let deadline = Instant::now() + t.total;
        let mut body = BodyBuf::default();
        loop {
            let read = tokio::select! {
                read = read_chunk(&mut self.conn, pool, t.idle, deadline) => read?,
                _ = session.read_body_or_idle(true) => return Ok(None),
            };
            let Some(chunk) = read else { break };
            if body.len() + chunk.len() > cap {
                return Err(GatewayError::UpstreamProtocol {
                    pool: pool.spec.name.clone(),
                    detail: format!("response larger than max_response_bytes ({cap})"),
                });
            }
            body.push(chunk);
            if self.conn.response_done() {
                break;
            }
        }
        Ok(Some(body.finish()))
    }

    /// Returns the connection to the pool if the response was read to its end.
    pub async fn release(mut self: Box<Self>, connector: &Connector) {
        if self.conn.response_done() {
            // Pingora's release is a 5 KiB future, and the exchange half a KiB more: boxed,
            // they do not size the future of every request, streams held open included.
            Box::pin(async move {
                let Exchange { conn, peer, .. } = *self;
                connector
                    .release_http_session(conn, &peer, POOLED_IDLE)
                    .await;
            })
            .await;
        }
    }
}

/// One body chunk within the idle timeout and the deadline; `None` at the end.
async fn read_chunk(
    conn: &mut HttpSession,
    pool: &Pool,
    idle: Duration,
    deadline: Instant,
) -> Result<Option<Bytes>, GatewayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    // The coarse timer may fire a millisecond or so either side of the wait, so which
    // limit ran out is told by which was the shorter.
    match fast_timeout(idle.min(left), conn.read_response_body()).await {
        Err(_) => Err(GatewayError::UpstreamTimeout {
            pool: pool.spec.name.clone(),
            detail: if left <= idle {
                format!(
                    "response not complete within {:?}",
                    pool.spec.timeouts.total
                )
            } else {
                format!("no data for {idle:?}")
            },
        }),
        Ok(Err(e)) => Err(exchange_error(pool, &e, "reading the response body")),
        Ok(Ok(chunk)) => Ok(chunk),
    }
}

/// Sends a response whose body was read whole: `head` (see [`client_head`]) with `extra`
/// headers, and the body with its length.
pub async fn deliver_whole(
    session: &mut Session,
    mut head: response::Parts,
    body: Bytes,
    extra: &[Header],
    request_id: &str,
    out: &mut Delivery,
) -> Result<(), GatewayError> {
    head.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers::extend(&mut head, extra);
    out.response_bytes = body.len() as u64;
    if let Err(e) = session.write_response_header(headers::finish(head)).await {
        out.client_gone = true;
        tracing::debug!(request_id, error = %e, "client gone before the response");
        return Ok(());
    }
    out.response_started = true;
    if let Err(e) = session.write_response_body(body, true).await {
        tracing::debug!(request_id, error = %e, "client gone during the response");
        out.client_gone = true;
    }
    Ok(())
}

/// Streams an SSE response to the client as it arrives, chunk by chunk, reading usage
/// on the way. An upstream that stops early, stalls, or ends without `data: [DONE]`
/// is an error after the response started (the caller ends the stream with an error
/// event). The client is watched all along: if it leaves, the upstream request is
/// cancelled (the connection is dropped, not pooled).
#[allow(clippy::too_many_arguments)]
pub async fn deliver_stream(
    connector: &Connector,
    session: &mut Session,
    mut exchange: Box<Exchange>,
    pool: &Pool,
    extra: &[Header],
    request_id: &str,
    mode: StreamMode,
    mut adapter: Option<Box<dyn StreamAdapter>>,
    client: Wire,
    out: &mut Delivery,
) -> Result<(), GatewayError> {
    out.event_stream = true;
    if mode.keep_text {
        out.generated = Some(String::new());
    }
    let upstream = exchange.header();
    let mut h = client_head(upstream, upstream.status, request_id, extra.len() + 1);
    headers::extend(&mut h, extra);
    crate::respond::frame_open_ended_body(session, &mut h);
    if let Err(e) = session.write_response_header(headers::finish(h)).await {
        tracing::debug!(request_id, error = %e, "client gone before the response");
        out.client_gone = true;
        return Ok(());
    }
    out.response_started = true;

    let t = pool.spec.timeouts;
    let header_at = Instant::now();
    let deadline = header_at + t.total;
    let cap = pool.spec.max_response_bytes as u64;
    let mut parser = SseParser::new();
    let mut done = false;
    let timer = StreamTimer::new(&pool.spec.name);
    let mut last_chunk: Option<Instant> = None;
    loop {
        let read = tokio::select! {
            read = read_chunk(&mut exchange.conn, pool, t.idle, deadline) => read?,
            _ = session.read_body_or_idle(true) => {
                out.client_gone = true;
                return Ok(());
            }
        };
        let Some(first) = read else { break };
        let now = Instant::now();
        match last_chunk {
            None => {
                let ttft = exchange.took + (now - header_at);
                out.ttft = Some(ttft);
                timer.first_chunk(ttft);
            }
            Some(previous) => timer.next_chunk(now - previous),
        }
        last_chunk = Some(now);
        out.response_bytes += first.len() as u64;
        if out.response_bytes > cap {
            return Err(stream_too_long(pool, cap));
        }
        // What else has arrived already goes to the client in the same write.
        let (chunk, after) =
            gather_arrived(&mut exchange.conn, first, pool, &mut out.response_bytes);
        if let Some(adapter) = adapter.as_mut() {
            let (chunk, failed) = translate_chunk(
                adapter.as_mut(),
                &mut parser,
                chunk,
                client,
                mode.strip_usage,
                out,
            );
            done = adapter.finished();
            if let Some(u) = adapter.usage() {
                out.usage = Some(u);
            }
            if !chunk.is_empty()
                && let Err(e) = session.write_response_body(chunk, false).await
            {
                tracing::debug!(request_id, error = %e, "client gone mid-stream");
                out.client_gone = true;
                return Ok(());
            }
            if let Some(e) = failed {
                return Err(e.in_pool(&pool.spec.name));
            }
            match after {
                Gathered::More => {}
                Gathered::End => break,
                Gathered::Failed(e) => return Err(e),
            }
            if done || exchange.conn.response_done() {
                break;
            }
            continue;
        }
        // Usually the upstream's bytes go on untouched; when a chunk must be held back,
        // the stream is re-framed event by event instead.
        let mut reframed = mode
            .strip_usage
            .then(|| BytesMut::with_capacity(chunk.len()));
        parser.feed(&chunk, |data| {
            let mut keep = true;
            if data == b"[DONE]" {
                done = true;
            } else {
                if let Some(c) = out.capture.as_mut() {
                    c.event(data);
                }
                if let Some(u) = Usage::find(data) {
                    out.usage = Some(u);
                    keep = !(mode.strip_usage && is_usage_only_chunk(data));
                } else if let Some(text) = out.generated.as_mut() {
                    append_generated_text(data, text);
                }
            }
            if let (Some(buf), true) = (reframed.as_mut(), keep) {
                put_event(data, buf);
            }
        });
        let chunk = match reframed {
            Some(buf) => buf.freeze(),
            None => chunk,
        };
        if !chunk.is_empty()
            && let Err(e) = session.write_response_body(chunk, false).await
        {
            tracing::debug!(request_id, error = %e, "client gone mid-stream");
            out.client_gone = true;
            return Ok(());
        }
        match after {
            Gathered::More => {}
            Gathered::End => break,
            // Reported only now, once what arrived before it has gone on, as when each
            // chunk was sent on its own.
            Gathered::Failed(e) => return Err(e),
        }
        if exchange.conn.response_done() {
            break;
        }
    }
    if !done {
        return Err(GatewayError::UpstreamProtocol {
            pool: pool.spec.name.clone(),
            detail: match adapter {
                Some(_) => "the stream ended before its last event".into(),
                None => "the stream ended without `data: [DONE]`".into(),
            },
        });
    }
    if let Err(e) = session.write_response_body(Bytes::new(), true).await {
        tracing::debug!(request_id, error = %e, "client gone at the end of the stream");
        out.client_gone = true;
        return Ok(());
    }
    if let Some(c) = out.capture.as_mut() {
        c.stream_done();
    }
    exchange.release(connector).await;
    Ok(())
}

/// One upstream chunk through a stream adapter: the client's bytes for the events it
/// completed (the chunk itself when the adapter relays), and the error that ends the
/// stream, if one of them was that. Each client event is kept for the cache and counted
/// as generated text; with `strip_usage`, a usage-only chunk is kept from the client.
fn translate_chunk(
    adapter: &mut dyn StreamAdapter,
    parser: &mut SseParser,
    chunk: Bytes,
    client: Wire,
    strip_usage: bool,
    out: &mut Delivery,
) -> (Bytes, Option<GatewayError>) {
    let relays = adapter.relays();
    let mut framed = BytesMut::new();
    let mut events: Vec<ClientEvent> = Vec::new();
    let mut failed = None;
    parser.feed(&chunk, |data| {
        if failed.is_some() {
            return;
        }
        if let Some(text) = out.generated.as_mut() {
            append_generated_text(data, text);
        }
        events.clear();
        if let Err(e) = adapter.event(data, &mut events) {
            failed = Some(e);
            return;
        }
        if relays && let Some(c) = out.capture.as_mut() {
            c.event(data);
        }
        for event in &events {
            if !event.is_done() {
                if let Some(c) = out.capture.as_mut() {
                    c.event(&event.data);
                }
                if let Some(text) = out.generated.as_mut() {
                    append_generated_text(&event.data, text);
                }
                if strip_usage && is_usage_only_chunk(&event.data) {
                    continue;
                }
            }
            client.frame(event, &mut framed);
        }
    });
    if relays {
        (chunk, failed)
    } else {
        (framed.freeze(), failed)
    }
}

/// The error of a stream that passed `max_response_bytes`.
fn stream_too_long(pool: &Pool, cap: u64) -> GatewayError {
    GatewayError::UpstreamProtocol {
        pool: pool.spec.name.clone(),
        detail: format!("stream longer than max_response_bytes ({cap})"),
    }
}

/// At most this many bytes are gathered into one client write.
const GATHER_LIMIT: usize = 64 * 1024;

/// How gathering the body chunks that had already arrived ended.
enum Gathered {
    /// Nothing more had arrived: the body goes on.
    More,
    /// The body ended.
    End,
    /// Reading failed, or the next chunk would pass `max_response_bytes`.
    Failed(GatewayError),
}

/// `first`, followed by the body chunks that have already arrived (up to
/// [`GATHER_LIMIT`]), without waiting for any: each read is polled once, and the first
/// that would wait ends the gathering. Each chunk is counted in `counted`, checked
/// against the pool's `max_response_bytes` as it comes; a chunk past it is not kept.
fn gather_arrived(
    conn: &mut HttpSession,
    first: Bytes,
    pool: &Pool,
    counted: &mut u64,
) -> (Bytes, Gathered) {
    let cap = pool.spec.max_response_bytes as u64;
    let mut gathered: Option<BytesMut> = None;
    let mut after = Gathered::More;
    let mut cx = Context::from_waker(Waker::noop());
    while !conn.response_done()
        && gathered.as_ref().map_or(first.len(), BytesMut::len) < GATHER_LIMIT
    {
        let read = pin!(conn.read_response_body()).poll(&mut cx);
        match read {
            // A read that would wait is dropped; the next one starts where it was.
            Poll::Pending => break,
            Poll::Ready(Ok(None)) => {
                after = Gathered::End;
                break;
            }
            Poll::Ready(Err(e)) => {
                after = Gathered::Failed(exchange_error(pool, &e, "reading the response body"));
                break;
            }
            Poll::Ready(Ok(Some(chunk))) => {
                *counted += chunk.len() as u64;
                if *counted > cap {
                    after = Gathered::Failed(stream_too_long(pool, cap));
                    break;
                }
                let buf = gathered.get_or_insert_with(|| {
                    let mut buf = BytesMut::with_capacity(first.len() + chunk.len());
                    buf.extend_from_slice(&first);
                    buf
                });
                buf.extend_from_slice(&chunk);
            }
        }
    }
    (gathered.map_or(first, BytesMut::freeze), after)
}

/// Writes the request and reads the response header; gives the session back on success.
async fn send_and_read_header(
    conn: HttpSession,
    peer: &UpstreamPeer,
    request: Option<RequestHeader>,
    body: Bytes,
) -> pingora_error::Result<HttpSession> {
    let request = request.ok_or_else(|| {
        pingora_error::Error::explain(ErrorType::InternalError, "upstream request already sent")
    })?;
    let mut conn = match conn {
        HttpSession::H1(h1) => HttpSession::H1(send_h1(h1, peer, &request, &body).await?),
        mut other => {
            other.write_request_header(Box::new(request)).await?;
            other.write_request_body(body, true).await?;
            other.finish_request_body().await?;
            other
        }
    };
    conn.read_response_header().await?;
    Ok(conn)
}

/// Sends an HTTP/1 request, header and body, in one write, where Pingora's session writes
/// (and flushes) them one after the other. The session is then made anew on the same
/// stream to read the response. It has no record of the request written, which is what
/// Pingora looks at to frame the response to a `HEAD` (never sent here: always `POST`), to
/// detect an upgrade (`upgrade`/`connection` are never forwarded) and to honour a request's
/// `connection: close` (never forwarded either), so the response is read, and the
/// connection kept alive or not, as before.
async fn send_h1(
    h1: v1::client::HttpSession,
    peer: &UpstreamPeer,
    request: &RequestHeader,
    body: &[u8],
) -> pingora_error::Result<v1::client::HttpSession> {
    let mut wire = v1::client::http_req_header_to_wire(request).ok_or_else(|| {
        pingora_error::Error::explain(
            ErrorType::InvalidHTTPHeader,
            "request line with a forbidden byte or an unsupported HTTP version",
        )
    })?;
    wire.extend_from_slice(body);
    let (read_timeout, write_timeout) = (h1.read_timeout, h1.write_timeout);
    let mut stream = h1.into_inner();
    let write = async {
        stream.write_all(&wire).await?;
        stream.flush().await
    };
    match write_timeout {
        Some(t) => match fast_timeout(t, write).await {
            Ok(written) => written,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        },
        None => write.await,
    }
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => {
            pingora_error::Error::because(ErrorType::WriteTimedout, "writing the request", e)
        }
        _ => pingora_error::Error::because(ErrorType::WriteError, "writing the request", e),
    })?;
    let mut h1 = v1::client::HttpSession::new_with_options(stream, peer);
    h1.read_timeout = read_timeout;
    h1.write_timeout = write_timeout;
    Ok(h1)
}

/// The upstream request line and headers: the client's headers minus those in
/// [`DROP_REQUEST_HEADERS`], plus the pool's host, credential, the request id and the
/// trace context.
fn request_header(
    client: &RequestHeader,
    a: &Attempt<'_>,
    key: Option<&Secret>,
) -> Result<RequestHeader, GatewayError> {
    let spec = &a.endpoint.spec;
    let tail = a.wire.path(a.api);
    let query = client.uri.query();
    let mut path =
        String::with_capacity(spec.base_path.len() + tail.len() + query.map_or(0, |q| q.len() + 1));
    path.push_str(&spec.base_path);
    path.push_str(tail);
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = http::Method::POST;
    head.uri = http::Uri::try_from(path)
        .map_err(|e| GatewayError::Internal(format!("building the upstream request path: {e}")))?;
    // Built on `http`'s map, as the client's response is (see `crate::headers`).
    let h = &mut head.headers;
    h.reserve(client.headers.len() + 7);
    for (name, value) in client.headers.iter() {
        if keeps(name.as_str(), DROP_REQUEST_HEADERS) {
            h.append(name.clone(), value.clone());
        }
    }
    h.insert(HOST, a.endpoint.host_header());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(a.body.len()));
    for (name, value) in [(X_REQUEST_ID, a.request_id), (TRACEPARENT, a.traceparent)] {
        if let Some(value) = headers::text(value) {
            h.insert(name, value);
        }
    }
    a.wire.authorize(h, key).map_err(|_| {
        GatewayError::Internal(format!(
            "the key of endpoint `{}` is not a valid header value",
            spec.name
        ))
    })?;
    Ok(RequestHeader::from(head))
}

/// The client's response head from the upstream's: `status` (the upstream's, or what the
/// gateway makes of it), the upstream's headers less those the gateway drops (and
/// `content-length`, which the caller sets or frames), the request ids, and room for
/// `extra` more.
pub fn client_head(
    upstream: &ResponseHeader,
    status: StatusCode,
    request_id: &str,
    extra: usize,
) -> response::Parts {
    let mut h = headers::response(status, upstream.headers.len() + 1 + extra, request_id);
    for (name, value) in upstream.headers.iter() {
        if keeps(name.as_str(), DROP_RESPONSE_HEADERS)
            && name != CONTENT_LENGTH
            && name != X_REQUEST_ID
        {
            h.headers.append(name.clone(), value.clone());
        }
    }
    if let Some(id) = upstream.headers.get(X_REQUEST_ID) {
        h.headers.insert(X_UPSTREAM_REQUEST_ID, id.clone());
    }
    h
}

fn connect_error(pool: &Pool, e: &pingora_error::Error) -> GatewayError {
    let pool_name = pool.spec.name.clone();
    let detail = format!("connecting: {e}");
    match e.etype() {
        ErrorType::ConnectTimedout => GatewayError::UpstreamTimeout {
            pool: pool_name,
            detail,
        },
        _ => GatewayError::UpstreamUnreachable {
            pool: pool_name,
            detail,
        },
    }
}

fn exchange_error(pool: &Pool, e: &pingora_error::Error, doing: &str) -> GatewayError {
    let pool_name = pool.spec.name.clone();
    let detail = format!("{doing}: {e}");
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => GatewayError::UpstreamTimeout {
            pool: pool_name,
            detail,
        },
        ErrorType::ConnectionClosed
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::TLSHandshakeFailure => GatewayError::UpstreamUnreachable {
            pool: pool_name,
            detail,
        },
        _ => GatewayError::UpstreamProtocol {
            pool: pool_name,
            detail,
        },
    }
}
